"""Experiment trackers (i2e_train/tracking.py), offline only: W&B in offline mode (its ``.wandb``
transaction log read back record by record) and MLflow with a local file store (read back with
MlflowClient). No network, no login."""

from __future__ import annotations

import importlib.util
import json
import math
import struct
import tomllib
from pathlib import Path

import pytest

from i2e_train import tracking
from i2e_train.errors import UserError
from i2e_train.tracking import MlflowTracker, WandbTracker, build_tracker, tracker_from_config

ROOT = Path(__file__).resolve().parents[2]
CONFIG = {
    "seed": 0,
    "run_dir": "runs/x",
    "paper": None,
    "optim": {"lr": 0.1, "momentum": 0.9},
    "trainer": {"epochs": 2, "batch_size": 8},
    "i2e": {"order": "gamma_alpha_beta"},
}


def metrics_row(epoch: int, **extra) -> dict:
    """A row as MetricsWriter writes it."""
    return {
        "epoch": epoch,
        "lr": 0.1 / epoch,
        "train_loss": 2.0 / epoch,
        "train_top1": 10.0 * epoch,
        "val_loss": 1.5 / epoch,
        "val_top1": 12.5 * epoch,
        "val_samples": 16,
        "skipped_steps": 0,
        "world_size": 1,
        "val_firing_rate": 0.12,
        "firing_rates": {"layer1.0.sn1": 0.25 * epoch, "sn": 0.001},
        **extra,
    }


EVAL_REPORT = {
    "checkpoint": "runs/x/checkpoints/best.pt",
    "epoch": 2,
    "model": "ms_resnet18",
    "dataset": "digits",
    "top1": 98.89,
    "top5": 100.0,
    "loss": 0.1247,
    "samples": 360,
    "per_class_accuracy": {"0": 100.0, "1": None, "dog's": 50.0},
    "mean_firing_rate": 0.2785,
    "energy": {"snn_energy_uj": 65.63, "assumptions": "45 nm"},
    "synapses": [{"name": "conv1", "macs": 10}],
}


# ----------------------------------------------------------------------------- pure helpers
def test_finite_numbers_flattens_and_drops_the_rest() -> None:
    row = metrics_row(1, val_loss=float("nan"), train_loss=float("inf"), note="x", flag=True)
    values = tracking.finite_numbers(row)
    assert values["firing_rates/layer1.0.sn1"] == 0.25 and values["firing_rates/sn"] == 0.001
    assert "firing_rates" not in values and "val_loss" not in values and "train_loss" not in values
    assert "note" not in values and "flag" not in values
    assert values["epoch"] == 1 and isinstance(values["world_size"], int)
    assert tracking.finite_numbers({"a": {"b": 1}}, "eval") == {"eval/a/b": 1}
    assert dict(tracking.flatten({"a": {"b": 1, "c": {"d": 2}}}, sep=".")) == {"a.b": 1, "a.c.d": 2}


def test_resolve_mlflow_uri(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.resolve_mlflow_uri(None) == (tmp_path / "mlruns").resolve().as_uri()
    assert tracking.resolve_mlflow_uri("store") == (tmp_path / "store").resolve().as_uri()
    assert tracking.resolve_mlflow_uri(f"file:{tmp_path}/a") == (tmp_path / "a").as_uri()
    assert tracking.resolve_mlflow_uri((tmp_path / "b").as_uri()) == (tmp_path / "b").as_uri()
    assert tracking.resolve_mlflow_uri("http://host:5000") == "http://host:5000"
    assert tracking.resolve_mlflow_uri("sqlite:///mlflow.db") == "sqlite:///mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://server")
    assert tracking.resolve_mlflow_uri(None) == "http://server"


def test_run_name(tmp_path: Path) -> None:
    assert tracking.run_name(tmp_path / "runs" / "digits" / "stamp", cwd=tmp_path) == "digits/stamp"
    assert tracking.run_name(tmp_path / "runs" / "orders" / "stamp" / "3", cwd=tmp_path) == "orders/stamp/3"
    assert tracking.run_name(tmp_path / "exp1", cwd=tmp_path) == "exp1"
    assert tracking.run_name(tmp_path / "a" / "b", cwd=tmp_path / "elsewhere") == "a/b"


def test_factory_choices_and_option_errors() -> None:
    assert build_tracker("tensorboard") is None
    assert tracker_from_config(None) is None
    assert tracker_from_config({"name": "tensorboard"}) is None
    with pytest.raises(
        UserError, match=r"^unknown logger 'comet'; choose one of: tensorboard, wandb, mlflow$"
    ):
        build_tracker("comet")
    with pytest.raises(
        UserError, match=r"logger=mlflow: .*project.*its settings: tracking_uri, experiment_name, tags"
    ):
        build_tracker("mlflow", project="x")
    with pytest.raises(UserError, match="logger.mode must be online, offline or disabled"):
        build_tracker("wandb", mode="sometimes")
    tracker = tracker_from_config(
        {"name": "mlflow", "tracking_uri": "file:mlruns-unused", "experiment_name": "e"}
    )
    assert isinstance(tracker, MlflowTracker) and tracker.experiment_name == "e"


