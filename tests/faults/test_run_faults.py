"""Fault injection through the real CLIs: concurrent runs, a full disk, a read-only output, rejected
commands, config mistakes. Each case: the exit code, one line without a traceback, and nothing that
existed before changed or lost. (Data faults: tests/test_faults_data.py.)"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import SMOKE, run_cli

TINY = (*SMOKE, "dataset.image_size=16", "trainer.preview_samples=0")


def one_line_error(res, *needles: str, prog: str = "i2e-train") -> str:
    assert res.returncode == 2, res.output
    assert "Traceback" not in res.output, res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.strip() and not ln.startswith("[")]
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), res.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def snapshot(folder: Path) -> dict[str, tuple[int, str]]:
    """Every file under ``folder``: its modification time and content hash."""
    return {
        str(p.relative_to(folder)): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A run folder with a completed 1-epoch run (checkpoints, metrics, config snapshot)."""
    run = tmp_path_factory.mktemp("faults") / "run"
    res = run_cli("train", f"run_dir={run}", *TINY, cwd=run.parent)
    assert res.returncode == 0, res.output
    return run


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("trainer.epochs=abc", "trainer.epochs must be an integer"),
        ("optim.lr=-0.1", "optim.lr must be a number > 0"),
        ("optim.lr=0", "optim.lr must be a number > 0"),
        ("trainer.epochs=2 dataset.image_size=-32", "dataset.image_size must be a number of pixels >= 1"),
        ("trainer.epochs=2 extras.t_train=9", "extras.t_train must be null or a number of timesteps in 1..8"),
        ("trainer.epochs=2 trainer.batch_size=4096", "larger than the training set (1437 samples)"),
        ("trainer.epochs=2 model=ms_resnet34", "does not fit model"),
        ("trainer.epochs=2 dataset=image_folder dataset.root=/nowhere", "does not exist"),
    ],
)
@pytest.mark.slow
def test_a_rejected_command_changes_nothing_in_the_run_folder(finished_run, override, needle):
    before = snapshot(finished_run)
    res = run_cli(
        "train", f"run_dir={finished_run}", *TINY, "resume=auto", *override.split(), cwd=finished_run.parent
    )
    one_line_error(res, needle)
    assert snapshot(finished_run) == before


def test_config_mistakes_are_refused_before_heavy_imports(tmp_path):
    """A refused command and "nothing to do" are answered from the command line alone: torch is
    never imported (that import is what made answers take seconds)."""
    ckpt = tmp_path / "run" / "checkpoints"
    ckpt.mkdir(parents=True)
    (ckpt / "last.pt").write_bytes(b"not read on this path")
    (ckpt / "last.json").write_text(json.dumps({"epoch": 12, "step": 0}))
    code = (
        "import sys\n"
        "sys.argv = ['i2e-train', *sys.argv[1:]]\n"
        "from i2e_train.train import main\n"
        "try:\n    main()\nexcept SystemExit as e:\n    code = e.code\n"
        "print('exit', code, 'torch' in sys.modules, file=sys.stderr)\n"
    )
    cases = [
        (["optim.lr=0"], 2, "optim.lr must be a number > 0"),
        (["init_from=missing.pt"], 2, "checkpoint 'missing.pt' does not exist"),
        (["i2e.order=zigzag"], 2, "unknown I2E order 'zigzag'"),
        (
            [f"run_dir={tmp_path / 'run'}", "resume=auto"],
            0,
            "nothing to do: the run already completed 12 of 12",
        ),
    ]
    for args, code_expected, needle in cases:
        res = subprocess.run(
            [sys.executable, "-c", code, *args], cwd=tmp_path, capture_output=True, text=True
        )
        assert needle in res.stderr, res.stderr
        assert f"exit {code_expected} False" in res.stderr, res.stderr  # torch was not imported


