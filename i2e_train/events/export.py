"""Pre-converted I2E datasets: write any image dataset as event shards (the engine of ``i2e-convert``).

Every dataset of the registry works. Each image is resized to ``image_size`` x ``image_size`` with
bicubic interpolation (PIL's, as the published I2E datasets) — an image already at that size is not
resampled — and converted with the fixed displacement pairs (evaluation mode), batched on the GPU
when there is one. The datasets' own training/validation transforms (augmentation, bilinear
resizing) are not used: samples are taken raw from ``DataBundle.train``/``.val``.

Output (``format=parquet``, docs/formats.md): ``output/train-XXXXX-of-YYYYY.parquet`` and
``validation-...`` shards with columns ``file_path`` (source file relative to the dataset root, or
``<dataset>/<split>/<index>`` for in-memory data), ``label`` and ``data``
(:func:`i2e_train.data.formats.pack_events` bytes), plus ``metadata.json``. ``format=npz`` writes
the authors' older layout ``output/{train,val}/<label>/<index>.npz`` (one bool array
``[T, 2, H, W]``, key ``arr_0``).

Resuming: shard ``k`` of a split always holds rows ``[k * shard_size, (k + 1) * shard_size)`` of
the dataset, so the layout is a pure function of the dataset and ``shard_size``. Every file is
written to a temporary name and renamed into place when complete; a re-run converts only the
missing shards and leaves finished ones untouched.

Unreadable images: by default the first one stops the conversion with one line naming it. With
``dataset.skip_corrupt=true`` it is left out — its shard has one row fewer (no other image takes
its place, so no row ever names one file and holds another's events) — and each shard records what
it left out, which ``metadata.json`` lists per split (``skipped``, ``skipped_files``: dataset
index, ``file_path``, reason, shard). Which images a shard leaves out is part of that shard: a
resumed run does not revisit finished shards, so an image repaired after its shard was written
stays out until that shard's file (its ``.progress`` mark for npz) is deleted and the command run
again; a shard written later reads the files as they are then.

Temporary files: ``.<name>.tmp-<pid>``, locked (``flock``) while being written. A run removes
those whose writer is gone — the lock is free and no process has that pid — and leaves the others,
e.g. of a conversion still running into the same folder. A file whose pid has meanwhile been
reused by an unrelated process stays until a later run finds that pid free.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ..config import SPLIT_DIRS, ConvertOptions, resolve_workers
from ..data.corrupt import CorruptGuard, UnreadableSampleError
from ..data.images import to_rgb8
from ..devices import resolve_device
from ..errors import UserError
from ..files import TMP_MARK, atomic_write, remove_stale
from ..seeding import mix_seed

FORMAT_VERSION = 1
METADATA = "metadata.json"
_STATS_KEY = b"i2e_convert"


# ----------------------------------------------------------------------------- preprocessing
def to_pil_rgb(sample: Any) -> Image.Image:
    """A dataset sample (PIL image, uint8 tensor ``[C, H, W]``/``[H, W]`` or uint8 array ``[H, W(, C)]``)
    as an RGB PIL image; grey is replicated to the three channels, other PIL modes (16-bit grey,
    transparency, ...) are converted by :func:`~.images.to_rgb8`."""
    if isinstance(sample, Image.Image):
        return sample if sample.mode == "RGB" else to_rgb8(sample)
    if isinstance(sample, Tensor):
        if sample.dtype != torch.uint8:
            raise ValueError(f"expected a uint8 image tensor, got dtype {sample.dtype}")
        if sample.ndim == 3:
            sample = sample.permute(1, 2, 0)  # CHW -> HWC
        sample = sample.numpy()
    arr = np.asarray(sample)
    if arr.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got dtype {arr.dtype}")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise ValueError(f"expected an image [H, W, 3], got shape {arr.shape}")
    return Image.fromarray(np.ascontiguousarray(arr[:, :, :3]), "RGB")


def prepare_image(sample: Any, image_size: int | None) -> Tensor:
    """uint8 ``[3, S, S]`` as the published I2E datasets: PIL bicubic resize to ``image_size``,
    skipped when the image already has that size (``None`` or 0 keeps any size)."""
    image = to_pil_rgb(sample)
    if image_size and image.size != (image_size, image_size):
        image = image.resize((image_size, image_size), Image.Resampling.BICUBIC)
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).contiguous()


class SourceIds:
    """``file_path`` of each row: the source file relative to ``root`` where the dataset keeps file
    paths (torchvision's ImageFolder/DatasetFolder, also inside Subset), else ``<name>/<split>/<index>``."""

    def __init__(self, dataset: Any, name: str, split: str, root: str | None) -> None:
        self.prefix = f"{name}/{split}"
        self.root = Path(root).expanduser().resolve() if root else None
        # Unresolved too: a class folder may be a link to another disk, and its files still belong
        # under root/train/<class>/.
        self.plain_root = Path(os.path.abspath(Path(root).expanduser())) if root else None
        self.files: list[str] | None = None
        base, indices = dataset, None
        while isinstance(base, torch.utils.data.Subset):
            indices = [base.indices[i] for i in indices] if indices is not None else list(base.indices)
            base = base.dataset
        samples = getattr(base, "samples", None)
        if (
            isinstance(samples, list)
            and samples
            and isinstance(samples[0], tuple)
            and isinstance(samples[0][0], str)
        ):
            files = [s[0] for s in samples]
            self.files = [files[i] for i in indices] if indices is not None else files

    def __call__(self, index: int) -> str:
        if self.files is None:
            return f"{self.prefix}/{index:08d}"
        path = Path(self.files[index])
        if self.root is not None and self.plain_root is not None:
            for full, base in ((Path(os.path.abspath(path)), self.plain_root), (path.resolve(), self.root)):
                with contextlib.suppress(ValueError):
                    return full.relative_to(base).as_posix()
        return path.as_posix()


class _Prepared(torch.utils.data.Dataset):
    """Raw samples -> (uint8 [3, S, S], label, index, error, skipped); runs in DataLoader workers. A
    sample that cannot be read comes back as an error message, so the main process reports it in
    one line, or (``skip``) as the reason it is left out."""

    def __init__(self, base: Any, image_size: int, source: SourceIds, skip: bool | None) -> None:
        # skip: None when the dataset has no dataset.skip_corrupt option.
        self.base, self.image_size, self.source, self.skip = base, image_size, source, skip

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> tuple[Tensor, int, int, str, str]:
        blank = torch.zeros(3, self.image_size, self.image_size, dtype=torch.uint8)
        where = f"{self.source.prefix} sample {index} ('{self.source(index)}')"
        try:
            sample, label = self.base[index]
            return prepare_image(sample, self.image_size), int(label), index, "", ""
        except UnreadableSampleError as e:
            if self.skip:
                return blank, -1, index, "", str(e)
            hint = "; replace or delete the file" + (
                ", or set dataset.skip_corrupt=true to leave it out" if self.skip is not None else ""
            )
            return blank, -1, index, f"cannot convert {where}: {e}{hint}", ""
        except Exception as e:  # noqa: BLE001 - reported with the sample it came from
            return blank, -1, index, f"cannot convert {where}: {type(e).__name__}: {e}", ""


# ----------------------------------------------------------------------------- output layouts
@dataclass
class ShardStats:
    rows: int
    ones: int  # events (ones) in the shard
    elements: int  # entries of the event tensors in the shard
    skipped: list[dict[str, Any]] = field(default_factory=list)  # images left out (skip_corrupt)


@dataclass
class ShardBuffer:
    """A shard being written: its rows so far (packed, so a shard of large images stays small)."""

    index: int
    rows: list[int] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    data: list[bytes] = field(default_factory=list)
    ones: int = 0
    elements: int = 0
    skipped: list[dict[str, Any]] = field(default_factory=list)

    def count(self, events: Tensor) -> None:
        self.ones += int(events.sum())
        self.elements += events.numel()


def shard_ranges(num_rows: int, shard_size: int) -> list[range]:
    """Row range of every shard: a pure function of the dataset size and the shard size."""
    return [range(s, min(s + shard_size, num_rows)) for s in range(0, num_rows, shard_size)]


class ParquetShards:
    """``split-XXXXX-of-YYYYY.parquet`` files; a shard is done when its file exists (written atomically).
    Each file's key-value metadata keeps its event counts, so finishing a resumed run needs no decoding."""

    def __init__(self, out: Path, split: str, ranges: list[range]) -> None:
        self.out, self.split, self.ranges = out, split, ranges

    def path(self, k: int) -> Path:
        return self.out / f"{self.split}-{k:05d}-of-{len(self.ranges):05d}.parquet"

    def check_foreign(self) -> None:
        expected = {self.path(k).name for k in range(len(self.ranges))}
        for p in sorted(self.out.glob(f"{self.split}-*-of-*.parquet")):
            if p.name not in expected:
                raise UserError(
                    f"'{p}' belongs to a different shard layout (this run writes {len(self.ranges)} "
                    f"{self.split} shards); convert into a new output folder or delete the old shards"
                )

    def temporary(self) -> list[Path]:
        return sorted(self.out.glob(f".{self.split}-*.parquet{TMP_MARK}*"))

    def done(self, k: int) -> bool:
        import pyarrow.parquet as pq

        path = self.path(k)
        if not path.exists():
            return False
        try:
            meta = pq.read_metadata(path)
            rows = meta.num_rows
            info = json.loads((meta.metadata or {}).get(_STATS_KEY, b"{}"))
        except Exception as e:  # noqa: BLE001 - any unreadable file is reported the same way
            raise UserError(f"'{path}' is not a readable parquet file ({e}); delete it and re-run") from None
        left_out = len(info.get("skipped", []))
        if rows + left_out != len(self.ranges[k]):
            raise UserError(
                f"'{path}' holds {rows} rows"
                + (f" and {left_out} left out" if left_out else "")
                + f" but shard {k} has {len(self.ranges[k])}; it was written by another conversion: "
                "use a new output folder"
            )
        return True

    def add(
        self, buf: ShardBuffer, rows: list[int], paths: list[str], labels: list[int], events_BTCHW: Tensor
    ) -> None:
        from ..data.formats import pack_events

        buf.rows += rows
        buf.paths += paths
        buf.labels += labels
        buf.data += [pack_events(e) for e in events_BTCHW]
        buf.count(events_BTCHW)

    def finish(self, buf: ShardBuffer) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.table(
            {
                "file_path": pa.array(buf.paths, pa.string()),
                "label": pa.array(buf.labels, pa.int64()),
                "data": pa.array(buf.data, pa.binary()),
            }
        )
        meta = {
            "first_row": self.ranges[buf.index].start,
            "ones": buf.ones,
            "elements": buf.elements,
            "skipped": buf.skipped,
        }
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), _STATS_KEY: json.dumps(meta)})
        # Small row groups keep random access to one row cheap (viewers, map-style readers).
        atomic_write(self.path(buf.index), lambda f: pq.write_table(table, f, row_group_size=64))

    def stats(self, k: int) -> ShardStats:
        import pyarrow.parquet as pq

        path = self.path(k)
        meta = pq.read_schema(path).metadata or {}
        if _STATS_KEY not in meta:
            raise UserError(f"'{path}' was not written by i2e-convert; use a new output folder")
        info = json.loads(meta[_STATS_KEY])
        skipped = list(info.get("skipped", []))
        return ShardStats(
            len(self.ranges[k]) - len(skipped), int(info["ones"]), int(info["elements"]), skipped
        )