@pytest.mark.parametrize("logger", ["wandb", "mlflow"])
def test_missing_package_is_one_clear_line(logger: str, monkeypatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == logger else real(name, *a)
    )
    message = f"logger={logger} needs the {logger} package: pip install 'i2e-train[{logger}]'"
    with pytest.raises(UserError) as info:
        build_tracker(logger)
    assert str(info.value) == message


def test_logger_config_group(monkeypatch) -> None:
    """configs/logger/*.yaml compose with the training config and map onto build_tracker."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from i2e_train.commands import cli

    folder = ROOT / "configs" / "logger"
    assert sorted(p.stem for p in folder.glob("*.yaml")) == ["mlflow", "tensorboard", "wandb"]
    for path in folder.glob("*.yaml"):
        for line in path.read_text().splitlines():
            if line.strip() and not line.startswith("#"):
                assert " # " in line, f"{path.name}: key without a comment: {line}"
    cli.register_resolvers()
    monkeypatch.delenv("WANDB_MODE", raising=False)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
            cfgs = {
                name: compose("train", overrides=[f"logger={name}"])
                for name in ("tensorboard", "wandb", "mlflow")
            }
            tagged = compose("train", overrides=["logger=wandb", "logger.tags=[a,b]"])
    finally:
        GlobalHydra.instance().clear()
    assert tracker_from_config(cfgs["tensorboard"].logger) is None
    wandb = tracker_from_config(cfgs["wandb"].logger)
    assert isinstance(wandb, WandbTracker)
    assert (wandb.project, wandb.entity, wandb.mode, wandb.tags) == ("i2e-train", None, "offline", [])
    monkeypatch.setenv("WANDB_MODE", "online")  # $WANDB_MODE sets the default mode
    wandb = tracker_from_config(tagged.logger)
    assert (wandb.mode, wandb.tags) == ("online", ["a", "b"])
    mlflow = tracker_from_config(cfgs["mlflow"].logger)
    assert isinstance(mlflow, MlflowTracker) and mlflow.experiment_name == "i2e-train"


def test_tracker_extras_and_the_report_script_are_declared() -> None:
    # (that every config group ships in the wheel: tests/test_layout.py)
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    extras = pyproject["project"]["optional-dependencies"]
    assert extras["wandb"] == ["wandb>=0.17"] and extras["mlflow"] == ["mlflow-skinny>=2.10"]
    assert set(extras["wandb"] + extras["mlflow"]) <= set(extras["dev"])
    assert pyproject["project"]["scripts"]["i2e-report"] == "i2e_train.commands.report:main"


def test_state_file_keeps_other_trackers(tmp_path: Path) -> None:
    tracking.write_state(tmp_path, "wandb", {"id": "a"})
    tracking.write_state(tmp_path, "mlflow", {"run_id": "b"})
    assert tracking.read_state(tmp_path) == {"wandb": {"id": "a"}, "mlflow": {"run_id": "b"}}
    (tmp_path / "tracking.json").write_text("{broken")
    assert tracking.read_state(tmp_path) == {}


# ----------------------------------------------------------------------------- MLflow
@pytest.fixture
def mlflow_env(monkeypatch):
    pytest.importorskip("mlflow")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    # absent during the test (the tracker sets it for file stores), absent again afterwards
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "")
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE")


def test_mlflow_file_store_config_metrics_summary_and_resume(tmp_path: Path, mlflow_env) -> None:
    from mlflow.tracking import MlflowClient

    run_dir = tmp_path / "runs" / "x"
    store = tmp_path / "mlruns"
    tracker = build_tracker(
        "mlflow", tracking_uri=str(store), experiment_name="i2e-test", tags={"team": "snn"}
    )
    tracker.start(run_dir, CONFIG, "x")
    tracker.log_metrics(metrics_row(1), step=1)
    tracker.log_metrics(metrics_row(2, val_loss=float("nan")), step=2)
    tracker.finish()
    run_id = tracker.run_id
    state = json.loads((run_dir / "tracking.json").read_text())["mlflow"]
    assert state["run_id"] == run_id and state["tracking_uri"] == store.as_uri()

    client = MlflowClient(store.as_uri())
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "x"
    assert client.get_experiment(run.info.experiment_id).name == "i2e-test"
    params = run.data.params
    assert params["optim.lr"] == "0.1" and params["trainer.epochs"] == "2" and params["seed"] == "0"
    assert params["i2e.order"] == "gamma_alpha_beta" and params["paper"] == "null"
    assert run.data.tags["team"] == "snn" and run.data.tags["run_dir"] == str(run_dir)

    def history(key: str) -> list[tuple[int, float]]:
        return [(m.step, m.value) for m in client.get_metric_history(run_id, key)]

    assert history("train_loss") == [(1, 2.0), (2, 1.0)]
    assert history("val_loss") == [(1, 1.5)]  # the NaN of epoch 2 is not logged
    assert history("firing_rates/layer1.0.sn1") == [(1, 0.25), (2, 0.5)]
    assert history("epoch") == []  # the step is the epoch

    # Resume (a resumed fit with a longer schedule): the same run, new epochs appended.
    resumed = build_tracker("mlflow", tracking_uri=str(store), experiment_name="i2e-test")
    resumed.start(run_dir, {**CONFIG, "trainer": {"epochs": 3, "batch_size": 8}, "extra": 1}, "x")
    assert resumed.run_id == run_id
    resumed.log_metrics(metrics_row(3), step=3)
    resumed.log_summary(EVAL_REPORT)
    resumed.finish()
    run = client.get_run(run_id)
    assert run.data.params["trainer.epochs"] == "2"  # params are write-once in MLflow
    assert run.data.params["extra"] == "1"
    assert run.data.tags["config_changed_on_resume"] == "trainer.epochs"
    assert history("train_loss") == [(1, 2.0), (2, 1.0), (3, 2.0 / 3)]
    assert run.data.metrics["eval/top1"] == 98.89 and run.data.metrics["eval/samples"] == 360
    assert run.data.metrics["eval/per_class_accuracy/0"] == 100.0
    assert run.data.metrics["eval/energy/snn_energy_uj"] == 65.63
    assert "eval/per_class_accuracy/1" not in run.data.metrics
    assert run.data.metrics["eval/per_class_accuracy/dog_s"] == 50.0  # a valid MLflow name
    assert [m.step for m in client.get_metric_history(run_id, "eval/top1")] == [2]
    assert run.data.tags["eval.model"] == "ms_resnet18"
    artifacts = Path(client.download_artifacts(run_id, "", str(tmp_path / "artifacts")))
    assert json.loads((artifacts / "eval.json").read_text()) == EVAL_REPORT
    assert json.loads((artifacts / "config.json").read_text())["trainer"]["epochs"] == 3

    # A fresh fit in the same folder (resume=False) starts a new run and records it.
    fresh = build_tracker("mlflow", tracking_uri=str(store), experiment_name="i2e-test")
    fresh.start(run_dir, CONFIG, "x", resume=False)
    fresh.finish("failed")
    assert fresh.run_id != run_id
    assert json.loads((run_dir / "tracking.json").read_text())["mlflow"]["run_id"] == fresh.run_id
    assert client.get_run(fresh.run_id).info.status == "FAILED"


def test_mlflow_unreachable_store_is_one_line(tmp_path: Path, mlflow_env) -> None:
    (tmp_path / "a_file").write_text("")
    tracker = build_tracker("mlflow", tracking_uri=str(tmp_path / "a_file" / "mlruns"))
    with pytest.raises(UserError, match=r"^logger=mlflow could not start a run at 'file://.*': "):
        tracker.start(tmp_path / "run", CONFIG, "x")


# ----------------------------------------------------------------------------- W&B (offline)
def read_wandb_log(path: Path) -> list:
    """The records of a ``.wandb`` file (W&B's transaction log: LevelDB-style 32 KiB blocks of
    checksummed chunks, after a 7-byte header), parsed as ``wandb_internal_pb2.Record``."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    block, pos, records, pending = 32768, 7, [], b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0 and length == 0:  # zero padding up to the end of the block
            pos += left
            continue
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 1:  # FULL
            records.append(chunk)
        elif kind == 2:  # FIRST
            pending = chunk
        elif kind == 3:  # MIDDLE
            pending += chunk
        elif kind == 4:  # LAST
            records.append(pending + chunk)
    parsed = []
    for raw in records:
        record = pb.Record()
        record.ParseFromString(raw)
        parsed.append(record)
    return parsed


