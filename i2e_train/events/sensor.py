"""Sensor realism for I2E events: a simple model of a real DVS pixel array.

I2E's events are ideal: every pixel has the same threshold, nothing fires without a change, nothing
is lost. A real dynamic vision sensor (DVS) differs in a few well-known ways; :class:`SensorModel`
adds them to I2E's events so that one can test whether modelling them closes the sim-to-real gap
(e.g. pre-training on I2E, fine-tuning or evaluating on CIFAR10-DVS). Every effect is off by
default, and with all of them off the events are exactly I2E's (the same tensor is returned).

Effects, in the order they are applied (and why this order):

1. **Threshold mismatch** (``threshold_sigma``, ``threshold_sigma_off``), inside the conversion: it
   needs the temporal differences ``dV``, not the binary events. Each pixel and polarity gets its own
   threshold ``th_on(y, x) = th * s_on(y, x)``, ``th_off(y, x) = th * s_off(y, x)`` (``th`` the
   per-image I2E threshold; one float32 product each, see :func:`i2e_train.i2e.i2e_convert`), with
   ``s = exp(sigma * z)``, ``z ~ N(0, 1)``: a **lognormal** scale of median 1. Why lognormal rather
   than ``clamp(1 + sigma * z, min > 0)``: it is positive by construction, so no clamp piles up
   probability at an arbitrary floor when sigma is large; it is symmetric in log space (``s`` and
   ``1/s`` equally likely), matching a mismatch of thresholds that DVS pixels apply to
   log-intensity changes; and for small sigma it equals ``1 + sigma * z`` to first order, i.e. the
   normal threshold spread of v2e and the DVS literature. ON and OFF maps are independent (separate
   comparators). ``fixed_pattern=True``: one map per image size ``(H, W)``, drawn once from
   ``pattern_seed`` (a real sensor's fixed-pattern noise, the same for every sample and step);
   ``False``: a fresh map per sample per call (an augmentation).
2. **Hot pixels** (``hot_pixel_fraction``): that fraction of the ``H * W`` pixels (rounded to a
   whole number) fires an **ON** event at every timestep (a leaky/stuck pixel's reset transistor
   drives it towards brighter; OFF is left alone). Fixed pattern per ``(H, W)`` from
   ``pattern_seed`` when ``fixed_pattern`` (hot pixels belong to the sensor), else drawn per sample.
3. **Shot noise** (``shot_noise_rate``): background events, each pixel and timestep independently
   fires with probability ``shot_noise_rate``, as ON with probability ``shot_noise_on_fraction``
   and OFF otherwise (one polarity per noise event); added to the events as a logical OR.
4. **Refractory period** (``refractory_steps`` = r): after a pixel emits an event at timestep t it
   cannot emit again at t+1 .. t+r. Per pixel, both polarities together (a DVS pixel has one reset
   for both comparators): an event of either polarity blocks both. Events of both polarities in the
   same timestep are both kept (a timestep is a time bin, not an instant). Suppressed events do not
   happen, so they do not restart the period. It comes after hot pixels and shot noise because those
   are events of the pixel circuit too and are rate-limited by the same reset (a hot pixel with
   r > 0 fires every r + 1 steps).
5. **Event drop** (``drop_rate``): each remaining event is removed independently with this
   probability: losses in the readout (arbiter/bus saturation) after the pixel, hence last.

Randomness: per-sample/per-step draws come from the model's own CPU ``torch.Generator``, which the
trainer reseeds every step (:meth:`SensorModel.manual_seed`, from ``(seed, epoch, step, rank)``),
so a resumed run draws the same noise. Small draws are made on the CPU; the large per-pixel fields
(noise, drops, per-sample maps) are drawn on the events' device by a device generator seeded from
a sub-seed of the CPU generator (copying hundreds of MB of CPU random numbers per step would cost
more than the training step). Reproducible per device; the same seed on CPU and CUDA draws
different noise (different random-number algorithms), but fixed patterns (drawn on the CPU) are
the same everywhere. Nothing touches the global RNGs.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..seeding import SeededDraws, mix_seed
from .i2e import I2E, i2e_convert

__all__ = ["SensorI2E", "SensorModel"]

_EVENT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.uint8, torch.bool)

# Salts of the fixed patterns (mixed with pattern_seed, H, W) and of the sensor's step seed.
_SALT_THRESHOLD = 0x7E5
_SALT_HOT = 0x407
_SALT_SENSOR_STEP = 0x5E2502


def _check_prob(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"sensor.{name} must be a number in [0, 1], got {value!r}")
    return float(value)


def _check_sigma(name: str, value: object) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not math.isfinite(float(value))
        or float(value) < 0
    ):
        raise ValueError(f"sensor.{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def _check_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < 0:
        raise ValueError(f"sensor.{name} must be an integer >= 0, got {value!r}")
    return int(value)


def check_events(events: Tensor, what: str) -> None:
    """Events ``[T, B, 2, H, W]`` (ON, OFF) of a supported dtype."""
    if not isinstance(events, Tensor):
        raise TypeError(f"{what} expects a torch.Tensor [T, B, 2, H, W], got {type(events).__name__}")
    if events.ndim != 5 or events.shape[2] != 2:
        raise ValueError(f"{what} expects events of shape [T, B, 2, H, W], got {list(events.shape)}")
    if events.dtype not in _EVENT_DTYPES:
        names = ", ".join(str(d) for d in _EVENT_DTYPES)
        raise ValueError(f"{what} expects events of dtype {names}; got {events.dtype}")


def device_generator(seed: int, device: torch.device) -> torch.Generator:
    """A generator on ``device`` seeded with ``seed`` (for large per-element draws)."""
    return torch.Generator(device=device).manual_seed(int(seed))


class SensorModel(SeededDraws):
    """Threshold mismatch, hot pixels, shot noise, refractory period and event drop (see the module
    docstring for the model, the order and the randomness).

    Per step: ``manual_seed(seed)``; ``scale = threshold_scale(B, H, W, device)`` (None when there is
    no threshold mismatch); ``events = i2e(images, threshold_scale=scale)``; ``events =
    apply(events)``. :meth:`convert` and :class:`SensorI2E` do these calls.
    """

    def __init__(
        self,
        threshold_sigma: float = 0.0,
        threshold_sigma_off: float | None = None,
        fixed_pattern: bool = True,
        pattern_seed: int = 0,
        shot_noise_rate: float = 0.0,
        shot_noise_on_fraction: float = 0.5,
        refractory_steps: int = 0,
        hot_pixel_fraction: float = 0.0,
        drop_rate: float = 0.0,
        seed: int = 0,
    ) -> None:
        self.threshold_sigma = _check_sigma("threshold_sigma", threshold_sigma)
        self.threshold_sigma_off = (
            self.threshold_sigma
            if threshold_sigma_off is None
            else _check_sigma("threshold_sigma_off", threshold_sigma_off)
        )
        if not isinstance(fixed_pattern, bool):
            raise ValueError(f"sensor.fixed_pattern must be true or false, got {fixed_pattern!r}")
        self.fixed_pattern = fixed_pattern
        self.pattern_seed = _check_int("pattern_seed", pattern_seed)
        self.shot_noise_rate = _check_prob("shot_noise_rate", shot_noise_rate)
        self.shot_noise_on_fraction = _check_prob("shot_noise_on_fraction", shot_noise_on_fraction)
        self.refractory_steps = _check_int("refractory_steps", refractory_steps)
        self.hot_pixel_fraction = _check_prob("hot_pixel_fraction", hot_pixel_fraction)
        self.drop_rate = _check_prob("drop_rate", drop_rate)
        self._init_draws(seed)
        self._patterns: dict[tuple[str, int, int, torch.device], Tensor] = {}

    # ------------------------------------------------------------------ switches
    @property
    def threshold_enabled(self) -> bool:
        """Whether the conversion needs a threshold scale (threshold mismatch on)."""
        return self.threshold_sigma > 0 or self.threshold_sigma_off > 0

    @property
    def events_enabled(self) -> bool:
        """Whether :meth:`apply` changes events (hot pixels, shot noise, refractory or drop on)."""
        return (
            self.hot_pixel_fraction > 0
            or self.shot_noise_rate > 0
            or self.refractory_steps > 0
            or self.drop_rate > 0
        )

    @property
    def enabled(self) -> bool:
        """Whether any effect is on (off: the events are exactly I2E's)."""
        return self.threshold_enabled or self.events_enabled

    # ------------------------------------------------------------------ randomness

    def _sub_seeds(self, n: int) -> list[int]:
        return torch.randint(0, 2**62, (n,), generator=self._generator).tolist()

    # ------------------------------------------------------------------ fixed patterns
    def _pattern(self, kind: str, height: int, width: int, device: torch.device) -> Tensor:
        """A fixed pattern of the sensor for one image size, drawn on the CPU once, cached per device."""
        key = (kind, height, width, device)
        if key not in self._patterns:
            cpu_key = (kind, height, width, torch.device("cpu"))
            if cpu_key not in self._patterns:
                salt = _SALT_THRESHOLD if kind == "threshold" else _SALT_HOT
                gen = torch.Generator().manual_seed(mix_seed(self.pattern_seed, height, width, salt))
                if kind == "threshold":
                    z = torch.randn((1, 2, height, width), generator=gen)
                    self._patterns[cpu_key] = self._lognormal(z)
                else:
                    u = torch.rand((1, height * width), generator=gen)
                    self._patterns[cpu_key] = self._top_k_mask(u, height, width)
            self._patterns[key] = self._patterns[cpu_key].to(device)
        return self._patterns[key]

    def _lognormal(self, z_B2HW: Tensor) -> Tensor:
        """``exp(sigma * z)`` per polarity (float32); a polarity with sigma 0 is exactly 1."""
        sigma = torch.tensor(
            [self.threshold_sigma, self.threshold_sigma_off], dtype=torch.float32, device=z_B2HW.device
        )
        return torch.exp(z_B2HW * sigma.view(1, 2, 1, 1))

    def hot_pixel_count(self, height: int, width: int) -> int:
        """How many of the ``H * W`` pixels are hot: ``hot_pixel_fraction * H * W`` rounded half up."""
        return math.floor(self.hot_pixel_fraction * height * width + 0.5)

    def _top_k_mask(self, u_BN: Tensor, height: int, width: int) -> Tensor:
        """bool ``[B, H, W]``: the ``hot_pixel_count`` pixels with the largest draws of each row."""
        k = self.hot_pixel_count(height, width)
        mask = torch.zeros(u_BN.shape, dtype=torch.bool, device=u_BN.device)
        if k > 0:
            mask.scatter_(1, u_BN.topk(k, dim=1).indices, True)
        return mask.view(-1, height, width)

    def threshold_pattern(self, height: int, width: int, device: torch.device | str = "cpu") -> Tensor:
        """The sensor's fixed threshold-scale map ``[1, 2, H, W]`` (``fixed_pattern``), float32."""
        return self._pattern("threshold", height, width, torch.device(device))

    def hot_pixel_pattern(self, height: int, width: int, device: torch.device | str = "cpu") -> Tensor:
        """The sensor's fixed hot pixels, bool ``[1, H, W]`` (``fixed_pattern``)."""
        return self._pattern("hot", height, width, torch.device(device))

    # ------------------------------------------------------------------ the conversion part
    def threshold_scale(
        self, batch: int, height: int, width: int, device: torch.device | str = "cpu"
    ) -> Tensor | None:
        """Per-pixel threshold multipliers for :func:`i2e_train.i2e.i2e_convert`: float32
        ``[1, 2, H, W]`` (fixed pattern) or ``[B, 2, H, W]`` (drawn per sample), or None when the
        threshold mismatch is off (then convert without a scale: the unchanged specification)."""
        if not self.threshold_enabled:
            return None
        device = torch.device(device)
        if self.fixed_pattern:
            return self.threshold_pattern(height, width, device)
        (seed,) = self._sub_seeds(1)
        z = torch.randn((batch, 2, height, width), generator=device_generator(seed, device), device=device)
        return self._lognormal(z)

    # ------------------------------------------------------------------ the event part
    def apply(self, events: Tensor) -> Tensor:
        """Hot pixels, shot noise, refractory period and drop on events ``[T, B, 2, H, W]`` (0/1;
        any nonzero value counts as an event). Same dtype and device; the input itself when these
        effects are off."""
        check_events(events, "SensorModel.apply")
        if not self.events_enabled:
            return events
        steps, batch, _, height, width = events.shape
        device = events.device
        # One sub-seed per effect, always drawn: switching one effect leaves the others' draws alone.
        seed_hot, seed_shot, seed_drop = self._sub_seeds(3)
        ev = events != 0  # a new bool tensor [T, B, 2, H, W]

        if self.hot_pixel_fraction > 0:
            if self.fixed_pattern:
                hot_BHW = self.hot_pixel_pattern(height, width, device)
            else:
                gen = device_generator(seed_hot, device)
                u = torch.rand((batch, height * width), generator=gen, device=device)
                hot_BHW = self._top_k_mask(u, height, width)
            ev[:, :, 0] |= hot_BHW

        if self.shot_noise_rate > 0:
            # One uniform per pixel and timestep: u < rate * f -> ON, rate * f <= u < rate -> OFF.
            gen = device_generator(seed_shot, device)
            u = torch.rand((steps, batch, height, width), generator=gen, device=device)
            on_below = self.shot_noise_rate * self.shot_noise_on_fraction
            ev[:, :, 0] |= u < on_below
            ev[:, :, 1] |= (u >= on_below) & (u < self.shot_noise_rate)

        if self.refractory_steps > 0:
            ev = self._refractory(ev)

        if self.drop_rate > 0:
            gen = device_generator(seed_drop, device)
            ev &= torch.rand(ev.shape, generator=gen, device=device) >= self.drop_rate

        return ev if events.dtype == torch.bool else ev.to(events.dtype)

    def _refractory(self, ev: Tensor) -> Tensor:
        """Sequential over the timesteps (not the samples): a pixel that emitted at t is silent at
        t+1 .. t+r; suppressed events do not restart the period."""
        steps, batch, _, height, width = ev.shape
        r = self.refractory_steps
        last = torch.full((batch, height, width), -(r + 1), dtype=torch.int64, device=ev.device)
        for t in range(steps):
            ready = (t - last) > r
            ev[t] &= ready.unsqueeze(1)
            last = torch.where(ev[t].any(dim=1), t, last)
        return ev

    # ------------------------------------------------------------------ convenience
    def convert(
        self,
        images: Tensor,
        ratio: float,
        order: str | Sequence[int] = "gamma_alpha_beta",
        pairs: Sequence[tuple[int, int]] | Tensor | None = None,
        dtype: torch.dtype = torch.float32,
        backend: str = "auto",
    ) -> Tensor:
        """``i2e_convert`` of ``images`` through this sensor (threshold mismatch, then the event
        effects): what ``i2e-convert`` and ``i2e-viz`` call after ``manual_seed``."""
        batch, _, height, width = images.shape
        scale = self.threshold_scale(batch, height, width, images.device)
        events = i2e_convert(
            images, ratio, order, pairs=pairs, dtype=dtype, backend=backend, threshold_scale=scale
        )
        return self.apply(events)

    def settings(self) -> dict[str, object]:
        return {
            "threshold_sigma": self.threshold_sigma,
            "threshold_sigma_off": self.threshold_sigma_off,
            "fixed_pattern": self.fixed_pattern,
            "pattern_seed": self.pattern_seed,
            "shot_noise_rate": self.shot_noise_rate,
            "shot_noise_on_fraction": self.shot_noise_on_fraction,
            "refractory_steps": self.refractory_steps,
            "hot_pixel_fraction": self.hot_pixel_fraction,
            "drop_rate": self.drop_rate,
        }

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v}" for k, v in self.settings().items())
        return f"SensorModel({inner})"