class NpzShards:
    """The older layout ``{train,val}/<label>/<index>.npz``. Files are written atomically one by one;
    ``.progress/<split>-XXXXX-of-YYYYY.json`` marks a finished shard and keeps its event counts."""

    def __init__(self, out: Path, split: str, ranges: list[range]) -> None:
        self.out, self.split, self.ranges = out, split, ranges
        self.marks = out / ".progress"

    def path(self, k: int) -> Path:
        return self.marks / f"{self.split}-{k:05d}-of-{len(self.ranges):05d}.json"

    def check_foreign(self) -> None:
        expected = {self.path(k).name for k in range(len(self.ranges))}
        for p in sorted(self.marks.glob(f"{self.split}-*-of-*.json")):
            if p.name not in expected:
                raise UserError(
                    f"'{self.out}' was converted with another shard layout ({p.name}); "
                    "convert into a new output folder"
                )

    def temporary(self) -> list[Path]:
        files = (self.out / SPLIT_DIRS[self.split]).glob(f"*/.*{TMP_MARK}*")
        marks = self.marks.glob(f".{self.split}-*.json{TMP_MARK}*")
        return sorted([*files, *marks])

    def done(self, k: int) -> bool:
        return self.path(k).exists()

    def add(
        self, buf: ShardBuffer, rows: list[int], paths: list[str], labels: list[int], events_BTCHW: Tensor
    ) -> None:
        del paths  # the layout has no place for them
        split_dir = self.out / SPLIT_DIRS[self.split]
        for index, label, events in zip(rows, labels, events_BTCHW, strict=True):
            folder = split_dir / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            arr = events.numpy()
            atomic_write(folder / f"{index}.npz", lambda f, a=arr: np.savez_compressed(f, a))
        buf.rows += rows
        buf.count(events_BTCHW)

    def finish(self, buf: ShardBuffer) -> None:
        self.marks.mkdir(parents=True, exist_ok=True)
        record = {
            "first_row": self.ranges[buf.index].start,
            "rows": len(buf.rows),
            "ones": buf.ones,
            "elements": buf.elements,
            "skipped": buf.skipped,
        }
        atomic_write(self.path(buf.index), lambda f: f.write(json.dumps(record).encode()))

    def stats(self, k: int) -> ShardStats:
        info = json.loads(self.path(k).read_text())
        return ShardStats(
            int(info["rows"]), int(info["ones"]), int(info["elements"]), list(info.get("skipped", []))
        )


