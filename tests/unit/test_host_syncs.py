"""A training step reads device values back to the host exactly once (``distributed.step_flags``),
in fp32 and under fp16 loss scaling too.

On CUDA every such read is a synchronisation that stalls the queue of kernels; the GPU proof
(``scripts/gpu_check.sh``, stage ``syncs``) counts them with ``torch.cuda.set_sync_debug_mode``. On a
CPU there is nothing to wait for, so the reads are counted where they happen: ``item()``, ``bool()``,
``float()`` and ``int()`` of a tensor reach the dispatcher as ``aten._local_scalar_dense`` (seen by a
dispatch mode, also when C++ code calls them), ``tolist()`` and ``numpy()`` are counted by wrapping
them. Reads of host-side draws (CPU generators, as in a CUDA run) are not syncs and are not counted.
"""

from __future__ import annotations

import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from conftest import build_test_run
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from i2e_train.training import engine

RUN = ("trainer.epochs=1", "trainer.batch_size=4", "dataset.image_size=16", "trainer.preview_samples=0")


def _caller() -> str:
    """The innermost frame of the project or of torch.amp / torch.optim that made the read."""
    for frame in reversed(traceback.extract_stack()[:-2]):
        path = Path(frame.filename)
        if path.name != Path(__file__).name and (
            "i2e_train" in path.parts or "amp" in path.parts or "optim" in path.parts
        ):
            return f"{'/'.join(path.parts[-2:])}:{frame.lineno} ({frame.name})"
    return "?"


class _DeviceReads(TorchDispatchMode):
    """Counts reads of device values. On a CPU every tensor is a host tensor, so "device" is told by
    provenance, as storages: the tensors given as device data (the batch, the model, the optimizer
    and scaler state) and every storage an op computes or writes from device data. Host-side draws
    (I2E pairs and augmentation parameters from CPU generators: CPU tensors in a CUDA run too) and
    constants stay host tensors; reading them is no sync."""

    def __init__(self, reads: list[str]) -> None:
        super().__init__()
        self.reads = reads
        self.device: dict[int, StorageWeakRef] = {}

    def mark(self, t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        self.device[storage._cdata] = StorageWeakRef(storage)

    def is_device(self, t: torch.Tensor) -> bool:
        ref = self.device.get(t.untyped_storage()._cdata)
        return ref is not None and not ref.expired()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        kwargs = kwargs or {}
        tensors = [a for a in pytree.tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor)]
        from_device = any(map(self.is_device, tensors))
        if func is torch.ops.aten._local_scalar_dense.default and from_device:
            self.reads.append(_caller())
        out = func(*args, **kwargs)
        if from_device:
            written = [
                a
                for a, spec in zip(args, func._schema.arguments, strict=False)
                if isinstance(a, torch.Tensor) and spec.alias_info is not None and spec.alias_info.is_write
            ]
            for t in [*pytree.tree_leaves(out), *written]:
                if isinstance(t, torch.Tensor):
                    self.mark(t)
        return out


def device_state(parts: engine.StepParts, micro_batches) -> list[torch.Tensor]:
    """What lives on the training device before a step (as a CUDA run would have it)."""
    tensors = [t for batch in micro_batches for t in batch]
    for module in (parts.plain, parts.converter):
        if module is not None:
            tensors += [*module.parameters(), *module.buffers()]
    tensors += [p.grad for p in parts.plain.parameters() if p.grad is not None]
    tensors += [t for state in parts.optimizer.state.values() for t in state.values() if torch.is_tensor(t)]
    if parts.scaler is not None:
        tensors += [t for t in (parts.scaler._scale, parts.scaler._growth_tracker) if t is not None]
    return tensors


