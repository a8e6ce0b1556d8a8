"""``i2e-report``: many training runs in one results table, with learning-curve plots.

    i2e-report runs/                                  # every run below runs/ (any depth)
    i2e-report runs/orders/2026-01-05_10-00-00        # a Hydra sweep folder (-m): its jobs 0, 1, ...
    i2e-report runs/a runs/b --out report/ab --sort best --title "ratio 0.07 vs 0.10"

Each argument is a run folder (it has ``metrics.jsonl``) or a folder holding runs at any depth.
``--out`` (default ``report/``) receives:

- ``results.md``: the table (one row per run), the runs grouped by everything but ``seed``
  (mean ± sample standard deviation and min–max of the best validation top-1) when some runs
  differ only in their seed, and the plots;
- ``results.csv``: the same rows with plain numbers (top-1 in %, wall time in seconds);
- ``curves.png`` (four panels) and ``loss.png``, ``top1.png``, ``lr.png``, ``firing_rate.png``:
  every run over epochs, one colour per run; train dashed, validation solid, EMA dotted.

Columns: ``run`` (path relative to the runs' common parent), ``preset`` (``experiment=...``, from
``.hydra/hydra.yaml``), ``overrides`` (the command-line settings from ``.hydra/overrides.yaml`` that
differ between the runs; those shared by all runs are listed once above the table; ``run_dir``
and ``experiment`` are left out), ``dataset``, ``model``, ``epochs`` (done/planned), ``best top-1``
(max ``val_top1`` and its epoch), ``final top-1`` (the last epoch's), ``EMA top-1`` (max
``val_top1_ema``, when the run has it), ``paper`` (``paper.top1`` set by a paper preset) and
``Δ paper`` (best − paper), ``wall`` (sum of ``epoch_seconds``), ``img/s`` (mean
``train_images_per_second``) and ``eval top-1`` (``eval/<name>/eval.json`` written by i2e-eval;
``best`` preferred when there are several).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import os
import re
import statistics
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UserError
from . import cli

PROG = "i2e-report"
SORT_KEYS = ("run", "best", "final", "ema", "eval", "paper_diff", "wall", "speed")
# Figure sizes in inches at DPI: the PNGs are exactly this many pixels (tests rely on it).
DPI = 100
PANEL_SIZE = (14.0, 9.0)  # curves.png: 1400 x 900
SINGLE_SIZE = (10.0, 5.5)  # loss.png, top1.png, lr.png, firing_rate.png: 1000 x 550
MAX_LEGEND_RUNS = 30  # more runs are drawn but not all named in the legend
MAX_NAME = 36  # legend names are shortened (middle ellipsis) beyond this many characters
IGNORED_OVERRIDES = ("run_dir", "experiment", "resume")
NOT_GROUPED = ("seed", "run_dir", "resume")  # config keys that may differ inside a seed group


# ----------------------------------------------------------------------------- reading runs
@dataclass
class Run:
    """One run folder as read from disk."""

    path: Path
    rows: list[dict[str, Any]]
    config: Any = None  # the composed config (.hydra/config.yaml, unresolved) or None
    preset: str | None = None
    overrides: list[str] = field(default_factory=list)
    evals: dict[str, float] = field(default_factory=dict)  # eval/<name>/eval.json -> top1
    name: str = ""

    def get(self, key: str) -> Any:
        """A config value (dotted key), or None when missing or not resolvable offline."""
        if self.config is None:
            return None
        from omegaconf import OmegaConf

        try:
            value = OmegaConf.select(self.config, key, default=None, throw_on_resolution_failure=False)
        except Exception:  # noqa: BLE001 - an odd config must not stop a report
            return None
        return OmegaConf.to_container(value, resolve=False) if OmegaConf.is_config(value) else value

    def series(self, key: str) -> tuple[list[int], list[float]]:
        """(epochs, values) of a metrics key, finite numbers only."""
        xs, ys = [], []
        for row in self.rows:
            value = _number(row.get(key))
            if value is not None and _number(row.get("epoch")) is not None:
                xs.append(int(row["epoch"]))
                ys.append(value)
        return xs, ys

    def override_map(self) -> dict[str, str]:
        out = {}
        for item in self.overrides:
            key, sep, value = str(item).partition("=")
            key = key.lstrip("+~")
            if sep and key not in IGNORED_OVERRIDES and not key.startswith("hydra"):
                out[key] = _canonical_value(value)
        return out


def _canonical_value(text: str) -> str:
    """One spelling per value: a -m sweep records ``trainer.progress=False`` and ``optim.lr=0.1``
    where a single run keeps what was typed (``false``, ``0.10``)."""
    import yaml

    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, int | float):
        return repr(value)
    return text


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _natural_key(path: Path) -> list[Any]:
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", str(path))]


def find_runs(paths: Sequence[str | Path]) -> list[Path]:
    """Run folders named by the arguments, in argument order (natural order inside a folder)."""
    found: list[Path] = []
    seen: set[Path] = set()
    for arg in paths:
        path = Path(arg)
        if path.name == "metrics.jsonl" and path.is_file():
            path = path.parent
        if not path.exists():
            raise UserError(f"'{arg}' does not exist")
        if not path.is_dir():
            raise UserError(f"'{arg}' is not a run folder (no metrics.jsonl) nor a folder of runs")
        if (path / "metrics.jsonl").is_file():
            candidates = [path]
        else:
            candidates = sorted(
                (m.parent for m in path.rglob("metrics.jsonl") if m.is_file()), key=_natural_key
            )
            if not candidates:
                raise UserError(f"no runs in '{arg}' (no metrics.jsonl in it or below it)")
        for run in candidates:
            key = run.resolve()
            if key not in seen:
                seen.add(key)
                found.append(run)
    if not found:
        raise UserError("no runs given (pass run folders or folders containing runs)")
    return found


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The rows of a ``metrics.jsonl``, one per epoch (a repeated epoch keeps its last row)."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read '{path}': {e}") from None
    by_epoch: dict[Any, dict[str, Any]] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"'{path}' line {number} is not a JSON row ({e.msg})") from None
        if not isinstance(row, dict):
            raise UserError(f"'{path}' line {number} is not a JSON object")
        epoch = _number(row.get("epoch"))
        by_epoch[epoch if epoch is not None else f"line {number}"] = row
    return sorted(by_epoch.values(), key=lambda r: _number(r.get("epoch")) or 0.0)


def _read_yaml(path: Path) -> Any:
    if not path.is_file():
        return None
    import yaml

    try:
        return yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None


def load_run(path: Path) -> Run:
    from omegaconf import OmegaConf

    run = Run(path=path, rows=read_metrics(path / "metrics.jsonl"))
    hydra_dir = path / ".hydra"
    config = _read_yaml(hydra_dir / "config.yaml")
    if isinstance(config, dict):
        with contextlib.suppress(Exception):
            run.config = OmegaConf.create(config)
    hydra = _read_yaml(hydra_dir / "hydra.yaml")
    if isinstance(hydra, dict):
        choices = ((hydra.get("hydra") or {}).get("runtime") or {}).get("choices") or {}
        preset = choices.get("experiment") if isinstance(choices, dict) else None
        run.preset = str(preset) if preset not in (None, "null") else None
    overrides = _read_yaml(hydra_dir / "overrides.yaml")
    if isinstance(overrides, list):
        run.overrides = [str(o) for o in overrides]
    for report in sorted((path / "eval").glob("*/eval.json")):
        with contextlib.suppress(OSError, ValueError, TypeError, AttributeError):
            top1 = _number(json.loads(report.read_text()).get("top1"))
            if top1 is not None:
                run.evals[report.parent.name] = top1
    return run


def load_runs(paths: Sequence[str | Path]) -> list[Run]:
    runs = [load_run(p) for p in find_runs(paths)]
    _name_runs(runs)
    return runs


def _name_runs(runs: list[Run]) -> None:
    """Short names: the path relative to the runs' common parent (a lone run: its folder name)."""
    resolved = [r.path.resolve() for r in runs]
    common = Path(os.path.commonpath(resolved)) if len(runs) > 1 else resolved[0].parent
    for run, full in zip(runs, resolved, strict=True):
        rel = full.relative_to(common) if full != common else Path(full.name)
        run.name = str(rel) if str(rel) != "." else full.name


