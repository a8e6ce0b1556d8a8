"""Write small datasets in the real on-disk formats users download, from real images.

Sources: scikit-image's bundled photographs and scikit-learn's handwritten digits. Every writer
follows the published format of its dataset, so the real loaders (torchvision, SpikingJelly,
pyarrow) read them exactly as they read the official files.
"""

from __future__ import annotations

import json
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

PHOTOS = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "immunohistochemistry",
    "colorwheel",
    "hubble_deep_field",
)
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def photo(index: int) -> np.ndarray:
    import skimage.data

    return getattr(skimage.data, PHOTOS[index % len(PHOTOS)])()[..., :3]


def photo_crops(count: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``count`` real RGB crops ``[N, size, size, 3]`` uint8 (random crops of the photos, resized),
    labelled by the photo they come from (label = i % 10)."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for i in range(count):
        label = i % 10
        src = photo(label)
        h, w = src.shape[:2]
        side = int(rng.integers(min(h, w) // 3, min(h, w)))
        y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        crop = Image.fromarray(src[y : y + side, x : x + side]).resize((size, size), Image.BILINEAR)
        images.append(np.asarray(crop))
        labels.append(label)
    return np.stack(images), np.asarray(labels)


# ----------------------------------------------------------------------------- CIFAR
def _cifar_rows(images_NHWC: np.ndarray) -> np.ndarray:
    # The python version stores each image as 3072 bytes: the red plane, then green, then blue.
    return images_NHWC.transpose(0, 3, 1, 2).reshape(len(images_NHWC), -1).copy()


def write_cifar10(root: Path, per_batch: int = 4, test: int = 10, seed: int = 0) -> dict[str, np.ndarray]:
    """``root/cifar-10-batches-py/`` with data_batch_1..5, test_batch, batches.meta."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    images, labels = photo_crops(5 * per_batch + test, 32, seed)
    for b in range(5):
        sl = slice(b * per_batch, (b + 1) * per_batch)
        entry = {
            "batch_label": f"training batch {b + 1} of 5",
            "labels": labels[sl].tolist(),
            "data": _cifar_rows(images[sl]),
            "filenames": [f"img_{i}.png" for i in range(sl.start, sl.stop)],
        }
        (folder / f"data_batch_{b + 1}").write_bytes(pickle.dumps(entry, protocol=2))
    entry = {
        "batch_label": "testing batch 1 of 1",
        "labels": labels[5 * per_batch :].tolist(),
        "data": _cifar_rows(images[5 * per_batch :]),
        "filenames": [f"test_{i}.png" for i in range(test)],
    }
    (folder / "test_batch").write_bytes(pickle.dumps(entry, protocol=2))
    meta = {"num_cases_per_batch": per_batch, "label_names": CIFAR10_CLASSES, "num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return {
        "train_images": images[: 5 * per_batch],
        "train_labels": labels[: 5 * per_batch],
        "test_images": images[5 * per_batch :],
        "test_labels": labels[5 * per_batch :],
    }


def write_cifar100(root: Path, train: int = 20, test: int = 10, seed: int = 1) -> dict[str, np.ndarray]:
    """``root/cifar-100-python/`` with train, test, meta (fine and coarse labels)."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    images, labels = photo_crops(train + test, 32, seed)
    fine = (labels * 7) % 100  # spread over the 100 classes
    for name, sl in (("train", slice(0, train)), ("test", slice(train, None))):
        entry = {
            "filenames": [f"{name}_{i}.png" for i in range(len(labels[sl]))],
            "batch_label": f"{name}ing batch 1 of 1",
            "fine_labels": fine[sl].tolist(),
            "coarse_labels": (fine[sl] // 5).tolist(),
            "data": _cifar_rows(images[sl]),
        }
        (folder / name).write_bytes(pickle.dumps(entry, protocol=2))
    meta = {
        "fine_label_names": [f"class_{i:02d}" for i in range(100)],
        "coarse_label_names": [f"super_{i}" for i in range(20)],
    }
    (folder / "meta").write_bytes(pickle.dumps(meta, protocol=2))
    return {"train_images": images[:train], "train_labels": fine[:train], "test_images": images[train:]}


# ----------------------------------------------------------------------------- image folders
def write_image_folders(
    root: Path, classes: int = 3, per_class: tuple[int, int] = (4, 2), size: int = 48, seed: int = 0
) -> dict[str, list[Path]]:
    """``root/train/<class>/*.JPEG`` and ``root/val/<class>/*.JPEG`` from real photographs."""
    rng = np.random.default_rng(seed)
    written: dict[str, list[Path]] = {"train": [], "val": []}
    for split, n in zip(("train", "val"), per_class, strict=True):
        for c in range(classes):
            folder = root / split / f"n{c:08d}"
            folder.mkdir(parents=True)
            src = photo(c)
            h, w = src.shape[:2]
            for i in range(n):
                side = int(rng.integers(min(h, w) // 2, min(h, w)))
                y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
                img = Image.fromarray(src[y : y + side, x : x + side]).resize(
                    (size + 16 * (i % 2), size), Image.BILINEAR
                )
                path = folder / f"{split}_{c}_{i}.JPEG"
                img.save(path, quality=92)
                written[split].append(path)
    return written


# ----------------------------------------------------------------------------- MNIST (IDX)
def digits_28() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's real digits as MNIST-like 28x28 uint8 images (20x20 digit in a 4 px margin)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    grey = np.rint(d.images * (255.0 / 16.0)).astype(np.uint8)
    out = np.zeros((len(grey), 28, 28), np.uint8)
    for i, g in enumerate(grey):
        out[i, 4:24, 4:24] = np.asarray(Image.fromarray(g).resize((20, 20), Image.BILINEAR))
    return out, d.target.astype(np.uint8)


def _write_idx(path: Path, array: np.ndarray) -> None:
    # IDX: two zero bytes, the type code (0x08 = unsigned byte), the number of dimensions, then
    # each dimension as a big-endian int32, then the data.
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}i", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_mnist(root: Path, kind: str = "MNIST", train: int = 24, test: int = 12) -> dict[str, np.ndarray]:
    """``root/<kind>/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte`` (uncompressed IDX)."""
    images, labels = digits_28()
    raw = root / kind / "raw"
    raw.mkdir(parents=True)
    _write_idx(raw / "train-images-idx3-ubyte", images[:train])
    _write_idx(raw / "train-labels-idx1-ubyte", labels[:train])
    _write_idx(raw / "t10k-images-idx3-ubyte", images[train : train + test])
    _write_idx(raw / "t10k-labels-idx1-ubyte", labels[train : train + test])
    return {
        "train_images": images[:train],
        "train_labels": labels[:train],
        "test_images": images[train : train + test],
    }


# ----------------------------------------------------------------------------- CIFAR10-DVS (AEDAT)
AEDAT_HEADER = (
    b"#!AER-DAT2.0\r\n"
    b"# This is a raw AE data file - do not edit\r\n"
    b"# Data format is int32 address, int32 timestamp (8 bytes total), repeated for each event\r\n"
    b"# Timestamps tick is 1 us\r\n"
    b"# created by the i2e-train tests\r\n"
)


def events_from_image(image_HW3: np.ndarray, ratio: float = 0.1) -> dict[str, np.ndarray]:
    """Plausible sensor events for a 128x128 view of a real image: its I2E events, in time order."""
    from i2e_train.events.i2e import i2e_convert

    img = torch.from_numpy(np.array(Image.fromarray(image_HW3).resize((128, 128), Image.BILINEAR)))
    ev = i2e_convert(img.permute(2, 0, 1)[None], ratio=ratio)[:, 0]  # [T, 2, H, W]
    t_idx, pol, ys, xs = torch.nonzero(ev, as_tuple=True)
    # Within a timestep, events arrive in a shuffled order at increasing microsecond times.
    rng = np.random.default_rng(int(ev.sum()))
    order = np.lexsort((rng.random(len(t_idx)), t_idx.numpy()))
    t = t_idx.numpy()[order].astype(np.int64) * 10_000 + np.arange(len(order))
    return {"t": t, "x": xs.numpy()[order], "y": ys.numpy()[order], "p": 1 - pol.numpy()[order]}


def write_aedat(path: Path, events: dict[str, np.ndarray]) -> None:
    """One CIFAR10-DVS recording in the DVS128 AEDAT 2.0 layout SpikingJelly's reader parses.

    SpikingJelly decodes address bits as x_raw = (a & 0xFE) >> 1, y_raw = (a & 0x7F00) >> 8,
    p_raw = a & 1 and reports x = 127 - y_raw, y = 127 - x_raw, p = 1 - p_raw; we encode the inverse.
    """
    x, y, p = events["x"].astype(np.int64), events["y"].astype(np.int64), events["p"].astype(np.int64)
    y_raw, x_raw, p_raw = 127 - x, 127 - y, 1 - p
    address = (y_raw << 8) | (x_raw << 1) | p_raw
    words = np.empty(2 * len(address), dtype=">u4")
    words[0::2] = address
    words[1::2] = events["t"]
    path.write_bytes(AEDAT_HEADER + words.tobytes())


def write_cifar10_dvs(
    root: Path, per_class: int = 3, seed: int = 0
) -> dict[tuple[str, int], dict[str, np.ndarray]]:
    """``root/download/<class>.zip`` (ten archives, each ``<class>/cifar10_<class>_<i>.aedat``)."""
    images, _ = photo_crops(10 * per_class, 64, seed)
    download = root / "download"
    download.mkdir(parents=True)
    written = {}
    for c, name in enumerate(CIFAR10_CLASSES):
        with zipfile.ZipFile(download / f"{name}.zip", "w") as zf:
            for i in range(per_class):
                events = events_from_image(images[c * per_class + i])
                tmp = root / f"cifar10_{name}_{i}.aedat"
                write_aedat(tmp, events)
                zf.write(tmp, f"{name}/cifar10_{name}_{i}.aedat")
                tmp.unlink()
                written[(name, i)] = events
    return written


# ----------------------------------------------------------------------------- I2E pre-converted
def digit_events(count: int, size: int = 32, ratio: float = 0.10) -> tuple[torch.Tensor, np.ndarray]:
    """Real digits converted by I2E: events ``[N, 8, 2, size, size]`` (bool) and labels."""
    from i2e_train.data.digits import load_digits_uint8
    from i2e_train.events.i2e import i2e_convert

    images, labels = load_digits_uint8(size)
    ev = i2e_convert(images[:count], ratio=ratio, dtype=torch.bool)  # [T, N, 2, H, W]
    return ev.transpose(0, 1).contiguous(), labels[:count].numpy()


def write_i2e_parquet(
    root: Path,
    events: torch.Tensor,
    labels: np.ndarray,
    *,
    shards: int = 2,
    row_group_size: int = 8,
    val: int = 10,
) -> None:
    """``root/train-0000i-of-0000n.parquet`` and ``root/validation-00000-of-00001.parquet``
    (columns data: packed events bytes, label: int64), with Hugging Face ClassLabel metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from i2e_train.data.formats import pack_events

    root.mkdir(parents=True, exist_ok=True)
    features = {
        "data": {"dtype": "binary", "_type": "Value"},
        "label": {"names": [f"digit_{i}" for i in range(10)], "_type": "ClassLabel"},
    }
    meta = {b"huggingface": json.dumps({"info": {"features": features}}).encode()}
    schema = pa.schema([("data", pa.binary()), ("label", pa.int64())], metadata=meta)

    def write(path: Path, idx: np.ndarray) -> None:
        table = pa.table(
            {"data": [pack_events(events[i]) for i in idx], "label": labels[idx].astype(np.int64)},
            schema=schema,
        )
        pq.write_table(table, path, row_group_size=row_group_size)

    n_train = len(labels) - val
    parts = np.array_split(np.arange(n_train), shards)
    for s, idx in enumerate(parts):
        write(root / f"train-{s:05d}-of-{shards:05d}.parquet", idx)
    write(root / "validation-00000-of-00001.parquet", np.arange(n_train, len(labels)))


def write_i2e_npz(root: Path, events: torch.Tensor, labels: np.ndarray, val: int = 10) -> None:
    """``root/{train,val}/<label>/<index>.npz`` holding bool ``[T, 2, H, W]`` under ``arr_0``."""
    for i, (ev, label) in enumerate(zip(events, labels, strict=True)):
        split = "val" if i >= len(labels) - val else "train"
        folder = root / split / str(int(label))
        folder.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(folder / f"{i}.npz", ev.numpy().astype(np.bool_))


# ----------------------------------------------------------------------------- 16-bit PNG
def write_png16(path: Path, pixels: np.ndarray) -> None:
    """A 16-bit PNG (grey, grey+alpha, RGB or RGBA by the channel count) written chunk by chunk from
    the PNG specification, for the layouts PIL cannot save from an array (16-bit RGB)."""
    import zlib

    arr = pixels if pixels.ndim == 3 else pixels[:, :, None]
    h, w, c = arr.shape
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[c]
    # Each row: filter type 0 (none), then the big-endian samples.
    raw = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )
