"""The I2E authors' pre-converted datasets (docs/formats.md): samples already are events.

- ``i2e_parquet``: the published format. ``root`` is one configuration folder of a published
  dataset (I2E-CIFAR10, I2E-ImageNet, ...) holding ``train-*.parquet`` and ``validation-*.parquet``
  shards (also looked for under ``root/data/``), columns ``data`` (bytes, see :mod:`.formats`) and
  ``label`` (int). Only the ``label`` column and the files' metadata are read up front; a sample
  is read from its row group on access, with a small per-process cache of decoded row groups, so
  an ImageNet-sized shard is never loaded whole. File handles are opened per process (DataLoader
  workers each open their own).
- ``i2e_npz``: the authors' older folders ``root/{train,val}/<label>/<index>.npz``, each holding a
  boolean ``[T, 2, H, W]`` array under ``arr_0`` (``np.savez_compressed``).

Samples are bool tensors ``[T, 2, H, W]``; the training step converts them to the compute dtype on
the device. Every sample must have the shape of the first training sample (checked against
``image_size`` when that is set): a record of another shape — a damaged header that still fits its
byte count, or a file of another dataset — is an unreadable sample like a corrupt one, named in one
line, or skipped and counted with ``skip_corrupt``. Shuffled training reads one row group per sample unless it is cached: shards written
with small row groups (a few hundred samples) keep that cheap.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision.datasets import DatasetFolder

from .corrupt import CorruptGuard, UnreadableSampleError, describe
from .folders import class_samples
from .formats import read_array, unpack_events
from .registry import DataBundle, register

SPLIT_PREFIXES = {"train": "train", "val": "validation"}


def find_shards(root: Path, prefix: str) -> list[Path]:
    for folder in (root, root / "data"):
        shards = sorted(folder.glob(f"{prefix}-*.parquet"))
        if shards:
            return shards
    return []


class ParquetEvents:
    """Lazy random access to the samples of parquet shards (row-group reads, per-process handles)."""

    def __init__(self, shards: list[Path], cache_row_groups: int = 4) -> None:
        import pyarrow.parquet as pq

        self.shards = [str(s) for s in shards]
        self.cache_row_groups = max(int(cache_row_groups), 1)
        groups: list[tuple[int, int, int]] = []  # (shard, row group, rows)
        labels: list[np.ndarray] = []
        self.class_names: list[str] = []
        for s, path in enumerate(self.shards):
            try:
                pf = pq.ParquetFile(path)
                names = pf.schema_arrow.names
                if "data" not in names or "label" not in names:
                    raise ValueError(f"columns are {names}, expected 'data' and 'label'")
                for g in range(pf.metadata.num_row_groups):
                    groups.append((s, g, pf.metadata.row_group(g).num_rows))
                labels.append(pf.read(columns=["label"]).column("label").to_numpy().astype(np.int64))
                if not self.class_names:
                    self.class_names = _hf_class_names(pf.schema_arrow.metadata)
            except Exception as e:  # noqa: BLE001 - pyarrow raises many types for broken files
                raise ValueError(f"cannot read parquet shard '{path}' ({describe(e)})") from None
        self.targets = np.concatenate(labels) if labels else np.zeros(0, np.int64)
        self._groups = groups
        # Global index of each row group's first row, for a binary search on access.
        self._starts = np.cumsum([0] + [rows for _, _, rows in groups])
        self.expected_shape: tuple[int, ...] | None = None  # set by the builder from the first sample
        self._files: dict[int, Any] = {}
        self._pid = -1
        self._cache: OrderedDict[tuple[int, int], Any] = OrderedDict()

    def __len__(self) -> int:
        return int(self._starts[-1])

    def __getstate__(self) -> dict[str, Any]:
        # Open files and cached data stay in the process that made them.
        state = self.__dict__.copy()
        state.update(_files={}, _pid=-1, _cache=OrderedDict())
        return state

    def _file(self, shard: int) -> Any:
        import pyarrow.parquet as pq

        if self._pid != os.getpid():  # a forked worker must not share the parent's handles
            self._files, self._cache, self._pid = {}, OrderedDict(), os.getpid()
        if shard not in self._files:
            self._files[shard] = pq.ParquetFile(self.shards[shard])
        return self._files[shard]

    def _row_group(self, shard: int, group: int) -> Any:
        key = (shard, group)
        column = self._cache.get(key) if self._pid == os.getpid() else None
        if column is None:
            column = self._file(shard).read_row_group(group, columns=["data"]).column("data")
            self._cache[key] = column
            while len(self._cache) > self.cache_row_groups:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(key)
        return column

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        g = int(np.searchsorted(self._starts, index, side="right")) - 1
        shard, group, _ = self._groups[g]
        row = index - int(self._starts[g])
        try:
            data = self._row_group(shard, group)[row].as_py()
            events = unpack_events(data)
        except Exception as e:  # noqa: BLE001 - a damaged record or shard
            raise UnreadableSampleError(
                f"cannot read sample {row} of row group {group} in '{self.shards[shard]}' ({describe(e)})"
            ) from None
        if self.expected_shape is not None and tuple(events.shape) != self.expected_shape:
            raise UnreadableSampleError(
                f"sample {row} of row group {group} in '{self.shards[shard]}' holds events of shape "
                f"{tuple(events.shape)}, the dataset's are {self.expected_shape}"
            )
        return events, int(self.targets[index])


def _hf_class_names(metadata: dict[bytes, bytes] | None) -> list[str]:
    """Class names stored by Hugging Face ``datasets`` (a ClassLabel feature), if any."""
    try:
        info = json.loads((metadata or {})[b"huggingface"])
        names = info["info"]["features"]["label"]["names"]
        return [str(n) for n in names]
    except (KeyError, TypeError, ValueError):
        return []


def _check_classes(num_classes: int | None, targets: np.ndarray, dataset: str) -> int:
    found = int(targets.max()) + 1 if targets.size else 0
    if num_classes is None:
        return found
    if found > num_classes or (targets.size and targets.min() < 0):
        raise ValueError(
            f"{dataset}: labels run from {int(targets.min())} to {found - 1} but dataset.num_classes={num_classes}; "
            f"set dataset.num_classes={found}"
        )
    return num_classes


@register("i2e_parquet")
def build_i2e_parquet(
    root: str | None = None,
    image_size: int | None = None,
    num_classes: int | None = None,
    cache_row_groups: int = 4,
    skip_corrupt: bool = False,
) -> DataBundle:
    """``image_size`` is only checked against the stored events (null: not checked)."""
    if not root:
        raise ValueError(
            "dataset.root is not set; point it at the folder of train-*.parquet / validation-*.parquet"
        )
    base = Path(root).expanduser()
    if not base.is_dir():
        raise FileNotFoundError(f"i2e_parquet: dataset.root '{base}' does not exist")
    splits = {}
    for split, prefix in SPLIT_PREFIXES.items():
        shards = find_shards(base, prefix)
        if not shards:
            found = sorted(p.name for p in base.rglob("*.parquet"))[:4]
            raise FileNotFoundError(
                f"i2e_parquet: no {prefix}-*.parquet shards in {base} (or {base / 'data'}); "
                + (f"found {', '.join(found)}" if found else "found no .parquet files")
                + " — point dataset.root at one configuration folder of the published dataset"
            )
        splits[split] = ParquetEvents(shards, cache_row_groups)
    train, val = splits["train"], splits["val"]
    if not len(train) or not len(val):
        raise ValueError(f"i2e_parquet: the shards in {base} hold no samples")
    classes = _check_classes(num_classes, np.concatenate([train.targets, val.targets]), "i2e_parquet")
    names = train.class_names if len(train.class_names) == classes else [str(i) for i in range(classes)]
    return _events_bundle(train, val, classes, names, image_size, skip_corrupt, "i2e_parquet")


def _events_bundle(
    train: Any,
    val: Any,
    classes: int,
    names: list[str],
    image_size: int | None,
    skip_corrupt: bool,
    dataset: str,
) -> DataBundle:
    """The bundle of a stored-events dataset: the first (readable) training sample fixes the shape
    every sample must have, after checking its size against ``image_size``."""
    train_guard = CorruptGuard(train, skip_corrupt, "train")
    with train_guard.uncounted():  # a look before training, not a skip of any epoch
        shape = tuple(train_guard[0][0].shape)
    if image_size is not None and (shape[-1] != image_size or shape[-2] != image_size):
        raise ValueError(
            f"{dataset}: the stored events are {shape[-2]}x{shape[-1]} but dataset.image_size={image_size}; "
            f"set dataset.image_size={shape[-1]} (pre-converted events cannot be resized)"
        )
    train.expected_shape = val.expected_shape = shape
    return DataBundle(
        train=train_guard,
        val=CorruptGuard(val, skip_corrupt, "val"),
        num_classes=classes,
        events=True,
        class_names=names,
    )


def load_npz_events(path: str) -> torch.Tensor:
    try:
        array = read_array(path)
    except ValueError as e:
        raise UnreadableSampleError(
            f"cannot read events '{path}': not a valid .npz events file ({e})"
        ) from None
    if array.ndim != 4:
        raise UnreadableSampleError(f"events '{path}' have shape {array.shape}; expected [T, 2, H, W]")
    return torch.from_numpy(array.astype(np.bool_, copy=False))


class NpzFolder(DatasetFolder):
    """``<label>/<index>.npz`` folders; integer folder names keep their numeric label."""

    def __init__(self, root: str | Path) -> None:
        super().__init__(str(root), loader=load_npz_events, extensions=(".npz",))
        self.expected_shape: tuple[int, ...] | None = None  # set by the builder from the first sample

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        events, label = super().__getitem__(index)
        if self.expected_shape is not None and tuple(events.shape) != self.expected_shape:
            raise UnreadableSampleError(
                f"events '{self.samples[index][0]}' have shape {tuple(events.shape)}, "
                f"the dataset's are {self.expected_shape}"
            )
        return events, label

    @staticmethod
    def make_dataset(
        directory: str | Path,
        class_to_idx: dict[str, int],
        extensions: tuple[str, ...] | None = None,
        is_valid_file: Any = None,
        allow_empty: bool = False,
    ) -> list[tuple[str, int]]:
        del extensions, is_valid_file, allow_empty  # .npz files, no empty label folder
        return class_samples(directory, class_to_idx, (".npz",), kind=".npz files")

    def find_classes(self, directory: str | Path) -> tuple[list[str], dict[str, int]]:
        names = [e.name for e in os.scandir(directory) if e.is_dir()]
        if not names:
            raise FileNotFoundError(
                f"no label folders in '{directory}' (expected {directory}/<label>/<index>.npz)"
            )
        if all(n.isdigit() for n in names):
            names.sort(key=int)
            return names, {n: int(n) for n in names}
        names.sort()
        return names, {n: i for i, n in enumerate(names)}


@register("i2e_npz")
def build_i2e_npz(
    root: str | None = None,
    image_size: int | None = None,
    num_classes: int | None = None,
    skip_corrupt: bool = False,
) -> DataBundle:
    """``image_size`` is only checked against the stored events (null: not checked)."""
    if not root:
        raise ValueError(
            "dataset.root is not set; point it at the folder holding train/ and val/ of .npz events"
        )
    base = Path(root).expanduser()
    splits = {}
    for split in ("train", "val"):
        folder = base / split
        if not folder.is_dir():
            raise FileNotFoundError(
                f"i2e_npz: '{folder}' does not exist; expected {base}/{split}/<label>/<index>.npz"
            )
        splits[split] = NpzFolder(folder)
    train, val = splits["train"], splits["val"]
    targets = np.asarray(train.targets + val.targets, dtype=np.int64)
    classes = _check_classes(num_classes, targets, "i2e_npz")
    names = (
        train.classes
        if len(train.classes) == classes and not all(c.isdigit() for c in train.classes)
        else [str(i) for i in range(classes)]
    )
    return _events_bundle(train, val, classes, names, image_size, skip_corrupt, "i2e_npz")
