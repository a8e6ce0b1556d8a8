"""Tests of the I2E conversion against the independent NumPy reference (tests/reference.py)."""

from __future__ import annotations

import copy
import functools
import math
import random

import numpy as np
import pytest
import torch
from reference import REF_GROUPS, REF_ORDERS, assert_events_equal, ref_convert, ref_fixed_pairs
from skimage import data as skdata
from skimage.transform import resize
from torchvision.transforms import v2

from i2e_train.events.i2e import (
    I2E,
    event_rate,
    fixed_pairs,
    i2e_convert,
    resolve_order,
    uint8_to_float32_table,
)

RATIOS = [0.0, 0.05, 0.07, 0.12, 0.3]
# The paper's uint8 -> float conversion, which I2E's uint8 path must reproduce exactly.
TO_FLOAT = v2.ToDtype(torch.float32, scale=True)


# --------------------------------------------------------------------------
# Real photographs
# --------------------------------------------------------------------------

SIZES = [(17, 23), (32, 32), (64, 48)]


@functools.cache
def _photos() -> tuple[np.ndarray, ...]:
    return (skdata.astronaut(), skdata.coffee(), skdata.chelsea(), skdata.rocket())


@functools.cache
def photo_batch(h: int, w: int) -> np.ndarray:
    """uint8 [4, 3, h, w]: two downscaled photos and two native-resolution crops."""
    astronaut, coffee, chelsea, rocket = _photos()
    imgs = [
        resize(astronaut, (h, w), anti_aliasing=True),
        resize(coffee, (h, w), anti_aliasing=True),
        chelsea[120 : 120 + h, 200 : 200 + w] / 255.0,
        rocket[150 : 150 + h, 280 : 280 + w] / 255.0,
    ]
    batch = np.stack([np.round(im * 255).astype(np.uint8) for im in imgs])
    return np.ascontiguousarray(batch.transpose(0, 3, 1, 2))


@functools.cache
def photo_batch_float(h: int, w: int) -> np.ndarray:
    """float32 [4, 3, h, w] with values that are not multiples of 1/255."""
    astronaut, coffee, chelsea, rocket = _photos()
    imgs = [resize(p, (h, w), anti_aliasing=True) for p in (astronaut, coffee, chelsea, rocket)]
    batch = np.stack(imgs).astype(np.float32)
    return np.ascontiguousarray(batch.transpose(0, 3, 1, 2))


# --------------------------------------------------------------------------
# Exactness against the reference
# --------------------------------------------------------------------------


@pytest.mark.parametrize("order", list(REF_ORDERS))
@pytest.mark.parametrize("ratio", RATIOS)
def test_matches_reference_all_orders(order: str, ratio: float) -> None:
    for h, w in SIZES:
        x = photo_batch_float(h, w)
        events = i2e_convert(torch.from_numpy(x), ratio, order=order)
        expected = ref_convert(x, ratio, ref_fixed_pairs(order))
        assert_events_equal(events, expected)
        if ratio > 0:
            # Guard against a vacuous comparison (e.g. both all-zero).
            assert 0 < expected.mean() < 0.5


@pytest.mark.parametrize("ratio", RATIOS)
def test_uint8_matches_reference_and_todtype(ratio: float) -> None:
    for h, w in [*SIZES, (1, 7), (5, 1)]:
        x8 = photo_batch(h, w) if h > 1 and w > 1 else photo_batch(17, 23)[:, :, :h, :w]
        x8_t = torch.from_numpy(x8)
        events = i2e_convert(x8_t, ratio)
        assert_events_equal(events, ref_convert(x8, ratio, ref_fixed_pairs("gamma_alpha_beta")))
        assert torch.equal(events, i2e_convert(TO_FLOAT(x8_t), ratio))


def every_level_image(rows: int = 32, seed: int = 0) -> torch.Tensor:
    """uint8 [1, 3, rows, 256]: every row a random permutation of all 256 levels (so min 0, max 255)."""
    gen = torch.Generator().manual_seed(seed)
    grey = torch.stack([torch.randperm(256, generator=gen) for _ in range(rows)]).to(torch.uint8)
    return grey.view(1, 1, rows, 256).expand(1, 3, rows, 256).contiguous()


