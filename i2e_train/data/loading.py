"""DataLoaders for training and evaluation: one setup for both (samplers, workers, their clean-up).

Training batches are grouped into optimiser steps of ``accumulate`` micro-batches; every epoch's
order and every sample's augmentation seed come from :mod:`.sampler`, so a run resumes at any
step with exactly the data it would have seen.
"""

from __future__ import annotations

import atexit
import multiprocessing
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader

from ..signals import ignore_stop_signals
from .registry import DataBundle
from .sampler import EpochSampler, SeededDataset


def make_loader(
    dataset: Any, transform: Any, sampler: EpochSampler, batch_size: int, workers: int, device: torch.device
) -> DataLoader:
    """A DataLoader over ``SeededDataset(dataset, transform)`` driven by ``sampler``."""
    if workers > 0:
        atexit.unregister(_kill_leftover_workers)  # once, however many loaders
        atexit.register(_kill_leftover_workers)
    return DataLoader(
        SeededDataset(dataset, transform),
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
        prefetch_factor=4 if workers > 0 else None,
        worker_init_fn=ignore_stop_signals if workers > 0 else None,
    )


def val_loader(
    bundle: DataBundle, *, batch_size: int, rank: int, world_size: int, workers: int, device: torch.device
) -> DataLoader:
    """This rank's disjoint share of the validation set (every sample counted once over all ranks)."""
    sampler = EpochSampler(len(bundle.val), shuffle=False, rank=rank, world_size=world_size, pad=False)
    return make_loader(bundle.val, bundle.val_transform, sampler, batch_size, workers, device)


@dataclass
class TrainBatches:
    """The training loader of a run, delivered as optimiser steps of ``accumulate`` micro-batches."""

    loader: DataLoader
    sampler: EpochSampler
    micro_batch: int
    accumulate: int
    limit_steps: int | None

    def steps_per_epoch(self) -> int:
        full = -(-self.sampler.num_samples_of_rank() // (self.micro_batch * self.accumulate))
        return full if self.limit_steps is None else min(full, self.limit_steps)

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[list[Any]]:
        """The steps of ``epoch`` from ``start_step`` on (mid-epoch resume), each a list of micro-batches."""
        self.sampler.set_epoch(epoch, start=start_step * self.micro_batch * self.accumulate)
        steps = self.steps_per_epoch() - start_step
        if steps <= 0:
            return
        group: list[Any] = []
        for batch in self.loader:
            group.append(batch)
            if len(group) == self.accumulate:
                yield group
                group, steps = [], steps - 1
                if steps <= 0:
                    return
        if group and steps > 0:
            yield group  # the epoch's short last step


def train_batches(
    bundle: DataBundle,
    *,
    micro_batch: int,
    accumulate: int,
    seed: int,
    rank: int,
    world_size: int,
    workers: int,
    device: torch.device,
    drop_last: bool = False,
    limit_steps: int | None = None,
) -> TrainBatches:
    sampler = EpochSampler(
        len(bundle.train), shuffle=True, seed=seed, rank=rank, world_size=world_size, drop_last=drop_last
    )
    loader = make_loader(bundle.train, bundle.train_transform, sampler, micro_batch, workers, device)
    return TrainBatches(loader, sampler, micro_batch, accumulate, limit_steps)


def _kill_leftover_workers() -> None:
    # Workers ignore SIGTERM (signals.ignore_stop_signals). multiprocessing's exit handler stops
    # daemonic children with SIGTERM and then joins them, so a run ending in an exception while
    # workers are alive (an unreadable file, a crash) would wait forever. atexit runs this first
    # (it is registered later).
    children = [c for c in multiprocessing.active_children() if c.daemon]
    if children and hasattr(signal, "SIGCHLD"):
        # The DataLoader's SIGCHLD handler would report these deliberate kills as worker failures.
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for child in children:
        child.kill()
