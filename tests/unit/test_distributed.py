"""The multi-process code path in one process: what NCCL needs, checked on the CPU.

NCCL refuses a CPU tensor in a collective, so a tensor made without ``device=`` (CPU by default) and
handed to ``all_reduce`` breaks every multi-GPU run, yet passes every gloo test on a CPU. Here a
whole run (steps, evaluation, firing rates, checkpoints) goes through a one-process gloo group, and
every tensor handed to a collective must have been placed on the process's device on purpose:
created with ``device=``, moved there with ``.to(device)``, or computed from such tensors (the model,
the batch). The GPU proof runs the same path under ``torchrun --nproc_per_node=1`` with NCCL.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
import torch.distributed as dist
from conftest import compose
from torch.overrides import TorchFunctionMode
from torch.utils import _pytree as pytree

from i2e_train.training import distributed
from i2e_train.training.builders import build_run

COLLECTIVES = ("all_reduce", "broadcast", "all_gather", "all_gather_into_tensor", "reduce", "reduce_scatter")


class Placement(TorchFunctionMode):
    """Which tensors were placed on the device on purpose (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self.placed: dict[int, torch.Tensor] = {}

    def mark(self, t: torch.Tensor) -> None:
        self.placed[id(t)] = t  # holding the tensor keeps its id from being reused

    def is_placed(self, t: torch.Tensor) -> bool:
        return self.placed.get(id(t)) is t

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        leaves = pytree.tree_leaves((args, kwargs))
        moved = getattr(func, "__name__", "") in ("to", "cuda") and any(
            isinstance(a, torch.device | str) or (isinstance(a, int) and not isinstance(a, bool))
            for a in leaves[1:]
        )
        placed = (
            kwargs.get("device") is not None
            or moved
            or any(isinstance(a, torch.Tensor) and self.is_placed(a) for a in leaves)
        )
        if placed:
            for t in pytree.tree_leaves(out):
                if isinstance(t, torch.Tensor):
                    self.mark(t)
            if getattr(func, "__name__", "").endswith("_") and args and isinstance(args[0], torch.Tensor):
                self.mark(args[0])  # written in place from placed data
        return out


@contextmanager
def one_process_group() -> Iterator[None]:
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


@contextmanager
def checked_collectives(mode: Placement, device: torch.device) -> Iterator[collections.Counter]:
    """Count the collectives and record every tensor handed to one that was not placed."""
    counts: collections.Counter = collections.Counter()
    counts["misplaced"] = 0
    originals = {name: getattr(dist, name) for name in COLLECTIVES}

    def checked(name: str):  # noqa: ANN202
        def call(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            counts[name] += 1
            for t in pytree.tree_leaves((args, kwargs)):
                if isinstance(t, torch.Tensor) and (t.device != device or not mode.is_placed(t)):
                    counts["misplaced"] += 1
                    counts[f"misplaced in {name}: {list(t.shape)} {t.device}"] += 1
            return originals[name](*args, **kwargs)

        return call

    for name in COLLECTIVES:
        setattr(dist, name, checked(name))
    try:
        yield counts
    finally:
        for name, fn in originals.items():
            setattr(dist, name, fn)


def test_every_collective_of_a_run_gets_tensors_placed_on_the_process_device(tmp_path) -> None:
    cfg = compose(
        "trainer.device=cpu",
        "trainer.epochs=1",
        "trainer.batch_size=8",
        "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=2",
        "trainer.progress=false",
        "trainer.tensorboard=false",
        "trainer.firing_rate_batches=1",
        "trainer.checkpoint_every_steps=1",
        "dataset.image_size=16",
    )
    device = torch.device("cpu")
    with one_process_group():
        info = distributed.DistInfo(device=device, process_group=True)
        trainer = build_run(cfg, tmp_path, info)
        assert isinstance(trainer.parts.model, torch.nn.parallel.DistributedDataParallel)  # one process, DDP
        mode = Placement()
        for t in [*trainer.parts.plain.parameters(), *trainer.parts.plain.buffers()]:
            mode.mark(t)
        with mode, checked_collectives(mode, device) as counts:
            trainer.fit()
    misplaced = {k: v for k, v in counts.items() if k.startswith("misplaced in")}
    assert counts["misplaced"] == 0, misplaced
    # The step's flags (2 steps), the epoch sums, evaluation (2), firing rates, stop flag; the buffers.
    assert counts["all_reduce"] >= 2 + 4 and counts["broadcast"] >= 1, counts
    assert (tmp_path / "checkpoints" / "last.pt").exists()


def test_a_tensor_made_without_a_device_is_caught() -> None:
    device = torch.device("cpu")
    with one_process_group():
        mode = Placement()
        with mode, checked_collectives(mode, device) as counts:
            distributed.all_reduce_sum(torch.zeros(2, device=device))
            distributed.all_reduce_sum(torch.tensor([1.0, 2.0]))  # CPU by default: NCCL refuses it
            assert distributed.any_rank(True, device)
    assert counts["misplaced"] == 1 and counts["all_reduce"] == 3


def test_torchrun_with_one_process_takes_the_multi_process_path(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(29400 + torch.randint(0, 500, ()).item()))
    info = distributed.init_distributed("cpu")
    try:
        assert info.process_group and info.distributed and info.world_size == 1
        assert dist.get_backend() == "gloo" and distributed.is_distributed()
        nonfinite, stop, values = distributed.step_flags(torch.tensor(False), True, torch.ones(2))
        assert (nonfinite, stop, values) == (False, True, [1.0, 1.0, 0.0])
    finally:
        distributed.cleanup()
    monkeypatch.delenv("RANK")
    assert not distributed.init_distributed("cpu").distributed  # a plain process: no group
