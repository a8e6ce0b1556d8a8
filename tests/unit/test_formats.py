"""The published I2E event format: byte layout and round trips."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from i2e_train.data.formats import pack_events, unpack_events


def _reference_bytes(events: np.ndarray) -> bytes:
    """The format written out by hand: uint16 LE shape, then bits MSB-first, zero-padded."""
    flat = events.reshape(-1).astype(int).tolist()
    flat += [0] * (-len(flat) % 8)
    packed = [int("".join(map(str, flat[i : i + 8])), 2) for i in range(0, len(flat), 8)]
    header = b"".join(int(d).to_bytes(2, "little") for d in events.shape)
    payload = np.frombuffer(header + bytes(packed), dtype=np.uint8)
    buf = io.BytesIO()
    np.save(buf, payload)
    return buf.getvalue()


@pytest.mark.parametrize("shape", [(8, 2, 5, 3), (8, 2, 32, 32), (1, 1, 1, 1), (3, 2, 7, 9)])
def test_pack_matches_the_layout_byte_for_byte(shape):
    rng = np.random.default_rng(sum(shape))
    events = rng.random(shape) < 0.2
    data = pack_events(torch.from_numpy(events))
    assert data == _reference_bytes(events)
    assert data == pack_events(events.astype(np.float32))  # numpy input, float values
    out = unpack_events(data)
    assert out.dtype == torch.bool and out.shape == shape
    assert np.array_equal(out.numpy(), events)


def test_header_is_little_endian_uint16_shape():
    data = pack_events(torch.zeros(8, 2, 300, 2, dtype=torch.bool))
    payload = np.load(io.BytesIO(data))
    assert payload.dtype == np.uint8 and payload.ndim == 1
    assert payload[:8].tolist() == [8, 0, 2, 0, 300 & 0xFF, 300 >> 8, 2, 0]
    assert payload.size == 8 + (8 * 2 * 300 * 2 + 7) // 8


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"expects events \[T, C, H, W\]"):
        pack_events(torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match="binary"):
        pack_events(torch.full((1, 1, 2, 2), 2.0))
    with pytest.raises(ValueError, match="not an I2E event record"):
        unpack_events(b"garbage")
    truncated = np.load(io.BytesIO(pack_events(torch.ones(8, 2, 4, 4))))[:-1]
    buf = io.BytesIO()
    np.save(buf, truncated)
    with pytest.raises(ValueError, match="needs 32 bytes, found 31"):
        unpack_events(buf.getvalue())