# ----------------------------------------------------------------------------- the table
@dataclass
class Row:
    """One line of the results table, plain numbers (None: not available)."""

    run: str
    path: str
    preset: str | None
    overrides: str
    dataset: str | None
    model: str | None
    seed: Any
    epochs_done: int
    epochs_planned: int | None
    best_val_top1: float | None
    best_epoch: int | None
    final_val_top1: float | None
    ema_val_top1: float | None
    paper_top1: float | None
    diff_vs_paper: float | None
    wall_seconds: float | None
    images_per_second: float | None
    eval_top1: float | None
    eval_name: str | None
    evals: dict[str, float] = field(default_factory=dict)


CSV_COLUMNS = [
    "run",
    "path",
    "preset",
    "overrides",
    "dataset",
    "model",
    "seed",
    "epochs_done",
    "epochs_planned",
    "best_val_top1",
    "best_epoch",
    "final_val_top1",
    "ema_val_top1",
    "paper_top1",
    "diff_vs_paper",
    "wall_seconds",
    "images_per_second",
    "eval_top1",
    "eval_name",
]


def common_overrides(runs: Sequence[Run]) -> dict[str, str]:
    """Overrides given, with the same value, to every run."""
    maps = [r.override_map() for r in runs]
    if not maps:
        return {}
    return {k: v for k, v in maps[0].items() if all(m.get(k) == v for m in maps[1:])}


