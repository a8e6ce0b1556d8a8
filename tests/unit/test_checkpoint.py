"""Checkpoints: round trip, atomic writes, the paper's released format, clear errors."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from conftest import SMOKE

from i2e_train.errors import CheckpointError
from i2e_train.files import TMP_MARK, remove_stale_temporaries
from i2e_train.models import build_model
from i2e_train.training import checkpoint


def _model(classes: int = 10, seed: int = 0):
    torch.manual_seed(seed)
    return build_model("ms_resnet18", classes)


def _same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_round_trip_keeps_everything(tmp_path):
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.ones(8, 2, 2, 32, 32)).sum().backward()
    opt.step()
    state = {
        "state_dict": model.state_dict(),
        "optimizer": opt.state_dict(),
        "epoch": 3,
        "best_acc1": 91.5,
        "config": {"model": {"name": "ms_resnet18"}},
        "rng": checkpoint.capture_rng_state(),
    }
    path = checkpoint.save_checkpoint(state, tmp_path / "ck" / "last.pt")
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pt"]  # no temp file left behind
    loaded = checkpoint.load_checkpoint(path)
    assert (
        loaded["epoch"] == 3
        and loaded["best_acc1"] == 91.5
        and loaded["config"]["model"]["name"] == "ms_resnet18"
    )
    fresh = _model(seed=1)
    assert not _same_weights(fresh, model)
    checkpoint.load_weights(fresh, path)
    assert _same_weights(fresh, model)
    opt2 = torch.optim.SGD(fresh.parameters(), lr=0.1, momentum=0.9)
    opt2.load_state_dict(loaded["optimizer"])
    buf = opt.state_dict()["state"][0]["momentum_buffer"]
    assert torch.equal(opt2.state_dict()["state"][0]["momentum_buffer"], buf)


@pytest.mark.parametrize("best", [torch.tensor(57.97), np.float64(57.97)])
def test_loads_paper_released_format(tmp_path, best):
    """The paper's files: DDP 'module.' prefix, an 'i2e.weight' conv kernel, NumPy/tensor metrics."""
    model = _model(1000)
    paper = {f"module.{k}": v for k, v in model.state_dict().items()}
    paper["module.i2e.weight"] = torch.randn(8, 1, 3, 3)
    path = tmp_path / "i2e_imagenet_r18.pth"
    torch.save({"state_dict": paper, "epoch": 127, "best_acc1": best, "arch": "ms_resnet18"}, path)
    fresh = _model(1000, seed=3)
    info = checkpoint.load_weights(fresh, path)
    assert _same_weights(fresh, model)
    assert info["epoch"] == 127 and info["skipped"] == []


def test_head_mismatch_is_an_error_unless_replacing(tmp_path):
    src = _model(1000)
    path = checkpoint.save_checkpoint({"state_dict": src.state_dict()}, tmp_path / "in1k.pt")
    target = _model(10, seed=5)
    head_before = target.fc.weight.clone()
    with pytest.raises(CheckpointError, match="1000 classes but the model has 10"):
        checkpoint.load_weights(target, path)
    info = checkpoint.load_weights(target, path, replace_head=True)
    assert info["skipped"] == ["fc.weight", "fc.bias"]
    assert torch.equal(target.fc.weight, head_before)
    assert torch.equal(target.conv1.weight, src.conv1.weight)
    assert torch.equal(target.layer4[1].bn2.running_var, src.layer4[1].bn2.running_var)


def test_wrong_architecture_is_named(tmp_path):
    path = checkpoint.save_checkpoint(
        {"state_dict": build_model("ms_resnet34", 10).state_dict()}, tmp_path / "r34.pt"
    )
    with pytest.raises(CheckpointError, match="does not fit model.*unexpected.*check model.name"):
        checkpoint.load_weights(_model(), path)


