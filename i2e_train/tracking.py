"""Optional experiment trackers: Weights & Biases and MLflow, beside TensorBoard.

``logger=wandb`` / ``logger=mlflow`` (config group ``configs/logger/``) choose one; the default
``logger=tensorboard`` adds none (TensorBoard is written by :class:`~i2e_train.monitor.MetricsWriter`
either way). Both are optional extras: ``pip install 'i2e-train[wandb]'`` / ``'i2e-train[mlflow]'``.

A tracker receives, on rank 0 only:

- ``start(run_dir, config, name)`` at the start of a fit (or of an i2e-eval): the resolved config;
- ``log_metrics(row, step)`` for every ``metrics.jsonl`` row (``step`` = the epoch): finite numbers
  only, nested dicts flattened (``firing_rates`` -> ``firing_rates/<layer>``);
- ``log_summary(report)`` with i2e-eval's report (``eval.json``): its numbers as ``eval/<key>``
  and the whole report as a file;
- ``finish()`` at the end (also after an error: pass ``status="failed"``).

**Resume.** ``start`` records the tracker's run id in ``run_dir/tracking.json``; a later ``start``
on the same run folder (a resumed fit, or i2e-eval of the run's checkpoint) continues that same
W&B / MLflow run, unless it is called with ``resume=False`` (a fresh fit in a reused folder).

**Where the data goes.** W&B: ``run_dir/wandb/`` (``mode: offline`` by default; upload later with
``wandb sync run_dir/wandb/offline-run-*``). MLflow: ``tracking_uri`` (default
``$MLFLOW_TRACKING_URI``, else ``./mlruns``, a local file store in the launch folder shared by all
runs; MLflow >= 3 keeps that store in maintenance mode behind ``MLFLOW_ALLOW_FILE_STORE=true``,
which this module sets for ``file:`` stores; view it with ``mlflow ui --backend-store-uri ./mlruns``
from the full ``mlflow`` package).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from .errors import UserError

log = logging.getLogger("i2e_train")
STATE_FILE = "tracking.json"  # in the run folder: {"wandb": {...}, "mlflow": {...}}
CHOICES = ("tensorboard", "wandb", "mlflow")
EXTRAS = {"wandb": ("wandb", "wandb"), "mlflow": ("mlflow", "mlflow")}  # logger -> (module, extra)


# ----------------------------------------------------------------------------- helpers
def flatten(data: Mapping[str, Any], prefix: str = "", sep: str = "/") -> Iterator[tuple[str, Any]]:
    """``(key, value)`` leaves of nested mappings, keys joined with ``sep``."""
    for key, value in data.items():
        name = f"{prefix}{sep}{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            yield from flatten(value, name, sep)
        else:
            yield name, value


def finite_numbers(data: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The finite int/float leaves of ``data`` (bools, strings, lists, NaN and Inf left out)."""
    out = {}
    for key, value in flatten(data, prefix):
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if math.isfinite(value):
            out[key] = float(value) if isinstance(value, float) else int(value)
    return out


