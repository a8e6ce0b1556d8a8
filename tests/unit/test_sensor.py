"""The sensor model (i2e_train.sensor): exactness where it is deterministic, statistics where it is not.

Statistical checks use real photographs (scikit-image) and flat images, with tolerances of 5
binomial standard errors on samples of ~10^5..10^6 trials, so a wrong rate fails and a right one
passes except with negligible probability (and the seeds are fixed anyway).
"""

from __future__ import annotations

import functools
import inspect
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from reference import assert_events_equal, ref_convert, ref_fixed_pairs
from skimage import data as skdata
from skimage.transform import resize

from i2e_train.events.i2e import I2E, i2e_convert
from i2e_train.events.sensor import SensorI2E, SensorModel

ROOT = Path(__file__).resolve().parents[2]
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.uint8, torch.bool]


@functools.cache
def photos(size: int = 128) -> torch.Tensor:
    """uint8 [4, 3, size, size]: astronaut, coffee, chelsea, rocket."""
    imgs = [skdata.astronaut(), skdata.coffee(), skdata.chelsea(), skdata.rocket()]
    small = [np.round(resize(im, (size, size), anti_aliasing=True) * 255).astype(np.uint8) for im in imgs]
    return torch.from_numpy(np.stack(small)).permute(0, 3, 1, 2).contiguous()


def flat(batch: int = 8, size: int = 128) -> torch.Tensor:
    return torch.full((batch, 3, size, size), 90, dtype=torch.uint8)


def within(measured: float, p: float, n: int, sigmas: float = 5.0) -> bool:
    """Whether a measured Bernoulli frequency over n trials is within `sigmas` standard errors of p."""
    return abs(measured - p) <= sigmas * math.sqrt(p * (1 - p) / n)


def events_of(images: torch.Tensor, ratio: float = 0.07, dtype: torch.dtype = torch.bool) -> torch.Tensor:
    return i2e_convert(images, ratio, dtype=dtype)


# --------------------------------------------------------------------------
# Off: exactly I2E
# --------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_all_off_is_exactly_i2e(dtype: torch.dtype) -> None:
    x = photos(64)
    sensor = SensorModel()
    assert not sensor.enabled and not sensor.threshold_enabled and not sensor.events_enabled
    assert sensor.threshold_scale(4, 64, 64) is None
    events = i2e_convert(x, 0.07, dtype=dtype)
    assert sensor.apply(events) is events  # the same tensor, untouched
    sensor.manual_seed(3)
    assert torch.equal(sensor.convert(x, 0.07, dtype=dtype), events)
    # As the trainer's converter: the same pairs and events as the plain module, step after step.
    plain = I2E(0.07, per_sample=True, dtype=dtype).train()
    wrapped = SensorI2E(I2E(0.07, per_sample=True, dtype=dtype), SensorModel()).train()
    for step in range(3):
        plain.manual_seed(step)
        wrapped.manual_seed(step)
        assert torch.equal(wrapped(x), plain(x))


def test_threshold_sigma_zero_is_the_spec() -> None:
    x = photos(64)
    # sigma 0 for ON only: the ON scale is exactly 1, so ON events are the spec's; OFF ones move.
    sensor = SensorModel(threshold_sigma=0.0, threshold_sigma_off=0.3)
    scale = sensor.threshold_scale(4, 64, 64)
    assert torch.equal(scale[:, 0], torch.ones_like(scale[:, 0]))
    assert (scale[:, 1] != 1).all()
    events = sensor.convert(x, 0.07, dtype=torch.bool)
    spec = events_of(x)
    assert torch.equal(events[:, :, 0], spec[:, :, 0])
    assert not torch.equal(events[:, :, 1], spec[:, :, 1])
    assert_events_equal(
        events, ref_convert(x.numpy(), 0.07, ref_fixed_pairs("gamma_alpha_beta"), scale.numpy())
    )


