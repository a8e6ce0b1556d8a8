"""Shared test helpers: run the real console scripts in a subprocess."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``@pytest.mark.gpu`` tests run only where PyTorch sees a CUDA GPU."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item):
    """``I2E_TEST_TIMEOUT=S``: a test still running after S seconds fails with a message naming the
    limit (the GPU proof's per-test limit where pytest-timeout is not installed; with it, its
    ``--timeout`` is used instead). A signal lands between Python bytecodes, so a test stuck inside one
    long C call is cut when that call returns (as with pytest-timeout's signal method)."""
    limit = float(os.environ.get("I2E_TEST_TIMEOUT") or 0)
    if (
        limit <= 0
        or not hasattr(signal, "SIGALRM")
        or threading.current_thread() is not threading.main_thread()
    ):
        return (yield)

    def expire(_signum: int, _frame: object) -> None:
        pytest.fail(f"ran over its {limit:g} s limit (I2E_TEST_TIMEOUT)", pytrace=True)

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, limit)
    try:
        return (yield)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def command_module(name: str) -> str:
    return f"i2e_train.{name}" if name in ("train", "evaluate") else f"i2e_train.commands.{name}"


def run_cli(
    module: str, *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 600
) -> CliResult:
    """Run a command the way a user would (fresh process): ``train`` and ``evaluate`` as
    ``python -m i2e_train.<module>`` (the torchrun form), the others as ``python -m
    i2e_train.commands.<module>``."""
    full_env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"),
    }
    full_env.pop("HYDRA_FULL_ERROR", None)
    full_env.update(env or {})
    proc = subprocess.run(
        [sys.executable, "-m", command_module(module), *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


# Settings that make a CLI training run take seconds on a CPU.
SMOKE = (
    "trainer.epochs=1",
    "trainer.batch_size=8",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=2",
    "trainer.progress=false",
    "trainer.tensorboard=false",
    "trainer.device=cpu",
)


@pytest.fixture
def cli(tmp_path: Path):
    def _run(module: str, *args: str, **kw) -> CliResult:
        return run_cli(module, *args, cwd=tmp_path, **kw)

    return _run


def compose(*overrides: str, config: str = "train"):
    """The config a command line composes (validated as the CLI does), e.g. ``compose("trainer.epochs=2")``."""
    from i2e_train.commands.cli import precheck, register_resolvers

    register_resolvers()
    return precheck(config, list(overrides))


def build_test_run(run_dir: Path, *overrides: str):
    """A real training run (``builders.build_run``) with CPU smoke settings, in process."""
    from i2e_train.training.builders import build_run

    return build_run(compose(*SMOKE, *overrides), run_dir)


def convert_options(**values):
    """``i2e-convert``'s typed options as configs/convert.yaml sets them, with ``values`` replaced."""
    import dataclasses

    from i2e_train import config

    cfg = compose("output=unused", config="convert")
    keys = [f.name for f in dataclasses.fields(config.ConvertOptions)]
    options = config.options(config.ConvertOptions, {k: cfg[k] for k in keys}, "")
    return dataclasses.replace(options, **values)