class SensorI2E(nn.Module):
    """An :class:`~i2e_train.i2e.I2E` converter seen through a :class:`SensorModel`: a drop-in
    replacement for the trainer's converter (``converter(images) -> events [T, B, 2, H, W]``).

    In training mode the sensor is applied; in eval mode only when ``apply_in_eval`` (the config's
    ``sensor.eval``), else eval events are plain I2E. :meth:`manual_seed` reseeds the I2E pair
    generator with ``seed`` itself (the same pairs as without a sensor) and the sensor with
    ``mix_seed(seed, 0x5E2502)``. For reproducible evaluation with the sensor on, call
    ``manual_seed`` before each evaluation batch (e.g. with ``mix_seed(seed, batch_index)``).
    """

    def __init__(self, i2e: I2E, sensor: SensorModel, apply_in_eval: bool = False) -> None:
        super().__init__()
        self.i2e = i2e
        self.sensor = sensor
        self.apply_in_eval = bool(apply_in_eval)

    @property
    def ratio(self) -> float:
        return self.i2e.ratio

    @property
    def order(self) -> tuple[int, ...]:
        return self.i2e.order

    @property
    def dtype(self) -> torch.dtype:
        return self.i2e.dtype

    def sensor_active(self) -> bool:
        """Whether the next forward applies the sensor (its mode and settings)."""
        return self.sensor.enabled and (self.training or self.apply_in_eval)

    def forward(self, images: Tensor) -> Tensor:
        if not self.sensor_active():
            return self.i2e(images)
        batch, _, height, width = images.shape
        scale = self.sensor.threshold_scale(batch, height, width, images.device)
        return self.sensor.apply(self.i2e(images, threshold_scale=scale))

    def manual_seed(self, seed: int) -> None:
        self.i2e.manual_seed(seed)
        self.sensor.manual_seed(mix_seed(seed, _SALT_SENSOR_STEP))

    def resolved_backend(self, device: torch.device | str) -> str:
        """``torch`` while a threshold mismatch is applied (the kernel has none), else I2E's."""
        if self.sensor_active() and self.sensor.threshold_enabled:
            return "torch"
        return self.i2e.resolved_backend(device)

    def extra_repr(self) -> str:
        return f"sensor={self.sensor!r}, apply_in_eval={self.apply_in_eval}"