@pytest.mark.slow
def test_a_second_live_run_on_one_run_dir_is_refused_and_a_killed_one_does_not_block_resume(tmp_path):
    run = tmp_path / "run"
    args = (f"run_dir={run}", *TINY, "trainer.epochs=3", "trainer.limit_train_batches=40", "resume=auto")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    first = subprocess.Popen(
        [sys.executable, "-m", "i2e_train.train", *args],
        cwd=tmp_path,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 300
    while not ((run / ".lock").exists() and (run / ".lock").read_text().startswith("pid")):
        assert first.poll() is None and time.time() < deadline, first.stderr.read()
        time.sleep(0.1)
    second = run_cli("train", *args, cwd=tmp_path)
    one_line_error(second, f"is in use by a run that is still going (pid {first.pid}", "run_dir=")
    os.kill(first.pid, signal.SIGKILL)  # a crash: the kernel releases its lock
    first.wait()
    third = run_cli("train", *args, "trainer.epochs=1", "trainer.limit_train_batches=2", cwd=tmp_path)
    assert third.returncode == 0, third.output


def _in_small_mount(tmp_path: Path, mount_options: str, script: str) -> subprocess.CompletedProcess:
    """Run a shell ``script`` with a fresh tmpfs mounted at ``$MNT`` (a private mount namespace)."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare is not available")
    probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("this machine allows no private mount namespace")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    body = f"mount -t tmpfs -o {mount_options} none {mnt} || exit 77\nexport MNT={mnt}\n{script}"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    res = subprocess.run(
        ["unshare", "-rm", "sh", "-c", body],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    if res.returncode == 77:
        pytest.skip("tmpfs cannot be mounted here")
    return res


@pytest.mark.slow
def test_a_full_disk_while_saving_keeps_the_last_checkpoint(tmp_path):
    # Room for one ms_resnet18 checkpoint (~90 MB), not for the next one's temporary file.
    train = " ".join([f"{sys.executable} -m i2e_train.train run_dir=$MNT/run", *TINY, "trainer.epochs=2"])
    check = (
        f"{sys.executable} -c \"import torch, os, json; c = torch.load('$MNT/run/checkpoints/last.pt', weights_only=False);"
        " print(json.dumps({'epoch': c['epoch'], 'files': sorted(os.listdir('$MNT/run/checkpoints'))}))\""
    )
    res = _in_small_mount(tmp_path, "size=140m", f"{train} 2>err.txt; echo rc=$?\n{check}")
    err = (tmp_path / "err.txt").read_text()
    assert "rc=2" in res.stdout and "Traceback" not in err, res.stdout + err
    lines = [ln for ln in err.splitlines() if ln.startswith("i2e-train: error:")]
    assert len(lines) == 1 and "No space left on device" in lines[0] and "is intact" in lines[0], err
    state = json.loads(res.stdout.strip().splitlines()[-1])
    assert state["epoch"] == 1  # the first epoch's checkpoint survived
    assert not [f for f in state["files"] if ".tmp-" in f]  # the partial file is gone


@pytest.mark.slow
def test_a_read_only_output_is_refused_at_start(tmp_path, finished_run):
    train = " ".join([f"{sys.executable} -m i2e_train.train run_dir=$MNT/run", *TINY])
    evaluate = f"{sys.executable} -m i2e_train.evaluate checkpoint={finished_run}/checkpoints/last.pt out_dir=$MNT/eval trainer.device=cpu"
    res = _in_small_mount(tmp_path, "ro,size=1m", f"{train}; echo rc=$?; {evaluate}; echo rc=$?")
    assert res.stdout.count("rc=2") == 2, res.stdout + res.stderr
    errors = [ln for ln in res.stderr.splitlines() if ": error: " in ln]
    assert len(errors) == 2 and "Traceback" not in res.stderr, res.stderr
    assert "run_dir" in errors[0] and "read-only file system" in errors[0] and "run_dir=PATH" in errors[0]
    assert "out_dir" in errors[1] and "out_dir=PATH" in errors[1]