def test_uint8_table_is_torchvision_todtype() -> None:
    levels = torch.arange(256, dtype=torch.uint8)
    table = uint8_to_float32_table("cpu")
    assert table.dtype == torch.float32 and table.shape == (256,)
    assert torch.equal(table, TO_FLOAT(levels))
    # It is the float32 product x * float32(1/255), not the quotient (126 levels differ by 1 ulp).
    np.testing.assert_array_equal(table.numpy(), np.arange(256, dtype=np.float32) * np.float32(1 / 255))
    assert int((table.numpy() != np.arange(256, dtype=np.float32) / np.float32(255)).sum()) == 126


@pytest.mark.parametrize("ratio", [1 / 255, 2 / 255, 3 / 255, 0.07, 0.12])
def test_uint8_equals_todtype_float_at_every_level(ratio: float) -> None:
    # Thresholds of k/255 make many differences of the level table tie with th: a table one ulp
    # off (x / 255) flips events here, so this comparison has teeth (checked below).
    x8 = every_level_image()
    events = i2e_convert(x8, ratio, backend="torch")
    assert torch.equal(events, i2e_convert(TO_FLOAT(x8), ratio, backend="torch"))
    assert_events_equal(events, ref_convert(x8.numpy(), ratio, ref_fixed_pairs("gamma_alpha_beta")))
    if ratio < 0.02:
        assert not torch.equal(events, i2e_convert(x8.float() / 255, ratio, backend="torch"))


@pytest.mark.parametrize("size", [(24, 24), (40, 56), (96, 64)])
def test_uint8_photographs_equal_todtype_float(size: tuple[int, int]) -> None:
    astronaut, coffee, chelsea, _ = _photos()
    x8 = np.stack(
        [
            np.round(resize(p, size, anti_aliasing=True) * 255).astype(np.uint8)
            for p in (astronaut, coffee, chelsea)
        ]
    )
    x8_t = torch.from_numpy(np.ascontiguousarray(x8.transpose(0, 3, 1, 2)))
    for ratio in (1 / 255, 0.05, 0.07, 0.12):
        for order in ("gamma_alpha_beta", "alpha_beta_gamma"):
            events = i2e_convert(x8_t, ratio, order=order, backend="torch")
            assert events.any()
            assert torch.equal(events, i2e_convert(TO_FLOAT(x8_t), ratio, order=order, backend="torch"))