def differing_overrides(run: Run, common: dict[str, str], skip: Iterable[str] = ()) -> str:
    skipped = set(skip)
    return " ".join(f"{k}={v}" for k, v in run.override_map().items() if k not in common and k not in skipped)


def _to_int(value: Any) -> int | None:
    number = _number(value)
    return int(number) if number is not None else None


def _to_float(value: Any) -> float | None:
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            return _number(float(value))
        return None
    return _number(value)


def summarize(run: Run, common: dict[str, str]) -> Row:
    epochs, val = run.series("val_top1")
    best = max(val) if val else None
    best_epoch = epochs[val.index(best)] if val else None
    _, ema = run.series("val_top1_ema")
    _, seconds = run.series("epoch_seconds")
    _, speed = run.series("train_images_per_second")
    done_epochs = [int(e) for e in (_number(r.get("epoch")) for r in run.rows) if e is not None]
    paper = _to_float(run.get("paper.top1"))
    eval_name = "best" if "best" in run.evals else next(iter(run.evals), None)
    return Row(
        run=run.name,
        path=str(run.path),
        preset=run.preset,
        overrides=differing_overrides(run, common),
        dataset=_str_or_none(run.get("dataset.name")),
        model=_str_or_none(run.get("model.name")),
        seed=run.get("seed"),
        epochs_done=max(done_epochs, default=0),
        epochs_planned=_to_int(run.get("trainer.epochs")),
        best_val_top1=best,
        best_epoch=best_epoch,
        final_val_top1=val[-1] if val else None,
        ema_val_top1=max(ema) if ema else None,
        paper_top1=paper,
        diff_vs_paper=best - paper if best is not None and paper is not None else None,
        wall_seconds=sum(seconds) if seconds else None,
        images_per_second=statistics.fmean(speed) if speed else None,
        eval_top1=run.evals.get(eval_name) if eval_name else None,
        eval_name=eval_name,
        evals=dict(run.evals),
    )


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)