def test_missing_truncated_and_foreign_files(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        checkpoint.load_checkpoint(tmp_path / "nope.pt")
    good = checkpoint.save_checkpoint({"state_dict": _model().state_dict()}, tmp_path / "good.pt")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated, corrupt or not a PyTorch checkpoint"):
        checkpoint.load_checkpoint(truncated)
    text = tmp_path / "notes.pt"
    text.write_text("hello")
    with pytest.raises(CheckpointError, match="cannot be read"):
        checkpoint.load_checkpoint(text)
    listing = tmp_path / "list.pt"
    torch.save([1, 2, 3], listing)
    with pytest.raises(CheckpointError, match="holds a list"):
        checkpoint.load_checkpoint(listing)
    no_weights = tmp_path / "nw.pt"
    torch.save({"epoch": 3, "acc": 1.0}, no_weights)
    with pytest.raises(CheckpointError, match="no 'state_dict'"):
        checkpoint.load_weights(_model(), no_weights)


def test_a_folder_given_as_checkpoint_names_the_files_inside(tmp_path):
    run = tmp_path / "run"
    state = {"state_dict": _model().state_dict()}
    last = checkpoint.save_checkpoint(state, run / "checkpoints" / "last.pt")
    best = checkpoint.save_checkpoint(state, run / "checkpoints" / "best.pt")
    for given in (run, run / "checkpoints"):
        with pytest.raises(CheckpointError) as e:
            checkpoint.load_checkpoint(given)
        assert str(e.value) == (
            f"checkpoint '{given}' is a folder, not a checkpoint file; give '{last}' or '{best}'"
        )
    (tmp_path / "paper").mkdir()
    torch.save(state, tmp_path / "paper" / "r18.pth")
    with pytest.raises(CheckpointError, match=r"is a folder, not a checkpoint file; give '.*paper/r18.pth'$"):
        checkpoint.load_checkpoint(tmp_path / "paper")
    (tmp_path / "empty").mkdir()
    with pytest.raises(
        CheckpointError, match="is a folder, not a checkpoint file; give the checkpoint file inside it"
    ):
        checkpoint.load_checkpoint(tmp_path / "empty")


@pytest.mark.slow
def test_cli_folder_as_checkpoint_resume_or_init_from(cli, tmp_path):
    state = {"state_dict": _model().state_dict()}
    last = checkpoint.save_checkpoint(state, tmp_path / "run" / "checkpoints" / "last.pt")
    for prog, args in (
        ("evaluate", ["checkpoint=run"]),
        ("train", ["run_dir=new", "resume=run", *SMOKE]),
        ("train", ["run_dir=new", "init_from=run/checkpoints", *SMOKE]),
    ):
        res = cli(prog, *args)
        assert res.returncode == 2 and "Traceback" not in res.output, res.output[-3000:]
        lines = [line for line in res.stderr.splitlines() if ": error:" in line]
        assert len(lines) == 1 and "is a folder, not a checkpoint file" in lines[0], res.stderr[-3000:]
        assert "'run/checkpoints/last.pt'" in lines[0] and last.is_file()


def test_kill_during_save_keeps_previous_file(tmp_path):
    """SIGKILL while a new checkpoint is being written: the old last.pt still loads."""
    target = tmp_path / "last.pt"
    checkpoint.save_checkpoint({"state_dict": {"w": torch.zeros(3)}, "epoch": 1}, target)
    script = (
        "import sys, torch\n"
        "from i2e_train.training.checkpoint import save_checkpoint\n"
        "big = {'state_dict': {f'w{i}': torch.randn(2_000_000) for i in range(60)}, 'epoch': 2}\n"
        "print('saving', flush=True)\n"
        "save_checkpoint(big, sys.argv[1])\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script, str(target)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "saving"
    deadline = time.time() + 30
    while not any(TMP_MARK in p.name for p in tmp_path.iterdir()):  # the temp file is being written
        assert time.time() < deadline and proc.poll() is None, "save finished before it could be killed"
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert checkpoint.load_checkpoint(target)["epoch"] == 1
    # The killed writer's partial file is removed by the next run that opens the folder.
    assert [p for p in tmp_path.iterdir() if TMP_MARK in p.name]
    assert remove_stale_temporaries(tmp_path) == 1
    assert not [p for p in tmp_path.iterdir() if TMP_MARK in p.name]


def test_rng_state_round_trip(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    state = checkpoint.capture_rng_state()
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    path = checkpoint.save_checkpoint({"rng": state}, tmp_path / "rng.pt")
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    checkpoint.restore_rng_state(checkpoint.load_checkpoint(path)["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_unwrap_model():
    model = _model()
    wrapped = torch.nn.Sequential()
    wrapped.module = model
    assert checkpoint.unwrap_model(wrapped) is model