# --------------------------------------------------------------------------
# Threshold mismatch
# --------------------------------------------------------------------------


@pytest.mark.parametrize("fixed", [True, False])
def test_threshold_mismatch_matches_numpy_reference(fixed: bool) -> None:
    x = photos(64)
    sensor = SensorModel(threshold_sigma=0.1, threshold_sigma_off=0.2, fixed_pattern=fixed)
    sensor.manual_seed(1)
    scale = sensor.threshold_scale(4, 64, 64)
    assert scale.dtype == torch.float32
    assert scale.shape == ((1, 2, 64, 64) if fixed else (4, 2, 64, 64))
    for order in ("gamma_alpha_beta", "alpha_beta_gamma"):
        events = i2e_convert(x, 0.07, order=order, threshold_scale=scale)
        assert_events_equal(events, ref_convert(x.numpy(), 0.07, ref_fixed_pairs(order), scale.numpy()))
    # convert() draws the same map after the same seed.
    sensor.manual_seed(1)
    expected = ref_convert(x.numpy(), 0.07, ref_fixed_pairs("gamma_alpha_beta"), scale.numpy())
    assert_events_equal(sensor.convert(x, 0.07), expected)


def test_threshold_pattern_statistics_and_fixedness() -> None:
    sigma_on, sigma_off = 0.15, 0.05
    sensor = SensorModel(threshold_sigma=sigma_on, threshold_sigma_off=sigma_off, pattern_seed=4)
    scale = sensor.threshold_scale(8, 128, 128)
    assert scale.shape == (1, 2, 128, 128)
    log_s = scale.double().log()
    n = 128 * 128
    for c, sigma in ((0, sigma_on), (1, sigma_off)):
        z = log_s[0, c].flatten() / sigma  # should be N(0, 1) draws
        assert abs(float(z.mean())) < 5 / math.sqrt(n)
        assert abs(float(z.std()) - 1) < 5 / math.sqrt(2 * n)
    corr = float(torch.corrcoef(log_s[0].flatten(1))[0, 1])
    assert abs(corr) < 5 / math.sqrt(n)  # ON and OFF maps are independent
    # Fixed: the same map for every call, seed and batch; another pattern_seed or size is another one.
    sensor.manual_seed(99)
    assert torch.equal(sensor.threshold_scale(2, 128, 128), scale)
    twin = SensorModel(threshold_sigma=sigma_on, threshold_sigma_off=sigma_off, pattern_seed=4, seed=7)
    assert torch.equal(twin.threshold_scale(1, 128, 128), scale)
    other = SensorModel(threshold_sigma=sigma_on, threshold_sigma_off=sigma_off, pattern_seed=5)
    assert not torch.equal(other.threshold_scale(1, 128, 128), scale)
    assert sensor.threshold_scale(1, 64, 64).shape == (1, 2, 64, 64)


def test_per_sample_threshold_maps_vary_and_are_seeded() -> None:
    sensor = SensorModel(threshold_sigma=0.2, fixed_pattern=False)
    sensor.manual_seed(5)
    a = sensor.threshold_scale(4, 32, 32)
    b = sensor.threshold_scale(4, 32, 32)
    assert a.shape == (4, 2, 32, 32)
    assert not torch.equal(a, b)  # fresh per call (step)
    assert not torch.equal(a[0], a[1])  # and per sample
    sensor.manual_seed(5)
    assert torch.equal(sensor.threshold_scale(4, 32, 32), a)
    z = a.double().log() / 0.2
    n = z.numel()
    assert abs(float(z.mean())) < 5 / math.sqrt(n) and abs(float(z.std()) - 1) < 5 / math.sqrt(2 * n)