def wandb_contents(offline_dir: Path) -> dict:
    (log_file,) = offline_dir.glob("run-*.wandb")
    out: dict = {"config": {}, "history": [], "summary": {}, "run": None}
    for record in read_wandb_log(log_file):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            out["run"] = record.run
        elif kind == "config":
            out["config"].update({item.key: json.loads(item.value_json) for item in record.config.update})
        elif kind == "history":
            out["history"].append(
                {
                    item.key or "/".join(item.nested_key): json.loads(item.value_json)
                    for item in record.history.item
                }
            )
        elif kind == "summary":
            out["summary"].update(
                {
                    item.key or "/".join(item.nested_key): json.loads(item.value_json)
                    for item in record.summary.update
                }
            )
    return out


@pytest.mark.slow
def test_wandb_offline_config_metrics_summary_and_resume(tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("wandb")
    for key in ("WANDB_API_KEY", "WANDB_ENTITY", "WANDB_PROJECT", "WANDB_RUN_ID", "WANDB_RESUME"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    for key in ("WANDB_DIR", "WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(key, str(tmp_path / "wandb_home" / key.lower()))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONSOLE", "off")
    run_dir = tmp_path / "runs" / "x"

    tracker = build_tracker("wandb", project="i2e-test", mode="offline", tags=["r18", "tiny"])
    tracker.start(run_dir, CONFIG, "x")
    run_id = tracker.run_id
    tracker.log_metrics(metrics_row(1), step=1)
    tracker.log_metrics(metrics_row(2, val_loss=float("nan")), step=2)
    tracker.finish()
    assert json.loads((run_dir / "tracking.json").read_text())["wandb"] == {
        "id": run_id,
        "project": "i2e-test",
        "entity": None,
        "mode": "offline",
    }
    # i2e-eval of the run's checkpoint continues the same run and adds the report.
    resumed = build_tracker("wandb", project="i2e-test", mode="offline")
    resumed.start(run_dir, {**CONFIG, "trainer": {"epochs": 3, "batch_size": 8}}, "x")
    assert resumed.run_id == run_id
    resumed.log_metrics(metrics_row(3), step=3)
    resumed.log_summary(EVAL_REPORT, prefix="eval/best")  # as i2e-eval of checkpoints/best.pt
    resumed.finish()

    first, second = sorted((run_dir / "wandb").glob(f"offline-run-*-{run_id}"))
    one = wandb_contents(first)
    assert one["run"].run_id == run_id and one["run"].project == "i2e-test"
    assert list(one["run"].tags) == ["r18", "tiny"] and one["run"].display_name == "x"
    assert one["config"]["optim"] == {"lr": 0.1, "momentum": 0.9}
    assert one["config"]["trainer"] == {"epochs": 2, "batch_size": 8} and one["config"]["paper"] is None
    epochs = [h for h in one["history"] if "epoch" in h]
    assert [h["epoch"] for h in epochs] == [1, 2]
    assert epochs[0]["train_loss"] == 2.0 and epochs[1]["firing_rates/layer1.0.sn1"] == 0.5
    assert "val_loss" in epochs[0] and "val_loss" not in epochs[1]  # NaN dropped
    assert "firing_rates" not in epochs[0]

    two = wandb_contents(second)
    assert two["run"].run_id == run_id
    assert two["config"]["trainer"]["epochs"] == 3
    assert [h["epoch"] for h in two["history"] if "epoch" in h] == [3]
    assert two["summary"]["eval/best/top1"] == 98.89
    assert two["summary"]["eval/best/per_class_accuracy/0"] == 100.0
    assert two["summary"]["eval/best/model"] == "ms_resnet18"
    assert json.loads((second / "files" / "eval" / "best.json").read_text()) == EVAL_REPORT
    assert not math.isnan(two["summary"]["eval/best/loss"])

    # mode=disabled: the calls work and nothing is written.
    quiet = build_tracker("wandb", mode="disabled")
    quiet.start(tmp_path / "quiet", CONFIG, "quiet")
    quiet.log_metrics(metrics_row(1), step=1)
    quiet.log_summary(EVAL_REPORT)
    quiet.finish()
    assert list((tmp_path / "quiet").iterdir()) == []


@pytest.mark.slow
def test_a_training_run_and_its_evaluation_reach_mlflow(tmp_path, monkeypatch) -> None:
    """logger=mlflow wired through i2e-train and i2e-eval: the config, every metrics row and the eval report."""
    from conftest import SMOKE, run_cli

    store = tmp_path / "mlruns"
    env = {"MLFLOW_TRACKING_URI": f"file:{store}"}
    res = run_cli(
        "train",
        "run_dir=run",
        *SMOKE,
        "trainer.epochs=2",
        "dataset.image_size=16",
        "logger=mlflow",
        cwd=tmp_path,
        env=env,
    )
    assert res.returncode == 0, res.output
    ev = run_cli(
        "evaluate",
        "checkpoint=run/checkpoints/last.pt",
        "trainer.device=cpu",
        "trainer.limit_val_batches=2",
        cwd=tmp_path,
        env=env,
    )
    assert ev.returncode == 0, ev.output
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"file:{store}")
    (experiment,) = [e for e in client.search_experiments() if e.name == "i2e-train"]
    (run,) = client.search_runs([experiment.experiment_id])
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_top1")] == [1, 2]
    assert run.data.params["trainer.epochs"] == "2"
    assert "eval/last/top1" in run.data.metrics
