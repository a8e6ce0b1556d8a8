"""1-2 batch runs of the real ``i2e-train`` on every dataset kind, written in its on-disk format;
unreadable files both ways; fine-tuning with a classifier swap."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import SMOKE
from disk_formats import (
    digit_events,
    write_cifar10,
    write_cifar10_dvs,
    write_i2e_npz,
    write_i2e_parquet,
    write_image_folders,
    write_mnist,
)

from i2e_train.training import checkpoint


def _smoke(**changes: object) -> list[str]:
    """SMOKE settings with some replaced (Hydra rejects the same key given twice)."""
    args = [a for a in SMOKE if a.split("=")[0] not in changes]
    return args + [f"{k}={v}" for k, v in changes.items()]


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _ok(res) -> None:
    assert res.returncode == 0, res.output[-4000:]


@pytest.mark.slow
def test_image_folder_with_extras_skipping_a_corrupt_file_then_transfer_to_digits(cli, tmp_path):
    written = write_image_folders(tmp_path / "photos", classes=3, per_class=(4, 2))
    bad = written["train"][5]
    bad.write_bytes(bad.read_bytes()[:200])
    res = cli(
        "train",
        "run_dir=src",
        "dataset=image_folder",
        f"dataset.root={tmp_path / 'photos'}",
        "dataset.num_classes=3",
        "dataset.image_size=32",
        "dataset.skip_corrupt=true",
        "extras.mixup_alpha=0.8",
        "extras.cutmix_alpha=1.0",
        "extras.t_train=4",
        *_smoke(),
    )
    _ok(res)
    row = _rows(tmp_path / "src")[0]
    # 12 training images in batches of 8: every one is read, the truncated one replaced once.
    assert row["skipped_samples"] == 1 and row["train_samples"] == 12 and row["val_samples"] == 6
    assert str(bad) in res.stderr and "skipping unreadable train sample" in res.stderr
    src = checkpoint.load_checkpoint(tmp_path / "src" / "checkpoints" / "last.pt")
    assert src["state_dict"]["fc.weight"].shape == (3, 512)

    # Fine-tune the 3-class network on the 10 digits: the classifier is replaced, the rest loaded.
    res = cli("train", "run_dir=dst", "seed=1", "init_from=src/checkpoints/last.pt", *_smoke())
    _ok(res)
    assert "classifier replaced" in (tmp_path / "dst" / "train.log").read_text()
    dst = checkpoint.load_checkpoint(tmp_path / "dst" / "checkpoints" / "last.pt")["state_dict"]
    assert dst["fc.weight"].shape == (10, 512)
    a, b = src["state_dict"]["layer4.1.conv2.weight"].flatten(), dst["layer4.1.conv2.weight"].flatten()
    # Two SGD steps move the loaded weights a little; a fresh seed-1 init would be uncorrelated.
    assert torch.nn.functional.cosine_similarity(a, b, dim=0) > 0.95


@pytest.mark.slow
def test_unreadable_image_stops_the_run_with_one_line(cli, tmp_path):
    written = write_image_folders(tmp_path / "photos", classes=2, per_class=(4, 2))
    bad = written["train"][2]
    bad.write_bytes(b"this is not a JPEG")
    res = cli(
        "train",
        "dataset=image_folder",
        f"dataset.root={tmp_path / 'photos'}",
        "dataset.num_classes=2",
        "dataset.image_size=32",
        *_smoke(**{"trainer.num_workers": 1}),
    )
    assert res.returncode == 2 and "Traceback" not in res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("i2e-train: error")]
    assert (
        len(lines) == 1
        and f"cannot read image '{bad}'" in lines[0]
        and "dataset.skip_corrupt=true" in lines[0]
    )


@pytest.mark.slow
def test_cifar10_and_mnist_runs(cli, tmp_path):
    write_cifar10(tmp_path / "cifar")
    res = cli(
        "train",
        "run_dir=c10",
        "dataset=cifar10",
        f"dataset.root={tmp_path / 'cifar'}",
        "dataset.image_size=32",
        "dataset.verify_md5=false",  # our pickles are not the official files (see test_datasets.py)
        "dataset.download=false",
        "trainer.device_augment=baseline2",  # Baseline-II on the device batch, then mixup
        "extras.mixup_alpha=0.2",
        *_smoke(),
    )
    _ok(res)
    row = _rows(tmp_path / "c10")[0]
    assert row["train_samples"] == 16 and row["val_samples"] == 10
    assert "I2E ratio 0.07" in (tmp_path / "c10" / "train.log").read_text()

    write_mnist(tmp_path / "mnist")
    res = cli(
        "train",
        "run_dir=mn",
        "experiment=mnist_baseline2",
        f"dataset.root={tmp_path / 'mnist'}",
        "dataset.download=false",
        *_smoke(**{"trainer.num_workers": 0}),
    )
    _ok(res)
    assert _rows(tmp_path / "mn")[0]["val_samples"] == 12
    assert "I2E ratio 0.1" in (tmp_path / "mn" / "train.log").read_text()


@pytest.mark.slow
def test_cifar10_dvs_run(cli, tmp_path):
    write_cifar10_dvs(tmp_path / "dvs", per_class=10)
    res = cli(
        "train",
        "run_dir=dvs",
        "experiment=cifar10dvs_baseline",
        f"dataset.root={tmp_path / 'dvs'}",
        "dataset.verify_md5=false",  # our archives are not the official ones (see test_datasets.py)
        "dataset.download=false",
        *_smoke(**{"trainer.num_workers": 0, "trainer.batch_size": 4, "trainer.limit_train_batches": 1}),
    )
    _ok(res)
    row = _rows(tmp_path / "dvs")[0]
    assert row["train_samples"] == 4 and row["val_samples"] == 8  # 2 validation batches of 4
    log = (tmp_path / "dvs" / "train.log").read_text()
    assert "cifar10_dvs (90 train / 10 val, 10 classes), stored events" in log


@pytest.mark.slow
def test_preconverted_parquet_and_npz_runs(cli, tmp_path):
    events, labels = digit_events(40)
    write_i2e_parquet(tmp_path / "pq", events, labels, shards=2, row_group_size=8, val=10)
    res = cli(
        "train",
        "run_dir=pq",
        "experiment=i2e_cifar10",
        f"dataset.root={tmp_path / 'pq'}",
        "dataset.image_size=32",
        *_smoke(**{"trainer.num_workers": 2}),
    )
    _ok(res)
    row = _rows(tmp_path / "pq")[0]
    assert row["train_samples"] == 16 and row["val_samples"] == 10
    assert "stored events" in (tmp_path / "pq" / "train.log").read_text()

    write_i2e_npz(tmp_path / "npz", events, labels, val=10)
    res = cli(
        "train",
        "run_dir=npz",
        "dataset=i2e_npz",
        f"dataset.root={tmp_path / 'npz'}",
        "dataset.num_classes=10",
        *_smoke(),
    )
    _ok(res)
    assert _rows(tmp_path / "npz")[0]["val_samples"] == 10