def test_larger_threshold_scale_gives_fewer_events() -> None:
    x = photos(128)
    sensor = SensorModel(threshold_sigma=0.3, pattern_seed=2)
    scale = sensor.threshold_scale(4, 128, 128)
    small = i2e_convert(x, 0.07, dtype=torch.bool, threshold_scale=scale)
    large = i2e_convert(x, 0.07, dtype=torch.bool, threshold_scale=scale * 1.5)
    assert not (large & ~small).any()  # a higher threshold only removes events
    assert int(large.sum()) < int(small.sum())
    # Uniform scales: above 1 fewer events than the spec, below 1 more.
    spec = int(events_of(x).sum())
    up = int(i2e_convert(x, 0.07, threshold_scale=torch.full((1, 2, 128, 128), 1.2)).sum())
    down = int(i2e_convert(x, 0.07, threshold_scale=torch.full((1, 2, 128, 128), 0.8)).sum())
    assert up < spec < down


def test_flat_images_stay_silent_under_threshold_mismatch() -> None:
    sensor = SensorModel(threshold_sigma=0.5, fixed_pattern=False)
    sensor.manual_seed(0)
    for ratio in (0.0, 0.07):
        assert not sensor.convert(flat(4, 32), ratio).any()


# --------------------------------------------------------------------------
# Shot noise
# --------------------------------------------------------------------------