@pytest.mark.parametrize("in_dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_other_float_inputs_are_computed_in_float32(in_dtype: torch.dtype) -> None:
    x = torch.from_numpy(photo_batch_float(17, 23)).to(in_dtype)
    events = i2e_convert(x, 0.07, order="alpha_beta_gamma")
    x32 = x.float().numpy()  # exact for half types; the spec's rounding for float64
    assert_events_equal(events, ref_convert(x32, 0.07, ref_fixed_pairs("alpha_beta_gamma")))


def test_explicit_pairs_match_reference() -> None:
    x = photo_batch(32, 32)
    rng = np.random.default_rng(1)
    for _ in range(3):
        pairs = [tuple(int(p) for p in rng.choice(np.arange(1, 10), 2, replace=False)) for _ in range(8)]
        expected = ref_convert(x, 0.12, pairs)
        assert_events_equal(i2e_convert(torch.from_numpy(x), 0.12, pairs=pairs), expected)
        # The same pairs as an [8, 2] tensor, and the order is ignored.
        as_tensor = torch.tensor(pairs)
        out = i2e_convert(torch.from_numpy(x), 0.12, order="beta_gamma_alpha", pairs=as_tensor)
        assert_events_equal(out, expected)


def test_per_sample_pairs_tensor_matches_reference() -> None:
    x = photo_batch(17, 23)
    gen = torch.Generator().manual_seed(5)
    pairs_tb2 = torch.stack([torch.randperm(9, generator=gen)[:2] + 1 for _ in range(8 * 4)]).view(8, 4, 2)
    events = i2e_convert(torch.from_numpy(x), 0.05, pairs=pairs_tb2)
    assert_events_equal(events, ref_convert(x, 0.05, pairs_tb2.numpy()))


def test_explicit_order_list() -> None:
    x = photo_batch(17, 23)
    order = [7, 7, 0, 3, 3, 1, 2, 5]
    expected = ref_convert(x, 0.07, [REF_GROUPS[g][0] for g in order])
    assert_events_equal(i2e_convert(torch.from_numpy(x), 0.07, order=order), expected)


def test_signed_zero_inputs_match_reference() -> None:
    x = np.zeros((1, 3, 4, 5), dtype=np.float32)
    x[0, :, 1::2, ::2] = -0.0
    x[0, :, 2, 3] = 0.5
    for ratio in (0.0, 0.3):
        for order in REF_ORDERS:
            expected = ref_convert(x, ratio, ref_fixed_pairs(order))
            assert_events_equal(i2e_convert(torch.from_numpy(x), ratio, order=order), expected)


# --------------------------------------------------------------------------
# Per-pixel threshold scale (the sensor model's threshold mismatch)
# --------------------------------------------------------------------------


def lognormal_scale(shape: tuple[int, ...], sigma: float, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.exp(sigma * torch.randn(shape, generator=gen))


@pytest.mark.parametrize("order", ["gamma_alpha_beta", "beta_alpha_gamma"])
@pytest.mark.parametrize("ratio", [0.0, 0.05, 0.12])
def test_threshold_scale_matches_reference(order: str, ratio: float) -> None:
    for h, w in SIZES:
        for x in (photo_batch_float(h, w), photo_batch(h, w)):
            for batch_dim in (4, 1):  # one map per sample, or one broadcast over the batch
                scale = lognormal_scale((batch_dim, 2, h, w), 0.3, seed=h * w + batch_dim)
                events = i2e_convert(torch.from_numpy(x), ratio, order=order, threshold_scale=scale)
                expected = ref_convert(x, ratio, ref_fixed_pairs(order), threshold_scale=scale.numpy())
                assert_events_equal(events, expected)
                if ratio > 0:
                    plain = ref_convert(x, ratio, ref_fixed_pairs(order))
                    assert (expected != plain).any()  # the scale matters on these images


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.uint8, torch.bool])
def test_threshold_scale_dtypes_per_sample_pairs_and_unit_scale(dtype: torch.dtype) -> None:
    x = torch.from_numpy(photo_batch(17, 23))
    gen = torch.Generator().manual_seed(5)
    pairs_tb2 = torch.stack([torch.randperm(9, generator=gen)[:2] + 1 for _ in range(8 * 4)]).view(8, 4, 2)
    scale = lognormal_scale((4, 2, 17, 23), 0.2, seed=1)
    events = i2e_convert(x, 0.07, pairs=pairs_tb2, dtype=dtype, threshold_scale=scale)
    assert events.dtype == dtype
    assert_events_equal(
        events, ref_convert(x.numpy(), 0.07, pairs_tb2.numpy(), threshold_scale=scale.numpy())
    )
    # A scale of exactly 1 is the specification: the same tensor values as no scale at all.
    ones = torch.ones(1, 2, 17, 23)
    for pairs in (None, pairs_tb2):
        plain = i2e_convert(x, 0.07, pairs=pairs, dtype=dtype)
        assert torch.equal(i2e_convert(x, 0.07, pairs=pairs, dtype=dtype, threshold_scale=ones), plain)


def test_threshold_scale_ties_are_exact_products() -> None:
    # dV = [0.25, -0.25, -0.5, 1.0, 0.0] with th = 0.25 (see test_event_at_exact_threshold).
    row = torch.tensor([0.5, 0.75, 0.5, 0.0, 1.0])
    x = row.expand(1, 3, 1, 5).contiguous()
    pairs = [(5, 6)] * 8
    above = lambda v: float(np.nextafter(np.float32(v), np.float32(10)))  # noqa: E731
    scale = torch.ones(1, 2, 1, 5)
    scale[0, 0, 0, 3] = 4.0  # th_on = 1.0 == dV: still ON
    scale[0, 1, 0, 2] = 2.0  # th_off = 0.5 == -dV: still OFF
    events = i2e_convert(x, 0.25, pairs=pairs, threshold_scale=scale)
    assert events[0, 0, 0, 0].tolist() == [1, 0, 0, 1, 0]
    assert events[0, 0, 1, 0].tolist() == [0, 1, 1, 0, 0]
    scale[0, 0, 0, 3] = above(4.0)
    scale[0, 1, 0, 2] = above(2.0)
    scale[0, 0, 0, 0] = above(1.0)
    scale[0, 1, 0, 1] = above(1.0)
    events = i2e_convert(x, 0.25, pairs=pairs, threshold_scale=scale)
    assert events[0, 0, 0, 0].tolist() == [0, 0, 0, 0, 0]
    assert events[0, 0, 1, 0].tolist() == [0, 0, 0, 0, 0]
    assert_events_equal(events, ref_convert(x.numpy(), 0.25, pairs, threshold_scale=scale.numpy()))


