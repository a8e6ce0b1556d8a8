"""Never lose work: exact resume (single process and DDP), preemption signals, crashes, bad
checkpoints, non-finite losses, distributed evaluation that counts every sample once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import run_cli

from i2e_train.training import checkpoint

# Long enough epochs that a signal sent after the first step checkpoint lands mid-run.
RUN = (
    "trainer.ema_decay=0.9",  # the EMA must resume exactly too
    "trainer.epochs=2",
    "trainer.batch_size=8",
    "trainer.limit_train_batches=8",
    "trainer.limit_val_batches=3",
    "trainer.progress=false",
    "trainer.tensorboard=false",
    "trainer.device=cpu",
)
TIMING_KEYS = {"epoch_seconds", "train_images_per_second"}


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def _train_cmd(*args: str, nproc: int = 1) -> list[str]:
    if nproc == 1:
        return [sys.executable, "-m", "i2e_train.train", *args]
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "i2e_train.train",
        *args,
    ]


def _train(*args: str, cwd: Path, nproc: int = 1) -> subprocess.CompletedProcess:
    return subprocess.run(
        _train_cmd(*args, nproc=nproc), cwd=cwd, env=_env(), capture_output=True, text=True, timeout=600
    )


def _wait_for(predicate, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not predicate():
        if proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            raise AssertionError(f"run ended (rc={proc.returncode}) before the interruption point:\n{out}")
        assert time.time() < deadline, "timed out waiting for the interruption point"
        time.sleep(0.05)


def _ckpt_at(path: Path) -> tuple[int, int] | None:
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - not there yet / being replaced
        return None
    return int(ck["epoch"]), int(ck["step"])


def _metrics(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rows]


def _assert_same_final_state(a: Path, b: Path) -> None:
    ca = checkpoint.load_checkpoint(a / "checkpoints" / "last.pt")
    cb = checkpoint.load_checkpoint(b / "checkpoints" / "last.pt")
    assert ca["epoch"] == cb["epoch"] == 2
    for key, value in ca["state_dict"].items():
        assert torch.equal(value, cb["state_dict"][key]), f"weights differ at {key}"
    for idx, st in ca["optimizer"]["state"].items():
        assert torch.equal(st["momentum_buffer"], cb["optimizer"]["state"][idx]["momentum_buffer"])
    assert ca["ema"]["updates"] == cb["ema"]["updates"] > 0
    for key, value in ca["ema"]["state_dict"].items():
        assert torch.equal(value, cb["ema"]["state_dict"][key]), f"EMA differs at {key}"
    assert _metrics(a) == _metrics(b)


def _interrupted_then_resumed(tmp_path: Path, how: str, nproc: int) -> Path:
    run = tmp_path / f"interrupted_{how}"
    args = (f"run_dir={run}", *RUN, "trainer.checkpoint_every_steps=2")
    proc = subprocess.Popen(
        _train_cmd(*args, nproc=nproc),
        cwd=tmp_path,
        env=_env(),
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    last = run / "checkpoints" / "last.pt"
    if how == "SIGKILL":  # a crash right after the first epoch checkpoint
        _wait_for(lambda: (_ckpt_at(last) or (0, 0))[0] >= 1, proc)
        os.killpg(proc.pid, signal.SIGKILL)
    else:  # preemption notice after the first step checkpoint
        _wait_for(lambda: _ckpt_at(last) is not None, proc)
        # As a cluster scheduler does: every process of the job gets the signal.
        os.killpg(proc.pid, getattr(signal, how))
    out, _ = proc.communicate(timeout=300)
    if how == "SIGKILL":
        assert proc.returncode == -signal.SIGKILL
    else:
        assert f"received {how}" in out and "continue with resume=auto" in out, out
        if nproc == 1:
            assert proc.returncode == 0 and "Traceback" not in out, out
        else:
            # torchrun's agent reports its own SignalException; the training processes print none.
            assert out.count("Traceback") <= 1 and "i2e_train" not in out.partition("Traceback")[2], out
    stopped_at = _ckpt_at(last)
    assert stopped_at is not None and stopped_at < (2, 0), stopped_at
    res = _train(f"run_dir={run}", *RUN, "resume=auto", cwd=tmp_path, nproc=nproc)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "resumed from" in res.stderr
    return run


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory) -> Path:
    """Two epochs in one go: what every interrupted-and-resumed run must reproduce bitwise."""
    folder = tmp_path_factory.mktemp("straight")
    res = _train(f"run_dir={folder / 'run'}", *RUN, cwd=folder)
    assert res.returncode == 0, res.stderr
    return folder / "run"


# SIGUSR1 takes the same path as SIGTERM (tests/test_trainer.py checks both signals set the flag).
@pytest.mark.slow
@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_resume_is_bitwise_exact_single_process(tmp_path, straight_run, how):
    _assert_same_final_state(straight_run, _interrupted_then_resumed(tmp_path, how, nproc=1))


@pytest.mark.slow
def test_ddp_two_processes_exact_resume_and_one_run_dir(tmp_path):
    straight = tmp_path / "straight"
    res = _train(f"run_dir={straight}", *RUN, cwd=tmp_path, nproc=2)
    assert res.returncode == 0, res.stdout + res.stderr
    rows = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]  # rank 0 alone writes
    assert all(r["world_size"] == 2 and r["train_samples"] == 8 * 8 for r in rows)
    assert "[rank 1]" not in res.stderr  # other ranks stay quiet
    _assert_same_final_state(straight, _interrupted_then_resumed(tmp_path, "SIGTERM", nproc=2))


@pytest.mark.slow
def test_ddp_default_run_dir_is_shared_and_eval_counts_all_360(tmp_path):
    args = (
        "trainer.epochs=1",
        "trainer.batch_size=32",
        "trainer.limit_train_batches=1",
        "trainer.progress=false",
        "trainer.device=cpu",
    )
    res = _train(*args, cwd=tmp_path, nproc=2)
    assert res.returncode == 0, res.stdout + res.stderr
    runs = list((tmp_path / "runs" / "digits").iterdir())
    assert len(runs) == 1, runs  # not one folder per rank
    row = json.loads((runs[0] / "metrics.jsonl").read_text())
    assert row["val_samples"] == 360 and row["world_size"] == 2
    assert (runs[0] / ".hydra" / "config.yaml").is_file()
    tb = list((runs[0] / "tensorboard").glob("events.*"))
    assert len(tb) == 1  # only rank 0 writes TensorBoard


def _eval_worker(rank: int, world: int, init_file: str, n: int, out: str) -> None:
    import torch.distributed as dist
    from torch.utils.data import DataLoader, TensorDataset

    from i2e_train.data.sampler import EpochSampler, SeededDataset
    from i2e_train.models import build_model
    from i2e_train.training import engine

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = build_model("ms_resnet18", 3)
    g = torch.Generator().manual_seed(1)
    events = (torch.rand(n, 8, 2, 16, 16, generator=g) > 0.7).float()
    labels = torch.arange(n) % 3
    sampler = EpochSampler(n, shuffle=False, rank=rank, world_size=world, pad=False)
    loader = DataLoader(SeededDataset(TensorDataset(events, labels)), batch_size=2, sampler=sampler)
    result = engine.evaluate(
        model, loader, num_classes=3, device=torch.device("cpu"), converter=None, amp=engine.AmpSettings()
    )
    Path(out, f"rank{rank}.json").write_text(
        json.dumps({"samples": result.samples, "top1": result.top1, "per_class": result.per_class_total})
    )
    dist.destroy_process_group()


@pytest.mark.slow
def test_distributed_evaluation_counts_each_sample_once(tmp_path):
    """10 samples over 3 processes (4/3/3): every rank reports all 10, with single-process accuracy."""
    import torch.multiprocessing as mp

    n = 10
    mp.spawn(_eval_worker, args=(3, str(tmp_path / "init"), n, str(tmp_path)), nprocs=3, join=True)
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(3)]
    (tmp_path / "init").unlink(missing_ok=True)
    _eval_worker_single = _single_process_eval(n)
    for r in results:
        assert r["samples"] == n and sum(r["per_class"]) == n
        assert r["top1"] == pytest.approx(_eval_worker_single)


def _single_process_eval(n: int) -> float:
    from torch.utils.data import DataLoader, TensorDataset

    from i2e_train.models import build_model
    from i2e_train.training import engine

    torch.manual_seed(0)
    model = build_model("ms_resnet18", 3)
    g = torch.Generator().manual_seed(1)
    events = (torch.rand(n, 8, 2, 16, 16, generator=g) > 0.7).float()
    labels = torch.arange(n) % 3
    result = engine.evaluate(
        model,
        DataLoader(TensorDataset(events, labels), batch_size=5),
        num_classes=3,
        device=torch.device("cpu"),
        converter=None,
        amp=engine.AmpSettings(),
    )
    return result.top1


@pytest.mark.slow
def test_corrupt_checkpoints_get_one_line(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.pt").write_bytes(b"PK\x03\x04 truncated zip")
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": [1, 2, 3]}, foreign)
    cases = [
        ("train", [f"run_dir={run}", "resume=auto"], "cannot be read"),
        ("train", [f"init_from={foreign}"], "no 'state_dict' entry"),
        ("train", [f"resume={foreign}"], "no 'state_dict' entry"),
        ("evaluate", [f"checkpoint={run / 'checkpoints' / 'last.pt'}"], "cannot be read"),
    ]
    for module, args, needle in cases:
        res = run_cli(module, *args, "trainer.device=cpu", "trainer.progress=false", cwd=tmp_path)
        assert res.returncode != 0 and "Traceback" not in res.output, res.output
        lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and needle in lines[0], res.stderr


@pytest.mark.slow
def test_torchrun_restart_resumes_without_being_asked(tmp_path):
    from conftest import SMOKE

    first = run_cli("train", "run_dir=run", *SMOKE, cwd=tmp_path)
    assert first.returncode == 0, first.output
    again = run_cli("train", "run_dir=run", *SMOKE, cwd=tmp_path, env={"TORCHELASTIC_RESTART_COUNT": "1"})
    assert again.returncode == 0, again.output
    assert "torchrun restart 1: resuming" in again.stderr and "nothing to do" in again.stderr
    fresh = run_cli("train", "run_dir=run", *SMOKE, "resume=auto", cwd=tmp_path / "run" / "checkpoints")
    assert "no checkpoint in" in fresh.stderr  # resume=auto in an empty run_dir starts a new run


def _collectives(tmp_path: Path, steps: int) -> list[dict[str, int]]:
    out = tmp_path / f"counts{steps}"
    args = (
        f"run_dir={tmp_path / f'run{steps}'}",
        "trainer.epochs=1",
        "trainer.batch_size=8",
        f"trainer.limit_train_batches={steps}",
        "trainer.limit_val_batches=1",
        "trainer.progress=false",
        "trainer.tensorboard=false",
        "trainer.device=cpu",
        "dataset.image_size=16",
    )
    tool = Path(__file__).parents[1] / "tools" / "count_collectives.py"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(tool),
        str(out),
    ]
    res = subprocess.run([*cmd, *args], cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


@pytest.mark.slow
def test_ddp_training_step_makes_exactly_one_collective(tmp_path):
    """Runs of 2 and 6 steps differ only in their 4 extra steps: each costs one all-reduce (the
    non-finite check and the stop signal together) besides DDP's own gradient reduction."""
    short, long = _collectives(tmp_path, 2), _collectives(tmp_path, 6)
    for a, b in zip(short, long, strict=True):
        per_step = {k: (b.get(k, 0) - a.get(k, 0)) / 4 for k in set(a) | set(b)}
        assert {k: v for k, v in per_step.items() if v} == {"all_reduce": 1.0}, (a, b)
