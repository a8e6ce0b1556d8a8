"""An independent I2E reference for the tests: the spec's tables re-typed on purpose instead of
imported, so that a typo in the package's tables makes the tests fail, and the conversion written
the straightforward way (one image, one timestep at a time, NumPy)."""

from __future__ import annotations

import numpy as np
import torch

REF_GROUPS = [
    [(5, 6), (1, 2), (2, 3), (4, 5), (7, 8), (8, 9)],
    [(5, 2), (4, 1), (6, 3), (7, 4), (8, 5), (9, 6)],
    [(5, 3), (4, 2), (7, 5), (8, 6)],
    [(5, 1), (6, 2), (8, 4), (9, 5)],
    [(9, 4), (6, 1)],
    [(4, 3), (7, 6)],
    [(3, 8), (2, 7)],
    [(8, 1), (9, 2)],
]
REF_ORDERS = {
    "alpha_beta_gamma": [0, 1, 2, 3, 4, 5, 6, 7],
    "alpha_gamma_beta": [0, 1, 4, 5, 6, 7, 2, 3],
    "beta_alpha_gamma": [2, 3, 0, 1, 4, 5, 6, 7],
    "beta_gamma_alpha": [2, 3, 4, 5, 6, 7, 0, 1],
    "gamma_alpha_beta": [4, 5, 6, 7, 0, 1, 2, 3],
    "gamma_beta_alpha": [4, 5, 6, 7, 2, 3, 0, 1],
}


def ref_fixed_pairs(order: str) -> list[tuple[int, int]]:
    return [REF_GROUPS[g][0] for g in REF_ORDERS[order]]


def ref_convert(
    images: np.ndarray, ratio: float, pairs, threshold_scale: np.ndarray | None = None
) -> np.ndarray:
    """Straightforward I2E: one image, one timestep at a time.

    ``pairs``: 8 (from, to) pairs, or an array [8, B, 2] of per-sample pairs.
    ``threshold_scale``: optional float32 [B or 1, 2, H, W]: th_on = th * scale[:, 0] and
    th_off = th * scale[:, 1] per pixel (float32 products).
    Returns bool [8, B, 2, H, W].
    """
    x = images.astype(np.float32)
    if images.dtype == np.uint8:
        # torchvision's ToDtype(float32, scale=True): x * float32(1/255) in float32, not x / 255.
        x = x * np.float32(1 / 255)
        assert x.dtype == np.float32
    pairs = np.asarray(pairs)
    n, _, h, w = x.shape
    out = np.zeros((8, n, 2, h, w), dtype=bool)
    for b in range(n):
        v = x[b].max(axis=0)
        vmax, vmin = v.max(), v.min()
        if vmax == vmin:
            continue
        th = np.float32(ratio) * np.float32(vmax - vmin)
        assert th.dtype == np.float32
        th_on = th_off = th
        if threshold_scale is not None:
            scale = threshold_scale[b if threshold_scale.shape[0] > 1 else 0]
            assert scale.dtype == np.float32
            th_on, th_off = th * scale[0], th * scale[1]
            assert th_on.dtype == th_off.dtype == np.float32
        vp = np.pad(v, 1, mode="edge")
        for t in range(8):
            p_from, p_to = pairs[t, b] if pairs.ndim == 3 else pairs[t]
            rf, cf = (p_from - 1) // 3, (p_from - 1) % 3
            rt, ct = (p_to - 1) // 3, (p_to - 1) % 3
            dv = vp[rt : rt + h, ct : ct + w] - vp[rf : rf + h, cf : cf + w]
            assert dv.dtype == np.float32
            out[t, b, 0] = (dv >= 0) & (dv >= th_on)
            out[t, b, 1] = (dv < 0) & (-dv >= th_off)
    return out


def assert_events_equal(events: torch.Tensor, expected: np.ndarray) -> None:
    got = events.cpu().bool().numpy()
    assert got.shape == expected.shape
    mismatches = int((got != expected).sum())
    assert mismatches == 0, f"{mismatches} event(s) differ from the reference"