def test_threshold_scale_flat_images_and_larger_scale_fewer_events() -> None:
    x = photo_batch(32, 32).copy()
    x[1] = 77
    xt = torch.from_numpy(x)
    for ratio in (0.0, 0.07):
        for s in (0.5, 1.0, 2.0):
            events = i2e_convert(xt, ratio, threshold_scale=torch.full((1, 2, 32, 32), s))
            assert not events[:, 1].any()
            assert events[:, 0].any()
    counts = [
        int(i2e_convert(xt, 0.07, threshold_scale=torch.full((1, 2, 32, 32), s)).sum())
        for s in (0.5, 1.0, 2.0)
    ]
    assert counts[0] > counts[1] > counts[2]


def test_threshold_scale_module_and_validation() -> None:
    x = torch.from_numpy(photo_batch(17, 23))
    scale = lognormal_scale((4, 2, 17, 23), 0.2, seed=2)
    module = I2E(0.07, seed=4, per_sample=True).train()
    state = module.rng_state()
    events = module(x, threshold_scale=scale)
    module.set_rng_state(state)
    pairs = module.sample_pairs(4)
    assert_events_equal(events, ref_convert(x.numpy(), 0.07, pairs.numpy(), threshold_scale=scale.numpy()))
    for bad, match in (
        (scale.double(), "float32"),
        (scale[:2], "shape"),
        (scale[:, :1], "shape"),
        (scale[..., :-1], "shape"),
        (scale[0], "shape"),
    ):
        with pytest.raises(ValueError, match=match):
            i2e_convert(x, 0.07, threshold_scale=bad)
        state = module.rng_state()
        with pytest.raises(ValueError, match=match):
            module(x, threshold_scale=bad)
        assert torch.equal(module.rng_state(), state)  # a rejected batch draws nothing
    with pytest.raises(ValueError, match="triton.*threshold_scale"):
        i2e_convert(x, 0.07, backend="triton", threshold_scale=scale)
    with pytest.raises(ValueError, match="backend 'fast'"):
        i2e_convert(x, 0.07, backend="fast", threshold_scale=scale)
    with pytest.raises(TypeError, match="threshold_scale"):
        i2e_convert(x, 0.07, threshold_scale=scale.numpy())  # type: ignore[arg-type]


# --------------------------------------------------------------------------
# Edge cases of the definition
# --------------------------------------------------------------------------


def test_flat_images_give_no_events() -> None:
    flat = torch.full((2, 3, 9, 11), 0.4)
    for ratio in (0.0, 0.1):
        assert not i2e_convert(flat, ratio).any()
    flat8 = torch.full((1, 3, 9, 11), 200, dtype=torch.uint8)
    assert not i2e_convert(flat8, 0.0).any()
    # V = max over channels is flat even though the channels differ.
    rgb = torch.zeros(1, 3, 6, 6)
    rgb[0, 0] = 0.7
    rgb[0, 1, ::2] = 0.2
    assert not i2e_convert(rgb, 0.0).any()


def test_flat_image_inside_batch() -> None:
    x = photo_batch(17, 23).copy()
    x[1] = 77
    x[3] = 0
    for ratio in (0.0, 0.07):
        events = i2e_convert(torch.from_numpy(x), ratio)
        assert not events[:, 1].any()
        assert not events[:, 3].any()
        assert events[:, 0].any()
        assert events[:, 2].any()
        assert_events_equal(events, ref_convert(x, ratio, ref_fixed_pairs("gamma_alpha_beta")))