def sort_rows(rows: list[Row], key: str) -> list[Row]:
    if key == "run":
        return rows
    attr = {
        "best": "best_val_top1",
        "final": "final_val_top1",
        "ema": "ema_val_top1",
        "eval": "eval_top1",
        "paper_diff": "diff_vs_paper",
        "wall": "wall_seconds",
        "speed": "images_per_second",
    }[key]
    ascending = key == "wall"  # fastest first; everything else: highest first
    present = [r for r in rows if getattr(r, attr) is not None]
    missing = [r for r in rows if getattr(r, attr) is None]
    present.sort(key=lambda r: getattr(r, attr), reverse=not ascending)
    return present + missing


# ----------------------------------------------------------------------------- seed groups
@dataclass
class Group:
    label: str
    rows: list[Row]

    def stats(self, attr: str) -> tuple[float | None, float | None, float | None, float | None]:
        """(mean, sample std, min, max) of a Row attribute over the group (std: None for one run)."""
        values = [getattr(r, attr) for r in self.rows if getattr(r, attr) is not None]
        if not values:
            return None, None, None, None
        std = statistics.stdev(values) if len(values) > 1 else None
        return statistics.fmean(values), std, min(values), max(values)


def _group_key(run: Run) -> str:
    """Everything that defines a run except its seed (and where it was written)."""
    if run.config is not None:
        from omegaconf import OmegaConf

        data = OmegaConf.to_container(run.config, resolve=False)
        assert isinstance(data, dict)
        for key in NOT_GROUPED:
            data.pop(key, None)
        return "config:" + json.dumps(data, sort_keys=True, default=str)
    overrides = {k: v for k, v in run.override_map().items() if k not in NOT_GROUPED}
    return "overrides:" + json.dumps([run.preset, overrides], sort_keys=True)


def seed_groups(runs: Sequence[Run], rows_by_run: dict[str, Row], common: dict[str, str]) -> list[Group]:
    """Runs that differ only in ``seed``, in order of first appearance. A group is labelled with
    its runs' overrides (all of them: a run that left a key at its default has the same config)."""
    members: dict[str, list[Run]] = {}
    for run in runs:
        members.setdefault(_group_key(run), []).append(run)
    groups = []
    for group_runs in members.values():
        label_parts: list[str] = []
        for run in group_runs:
            for part in differing_overrides(run, common, skip=("seed",)).split():
                if part not in label_parts:
                    label_parts.append(part)
        label = " ".join(label_parts)
        if not label:
            preset = group_runs[0].preset
            label = f"experiment={preset}" if preset else "(common settings only)"
        groups.append(Group(label, [rows_by_run[r.name] for r in group_runs]))
    return groups


