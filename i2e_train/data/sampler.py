"""Deterministic, shardable sampling with per-sample augmentation seeds.

The sampler yields ``(index, seed)`` pairs. The order of an epoch is a pure function of
``(seed, epoch)`` and each sample's augmentation seed a pure function of ``(seed, epoch,
position)``, so a run is reproducible whatever the number of workers, and resuming at any
epoch or step (single process or DDP) replays exactly the same data.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import Dataset, Sampler

from ..seeding import mix_seed


class EpochSampler(Sampler[tuple[int, int]]):
    """Shuffled (or ordered) indices for one rank, each with its augmentation seed.

    Training (``pad=True``): the epoch's permutation is padded by wrapping so every rank gets the
    same number of samples (DDP needs equal step counts), then dealt out round-robin; with
    ``drop_last=True`` its incomplete last share is dropped instead (PyTorch's DistributedSampler
    with ``drop_last=True``, the paper's choice).
    Evaluation (``pad=False``): ranks get disjoint shares whose union is the dataset — nothing
    duplicated, nothing dropped; shares may differ in size by one.
    ``start`` skips the first samples of this rank's share (mid-epoch resume).
    """

    def __init__(
        self,
        num_samples: int,
        *,
        shuffle: bool,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        pad: bool = True,
        drop_last: bool = False,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.num_samples = num_samples
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.pad = pad
        self.drop_last = drop_last
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch = epoch
        self.start = start

    def _order(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch))
            order = torch.randperm(self.num_samples, generator=g).tolist()
        else:
            order = list(range(self.num_samples))
        if self.pad and self.world_size > 1 and order:
            total = self._total()
            order = (order * (total // len(order) + 1))[:total]
        return order

    def _total(self) -> int:
        """Samples of one epoch over all ranks."""
        n = self.num_samples
        if not self.pad or self.world_size == 1 or not n:
            return n
        if self.drop_last:
            return n // self.world_size * self.world_size
        return -(-n // self.world_size) * self.world_size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = self._order()
        mine = range(self.rank, len(order), self.world_size)
        for pos in list(mine)[self.start :]:
            yield order[pos], mix_seed(self.seed, self.epoch, pos)

    def num_samples_of_rank(self) -> int:
        """This rank's share of an epoch, from its beginning."""
        return len(range(self.rank, self._total(), self.world_size))

    def __len__(self) -> int:
        return max(self.num_samples_of_rank() - self.start, 0)


class SeededDataset(Dataset):
    """Applies ``transform`` to ``base[index]`` under a per-sample seed given by :class:`EpochSampler`.

    torchvision transforms draw from torch's global RNG; seeding it per sample (inside a forked
    RNG so nothing else is disturbed) makes augmentation independent of workers and resume.
    """

    def __init__(self, base: Any, transform: Callable[[Any], Any] | None = None) -> None:
        self.base = base
        self.transform = transform

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: tuple[int, int] | int) -> tuple[Any, int]:
        index, seed = key if isinstance(key, tuple) else (key, 0)
        sample, label = self.base[index]
        if self.transform is not None:
            with torch.random.fork_rng(devices=[]):
                # The CPU generator only: torch.manual_seed would also reseed (and leave changed)
                # every CUDA generator.
                torch.default_generator.manual_seed(seed)
                sample = self.transform(sample)
        return sample, int(label)
