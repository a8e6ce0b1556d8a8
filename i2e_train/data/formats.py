"""The I2E authors' published event format (docs/formats.md).

A sample is a ``.npy`` file (``np.save``) of a 1-D uint8 array: 8 bytes holding the shape
``(T, C, H, W)`` as four little-endian uint16, then ``np.packbits`` of the flattened boolean events
(big-endian bit order, zero-padded to a whole byte).
"""

from __future__ import annotations

import io
import math

import numpy as np
import torch
from torch import Tensor

_HEADER_BYTES = 8


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
        payload = np.load(io.BytesIO(bytes(data)), allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise ValueError(f"not an I2E event record (np.load failed: {e})") from None
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