def test_event_at_exact_threshold() -> None:
    # One row, horizontal pair (5, 6): dV(x) = V(x + 1) - V(x); values are
    # exact binary fractions so th = 0.25 * (1 - 0) = 0.25 exactly.
    row = torch.tensor([0.5, 0.75, 0.5, 0.0, 1.0])
    x = row.expand(1, 3, 1, 5).contiguous()
    pairs = [(5, 6)] * 8
    events = i2e_convert(x, 0.25, pairs=pairs)
    # dV = [0.25, -0.25, -0.5, 1.0, 0.0]
    assert events[0, 0, 0, 0].tolist() == [1, 0, 0, 1, 0]
    assert events[0, 0, 1, 0].tolist() == [0, 1, 1, 0, 0]
    assert_events_equal(events, ref_convert(x.numpy(), 0.25, pairs))
    # Just above the threshold the events at |dV| == th disappear. The step must
    # be a float32 one: the ratio is rounded to float32 first.
    above = float(np.nextafter(np.float32(0.25), np.float32(1.0)))
    assert i2e_convert(x, math.nextafter(0.25, 1.0), pairs=pairs)[0, 0, 0, 0, 0] == 1
    events = i2e_convert(x, above, pairs=pairs)
    assert events[0, 0, 0, 0].tolist() == [0, 0, 0, 1, 0]
    assert events[0, 0, 1, 0].tolist() == [0, 0, 1, 0, 0]


def test_threshold_is_a_float32_product() -> None:
    # Events at |dV| == float32(ratio) * float32(range), where that float32
    # product lies below both the exact product and the float64 one: any
    # threshold computed in higher precision would drop these events.
    r = np.float32(0.9)
    found = 0
    for ratio in (0.07, 0.12, 0.3, 0.7, 0.11, 0.13, 0.17, 0.19, 0.23):
        th32 = np.float32(ratio) * r
        if not (float(th32) < float(np.float32(ratio)) * float(r) and float(th32) < ratio * float(r)):
            continue
        found += 1
        row = torch.tensor([0.0, float(th32), 0.0, float(r), float(r)])
        x = row.expand(1, 3, 1, 5).contiguous()
        events = i2e_convert(x, ratio, pairs=[(5, 6)] * 8)
        # dV = [th32, -th32, r, 0, 0]
        assert events[0, 0, 0, 0].tolist() == [1, 0, 1, 0, 0]
        assert events[0, 0, 1, 0].tolist() == [0, 1, 0, 0, 0]
        assert_events_equal(events, ref_convert(x.numpy(), ratio, [(5, 6)] * 8))
    assert found > 0


def test_zero_ratio_marks_every_pixel() -> None:
    x = torch.from_numpy(photo_batch(17, 23))
    events = i2e_convert(x, 0.0)
    # With th = 0 each pixel is either ON (dV >= 0) or OFF (dV < 0), never both.
    assert torch.equal(events.sum(dim=2), torch.ones(8, 4, 17, 23))


# --------------------------------------------------------------------------
# Output format
# --------------------------------------------------------------------------


def test_output_shape_dtype_device_values() -> None:
    x = torch.from_numpy(photo_batch(17, 23))
    events = i2e_convert(x, 0.07)
    assert events.shape == (8, 4, 2, 17, 23)
    assert events.dtype == torch.float32
    assert events.device == x.device
    assert set(events.unique().tolist()) == {0.0, 1.0}
    assert event_rate(events) == pytest.approx(events.mean().item())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.uint8, torch.bool])
def test_output_dtypes_agree(dtype: torch.dtype) -> None:
    x = torch.from_numpy(photo_batch(32, 32))
    events = i2e_convert(x, 0.05, dtype=dtype)
    assert events.dtype == dtype
    assert set(events.unique().tolist()) <= {0, 1}
    assert_events_equal(
        events,
        ref_convert(photo_batch(32, 32), 0.05, ref_fixed_pairs("gamma_alpha_beta")),
    )
    module = I2E(0.05, dtype=dtype).eval()
    assert torch.equal(module(x), events)


def test_empty_batch() -> None:
    events = i2e_convert(torch.zeros(0, 3, 5, 7, dtype=torch.uint8), 0.1, dtype=torch.bool)
    assert events.shape == (8, 0, 2, 5, 7)
    assert events.dtype == torch.bool