def read_state(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / STATE_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_state(run_dir: Path, key: str, entry: dict[str, Any]) -> None:
    """Set ``tracking.json[key] = entry`` atomically, keeping the other trackers' entries."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    state = read_state(run_dir)
    state[key] = entry
    tmp = run_dir / f".{STATE_FILE}.tmp"
    tmp.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
    tmp.replace(run_dir / STATE_FILE)


def run_name(run_dir: Path, cwd: Path | None = None) -> str:
    """A readable run name: ``run_dir`` relative to the launch folder without a leading
    ``runs/`` (``digits/2026-01-05_10-00-00``, ``orders/2026-01-05_10-00-00/3`` for a sweep job),
    else its last two path parts."""
    full = Path(run_dir).resolve()
    try:
        rel = full.relative_to((cwd or Path.cwd()).resolve())
    except ValueError:
        rel = Path(*full.parts[-2:])
    parts = rel.parts[1:] if len(rel.parts) > 1 and rel.parts[0] == "runs" else rel.parts
    return "/".join(parts) or full.name


def _first_line(e: BaseException) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return lines[0] if lines else type(e).__name__


# ----------------------------------------------------------------------------- the interface
class Tracker:
    """An experiment-tracking sink. Subclasses implement the four calls; all are rank-0 only."""

    name = "none"

    def start(self, run_dir: Path, config: dict[str, Any], name: str, resume: bool = True) -> None:
        """Open (or, with ``resume`` and a ``tracking.json`` entry, continue) the run of ``run_dir``."""
        raise NotImplementedError

    def log_metrics(self, row: Mapping[str, Any], step: int) -> None:
        """One metrics row (an epoch); ``step`` is the epoch."""
        raise NotImplementedError

    def log_summary(self, report: Mapping[str, Any], prefix: str = "eval") -> None:
        """An i2e-eval report: numbers as ``<prefix>/<key>``, the whole report as ``<prefix>.json``."""
        raise NotImplementedError

    def finish(self, status: str = "finished") -> None:
        """Close the run (``status``: finished | failed | killed). Safe to call twice."""
        raise NotImplementedError

    @property
    def run_id(self) -> str | None:
        return None


# ----------------------------------------------------------------------------- Weights & Biases
class WandbTracker(Tracker):
    """Weights & Biases. ``mode``: offline (default: no account, no network; files in
    ``run_dir/wandb``), online, or disabled. Metrics use ``epoch`` as their x axis."""

    name = "wandb"

    def __init__(
        self,
        project: str = "i2e-train",
        entity: str | None = None,
        mode: str | None = "offline",
        tags: list[str] | tuple[str, ...] | None = None,
        group: str | None = None,
        notes: str | None = None,
        job_type: str | None = None,
    ) -> None:
        if mode not in (None, "online", "offline", "disabled"):
            raise UserError(f"logger.mode must be online, offline or disabled, got '{mode}'")
        self.project = project
        self.entity = entity
        self.mode = mode
        self.tags = [str(t) for t in tags or ()]
        self.group = group
        self.notes = notes
        self.job_type = job_type
        self.run: Any = None

    @property
    def run_id(self) -> str | None:
        return None if self.run is None else str(self.run.id)

    def start(self, run_dir: Path, config: dict[str, Any], name: str, resume: bool = True) -> None:
        import wandb

        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        previous = read_state(run_dir).get("wandb") or {}
        same_project = previous.get("project") == self.project and previous.get("entity") == self.entity
        run_id = previous.get("id") if resume and same_project else None
        if wandb.run is not None:  # a run left open by an earlier job of this process (a -m sweep)
            log.warning("wandb: finishing the run %s left open before starting a new one", wandb.run.id)
            wandb.run.finish()
        try:
            self.run = wandb.init(
                dir=str(run_dir),
                project=self.project,
                entity=self.entity,
                mode=self.mode,
                name=name,
                id=run_id,  # None: a new run (wandb picks the id)
                resume="allow",
                tags=self.tags or None,
                group=self.group,
                notes=self.notes,
                job_type=self.job_type,
            )
        except Exception as e:  # noqa: BLE001 - login/network/config problems: one line
            raise UserError(
                f"logger=wandb could not start a run: {_first_line(e)} "
                "(log in with `wandb login`, or use logger.mode=offline)"
            ) from None
        self.run.config.update(dict(config), allow_val_change=True)
        self.run.define_metric("epoch")
        self.run.define_metric("*", step_metric="epoch")
        if self._disabled:
            return  # nothing is recorded: no run to continue later
        write_state(
            run_dir,
            "wandb",
            {"id": self.run.id, "project": self.project, "entity": self.entity, "mode": self.mode},
        )

    @property
    def _disabled(self) -> bool:
        return self.run is not None and (
            self.mode == "disabled" or bool(getattr(self.run, "disabled", False))
        )

    def log_metrics(self, row: Mapping[str, Any], step: int) -> None:
        values = finite_numbers(row)
        values["epoch"] = int(step)
        self.run.log(values)

    def log_summary(self, report: Mapping[str, Any], prefix: str = "eval") -> None:
        self.run.summary.update(finite_numbers(report, prefix))
        for key in ("model", "dataset", "checkpoint"):
            if isinstance(report.get(key), str):
                self.run.summary[f"{prefix}/{key}"] = report[key]
        # Files in run.dir are part of the run (uploaded with it, or by `wandb sync`).
        if not self._disabled and Path(self.run.dir).is_dir():
            path = Path(self.run.dir, f"{prefix}.json")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(report, indent=2, default=str) + "\n")

    def finish(self, status: str = "finished") -> None:
        if self.run is not None:
            self.run.finish(exit_code=0 if status == "finished" else 1)
            self.run = None


# ----------------------------------------------------------------------------- MLflow
class MlflowTracker(Tracker):
    """MLflow through :class:`mlflow.tracking.MlflowClient` (no global "active run"). The config
    becomes params (``optim.lr``, ...) and ``config.json``; metrics are logged with step = epoch."""

    name = "mlflow"
    MAX_PARAMS_PER_BATCH = 100
    MAX_METRICS_PER_BATCH = 1000

    def __init__(
        self,
        tracking_uri: str | None = None,
        experiment_name: str = "i2e-train",
        tags: Mapping[str, Any] | None = None,
    ) -> None:
        self.tracking_uri = resolve_mlflow_uri(tracking_uri)
        self.experiment_name = experiment_name
        self.tags = {str(k): str(v) for k, v in (tags or {}).items()}
        self.client: Any = None
        self._run_id: str | None = None

    @property
    def run_id(self) -> str | None:
        return self._run_id

    def start(self, run_dir: Path, config: dict[str, Any], name: str, resume: bool = True) -> None:
        from mlflow.tracking import MlflowClient

        run_dir = Path(run_dir)
        if self.tracking_uri.startswith("file:"):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        try:
            self.client = MlflowClient(tracking_uri=self.tracking_uri)
            previous = read_state(run_dir).get("mlflow") or {}
            run = None
            if resume and previous.get("tracking_uri") == self.tracking_uri and previous.get("run_id"):
                with contextlib.suppress(Exception):
                    run = self.client.get_run(previous["run_id"])
            if run is not None and run.info.lifecycle_stage == "active":
                self._run_id = run.info.run_id
                self.client.update_run(self._run_id, status="RUNNING")
                existing = dict(run.data.params)
            else:
                experiment = self.client.get_experiment_by_name(self.experiment_name)
                experiment_id = (
                    experiment.experiment_id
                    if experiment is not None
                    else self.client.create_experiment(self.experiment_name)
                )
                run = self.client.create_run(
                    experiment_id, run_name=name, tags={**self.tags, "run_dir": str(run_dir)}
                )
                self._run_id = run.info.run_id
                existing = {}
            self._log_config(config, existing)
        except UserError:
            raise
        except Exception as e:  # noqa: BLE001 - an unreachable server or a bad URI: one line
            raise UserError(
                f"logger=mlflow could not start a run at '{self.tracking_uri}': {_first_line(e)}"
            ) from None
        write_state(
            run_dir,
            "mlflow",
            {
                "run_id": self._run_id,
                "experiment_id": run.info.experiment_id,
                "tracking_uri": self.tracking_uri,
            },
        )

    def _log_config(self, config: Mapping[str, Any], existing: Mapping[str, str]) -> None:
        """Params are write-once in MLflow: on resume only new keys are added; changed values are
        listed in the tag ``config_changed_on_resume`` (config.json always holds the latest)."""
        from mlflow.entities import Param

        params = {_mlflow_key(k): _param_value(v) for k, v in flatten(config, sep=".")}
        changed = sorted(k for k, v in params.items() if k in existing and existing[k] != v)
        new = [Param(k, v) for k, v in params.items() if k not in existing]
        for i in range(0, len(new), self.MAX_PARAMS_PER_BATCH):
            self.client.log_batch(self._run_id, params=new[i : i + self.MAX_PARAMS_PER_BATCH])
        if changed:
            self.client.set_tag(self._run_id, "config_changed_on_resume", ", ".join(changed)[:5000])
        self.client.log_dict(self._run_id, dict(config), "config.json")

    def _log_numbers(self, values: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(_mlflow_key(k), float(v), now, int(step)) for k, v in values.items()]
        for i in range(0, len(metrics), self.MAX_METRICS_PER_BATCH):
            self.client.log_batch(self._run_id, metrics=metrics[i : i + self.MAX_METRICS_PER_BATCH])

    def log_metrics(self, row: Mapping[str, Any], step: int) -> None:
        self._log_numbers({k: v for k, v in finite_numbers(row).items() if k != "epoch"}, step)

    def log_summary(self, report: Mapping[str, Any], prefix: str = "eval") -> None:
        epoch = report.get("epoch")
        step = int(epoch) if isinstance(epoch, int) and not isinstance(epoch, bool) else 0
        self._log_numbers(finite_numbers(report, prefix), step)
        for key in ("model", "dataset", "checkpoint"):
            if isinstance(report.get(key), str):
                self.client.set_tag(self._run_id, f"{prefix}.{key}", report[key][:5000])
        self.client.log_dict(self._run_id, json.loads(json.dumps(report, default=str)), f"{prefix}.json")

    def finish(self, status: str = "finished") -> None:
        if self.client is not None and self._run_id is not None:
            self.client.set_terminated(self._run_id, status=status.upper())
            self.client = None


def _mlflow_key(key: str) -> str:
    """MLflow names allow letters, digits, ``_ - . : / `` and spaces (class names may hold more)."""
    return re.sub(r"[^\w\-.:/ ]", "_", key)[:250]


def _param_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text[:6000]  # MLflow's limit on a param value


def resolve_mlflow_uri(tracking_uri: str | None) -> str:
    """The store a run goes to: ``tracking_uri``, else ``$MLFLOW_TRACKING_URI``, else ``mlruns``.
    Local stores (a plain path or a ``file:`` URI) become absolute ``file://`` URIs, so a resumed
    run or an i2e-eval launched from another folder finds the same store."""
    uri = str(tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or "mlruns")
    if uri.startswith("file:"):
        path = uri[len("file:") :]
        return Path(path[2:] if path.startswith("//") else path).expanduser().resolve().as_uri()
    if "://" in uri or uri == "databricks" or uri.startswith("databricks"):
        return uri  # a server (http, https), a database (sqlite:///...), Databricks
    return Path(uri).expanduser().resolve().as_uri()


# ----------------------------------------------------------------------------- the factory
def _require(logger: str) -> None:
    import importlib.util

    module, extra = EXTRAS[logger]
    if importlib.util.find_spec(module) is None:
        raise UserError(f"logger={logger} needs the {module} package: pip install 'i2e-train[{extra}]'")


def build_tracker(name: str, **options: Any) -> Tracker | None:
    """The tracker for ``logger=<name>`` with the group's other keys as ``options``; None for
    ``tensorboard`` (no extra tracker). Raises :class:`UserError` for an unknown name, an unknown
    option or a missing package."""
    name = str(name)
    if name in ("tensorboard", "none", "null"):
        return None
    if name not in EXTRAS:
        raise UserError(f"unknown logger '{name}'; choose one of: {', '.join(CHOICES)}")
    _require(name)
    cls = {"wandb": WandbTracker, "mlflow": MlflowTracker}[name]
    try:
        return cls(**options)
    except TypeError as e:
        import inspect

        valid = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
        raise UserError(f"logger={name}: {e} (its settings: {', '.join(valid)})") from None


def tracker_from_config(section: Any) -> Tracker | None:
    """``build_tracker`` from a config's ``logger`` section (a DictConfig or dict; None or a
    missing section: no tracker)."""
    if section is None:
        return None
    with contextlib.suppress(ImportError):
        from omegaconf import OmegaConf

        if OmegaConf.is_config(section):
            section = OmegaConf.to_container(section, resolve=True)
    if not isinstance(section, Mapping):
        raise UserError("the logger setting must be a config group (logger=tensorboard|wandb|mlflow)")
    options = dict(section)
    name = options.pop("name", "tensorboard")
    return build_tracker(name, **options)