# ----------------------------------------------------------------------------- conversion
@dataclass
class SplitPlan:
    name: str
    dataset: Any  # the raw dataset, without its CorruptGuard
    skip: bool | None  # dataset.skip_corrupt (None: the dataset has no such option)
    ranges: list[range]
    shards: ParquetShards | NpzShards
    pending: list[int]


def _unguarded(dataset: Any) -> tuple[Any, bool | None]:
    """The dataset under its CorruptGuard and the guard's skip setting. The converter reads the raw
    samples: the guard would replace an unreadable image by its neighbour, and the row would then
    name one file and hold another's events."""
    if isinstance(dataset, CorruptGuard):
        return dataset.base, dataset.skip
    return dataset, None


def _batches(ranges: Sequence[range], shard_ids: Sequence[int], batch_size: int) -> Iterator[list[int]]:
    """Index batches that never cross a shard boundary."""
    for k in shard_ids:
        r = ranges[k]
        for s in range(r.start, r.stop, batch_size):
            yield list(range(s, min(s + batch_size, r.stop)))


def convert_split(
    plan: SplitPlan,
    *,
    image_size: int,
    ratio: float,
    order: str | Sequence[int],
    device: torch.device,
    batch_size: int,
    num_workers: int,
    source: SourceIds,
    progress: Any,
    shard_ids: Sequence[int],
    sensor: Any = None,
    seed: int = 0,
) -> list[int]:
    """Convert the given pending shards of one split; returns the shards written. With a ``sensor``
    (:class:`i2e_train.sensor.SensorModel`) its noise is seeded from ``(seed, split, first row)``
    of each batch: a shard is reproduced by the same command (the same batch_size)."""
    from ..monitor import log
    from .i2e import i2e_convert

    loader = torch.utils.data.DataLoader(
        _Prepared(plan.dataset, image_size, source, plan.skip),
        batch_sampler=list(_batches(plan.ranges, shard_ids, batch_size)),
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        prefetch_factor=4 if num_workers > 0 else None,
    )
    written: list[int] = []
    queue = iter(shard_ids)
    buf = ShardBuffer(next(queue, -1))
    for images_BCHW, labels_B, index_B, errors, skipped in loader:
        if failed := next((e for e in errors if e), None):
            raise UserError(failed)
        keep = [b for b, reason in enumerate(skipped) if not reason]
        for b, reason in enumerate(skipped):
            if reason:
                index = int(index_B[b])
                log.warning(
                    "leaving out unreadable %s image (dataset.skip_corrupt=true): %s", plan.name, reason
                )
                buf.skipped.append(
                    {
                        "index": index,
                        "file_path": source(index),
                        "reason": reason,
                        "shard": plan.shards.path(buf.index).relative_to(plan.shards.out).as_posix(),
                    }
                )
        if keep:
            images_BCHW = images_BCHW[keep].to(device, non_blocking=True)
            # Fixed pairs (evaluation mode): [T, B, 2, H, W] -> per-sample [B, T, 2, H, W] on the CPU.
            if sensor is None:
                events_TBCHW = i2e_convert(images_BCHW, ratio, order, dtype=torch.bool)
            else:
                sensor.manual_seed(mix_seed(seed, 1 if plan.name == "train" else 2, int(index_B[keep[0]])))
                events_TBCHW = sensor.convert(images_BCHW, ratio, order, dtype=torch.bool)
            events_BTCHW = events_TBCHW.transpose(0, 1).cpu()
            rows = index_B[keep].tolist()
            plan.shards.add(buf, rows, [source(i) for i in rows], labels_B[keep].tolist(), events_BTCHW)
        progress.update(len(index_B))
        expected = plan.ranges[buf.index]
        if len(buf.rows) + len(buf.skipped) == len(expected):
            # The batch sampler guarantees this; never write a wrong shard.
            if sorted(buf.rows + [s["index"] for s in buf.skipped]) != list(expected) or buf.rows != sorted(
                buf.rows
            ):
                raise RuntimeError(f"{plan.name} shard {buf.index}: rows arrived out of order")
            plan.shards.finish(buf)
            written.append(buf.index)
            buf = ShardBuffer(next(queue, -1))
    return written