def test_event_rate() -> None:
    assert event_rate(torch.tensor([1.0, 0.0, 0.0, 1.0])) == 0.5
    assert event_rate(torch.tensor([[True, False, False, False]])) == 0.25
    x = photo_batch(64, 48)
    expected = ref_convert(x, 0.12, ref_fixed_pairs("gamma_alpha_beta")).mean()
    rate = event_rate(i2e_convert(torch.from_numpy(x), 0.12, dtype=torch.bool))
    assert rate == pytest.approx(float(expected), abs=1e-12)


# --------------------------------------------------------------------------
# Module: random vectors, generator, state
# --------------------------------------------------------------------------


def _group_of_step(order: str) -> list[set[tuple[int, int]]]:
    return [set(REF_GROUPS[g]) for g in REF_ORDERS[order]]


@pytest.mark.parametrize("order", ["gamma_alpha_beta", "beta_alpha_gamma"])
def test_train_pairs_lie_in_groups_and_vary(order: str) -> None:
    module = I2E(0.1, order=order, seed=3).train()
    allowed = _group_of_step(order)
    seen: list[set[tuple[int, int]]] = [set() for _ in range(8)]
    draws = []
    for _ in range(60):
        pairs = module.sample_pairs(5)
        assert pairs.shape == (8, 2)
        assert pairs.dtype == torch.long
        for t, (a, b) in enumerate(pairs.tolist()):
            assert (a, b) in allowed[t]
            seen[t].add((a, b))
        draws.append(pairs)
    assert any(not torch.equal(draws[0], d) for d in draws[1:])
    # 60 draws reach every pair of every group (the seed makes this deterministic).
    assert seen == allowed


def test_per_sample_pairs_lie_in_groups_vary_and_are_uniform() -> None:
    order = "alpha_gamma_beta"
    module = I2E(0.1, order=order, per_sample=True, seed=11).train()
    allowed = _group_of_step(order)
    pairs = module.sample_pairs(1200)
    assert pairs.shape == (8, 1200, 2)
    for t in range(8):
        column = [tuple(p) for p in pairs[t].tolist()]
        assert set(column) == allowed[t]
        expected = 1200 / len(allowed[t])
        for pair in allowed[t]:
            assert abs(column.count(pair) - expected) < 0.2 * expected
    # Samples of one batch draw different pairs.
    assert any(not torch.equal(pairs[:, 0], pairs[:, b]) for b in range(1, 1200))


def test_eval_and_fixed_mode_use_fixed_pairs() -> None:
    x = photo_batch(17, 23)
    for order in ("gamma_alpha_beta", "alpha_beta_gamma"):
        expected = ref_convert(x, 0.07, ref_fixed_pairs(order))
        module = I2E(0.07, order=order, seed=0)
        state = module.rng_state()
        assert_events_equal(module.eval()(torch.from_numpy(x)), expected)
        fixed = I2E(0.07, order=order, random_vectors=False).train()
        assert_events_equal(fixed(torch.from_numpy(x)), expected)
        # Neither draws from the generator.
        assert torch.equal(module.rng_state(), state)


def test_fixed_pairs_and_resolve_order() -> None:
    for name, groups in REF_ORDERS.items():
        assert list(resolve_order(name)) == groups
        assert [tuple(p) for p in fixed_pairs(name)] == ref_fixed_pairs(name)
    assert [tuple(p) for p in fixed_pairs()] == ref_fixed_pairs("gamma_alpha_beta")
    assert list(resolve_order([3, 2, 1, 0, 7, 6, 5, 4])) == [3, 2, 1, 0, 7, 6, 5, 4]


def test_same_seed_same_sequence_and_rng_restore() -> None:
    a = I2E(0.1, seed=42, per_sample=True).train()
    b = I2E(0.1, seed=42, per_sample=True).train()
    c = I2E(0.1, seed=43, per_sample=True).train()
    seq_a = [a.sample_pairs(6) for _ in range(5)]
    seq_b = [b.sample_pairs(6) for _ in range(5)]
    seq_c = [c.sample_pairs(6) for _ in range(5)]
    assert all(torch.equal(p, q) for p, q in zip(seq_a, seq_b, strict=True))
    assert not all(torch.equal(p, q) for p, q in zip(seq_a, seq_c, strict=True))

    state = a.rng_state()
    after = [a.sample_pairs(6) for _ in range(3)]
    a.set_rng_state(state)
    assert all(torch.equal(p, a.sample_pairs(6)) for p in after)

    # manual_seed restarts the sequence of a freshly seeded module.
    a.manual_seed(43)
    assert all(torch.equal(p, a.sample_pairs(6)) for p in seq_c)

    # A deep copy (e.g. an EMA model) carries the generator state along.
    twin = copy.deepcopy(a)
    assert torch.equal(twin.sample_pairs(6), a.sample_pairs(6))


