"""The console scripts end to end: a short real training run, evaluation of its checkpoint, and
one-line errors for every kind of user mistake."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from conftest import SMOKE

from i2e_train.commands.cli import group_options, precheck
from i2e_train.errors import UserError
from i2e_train.models import build_model
from i2e_train.training import checkpoint

REQUIRED_METRICS = {
    "epoch",
    "lr",
    "train_loss",
    "train_top1",
    "val_loss",
    "val_top1",
    "val_top5",
    "val_samples",
    "epoch_seconds",
    "train_images_per_second",
}


def _one_line_error(result, *needles: str) -> str:
    assert result.returncode != 0, result.output
    assert "Traceback" not in result.output, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.mark.slow
def test_train_then_eval_through_the_cli(cli, tmp_path):
    res = cli("train", "run_dir=run", *SMOKE)
    assert res.returncode == 0, res.output
    run = tmp_path / "run"
    assert (run / "checkpoints" / "last.pt").is_file() and (run / "checkpoints" / "best.pt").is_file()
    assert (run / ".hydra" / "config.yaml").is_file() and (run / "train.log").is_file()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0].keys() >= REQUIRED_METRICS
    assert rows[0]["epoch"] == 1 and rows[0]["val_samples"] == 16  # 2 batches of 8
    ckpt = checkpoint.load_checkpoint(run / "checkpoints" / "last.pt")
    assert ckpt["epoch"] == 1 and ckpt["config"]["dataset"]["name"] == "digits"
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in ckpt["state_dict"])
    assert {"optimizer", "scheduler", "rng", "best_acc1"} <= ckpt.keys()

    res = cli(
        "evaluate",
        "checkpoint=run/checkpoints/best.pt",
        "trainer.limit_val_batches=3",
        "trainer.batch_size=8",
    )
    assert res.returncode == 0, res.output
    report = json.loads((run / "eval" / "best" / "eval.json").read_text())
    assert report["samples"] == 24 and report["model"] == "ms_resnet18"
    assert set(report["per_class_accuracy"]) == {str(i) for i in range(10)}
    assert "top-1" in res.stderr and "per-class" in res.stderr
    # the full validation set: 360 digits
    res = cli("evaluate", "checkpoint=run/checkpoints/best.pt", "out_dir=full", "trainer.batch_size=128")
    assert res.returncode == 0, res.output
    full = json.loads((tmp_path / "full" / "eval.json").read_text())
    assert full["samples"] == 360
    assert sum(full["per_class_samples"].values()) == 360


@pytest.mark.slow
def test_eval_of_a_paper_format_checkpoint(cli, tmp_path):
    torch.manual_seed(0)
    model = build_model("ms_resnet34", 10)
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    state["module.i2e.weight"] = torch.zeros(8, 1, 3, 3)
    torch.save({"state_dict": state, "epoch": 99, "best_acc1": torch.tensor(60.5)}, tmp_path / "paper.pth")
    res = cli(
        "evaluate",
        "checkpoint=paper.pth",
        "model=ms_resnet34",
        "dataset=digits",
        "trainer.limit_val_batches=1",
        "trainer.batch_size=8",
        "trainer.device=cpu",
    )
    assert res.returncode == 0, res.output
    report = json.loads((tmp_path / "paper_eval" / "eval.json").read_text())
    assert report["model"] == "ms_resnet34" and report["samples"] == 8 and report["epoch"] == 99
    # the wrong architecture is a clear one-line error, not a traceback
    res = cli("evaluate", "checkpoint=paper.pth", "trainer.limit_val_batches=1")
    _one_line_error(res, "i2e-eval: error:", "does not fit model", "model.name")


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["experiment=nope"], ["unknown experiment 'nope'"]),
        (["model=resnet50"], ["unknown model 'resnet50'", "ms_resnet18"]),
        (["dataset=nope"], ["unknown dataset 'nope'", "digits"]),
        (["model.name=resnet50"], ["unknown model 'resnet50'", "ms_resnet34"]),
        (["trainer.epoch=3"], ["unknown config key 'trainer.epoch'", "did you mean 'trainer.epochs'"]),
        (["trainer.epochs=abc"], ["trainer.epochs must be an integer"]),
        (["trainer.precision=fp8"], ["trainer.precision must be one of"]),
        (["trainer.device=tpu"], ["trainer.device must be auto, cpu, cuda or cuda:N"]),
        (["resume=missing.pt"], ["checkpoint 'missing.pt' does not exist"]),
        (["init_from=missing.pt"], ["checkpoint 'missing.pt' does not exist"]),
        (["i2e.order=zigzag"], ["unknown I2E order", "gamma_alpha_beta"]),
        (["epochs"], ["'epochs' is not a key=value setting"]),
        # a wrong key after a dataset whose root is still ??? is blamed on itself, not on dataset.root
        (
            ["dataset=image_folder", "dataset.root=/data", "foo.bar=1"],
            ["unknown config key 'foo.bar'; top-level keys are:"],
        ),
        (
            ["dataset=image_folder", "dataset.rot=/data"],
            ["unknown config key 'dataset.rot'", "'dataset.root'?"],
        ),
        # a value the shell split at a space, and letters Hydra's lexer does not take unquoted
        (
            ["dataset=image_folder", "dataset.root=/data/my", "photos"],
            [
                "'photos' is not a key=value setting",
                "quote the whole setting: 'dataset.root=\"/data/my photos\"'",
            ],
        ),
        (
            ["dataset=image_folder", "dataset.root=/données/x"],
            ["cannot parse the setting 'dataset.root=/données/x'", "e.g. 'dataset.root=\"/données/x\"'"],
        ),
    ],
)
def test_train_user_errors_are_one_line(cli, args, needles):
    res = cli("train", "run_dir=run", *SMOKE, *args)
    _one_line_error(res, "i2e-train: error:", *needles)


def test_eval_user_errors_are_one_line(cli, tmp_path):
    _one_line_error(cli("evaluate"), "missing required setting 'checkpoint'")
    _one_line_error(cli("evaluate", "checkpoint=nope.pt"), "checkpoint 'nope.pt' does not exist")
    (tmp_path / "junk.pt").write_bytes(b"\x00" * 100)
    _one_line_error(cli("evaluate", "checkpoint=junk.pt"), "cannot be read")


def test_cfg_job_prints_composed_config(cli):
    res = cli("train", "--cfg", "job", "model=ms_resnet34", "trainer.epochs=7")
    assert res.returncode == 0, res.output
    assert "name: ms_resnet34" in res.stdout and "epochs: 7" in res.stdout


def test_console_scripts_are_installed(tmp_path):
    import subprocess

    bindir = Path(sys.executable).parent
    for script in ("i2e-train", "i2e-eval"):
        exe = bindir / script
        assert exe.exists(), f"{script} not installed next to {sys.executable}"
        res = subprocess.run(
            [str(exe), "--cfg", "job"] + (["checkpoint=x.pt"] if script == "i2e-eval" else []),
            capture_output=True,
            text=True,
            cwd=tmp_path,
            timeout=120,
        )
        assert res.returncode == 0, res.stderr
        assert "trainer:" in res.stdout


def _compose(option_args: list[str]):
    """Compose like the CLI does, filling required (???) settings with placeholders."""
    args = list(option_args)
    for _ in range(5):
        try:
            return precheck("train", args)
        except UserError as e:
            if "missing required setting" not in str(e):
                raise
            key = str(e).split("'")[1]
            args.append(f"{key}={'3' if key.endswith('num_classes') else 'placeholder'}")
    raise AssertionError(f"could not compose {option_args}")


@pytest.mark.parametrize("group", ["dataset", "model", "i2e", "optim", "sched", "trainer", "experiment"])
def test_every_config_option_composes(group):
    options = group_options(group)
    if group != "experiment":
        assert options, f"config group {group} is empty"
    for option in options:
        cfg = _compose([f"{group}={option}"])
        assert cfg is not None
        if group == "model":
            assert cfg.model.name == option
        if group == "dataset":
            assert cfg.dataset.name and "ratio" not in cfg.dataset


def test_precheck_raises_user_error_for_unknown_group_option():
    with pytest.raises(UserError, match="unknown optim 'adamw'; choose one of: sgd"):
        precheck("train", ["optim=adamw"])


@pytest.mark.slow
def test_a_file_given_as_dataset_root(cli, tmp_path):
    (tmp_path / "photos.txt").write_text("a list of photos, not the photos")
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"\x1f\x8b")
    _one_line_error(
        cli("train", "dataset=image_folder", "dataset.root=photos.txt", *SMOKE),
        "i2e-train: error: dataset.root 'photos.txt' is a file, not a folder; point dataset.root at the folder",
    )
    _one_line_error(
        cli("convert", "dataset=cifar10", "dataset.root=cifar-10-python.tar.gz", "output=o"),
        "i2e-convert: error: dataset.root 'cifar-10-python.tar.gz' is a file, not a folder; extract the archive",
    )


@pytest.mark.slow
def test_image_folder_needs_no_class_count(cli, tmp_path):
    from disk_formats import write_image_folders

    write_image_folders(tmp_path / "photos", classes=3, per_class=(4, 2))
    args = ["dataset=image_folder", f"dataset.root={tmp_path / 'photos'}", "dataset.image_size=32", *SMOKE]
    res = cli("train", "run_dir=run", *args)
    assert res.returncode == 0, res.output[-3000:]
    assert "3 classes" in (tmp_path / "run" / "train.log").read_text()
    ckpt = checkpoint.load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert (
        ckpt["state_dict"]["fc.weight"].shape == (3, 512) and ckpt["config"]["dataset"]["num_classes"] is None
    )
    _one_line_error(
        cli("train", "run_dir=run2", "dataset.num_classes=5", *args),
        "dataset.num_classes=5 but dataset 'image_folder' has 3 classes; set dataset.num_classes=3",
    )