def _order_info(order: Any) -> dict[str, Any]:
    from .i2e import fixed_pairs, resolve_order

    try:
        groups = resolve_order(order)
    except ValueError as e:
        raise UserError(str(e)) from None
    return {
        "order": order if isinstance(order, str) else list(groups),
        "groups": list(groups),
        "pairs": [list(p) for p in fixed_pairs(groups)],
    }


# Metadata keys that must match between runs writing into the same folder.
_SAME = ("format", "format_version", "dataset", "ratio", "groups", "image_size", "shard_size", "sensor")


def _check_compatible(path: Path, old: dict[str, Any], new: dict[str, Any]) -> None:
    flat_old = {**old, **old.get("i2e", {}), **old.get("source", {})}
    flat_new = {**new, **new["i2e"], **new["source"]}
    for key in _SAME:
        if flat_old.get(key) != flat_new.get(key):
            raise UserError(
                f"'{path.parent}' was converted with {key}={flat_old.get(key)!r}, this run has "
                f"{key}={flat_new.get(key)!r}; convert into a new output folder or delete the old one"
            )
    for split, info in new["splits"].items():
        before = old.get("splits", {}).get(split)
        # "images" since unreadable images can be left out; before that, rows were the images.
        images = before and before.get("images", before.get("rows"))
        if before and images != info["images"]:
            raise UserError(
                f"'{path.parent}' holds a {split} split of {images} images, the dataset now "
                f"has {info['images']}; convert into a new output folder"
            )