def test_generator_does_not_touch_global_rngs() -> None:
    torch_state = torch.get_rng_state()
    py_state = random.getstate()
    module = I2E(0.1, per_sample=True).train()
    module(torch.from_numpy(photo_batch(17, 23)))
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert random.getstate() == py_state


def test_train_output_equals_conversion_with_sampled_pairs() -> None:
    x = torch.from_numpy(photo_batch(17, 23))
    module = I2E(0.07, seed=7).train()
    for _ in range(3):
        state = module.rng_state()
        events = module(x)
        module.set_rng_state(state)
        pairs = module.sample_pairs(x.shape[0])
        assert torch.equal(events, i2e_convert(x, 0.07, pairs=pairs))
        assert_events_equal(events, ref_convert(x.numpy(), 0.07, pairs.tolist()))


def test_per_sample_output_equals_each_sample_alone() -> None:
    x = torch.from_numpy(photo_batch(32, 32))
    module = I2E(0.05, seed=9, per_sample=True).train()
    state = module.rng_state()
    events = module(x)
    module.set_rng_state(state)
    pairs_tb2 = module.sample_pairs(x.shape[0])
    assert len({tuple(pairs_tb2[:, b].flatten().tolist()) for b in range(4)}) > 1
    assert torch.equal(events, i2e_convert(x, 0.05, pairs=pairs_tb2))
    for b in range(x.shape[0]):
        alone = i2e_convert(x[b : b + 1], 0.05, pairs=pairs_tb2[:, b].tolist())
        assert torch.equal(events[:, b : b + 1], alone)
    assert_events_equal(events, ref_convert(x.numpy(), 0.05, pairs_tb2.numpy()))


def test_module_has_no_state_and_repr() -> None:
    module = I2E(0.07, order="beta_gamma_alpha", per_sample=True)
    assert module.state_dict() == {}
    assert list(module.parameters()) == []
    assert list(module.buffers()) == []
    module.load_state_dict({})
    text = repr(module)
    for part in (
        "ratio=0.07",
        "beta_gamma_alpha",
        "random_vectors=True",
        "per_sample=True",
    ):
        assert part in text


# --------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape", [(3, 8, 8), (2, 1, 8, 8), (2, 4, 8, 8), (1, 2, 3, 8, 8), (1, 3, 0, 8), (1, 3, 8, 0)]
)
def test_bad_image_shape(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=r"\[B,3,H,W\]") as info:
        i2e_convert(torch.zeros(shape), 0.1)
    assert str(list(shape)) in str(info.value)
    with pytest.raises(ValueError, match=r"\[B,3,H,W\]"):
        I2E(0.1)(torch.zeros(shape))


def test_bad_image_dtype() -> None:
    with pytest.raises(ValueError, match="int32"):
        i2e_convert(torch.zeros(1, 3, 4, 4, dtype=torch.int32), 0.1)


@pytest.mark.parametrize("ratio", [-0.1, float("nan"), float("inf"), "0.1", None, True])
def test_bad_ratio(ratio: object) -> None:
    with pytest.raises(ValueError, match="ratio"):
        i2e_convert(torch.zeros(1, 3, 4, 4), ratio)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ratio"):
        I2E(ratio)  # type: ignore[arg-type]


def test_bad_order() -> None:
    with pytest.raises(ValueError, match="gamma_alfa_beta") as info:
        resolve_order("gamma_alfa_beta")
    assert "gamma_alpha_beta" in str(info.value)
    assert "\n" not in str(info.value)
    for bad in ([0, 1, 2], [0, 1, 2, 3, 4, 5, 6, 8], [0, 1, 2, 3, 4, 5, 6, -1], 5):
        with pytest.raises(ValueError, match="order"):
            resolve_order(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="nope"):
        I2E(0.1, order="nope")
    with pytest.raises(ValueError, match="nope"):
        i2e_convert(torch.zeros(1, 3, 4, 4), 0.1, order="nope")