# ----------------------------------------------------------------------------- formatting
def fmt_pct(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.2f}" if signed else f"{value:.2f}"


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def fmt_speed(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def fmt_mean_std(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "-"
    return f"{mean:.2f} ± {std:.2f}" if std is not None else f"{mean:.2f}"


def _md(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ") if text not in (None, "") else "-"


def _epochs(row: Row) -> str:
    return f"{row.epochs_done}/{row.epochs_planned if row.epochs_planned is not None else '?'}"


def _best(row: Row) -> str:
    if row.best_val_top1 is None:
        return "-"
    return f"{row.best_val_top1:.2f} (ep {row.best_epoch})"


def _eval_cell(row: Row) -> str:
    if not row.evals:
        return "-"
    if len(row.evals) == 1:
        return fmt_pct(row.eval_top1)
    return ", ".join(f"{name} {value:.2f}" for name, value in row.evals.items())


def markdown_table(rows: Sequence[Row]) -> list[str]:
    show_ema = any(r.ema_val_top1 is not None for r in rows)
    show_paper = any(r.paper_top1 is not None for r in rows)
    show_eval = any(r.evals for r in rows)
    header = ["run", "preset", "overrides", "dataset", "model", "epochs", "best top-1", "final top-1"]
    header += ["EMA top-1"] if show_ema else []
    header += ["paper", "Δ paper"] if show_paper else []
    header += ["wall", "img/s"]
    header += ["eval top-1"] if show_eval else []
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in rows:
        cells = [
            r.run,
            r.preset,
            r.overrides,
            r.dataset,
            r.model,
            _epochs(r),
            _best(r),
            fmt_pct(r.final_val_top1),
        ]
        cells += [fmt_pct(r.ema_val_top1)] if show_ema else []
        cells += [fmt_pct(r.paper_top1), fmt_pct(r.diff_vs_paper, signed=True)] if show_paper else []
        cells += [fmt_duration(r.wall_seconds), fmt_speed(r.images_per_second)]
        cells += [_eval_cell(r)] if show_eval else []
        lines.append("| " + " | ".join(_md(c) for c in cells) + " |")
    return lines


def markdown_groups(groups: Sequence[Group]) -> list[str]:
    lines = [
        "| group | runs | seeds | best top-1 mean ± std | best top-1 min–max | final top-1 mean ± std |",
        "|---|---|---|---|---|---|",
    ]
    for g in groups:
        mean, std, lo, hi = g.stats("best_val_top1")
        fmean, fstd, _, _ = g.stats("final_val_top1")
        seeds = ", ".join(str(r.seed) for r in g.rows)
        span = f"{lo:.2f}–{hi:.2f}" if lo is not None else "-"
        cells = [g.label, len(g.rows), seeds, fmt_mean_std(mean, std), span, fmt_mean_std(fmean, fstd)]
        lines.append("| " + " | ".join(_md(c) for c in cells) + " |")
    return lines


def _display_path(path: Path) -> str:
    with contextlib.suppress(ValueError):
        return str(path.resolve().relative_to(Path.cwd().resolve())) or "."
    return str(path)


def render_markdown(
    title: str,
    runs: Sequence[Run],
    rows: Sequence[Row],
    groups: Sequence[Group] | None,
    common: dict[str, str],
    plots: Sequence[str],
) -> str:
    parent = Path(os.path.commonpath([r.path.resolve() for r in runs]))
    if len(runs) == 1:
        parent = parent.parent
    out = [f"# {title}", ""]
    out.append(f"{len(runs)} run{'s' if len(runs) != 1 else ''} in `{_display_path(parent)}`.")
    if common:
        out.append("Overrides common to all runs: " + " ".join(f"`{k}={v}`" for k, v in common.items()) + ".")
    out += [
        "",
        "Top-1 in %. best: highest validation top-1 (and its epoch); final: the last epoch's; "
        + ("EMA: best top-1 of the EMA weights; " if any(r.ema_val_top1 is not None for r in rows) else "")
        + ("Δ paper = best − paper; " if any(r.paper_top1 is not None for r in rows) else "")
        + "wall: sum of the epochs' times; img/s: mean training images per second.",
        "",
        *markdown_table(rows),
    ]
    if groups:
        out += [
            "",
            "## Grouped by everything but the seed",
            "",
            "std: sample standard deviation over the group's runs.",
            "",
            *markdown_groups(groups),
        ]
    if plots:
        out += ["", "## Learning curves", ""]
        out += [f"![{Path(p).stem}]({p})" for p in plots]
    return "\n".join(out) + "\n"


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(round(value, 6))
    return value


def write_csv(path: Path, rows: Sequence[Row]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS)
        for r in rows:
            writer.writerow([_csv_value(getattr(r, c)) for c in CSV_COLUMNS])


# ----------------------------------------------------------------------------- plots
PANELS = (
    # file stem, title, y label, [(metrics key, line style, label)], y scale factor
    ("loss", "loss", "cross-entropy", [("train_loss", "--", "train"), ("val_loss", "-", "val")], 1.0),
    (
        "top1",
        "top-1 accuracy",
        "top-1 (%)",
        [("train_top1", "--", "train"), ("val_top1", "-", "val"), ("val_top1_ema", ":", "val EMA")],
        1.0,
    ),
    ("lr", "learning rate", "learning rate", [("lr", "-", "lr")], 1.0),
    (
        "firing_rate",
        "firing rate (validation)",
        "mean firing rate (%)",
        [("val_firing_rate", "-", "val")],
        100.0,
    ),
)


def short_name(name: str, limit: int = MAX_NAME) -> str:
    if len(name) <= limit:
        return name
    keep = limit - 1
    return name[: keep // 2] + "…" + name[-(keep - keep // 2) :]


def _colors(n: int) -> list[Any]:
    from matplotlib import colormaps

    if n <= 10:
        return [colormaps["tab10"](i) for i in range(n)]
    if n <= 20:
        return [colormaps["tab20"](i) for i in range(n)]
    cmap = colormaps["turbo"]
    return [cmap(0.05 + 0.9 * i / (n - 1)) for i in range(n)]


def _draw_panel(ax: Any, runs: Sequence[Run], colors: Sequence[Any], panel: tuple) -> bool:
    from matplotlib.ticker import MaxNLocator

    _, title, ylabel, curves, scale = panel
    drawn = False
    for run, color in zip(runs, colors, strict=True):
        for key, style, _ in curves:
            xs, ys = run.series(key)
            if not xs:
                continue
            few = len(xs) <= 30
            ax.plot(
                xs,
                [y * scale for y in ys],
                linestyle=style,
                color=color,
                linewidth=1.3,
                marker="o" if few else None,
                markersize=3 if len(xs) > 1 else 5,
            )
            drawn = True
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, alpha=0.3)
    if not drawn:
        ax.text(
            0.5, 0.5, "no data in these runs", transform=ax.transAxes, ha="center", va="center", color="0.5"
        )
    return drawn


def _legend(
    fig: Any, labels: Sequence[str], colors: Sequence[Any], styles: Sequence[tuple[str, str]]
) -> None:
    from matplotlib.lines import Line2D

    shown = list(zip(labels, colors, strict=True))[:MAX_LEGEND_RUNS]
    handles = [Line2D([], [], color=c, linewidth=2, label=short_name(label)) for label, c in shown]
    if len(labels) > MAX_LEGEND_RUNS:
        handles.append(Line2D([], [], color="none", label=f"… and {len(labels) - MAX_LEGEND_RUNS} more"))
    if len(styles) > 1:
        handles.append(Line2D([], [], color="none", label=""))
        handles += [Line2D([], [], color="0.3", linestyle=s, label=label) for s, label in styles]
    fig.legend(
        handles=handles,
        loc="outside right upper",
        fontsize=8 if len(handles) <= 20 else 6,
        ncol=1 if len(handles) <= 24 else 2,
        frameon=False,
    )


def write_plots(runs: Sequence[Run], out: Path, title: str, labels: Sequence[str] | None = None) -> list[str]:
    """``curves.png`` (all panels) and one PNG per panel; returns the file names. ``labels``
    name the runs in the legends (default: their names)."""
    from matplotlib.figure import Figure

    labels = list(labels) if labels is not None else [r.name for r in runs]
    colors = _colors(len(runs))
    names = []
    fig = Figure(figsize=PANEL_SIZE, dpi=DPI, layout="constrained")
    axes = fig.subplots(2, 2).ravel()
    used_styles: dict[str, str] = {}
    for ax, panel in zip(axes, PANELS, strict=True):
        _draw_panel(ax, runs, colors, panel)
        for key, style, label in panel[3]:
            if any(run.series(key)[0] for run in runs) and label in ("train", "val", "val EMA"):
                used_styles.setdefault(label, style)
    _legend(fig, labels, colors, [(s, label) for label, s in used_styles.items()])
    fig.suptitle(title)
    fig.savefig(out / "curves.png", dpi=DPI)
    names.append("curves.png")
    for panel in PANELS:
        fig = Figure(figsize=SINGLE_SIZE, dpi=DPI, layout="constrained")
        ax = fig.subplots()
        _draw_panel(ax, runs, colors, panel)
        styles = [(s, label) for key, s, label in panel[3] if any(run.series(key)[0] for run in runs)]
        _legend(fig, labels, colors, styles)
        fig.suptitle(title, fontsize=10)
        fig.savefig(out / f"{panel[0]}.png", dpi=DPI)
        names.append(f"{panel[0]}.png")
    return names


# ----------------------------------------------------------------------------- the command
@dataclass
class Report:
    runs: list[Run]
    rows: list[Row]
    groups: list[Group] | None
    common: dict[str, str]
    files: list[Path]


def build_report(
    paths: Sequence[str | Path],
    out: Path,
    sort: str = "run",
    title: str = "i2e-train results",
    plots: bool = True,
) -> Report:
    """Read the runs under ``paths`` and write results.md, results.csv and the plots to ``out``."""
    runs = load_runs(paths)
    common = common_overrides(runs) if len(runs) > 1 else {}
    rows_by_run = {run.name: summarize(run, common) for run in runs}
    rows = sort_rows([rows_by_run[r.name] for r in runs], sort)
    groups = seed_groups(runs, rows_by_run, common)
    if not any(len(g.rows) > 1 for g in groups):
        groups = None
    try:
        out.mkdir(parents=True, exist_ok=True)
        labels = [
            f"{r.name}: {rows_by_run[r.name].overrides}" if rows_by_run[r.name].overrides else r.name
            for r in runs
        ]
        plot_files = write_plots(runs, out, title, labels) if plots else []
        (out / "results.md").write_text(render_markdown(title, runs, rows, groups, common, plot_files))
        write_csv(out / "results.csv", rows)
    except OSError as e:
        raise UserError(f"cannot write to --out '{out}': {e.strerror or e}") from None
    files = [out / "results.md", out / "results.csv", *(out / p for p in plot_files)]
    return Report(runs, rows, groups, common, files)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "i2e-report: collect training runs into one results table (Markdown + CSV: best and final\n"
            "top-1, EMA, the paper's number, wall time, images/s; seeds grouped) with learning-curve plots\n"
            "(loss, top-1, lr, firing rate; all runs on one plot). A sweep folder is one argument."
        ),
        formatter_class=cli.HelpFormatter,
        epilog=cli.epilog(
            PROG,
            [
                "i2e-report runs/digits/2026-12-01_10-00-00",
                "i2e-report runs/orders --out report/orders     # a whole sweep",
                "i2e-report runs/ --sort best --title 'All runs'",
            ],
        ),
    )
    p.add_argument(
        "paths",
        nargs="+",
        metavar="PATH",
        help="run folders (with metrics.jsonl) or folders holding runs at any depth (e.g. a Hydra sweep folder)",
    )
    p.add_argument("--out", default="report", help="folder for results.md, results.csv and the PNG plots")
    p.add_argument(
        "--sort",
        default="run",
        choices=SORT_KEYS,
        help="row order: run (as found), best/final/ema/eval top-1 or paper_diff (highest first), "
        "wall (shortest first), speed (fastest first)",
    )
    p.add_argument("--title", default="i2e-train results", help="heading of results.md and the plots")
    p.add_argument("--no-plots", action="store_true", help="only the tables")
    return p


def run(argv: list[str]) -> Report:
    args = build_parser().parse_args(argv)
    report = build_report(args.paths, Path(args.out), args.sort, args.title, plots=not args.no_plots)
    print("\n".join(markdown_table(report.rows)))
    if report.groups:
        print()
        print("\n".join(markdown_groups(report.groups)))
    print(f"wrote {', '.join(str(f) for f in report.files)}", file=sys.stderr)
    return report


def main(argv: list[str] | None = None) -> None:
    with contextlib.suppress(BrokenPipeError):
        cli.guard(PROG)(run)(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    main()