def _write_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write(path, lambda f: f.write((json.dumps(data, indent=2) + "\n").encode()))


def convert(
    bundle: Any,
    *,
    options: ConvertOptions,
    dataset_name: str,
    dataset_root: str | None,
    image_size: int,
    ratio: float,
    order: str | Sequence[int],
    sensor: Any = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Convert the bundle's splits into ``options.output``; returns the metadata written. A
    ``sensor`` model (``sensor=dvs_realistic``) is applied to the events and recorded."""
    from tqdm import tqdm

    from ..monitor import log
    from .i2e import NUM_STEPS

    if bundle.events:
        raise UserError(f"dataset '{dataset_name}' already consists of events; there is nothing to convert")
    out = Path(options.output).expanduser()
    if out.exists() and not out.is_dir():
        raise UserError(f"output '{out}' exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    try:
        device = resolve_device(options.device, key="device")
    except ValueError as e:
        raise UserError(str(e)) from None
    layout = ParquetShards if options.format == "parquet" else NpzShards

    plans: list[SplitPlan] = []
    for split in options.splits:
        dataset, skip = _unguarded(bundle.train if split == "train" else bundle.val)
        ranges = shard_ranges(len(dataset), options.shard_size)
        shards = layout(out, split, ranges)
        plans.append(SplitPlan(split, dataset, skip, ranges, shards, []))

    meta_path = out / METADATA
    meta: dict[str, Any] = {
        "format": f"i2e-{options.format}",
        "format_version": FORMAT_VERSION,
        "complete": False,
        "created_by": "i2e-convert",
        "source": {
            "dataset": dataset_name,
            "root": dataset_root,
            "num_classes": bundle.num_classes,
            "class_names": list(bundle.class_names),
        },
        "i2e": {
            "ratio": ratio,
            **_order_info(order),
            "random_vectors": False,
            "timesteps": NUM_STEPS,
            "channels": ["ON", "OFF"],
        },
        "sensor": None if sensor is None else {**sensor.settings(), "seed": seed},
        "image_size": image_size,
        "preprocessing": (
            f"RGB, resized to {image_size}x{image_size} with PIL bicubic interpolation unless already "
            "that size; then I2E with each timestep's fixed displacement pair"
        ),
        "events": f"bool [T, C, H, W] = [{NUM_STEPS}, 2, {image_size}, {image_size}] per row",
        "shard_size": options.shard_size,
        # rows: those written; until the split is complete, its images (rows less those left out).
        "splits": {
            p.name: {"images": len(p.dataset), "rows": len(p.dataset), "shards": len(p.ranges)} for p in plans
        },
    }
    if meta_path.exists():
        try:
            old = json.loads(meta_path.read_text())
        except (OSError, ValueError) as e:
            raise UserError(
                f"'{meta_path}' cannot be read ({e}); delete it or use a new output folder"
            ) from None
        _check_compatible(meta_path, old, meta)
        # Splits converted earlier (e.g. split=train, then split=validation) stay recorded.
        meta["splits"] = {**old.get("splits", {}), **meta["splits"]}
        was_complete = bool(old.get("complete")) and all(
            old.get("splits", {}).get(p.name, {}).get("event_rate") is not None for p in plans
        )
    else:
        was_complete = False

    stale, live = remove_stale(sorted(out.glob(f".{METADATA}{TMP_MARK}*")))
    for p in plans:
        p.shards.check_foreign()
        removed, running = remove_stale(p.shards.temporary())
        stale, live = stale + removed, live + running
        p.pending = [k for k in range(len(p.ranges)) if not p.shards.done(k)]
    if stale:
        log.info("removed %d unfinished temporary file(s) left by an interrupted run", stale)
    if live:
        log.warning(
            "'%s' is being written by another process too (its temporary file '%s' is in use); "
            "running two conversions into one folder repeats work",
            out,
            live[0].name,
        )

    todo = [(p, k) for p in plans for k in p.pending]
    total_shards = sum(len(p.ranges) for p in plans)
    if not todo and was_complete:
        finished = json.loads(meta_path.read_text())
        left_out = sum(int(finished["splits"][p.name].get("skipped", 0)) for p in plans)
        log.info(
            "nothing to do: '%s' already holds all %d shards (%s)%s",
            out,
            total_shards,
            ", ".join(f"{p.name} {finished['splits'][p.name]['rows']} rows" for p in plans),
            f"; {left_out} unreadable image(s) were left out, listed in {METADATA}" if left_out else "",
        )
        return finished
    if options.max_shards is not None:
        todo = todo[: options.max_shards]
    if todo:  # incomplete until every shard is written
        _write_json(meta_path, meta)

    log.info(
        "converting %s into '%s' (%s, ratio %s, order %s, %dx%d, %d of %d shards to write, device %s)",
        dataset_name,
        out,
        options.format,
        ratio,
        meta["i2e"]["order"],
        image_size,
        image_size,
        len(todo),
        total_shards,
        device,
    )
    remaining = sum(len(p.ranges[k]) for p, k in todo)
    bar = tqdm(total=remaining, unit="img", disable=not options.progress, dynamic_ncols=True, smoothing=0.1)
    t0 = time.perf_counter()
    try:
        for p in plans:
            mine = [k for q, k in todo if q is p]
            if not mine:
                continue
            bar.set_description(p.name)
            convert_split(
                p,
                image_size=image_size,
                ratio=ratio,
                order=order,
                device=device,
                batch_size=options.batch_size,
                num_workers=resolve_workers(options.num_workers),
                source=SourceIds(p.dataset, dataset_name, p.name, dataset_root),
                progress=bar,
                shard_ids=mine,
                sensor=sensor,
                seed=seed,
            )
    except KeyboardInterrupt:
        bar.close()  # before the message, so that it starts on a line of its own
        done = sum(1 for p in plans for k in range(len(p.ranges)) if p.shards.done(k))
        log.info(
            "interrupted: %d of %d shards are complete; run the same command again to continue",
            done,
            total_shards,
        )
        raise
    finally:
        bar.close()  # also before an error message
    seconds = time.perf_counter() - t0
    if remaining:
        log.info(
            "converted %d images in %.1fs (%.1f images/s)", remaining, seconds, remaining / max(seconds, 1e-9)
        )

    left = sum(1 for p in plans for k in range(len(p.ranges)) if not p.shards.done(k))
    if left:
        log.info(
            "%d of %d shards are still missing (max_shards=%s); run the same command again to continue",
            left,
            total_shards,
            options.max_shards,
        )
        return meta

    for p in plans:
        stats = [p.shards.stats(k) for k in range(len(p.ranges))]
        rate = sum(s.ones for s in stats) / max(sum(s.elements for s in stats), 1)
        skipped = [entry for s in stats for entry in s.skipped]
        meta["splits"][p.name].update(
            rows=sum(s.rows for s in stats), event_rate=rate, skipped=len(skipped), skipped_files=skipped
        )
        if skipped:
            log.warning(
                "%s: %d unreadable image(s) left out (dataset.skip_corrupt=true), e.g. '%s'; "
                "all are listed under splits.%s.skipped_files in '%s'",
                p.name,
                len(skipped),
                skipped[0]["file_path"],
                p.name,
                meta_path,
            )
    # Every row has the same number of event entries, so rows weight the splits exactly.
    splits = meta["splits"].values()
    meta["complete"] = all(info.get("event_rate") is not None for info in splits)
    rows = sum(info["rows"] for info in splits if info.get("event_rate") is not None)
    meta["event_rate"] = sum(
        info["event_rate"] * info["rows"] for info in splits if info.get("event_rate") is not None
    ) / max(rows, 1)
    _write_json(meta_path, meta)
    log.info(
        "done: %s in '%s' (event rate %.2f%%)",
        ", ".join(
            f"{p.name} {meta['splits'][p.name]['rows']} rows in {len(p.ranges)} shard(s)" for p in plans
        ),
        out,
        100 * meta["event_rate"],
    )
    return meta