@pytest.mark.parametrize(
    "pairs",
    [
        [(5, 6)] * 7,
        [(5, 6)] * 9,
        [(0, 5)] + [(5, 6)] * 7,
        [(5, 10)] + [(5, 6)] * 7,
        [(5, 5)] + [(5, 6)] * 7,
        [(5, 6, 7)] + [(5, 6)] * 7,
        "abcdefgh",
    ],
)
def test_bad_pairs(pairs: object) -> None:
    with pytest.raises(ValueError, match="pairs"):
        i2e_convert(torch.zeros(1, 3, 4, 4), 0.1, pairs=pairs)  # type: ignore[arg-type]


def test_bad_per_sample_pairs_tensor() -> None:
    x = torch.zeros(2, 3, 4, 4)
    good = torch.tensor([[[5, 6], [4, 5]]] * 8)
    i2e_convert(x, 0.1, pairs=good)
    with pytest.raises(ValueError, match="pairs"):
        i2e_convert(x, 0.1, pairs=good[:, :1])  # batch size mismatch
    with pytest.raises(ValueError, match="pairs"):
        i2e_convert(x, 0.1, pairs=good.float())
    bad = good.clone()
    bad[3, 1, 0] = 0
    with pytest.raises(ValueError, match="pairs"):
        i2e_convert(x, 0.1, pairs=bad)


def test_bad_output_dtype() -> None:
    with pytest.raises(ValueError, match="dtype"):
        i2e_convert(torch.zeros(1, 3, 4, 4), 0.1, dtype=torch.int64)
    with pytest.raises(ValueError, match="dtype"):
        I2E(0.1, dtype=torch.int64)


def test_event_rate_empty() -> None:
    with pytest.raises(ValueError, match="empty"):
        event_rate(torch.zeros(0))


# --------------------------------------------------------------------------
# CUDA (runs only where a GPU is present)
# --------------------------------------------------------------------------


@pytest.mark.gpu
def test_cuda_matches_reference() -> None:
    x8 = photo_batch(64, 48)
    xf = photo_batch_float(64, 48)
    for order in REF_ORDERS:
        for ratio in RATIOS:
            events = i2e_convert(torch.from_numpy(xf).cuda(), ratio, order=order)
            assert events.device.type == "cuda"
            assert_events_equal(events, ref_convert(xf, ratio, ref_fixed_pairs(order)))
            events8 = i2e_convert(torch.from_numpy(x8).cuda(), ratio, order=order)
            assert_events_equal(events8, ref_convert(x8, ratio, ref_fixed_pairs(order)))
    module = I2E(0.07, per_sample=True, seed=1).train()
    state = module.rng_state()
    events = module(torch.from_numpy(x8).cuda())
    module.set_rng_state(state)
    pairs = module.sample_pairs(4)
    assert_events_equal(events, ref_convert(x8, 0.07, pairs.numpy()))


@pytest.mark.gpu
def test_cuda_uint8_is_todtype_and_threshold_scale() -> None:
    # torchvision's ToDtype on the GPU computes the same 256 values as the shared (CPU-made) table.
    levels = torch.arange(256, dtype=torch.uint8, device="cuda")
    assert torch.equal(TO_FLOAT(levels).cpu(), uint8_to_float32_table("cpu"))
    x8 = every_level_image().cuda()
    for backend in ("auto", "torch"):
        for ratio in (1 / 255, 2 / 255, 0.07):
            events = i2e_convert(x8, ratio, backend=backend)
            assert torch.equal(events, i2e_convert(TO_FLOAT(x8), ratio, backend=backend))
            assert_events_equal(
                events, ref_convert(x8.cpu().numpy(), ratio, ref_fixed_pairs("gamma_alpha_beta"))
            )
    x = torch.from_numpy(photo_batch(64, 48))
    scale = lognormal_scale((4, 2, 64, 48), 0.3, seed=3)
    events = i2e_convert(x.cuda(), 0.07, threshold_scale=scale.cuda())  # auto: the torch path
    assert_events_equal(
        events, ref_convert(x.numpy(), 0.07, ref_fixed_pairs("gamma_alpha_beta"), scale.numpy())
    )
