"""Everything that touches ``torch.distributed``. Works unchanged in a single process.

Under ``torchrun`` the process group is created from the environment (NCCL on CUDA, gloo on CPU),
also for a single process (``--nproc_per_node=1``): then DDP, SyncBatchNorm and every collective
of the step, evaluation and checkpointing run exactly as with many processes, which is how one GPU
exercises the multi-GPU code. Without torchrun every helper here degrades to the single-process
answer. Tensors handed to a collective live on the process's device (NCCL refuses CPU tensors).
"""

from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ..devices import resolve_device


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    process_group: bool = False  # joined a torch.distributed process group (launched by torchrun)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """The multi-process code path (DDP, SyncBatchNorm, collectives): under torchrun, whatever the
        number of processes."""
        return self.process_group or self.world_size > 1


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def env_rank() -> int:
    """This process's global rank from the launcher's environment (0 outside torchrun)."""
    return int(os.environ.get("RANK", "0"))


def init_distributed(device_preference: str = "auto", timeout_minutes: float = 30.0) -> DistInfo:
    """Join the torchrun process group if launched by torchrun (one process too), else return a
    single-process DistInfo."""
    if not launched_by_torchrun():
        return DistInfo(device=resolve_device(device_preference))
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_preference, local_rank)
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(
            backend="nccl" if device.type == "cuda" else "gloo",
            timeout=datetime.timedelta(minutes=timeout_minutes),
            device_id=device if device.type == "cuda" else None,
        )
    return DistInfo(
        rank=rank, world_size=world_size, local_rank=local_rank, device=device, process_group=True
    )


def backend() -> str | None:
    """The process group's backend (nccl, gloo), or None outside one."""
    return str(dist.get_backend()) if is_distributed() else None


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over ranks in place (identity in a single process)."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_max(tensor: torch.Tensor) -> torch.Tensor:
    """Max of a tensor over ranks in place (identity in a single process)."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s Python object on every rank."""
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank if ``flag`` is true on any rank (used to stop all ranks together)."""
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    return bool(all_reduce_max(t).item() > 0)


def is_distributed() -> bool:
    """Whether this process is in a process group (its collectives are real, even for one process)."""
    return dist.is_available() and dist.is_initialized()


def step_flags(
    nonfinite: torch.Tensor, stop: bool, sums: torch.Tensor, extra: torch.Tensor | None = None
) -> tuple[bool, bool, list[float]]:
    """A training step's one host sync (and, under DDP, its one collective).

    ``nonfinite`` (a 0-d bool tensor: this rank's loss is NaN/Inf) and ``stop`` (a stop signal
    reached this rank) are OR-ed over all ranks; ``sums`` and ``extra`` (this rank's numbers) come
    back in the same read. No host-to-device copy is made: the flags are written by device ops.
    """
    report = torch.zeros(2 + sums.numel() + 1, dtype=torch.float64, device=sums.device)
    report[0] = nonfinite
    if stop:
        report[1] = 1.0
    report[2 : 2 + sums.numel()] = sums
    if extra is not None:
        report[-1] = extra
    if is_distributed():
        dist.all_reduce(report[:2], op=dist.ReduceOp.MAX)
    values = report.tolist()
    return values[0] > 0, values[1] > 0, values[2:]


def no_sync(model: nn.Module) -> Any:
    """DDP's ``no_sync`` (skip the gradient all-reduce of a non-final micro-batch); a no-op otherwise."""
    sync_off = getattr(model, "no_sync", None)
    return sync_off() if callable(sync_off) else contextlib.nullcontext()


def wrap_model(model: nn.Module, info: DistInfo) -> nn.Module:
    """DistributedDataParallel when there are several ranks; the model itself otherwise."""
    if not info.distributed:
        return model
    device_ids = [info.device.index] if info.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def broadcast_buffers(model: nn.Module, src: int = 0) -> None:
    """Give every rank rank ``src``'s buffers (BatchNorm running statistics).

    DDP syncs buffers only at the start of a training forward, so after the last step each rank
    holds slightly different statistics; evaluation must use the ones the checkpoint stores.
    """
    if is_distributed():
        for buf in model.buffers():
            dist.broadcast(buf, src=src)


def convert_sync_batchnorm(model: nn.Module) -> nn.Module:
    """Swap every BatchNorm2d (also SpikingJelly's multi-step one) for a SyncBatchNorm that folds T
    into B. Call before creating the optimizer: the parameters are new objects."""
    from ..models.sync_bn import convert_sync_batchnorm as convert

    return convert(model)