@contextmanager
def host_reads(device: list[torch.Tensor]) -> Iterator[list[str]]:
    """Where values of device tensors (``device`` and what is computed from them) were read by the
    host while the block ran."""
    reads: list[str] = []
    mode = _DeviceReads(reads)
    for t in device:
        mode.mark(t)
    originals = {name: getattr(torch.Tensor, name) for name in ("tolist", "numpy")}

    def counted(name: str):  # noqa: ANN202
        def read(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
            if mode.is_device(self):
                reads.append(_caller())
            return originals[name](self, *args, **kwargs)

        return read

    for name in originals:
        setattr(torch.Tensor, name, counted(name))
    try:
        with mode:
            yield reads
    finally:
        for name, fn in originals.items():
            setattr(torch.Tensor, name, fn)


def _reads_per_step(trainer, steps: int = 2) -> list[list[str]]:
    parts = trainer.parts
    parts.plain.train()
    parts.converter.train()
    batches = trainer.batches.epoch(0)
    out = []
    for i in range(steps):
        micro = next(batches)
        with host_reads(device_state(parts, micro)) as reads:
            engine.train_step(parts, micro, seed=i)
        out.append(reads)
    return out


def test_the_counter_sees_item_bool_and_tolist_of_device_tensors_only() -> None:
    t = torch.ones(3)
    gen = torch.Generator().manual_seed(0)
    with host_reads([t]) as reads:
        t.sum().item()
        bool(t.any())
        t.tolist()
        float(t[0])
        drawn = torch.randint(0, 9, (4,), generator=gen)
        (drawn + 1).tolist()  # a host-side draw (an I2E pair, say): no device sync
        int(drawn[0])
        (drawn * t[:1]).sum().item()  # mixed with device data: counted
    assert len(reads) == 5


@pytest.mark.parametrize(
    "precision",
    ["fp32", pytest.param("fp16", marks=pytest.mark.slow)],
)
def test_a_training_step_reads_the_host_once(tmp_path, precision: str) -> None:
    trainer = build_test_run(tmp_path, *RUN, f"trainer.precision={precision}")
    for reads in _reads_per_step(trainer):
        assert len(reads) == 1 and "distributed.py" in reads[0] and "step_flags" in reads[0], reads


def test_fp16_steps_with_a_fused_optimizer_and_reads_the_host_once(tmp_path) -> None:
    """Under fp16 loss scaling the optimizer is torch's fused SGD (timm passes ``fused`` through):
    GradScaler hands it ``found_inf`` on the device. Still Nesterov, still no weight decay on 1-D
    parameters; clipping (GradScaler.unscale_ first) adds no read either."""
    trainer = build_test_run(
        tmp_path / "run",
        *RUN,
        "trainer.precision=fp16",
        "trainer.clip_grad_norm=1.0",
        "optim.weight_decay=1e-4",
    )
    opt = trainer.parts.optimizer
    assert trainer.parts.scaler is not None and opt._step_supports_amp_scaling
    assert all(g["fused"] and g["nesterov"] and g["momentum"] == 0.9 for g in opt.param_groups)
    decays = {p.ndim > 1: g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert decays == {True: 1e-4, False: 0.0}
    before = [p.detach().clone() for p in trainer.parts.plain.parameters()]
    for reads in _reads_per_step(trainer):
        assert len(reads) == 1 and "step_flags" in reads[0], reads
    moved = sum(not torch.equal(a, p) for a, p in zip(before, trainer.parts.plain.parameters(), strict=True))
    assert moved > 0 and trainer.parts.scaler.get_scale() > 1  # it trained, with the loss scaled


def test_fp16_with_an_unfused_optimizer_reads_found_inf_a_second_time(tmp_path) -> None:
    """What the fused optimizer avoids (and proof that the counter would see it)."""
    trainer = build_test_run(tmp_path, *RUN, "trainer.precision=fp16")
    params = [p for g in trainer.parts.optimizer.param_groups for p in g["params"]]
    trainer.parts.optimizer = torch.optim.SGD(params, lr=0.01, momentum=0.9, foreach=True)
    reads = _reads_per_step(trainer, steps=1)[0]
    assert len(reads) == 2 and any("grad_scaler" in r for r in reads), reads


def test_a_resumed_optimizer_keeps_its_own_implementation() -> None:
    """A checkpoint of a foreach run resumed under fp16 stays fused (GradScaler relies on it)."""
    from i2e_train.training.checkpoint import load_optimizer_state

    weight = torch.nn.Parameter(torch.ones(3))
    saved = torch.optim.SGD([weight], lr=0.1, momentum=0.9, foreach=True)
    weight.grad = torch.ones(3)
    saved.step()
    fused = torch.optim.SGD([weight], lr=0.1, momentum=0.9, fused=True)
    load_optimizer_state(fused, saved.state_dict())
    group = fused.param_groups[0]
    assert group["fused"] is True and group["foreach"] is None
    assert torch.equal(fused.state[weight]["momentum_buffer"], saved.state[weight]["momentum_buffer"])
