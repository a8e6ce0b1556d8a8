"""The I2E authors' published event format (docs/formats.md).

A sample is a ``.npy`` file (``np.save``) of a 1-D uint8 array: 8 bytes holding the shape
``(T, C, H, W)`` as four little-endian uint16, then ``np.packbits`` of the flattened boolean events
(big-endian bit order, zero-padded to a whole byte).
"""

from __future__ import annotations

import io
import math
import os
import zipfile
import zlib
from typing import BinaryIO

import numpy as np
import torch
from torch import Tensor

_HEADER_BYTES = 8


class _NotThere(ValueError):
    """An archive without the requested array (its message is already the reason)."""


def numpy_reason(exc: BaseException) -> str:
    """Why ``np.load(..., allow_pickle=False)`` failed, in a few words. For bytes that are neither
    .npy nor .npz NumPy falls back to pickle and then advises loading with ``allow_pickle``: advice
    that would run whatever the file holds, so it is replaced by what is actually wrong."""
    text = str(exc).strip().splitlines()
    first = text[0][:200] if text else ""
    if "allow_pickle" in first or "pickled" in first:
        return "it holds neither .npy nor .npz data"
    detail = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    if isinstance(exc, zipfile.BadZipFile | zlib.error | EOFError):
        return f"a truncated or damaged .npz archive; {detail}"
    return detail


def read_array(source: str | os.PathLike[str] | BinaryIO, key: str = "arr_0") -> np.ndarray:
    """The array of a .npy file, or array ``key`` of a .npz archive, read without pickles; a
    truncated or foreign file raises ValueError with the reason (:func:`numpy_reason`)."""
    try:
        loaded = np.load(source, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            return loaded
        with loaded:
            if key not in loaded.files:
                raise _NotThere(f"it has no array '{key}' (arrays: {', '.join(loaded.files) or 'none'})")
            return loaded[key]
    except _NotThere:
        raise
    except Exception as e:  # noqa: BLE001 - zipfile, zlib and NumPy raise many types for broken files
        raise ValueError(numpy_reason(e)) from None


def pack_events(events_TCHW: Tensor | np.ndarray) -> bytes:
    """Encode one sample's events ``[T, C, H, W]`` (values in {0, 1}) as published-format bytes."""
    arr = events_TCHW.detach().cpu().numpy() if isinstance(events_TCHW, Tensor) else np.asarray(events_TCHW)
    if arr.ndim != 4:
        raise ValueError(f"pack_events expects events [T, C, H, W], got shape {tuple(arr.shape)}")
    if any(d > 0xFFFF for d in arr.shape):
        raise ValueError(f"pack_events: every dimension must fit in uint16, got shape {tuple(arr.shape)}")
    if arr.dtype != np.bool_:
        if arr.size and not np.isin(arr, (0, 1)).all():
            raise ValueError("pack_events expects binary events (values 0 or 1)")
        arr = arr.astype(np.bool_)
    return encode_packed(np.packbits(arr.reshape(-1), bitorder="big"), arr.shape)


def encode_packed(bits: Tensor | np.ndarray, shape: tuple[int, ...]) -> bytes:
    """Published-format bytes from events that are already bit-packed (big-endian), e.g. a row of
    :func:`i2e_train.i2e.i2e_pack` computed on the GPU; ``shape`` is the events' ``(T, C, H, W)``."""
    packed = bits.detach().cpu().numpy() if isinstance(bits, Tensor) else np.asarray(bits)
    shape = tuple(int(d) for d in shape)
    if len(shape) != 4 or any(not 0 <= d <= 0xFFFF for d in shape):
        raise ValueError(f"encode_packed: shape must be 4 dimensions that fit in uint16, got {shape}")
    if packed.dtype != np.uint8 or packed.ndim != 1 or packed.size != (math.prod(shape) + 7) // 8:
        raise ValueError(
            f"encode_packed: expected {(math.prod(shape) + 7) // 8} packed uint8 bytes for shape {shape}, "
            f"got {packed.dtype} {packed.shape}"
        )
    header = np.asarray(shape, dtype="<u2").view(np.uint8)
    buf = io.BytesIO()
    np.save(buf, np.concatenate([header, packed]), allow_pickle=False)
    return buf.getvalue()


def unpack_events(data: bytes | memoryview) -> Tensor:
    """Decode published-format bytes into a bool tensor ``[T, C, H, W]``."""
    try:
        payload = read_array(io.BytesIO(bytes(data)))
    except ValueError as e:
        raise ValueError(f"not an I2E event record ({e})") from None
    if payload.dtype != np.uint8 or payload.ndim != 1 or payload.size < _HEADER_BYTES:
        raise ValueError(
            f"not an I2E event record: expected a 1-D uint8 array, got {payload.dtype} {payload.shape}"
        )
    shape = tuple(int(d) for d in payload[:_HEADER_BYTES].view("<u2"))
    count = math.prod(shape)
    bits = payload[_HEADER_BYTES:]
    if bits.size != (count + 7) // 8:
        raise ValueError(
            f"corrupt I2E event record: shape {shape} needs {(count + 7) // 8} bytes, found {bits.size}"
        )
    events = np.unpackbits(bits, count=count, bitorder="big").astype(np.bool_)
    return torch.from_numpy(events.reshape(shape))
