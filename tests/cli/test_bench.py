"""i2e-bench end to end on the CPU, the paper baseline it compares against, and the speed
options through the real training CLI."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import SMOKE

from i2e_train.commands import bench
from i2e_train.events.i2e import fixed_pairs, i2e_convert


def test_paper_baseline_computes_the_same_events_on_cpu() -> None:
    # The baseline must be the same conversion, or the speed ratio means nothing. On a CPU its
    # float32 convolution sums +V_to and -V_from exactly as one subtraction, so it is exact.
    x = bench.random_images(3, 40, torch.device("cpu"))
    for order in ("gamma_alpha_beta", "alpha_beta_gamma"):
        pairs = fixed_pairs(order)
        ours = i2e_convert(x, 0.12, pairs=pairs, backend="torch")
        paper = bench.paper_conversion(x, 0.12, bench.paper_weights(pairs, torch.device("cpu")))
        assert paper.shape == ours.shape == (8, 3, 2, 40, 40)
        assert 0.01 < ours.mean() < 0.5
        assert (paper != ours).float().mean() < 1e-3


def test_bandwidth_accounting() -> None:
    peak = {"spec_gbps": 1000.0, "copy_gbps": 800.0}
    row = bench._conv_row(224, 256, "i2e-train", "triton", "bfloat16", 0.001, 0.01, peak)
    pixels = 256 * 224 * 224
    assert row["bytes_must_move"] == 3 * pixels + 16 * 2 * pixels
    assert row["speedup_vs_paper"] == pytest.approx(10)
    assert row["fraction_of_spec_bandwidth"] == pytest.approx(row["bytes_must_move"] / 0.001 / 1e12)
    packed = bench._conv_row(224, 256, "i2e-train", "triton", "packed", 0.001, 0.01, peak)
    assert packed["bytes_must_move"] == 3 * pixels + 2 * pixels


@pytest.mark.slow
def test_bench_quick_on_cpu_writes_every_part(cli, tmp_path) -> None:
    res = cli("bench", "--quick", "--device", "cpu", "--out", "bench.json", timeout=900)
    assert res.returncode == 0, res.output
    for title in ("I2E conversion", "Training step", "Data path"):
        assert title in res.stdout
    result = json.loads((tmp_path / "bench.json").read_text())
    meta = result["meta"]
    assert meta["device"] == "cpu" and meta["quick"] is True and "i2e-bench --quick" in meta["command"]
    conv = result["conversion"]
    assert {r["dtype"] for r in conv if r["impl"] == "i2e-train"} == set(bench.DTYPES)
    assert {(r["size"], r["batch"]) for r in conv} == {(32, 1), (32, 4)}
    for r in conv:
        assert r["images_per_s"] > 0 and r["speedup_vs_paper"] > 0 and r["bytes_must_move"] > 0
    assert all(r["event_mismatch_vs_exact"] < 1e-3 for r in conv if r["impl"] == "paper conv2d")
    train = result["train"]
    assert {r["channels_last"] for r in train} == {False, True}
    for r in train:
        assert r["images_per_s"] > 0 and r["T"] == 8
        assert r["lif_kernel"].startswith("torch-reference") and r["lif_state_dtype"] == "float32"
    paths = {(r["data"], r["path"]) for r in result["data"]}
    assert len(paths) == 4 and all(r["images_per_s"] > 0 for r in result["data"])


@pytest.mark.slow
def test_bench_user_errors_are_one_line(cli, tmp_path) -> None:
    res = cli("bench", "--part", "conversion", "--out", "missing/dir/b.json", "--device", "cpu")
    assert res.returncode == 2 and "Traceback" not in res.output
    assert res.stderr.strip().splitlines()[-1].startswith("i2e-bench: error: --out: folder 'missing/dir'")
    res = cli("bench", "--dtypes", "float64")
    assert res.returncode == 2 and "unknown value 'float64'" in res.stderr
    if not torch.cuda.is_available():
        res = cli("bench", "--device", "cuda", "--part", "conversion")
        assert res.returncode == 2 and "no CUDA GPU" in res.stderr and "Traceback" not in res.output


@pytest.mark.slow
def test_training_cli_with_speed_options(cli, tmp_path) -> None:
    res = cli(
        "train",
        "run_dir=run",
        *SMOKE,
        "trainer.precision=bf16",
        "trainer.channels_last=true",
        "trainer.memopt=1",
        "trainer.device_augment=baseline2",
        "trainer.device_augment_size=32",
        "dataset.crop_padding=0",
        "i2e.backend=torch",
    )
    assert res.returncode == 0, res.output
    log = (tmp_path / "run" / "train.log").read_text()
    assert "LIF kernel: torch-reference (CPU)" in log
    assert "channels_last True" in log and "memopt 1" in log and "I2E backend torch" in log
    assert "DeviceAugment(size=32, padding=4, crop=True, flip=True)" in log
    assert "memopt level 1: 8 residual blocks checkpointed" in log
    assert (tmp_path / "run" / "metrics.jsonl").read_text().count("\n") == 1