@pytest.mark.parametrize(("rate", "on_fraction"), [(0.02, 0.5), (0.1, 0.8), (0.005, 0.0)])
def test_shot_noise_rate_on_flat_images(rate: float, on_fraction: float) -> None:
    sensor = SensorModel(shot_noise_rate=rate, shot_noise_on_fraction=on_fraction)
    sensor.manual_seed(11)
    events = sensor.convert(flat(8, 128), 0.07, dtype=torch.bool)  # no signal events at all
    n = 8 * 8 * 128 * 128  # timesteps x samples x pixels: ~10^6 trials per polarity
    on, off = events[:, :, 0], events[:, :, 1]
    assert not (on & off).any()  # one polarity per noise event
    assert within(on.float().mean().item(), rate * on_fraction, n)
    assert within(off.float().mean().item(), rate * (1 - on_fraction), n)
    # Spread evenly over timesteps and samples (each cell within 5 standard errors).
    per_step = events.float().mean(dim=(1, 2, 3, 4))
    assert all(within(float(v), rate / 2, 2 * n // 8) for v in per_step)


def test_shot_noise_on_photographs_is_added_as_or() -> None:
    x = photos(128)
    rate = 0.05
    signal = events_of(x)
    sensor = SensorModel(shot_noise_rate=rate)
    sensor.manual_seed(12)
    noisy = sensor.apply(signal)
    assert not (signal & ~noisy).any()  # nothing is removed
    # Where the photograph gave no event, a noise event of each polarity appears at rate / 2.
    quiet = ~signal.any(dim=2)  # [T, B, H, W]
    n = int(quiet.sum())
    assert n > 300_000
    for c in (0, 1):
        measured = noisy[:, :, c][quiet].float().mean().item()
        assert within(measured, rate / 2, n)


# --------------------------------------------------------------------------
# Refractory period
# --------------------------------------------------------------------------


def refractory_reference(events: np.ndarray, r: int) -> np.ndarray:
    """Straightforward per-pixel rule: keep an event unless this pixel kept one in the last r steps."""
    out = events.copy()
    steps = events.shape[0]
    last = np.full(events.shape[1:2] + events.shape[3:], -(10**9))  # [B, H, W]
    for t in range(steps):
        blocked = (t - last) <= r
        out[t, :, 0] &= ~blocked
        out[t, :, 1] &= ~blocked
        fired = out[t, :, 0] | out[t, :, 1]
        last[fired] = t
    return out


@pytest.mark.parametrize("r", [1, 2, 5])
def test_refractory_is_never_violated(r: int) -> None:
    x = photos(128)
    sensor = SensorModel(shot_noise_rate=0.2, refractory_steps=r)
    sensor.manual_seed(r)
    events = sensor.convert(x, 0.05, dtype=torch.bool)
    # Every pixel's event times (either polarity) are more than r steps apart.
    fired = events.any(dim=2).numpy()  # [T, B, H, W]
    for t in range(8):
        for dt in range(1, r + 1):
            if t + dt < 8:
                assert not (fired[t] & fired[t + dt]).any()
    # And exactly the events the rule keeps: the same noise without refractory, filtered.
    no_refractory = SensorModel(shot_noise_rate=0.2)
    no_refractory.manual_seed(r)
    before = no_refractory.convert(x, 0.05, dtype=torch.bool).numpy()
    np.testing.assert_array_equal(events.numpy(), refractory_reference(before, r))
    assert events.sum() < before.sum()


def test_hot_pixel_fires_every_refractory_period() -> None:
    sensor = SensorModel(hot_pixel_fraction=0.01, refractory_steps=2)
    events = sensor.convert(flat(2, 32), 0.07, dtype=torch.bool)
    hot = sensor.hot_pixel_pattern(32, 32)[0]
    assert int(hot.sum()) == 10  # 1% of 1024, rounded
    on = events[:, :, 0][:, :, hot]  # [T, B, 10]
    assert on[[0, 3, 6]].all() and not on[[1, 2, 4, 5, 7]].any()


# --------------------------------------------------------------------------
# Hot pixels
# --------------------------------------------------------------------------


def test_fixed_hot_pixels_fire_at_every_step() -> None:
    x = torch.cat([photos(128), flat(2, 128)])
    fraction = 0.002
    sensor = SensorModel(hot_pixel_fraction=fraction, pattern_seed=3)
    k = round(fraction * 128 * 128)
    hot = sensor.hot_pixel_pattern(128, 128)
    assert hot.shape == (1, 128, 128) and int(hot.sum()) == k == 33
    signal = events_of(x)
    for seed in (0, 1):
        sensor.manual_seed(seed)
        events = sensor.apply(signal)
        assert events[:, :, 0][:, :, hot[0]].all()  # every hot pixel, every step, every sample
        assert torch.equal(events[:, :, 1], signal[:, :, 1])  # OFF untouched
        assert torch.equal(events[:, :, 0] & ~hot, signal[:, :, 0] & ~hot)  # other pixels untouched
    # Flat images: exactly the hot pixels fire.
    assert torch.equal(events[:, 4:, 0], hot.expand(8, 2, 128, 128))
    other = SensorModel(hot_pixel_fraction=fraction, pattern_seed=4).hot_pixel_pattern(128, 128)
    assert not torch.equal(other, hot)


def test_per_sample_hot_pixels() -> None:
    sensor = SensorModel(hot_pixel_fraction=0.01, fixed_pattern=False)
    sensor.manual_seed(2)
    events = sensor.convert(flat(6, 64), 0.07, dtype=torch.bool)
    on = events[:, :, 0]
    k = round(0.01 * 64 * 64)
    always = on.all(dim=0)  # [B, H, W]
    assert torch.equal(always, on.any(dim=0))  # the same pixels at every step
    assert (always.sum(dim=(1, 2)) == k).all()
    assert len({tuple(always[b].flatten().nonzero().flatten().tolist()) for b in range(6)}) == 6
    assert not events[:, :, 1].any()


# --------------------------------------------------------------------------
# Drop
# --------------------------------------------------------------------------


@pytest.mark.parametrize("rate", [0.1, 0.5])
def test_drop_rate(rate: float) -> None:
    signal = events_of(photos(128), ratio=0.03)
    sensor = SensorModel(drop_rate=rate)
    sensor.manual_seed(7)
    dropped = sensor.apply(signal)
    assert not (dropped & ~signal).any()  # only removes
    n = int(signal.sum())
    assert n > 100_000
    removed = 1 - int(dropped.sum()) / n
    assert within(removed, rate, n)


def test_noise_is_subject_to_drop() -> None:
    # Drop is last: it removes noise events too (rate = shot * (1 - drop) on a flat image).
    sensor = SensorModel(shot_noise_rate=0.1, drop_rate=0.5)
    sensor.manual_seed(8)
    events = sensor.convert(flat(8, 128), 0.07, dtype=torch.bool)
    n = 2 * 8 * 8 * 128 * 128
    assert within(events.float().mean().item(), 0.1 / 2 * 0.5, n)


# --------------------------------------------------------------------------
# Dtypes, seeding, module
# --------------------------------------------------------------------------


ALL_ON = {
    "threshold_sigma": 0.1,
    "fixed_pattern": False,
    "shot_noise_rate": 0.03,
    "refractory_steps": 1,
    "hot_pixel_fraction": 0.001,
    "drop_rate": 0.1,
}


def test_output_dtype_is_input_dtype_and_values_agree() -> None:
    x = photos(64)
    outputs = []
    for dtype in DTYPES:
        sensor = SensorModel(**ALL_ON)
        sensor.manual_seed(4)
        out = sensor.convert(x, 0.07, dtype=dtype)
        assert out.dtype == dtype and out.shape == (8, 4, 2, 64, 64)
        assert set(out.unique().tolist()) <= {0, 1}
        outputs.append(out.bool())
    assert all(torch.equal(o, outputs[0]) for o in outputs[1:])


def test_seeding_determinism_and_global_rng() -> None:
    x = photos(64)
    sensor = SensorModel(**ALL_ON)
    torch_state, py_state = torch.get_rng_state(), random.getstate()
    sensor.manual_seed(21)
    a = sensor.convert(x, 0.07)
    sensor.manual_seed(21)
    assert torch.equal(sensor.convert(x, 0.07), a)
    sensor.manual_seed(22)
    assert not torch.equal(sensor.convert(x, 0.07), a)
    assert torch.equal(torch.get_rng_state(), torch_state) and random.getstate() == py_state
    state = sensor.rng_state()
    b = sensor.convert(x, 0.07)
    sensor.set_rng_state(state)
    assert torch.equal(sensor.convert(x, 0.07), b)
    # Switching one effect leaves the others' draws alone: drop alone removes the same events.
    signal = events_of(x)
    only_drop = SensorModel(drop_rate=0.3)
    drop_and_hot = SensorModel(drop_rate=0.3, hot_pixel_fraction=0.01)
    only_drop.manual_seed(5)
    drop_and_hot.manual_seed(5)
    hot = drop_and_hot.hot_pixel_pattern(64, 64)
    kept_a = only_drop.apply(signal)
    kept_b = drop_and_hot.apply(signal)
    assert torch.equal(kept_a[:, :, 1], kept_b[:, :, 1])
    assert torch.equal(kept_a[:, :, 0] & ~hot, kept_b[:, :, 0] & ~hot)


def test_sensor_converter_module() -> None:
    x = photos(64)
    sensor = SensorModel(**ALL_ON)
    conv = SensorI2E(I2E(0.07, per_sample=True), sensor).train()
    plain = I2E(0.07, per_sample=True).train()
    conv.manual_seed(9)
    plain.manual_seed(9)
    pairs = plain.sample_pairs(4)  # the wrapper reseeds I2E with the step seed itself
    conv.manual_seed(9)
    events = conv(x)
    # = the sensor applied to the conversion with those pairs, sensor seeded with the derived seed.
    from i2e_train.seeding import mix_seed

    ref = SensorModel(**ALL_ON)
    ref.manual_seed(mix_seed(9, 0x5E2502))
    assert torch.equal(events, ref.convert(x, 0.07, pairs=pairs))
    assert conv.ratio == 0.07 and conv.resolved_backend("cpu") == "torch"
    assert conv.state_dict() == {}
    # Eval: plain fixed-pair events unless apply_in_eval.
    conv.eval()
    assert torch.equal(conv(x), i2e_convert(x, 0.07))
    with_eval = SensorI2E(I2E(0.07), SensorModel(**ALL_ON), apply_in_eval=True).eval()
    with_eval.manual_seed(0)
    assert not torch.equal(with_eval(x), i2e_convert(x, 0.07))


def test_validation() -> None:
    for kwargs, match in (
        ({"threshold_sigma": -0.1}, "threshold_sigma"),
        ({"threshold_sigma_off": float("nan")}, "threshold_sigma_off"),
        ({"shot_noise_rate": 1.5}, "shot_noise_rate"),
        ({"shot_noise_on_fraction": -0.1}, "shot_noise_on_fraction"),
        ({"refractory_steps": 1.5}, "refractory_steps"),
        ({"refractory_steps": -1}, "refractory_steps"),
        ({"hot_pixel_fraction": 2}, "hot_pixel_fraction"),
        ({"drop_rate": True}, "drop_rate"),
        ({"fixed_pattern": "yes"}, "fixed_pattern"),
    ):
        with pytest.raises(ValueError, match=match):
            SensorModel(**kwargs)
    sensor = SensorModel(drop_rate=0.1)
    with pytest.raises(ValueError, match=r"\[T, B, 2, H, W\]"):
        sensor.apply(torch.zeros(8, 2, 3, 4, 4))
    with pytest.raises(ValueError, match="dtype"):
        sensor.apply(torch.zeros(8, 2, 2, 4, 4, dtype=torch.int64))
    # The fused kernel has no per-pixel thresholds: forcing it with a mismatch is an error.
    with pytest.raises(ValueError, match="triton"):
        SensorModel(threshold_sigma=0.1).convert(photos(64), 0.07, backend="triton")


# --------------------------------------------------------------------------
# Config presets
# --------------------------------------------------------------------------


def _preset(name: str) -> dict:
    return yaml.safe_load((ROOT / "configs" / "sensor" / f"{name}.yaml").read_text())


def test_presets_match_the_constructor() -> None:
    params = set(inspect.signature(SensorModel).parameters) - {"seed"}
    for name in ("none", "dvs_realistic"):
        cfg = _preset(name)
        assert cfg.pop("eval") is False
        assert set(cfg) == params
        SensorModel(**cfg)
    assert not SensorModel(**{k: v for k, v in _preset("none").items() if k != "eval"}).enabled
    realistic = _preset("dvs_realistic")
    assert realistic["shot_noise_rate"] == pytest.approx(1 - math.exp(-5 * 0.01), abs=5e-4)
    assert SensorModel(**{k: v for k, v in realistic.items() if k != "eval"}).enabled
    assert "i2e_train.configs.sensor" in (ROOT / "pyproject.toml").read_text()


# --------------------------------------------------------------------------
# CUDA (runs only where a GPU is present)
# --------------------------------------------------------------------------


@pytest.mark.gpu
def test_cuda_sensor() -> None:
    x = photos(128)
    # Fixed patterns are drawn on the CPU: the same sensor on every device, so the threshold part is
    # the CPU result exactly.
    mismatch = SensorModel(threshold_sigma=0.15)
    assert torch.equal(mismatch.convert(x.cuda(), 0.07).cpu(), mismatch.convert(x, 0.07))
    sensor = SensorModel(**ALL_ON)
    sensor.manual_seed(3)
    a = sensor.convert(x.cuda(), 0.07, dtype=torch.bfloat16)
    sensor.manual_seed(3)
    assert torch.equal(sensor.convert(x.cuda(), 0.07, dtype=torch.bfloat16), a)
    assert a.device.type == "cuda" and a.dtype == torch.bfloat16
    noise = SensorModel(shot_noise_rate=0.02)
    noise.manual_seed(1)
    events = noise.convert(flat(8, 128).cuda(), 0.07, dtype=torch.bool)
    n = 8 * 8 * 128 * 128
    assert within(events[:, :, 0].float().mean().item(), 0.01, n)
    assert within(events[:, :, 1].float().mean().item(), 0.01, n)
