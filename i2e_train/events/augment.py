"""Augmentation in the event domain, for stored events and I2E events alike.

Works on time-major event tensors ``[T, B, 2, H, W]`` (channel 0 ON, 1 OFF) on their device, in
batch: CIFAR10-DVS frames (float32 event *counts* per frame and polarity, after the loader's
transpose), published I2E datasets (0/1), or I2E's output inside the training loop. Every effect is
off by default; with all of them off the input tensor itself is returned.

Per sample, with its own draw:

* ``flip_prob``: horizontal flip (the x axis).
* ``translate`` = k: a shift by ``dy, dx`` drawn uniformly from the integers ``-k .. k``;
  ``translate_mode="roll"`` wraps around (``torch.roll``, as the usual DVS recipe), ``"zero"``
  fills the uncovered border with zeros (no events).
* ``polarity_swap_prob``: ON and OFF exchanged.
* ``time_reverse_prob``: the timesteps in reverse order *and* ON/OFF exchanged: played backwards,
  a brightness increase becomes a decrease, so reversing time alone would be unphysical.
* ``drop_rate``: random event deletion. For 0/1 events each event is removed with probability
  ``drop_rate``; for count frames each of the ``n`` events counted in an entry is removed
  independently, i.e. the count becomes ``Binomial(n, 1 - drop_rate)`` ("binomial thinning",
  which for ``n`` in {0, 1} is exactly the 0/1 rule). bool tensors use the 0/1 rule; every other
  dtype is treated as counts (non-negative integers).

Order: time reversal (with its polarity swap), polarity swap, flip, translation, drop. The first
four are permutations of the entries (the spatial ones and the time/polarity ones act on different
axes and commute; the flip comes before the shift, i.e. ``roll(flip(x), (dy, dx))``), done as one
selection of whole planes and one per-sample gather of pixels, so values are moved, never changed;
the drop comes last.

Randomness: the per-sample parameters are drawn from the augmenter's own CPU ``torch.Generator``
(the same on every device; reseeded by the trainer every step with :meth:`EventAugment.manual_seed`,
so a resumed run draws the same augmentation); the drop's per-entry draws are made on the events'
device by a generator seeded from a sub-seed of the CPU generator. :meth:`EventAugment.sample` and
:meth:`EventAugment.apply` separate drawing from applying (the tests compare against NumPy with the
drawn parameters). The drop's draws differ between devices (different random-number algorithms);
the permutations are the same everywhere, which the first CUDA batch checks
(:mod:`i2e_train.selfcheck`).
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import torch
from torch import Tensor

from ..seeding import SeededDraws
from .sensor import check_events, device_generator

__all__ = ["TRANSLATE_MODES", "EventAugment", "EventAugmentParams"]

TRANSLATE_MODES = ("roll", "zero")


@dataclass
class EventAugmentParams:
    """Per-sample draws (CPU tensors of length B) and the drop's sub-seed."""

    flip: Tensor  # bool [B]
    shift: Tensor  # int64 [B, 2]: (dy, dx), output[y, x] = input[y - dy, x - dx]
    polarity_swap: Tensor  # bool [B]
    time_reverse: Tensor  # bool [B]
    drop_seed: int


def _check_prob(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"event_augment.{name} must be a number in [0, 1], got {value!r}")
    return float(value)


class EventAugment(SeededDraws):
    """Flip, translation, polarity swap, time reversal and drop of events ``[T, B, 2, H, W]``.

    ``augment(events) -> events`` (same shape, dtype and device); :meth:`manual_seed` per step.
    """

    def __init__(
        self,
        flip_prob: float = 0.0,
        translate: int = 0,
        translate_mode: str = "roll",
        polarity_swap_prob: float = 0.0,
        time_reverse_prob: float = 0.0,
        drop_rate: float = 0.0,
        seed: int = 0,
    ) -> None:
        self.flip_prob = _check_prob("flip_prob", flip_prob)
        if isinstance(translate, bool) or not isinstance(translate, numbers.Integral) or translate < 0:
            raise ValueError(f"event_augment.translate must be an integer >= 0 (pixels), got {translate!r}")
        self.translate = int(translate)
        if translate_mode not in TRANSLATE_MODES:
            raise ValueError(
                f"event_augment.translate_mode must be one of {', '.join(TRANSLATE_MODES)}, "
                f"got {translate_mode!r}"
            )
        self.translate_mode = translate_mode
        self.polarity_swap_prob = _check_prob("polarity_swap_prob", polarity_swap_prob)
        self.time_reverse_prob = _check_prob("time_reverse_prob", time_reverse_prob)
        self.drop_rate = _check_prob("drop_rate", drop_rate)
        # None: augment on the events' own device. A device: augment there and return the result to
        # the events' device (the first-batch self-check's fallback when a device disagrees with the CPU).
        self.run_on: torch.device | None = None
        self._init_draws(seed)

    @property
    def permutes(self) -> bool:
        """Whether any of flip / translation / polarity swap / time reversal is on."""
        return (
            self.flip_prob > 0
            or self.translate > 0
            or self.polarity_swap_prob > 0
            or self.time_reverse_prob > 0
        )

    @property
    def enabled(self) -> bool:
        return self.permutes or self.drop_rate > 0

    def sample(self, batch: int) -> EventAugmentParams:
        """Draw the parameters of ``batch`` samples on the CPU. Every parameter is always drawn, so
        switching one effect on or off leaves the others' draws unchanged."""
        g = self._generator
        flip = torch.rand(batch, generator=g) < self.flip_prob
        k = self.translate
        shift = torch.randint(-k, k + 1, (batch, 2), generator=g)
        swap = torch.rand(batch, generator=g) < self.polarity_swap_prob
        reverse = torch.rand(batch, generator=g) < self.time_reverse_prob
        drop_seed = int(torch.randint(0, 2**62, (), generator=g))
        return EventAugmentParams(flip, shift, swap, reverse, drop_seed)

    def apply(self, events: Tensor, params: EventAugmentParams) -> Tensor:
        """The augmentation with given parameters (deterministic)."""
        check_events(events, "EventAugment")
        if not self.enabled:
            return events
        batch = events.shape[1]
        if params.flip.shape != (batch,) or params.shift.shape != (batch, 2):
            raise ValueError(
                f"augmentation parameters for {params.flip.shape[0]} samples, events have {batch}"
            )
        if self.run_on is not None and events.device != self.run_on:
            return self._apply(events.to(self.run_on), params).to(events.device)
        return self._apply(events, params)

    def _apply(self, events: Tensor, params: EventAugmentParams) -> Tensor:
        steps, batch, _, height, width = events.shape
        device = events.device
        out = events
        if self.permutes:
            out = self._permute(events, params, steps, batch, height, width, device)
        if self.drop_rate > 0:
            out = self._drop(out, params.drop_seed)
        return out

    def _permute(
        self,
        events: Tensor,
        params: EventAugmentParams,
        steps: int,
        batch: int,
        height: int,
        width: int,
        device: torch.device,
    ) -> Tensor:
        out = events
        if self.time_reverse_prob > 0 or self.polarity_swap_prob > 0:
            # Whole (t, b, polarity) planes move: one index_select over the planes.
            reverse = params.time_reverse.to(device)
            # Net polarity exchange: the explicit swap, and another one that comes with time reversal.
            swap = (params.polarity_swap ^ params.time_reverse).to(device)
            t = torch.arange(steps, device=device)
            src_t = torch.where(reverse[None, :], steps - 1 - t[:, None], t[:, None])  # [T, B]
            p = torch.arange(2, device=device)
            src_p = torch.where(swap[:, None], 1 - p[None, :], p[None, :])  # [B, 2]
            b = torch.arange(batch, device=device)
            plane = (src_t[:, :, None] * batch + b[None, :, None]) * 2 + src_p[None, :, :]  # [T, B, 2]
            out = out.reshape(steps * batch * 2, height * width).index_select(0, plane.flatten())
            out = out.view(steps, batch, 2, height, width)
        if self.flip_prob > 0 or self.translate > 0:
            # Per sample, output[y, x] = flipped[y - dy, x - dx]; the flip reads column W-1-x. One
            # gather along the pixels with a per-sample index.
            flip = params.flip.to(device)
            dy, dx = params.shift.to(device).unbind(1)  # all 0 when translate == 0
            src_y = torch.arange(height, device=device)[None, :] - dy[:, None]  # [B, H]
            src_x = torch.arange(width, device=device)[None, :] - dx[:, None]  # [B, W]
            valid = None
            if self.translate_mode == "roll":
                src_y = src_y.remainder(height)
                src_x = src_x.remainder(width)
            else:
                valid_y = (src_y >= 0) & (src_y < height)
                valid_x = (src_x >= 0) & (src_x < width)
                valid = valid_y[:, :, None] & valid_x[:, None, :]  # [B, H, W]
                src_y = src_y.clamp(0, height - 1)
                src_x = src_x.clamp(0, width - 1)
            src_x = torch.where(flip[:, None], width - 1 - src_x, src_x)
            index = (src_y[:, :, None] * width + src_x[:, None, :]).view(1, batch, 1, height * width)
            flat = out.reshape(steps, batch, 2, height * width)
            out = torch.gather(flat, 3, index.expand(steps, batch, 2, height * width))
            out = out.view(steps, batch, 2, height, width)
            if valid is not None:
                out = out.masked_fill_(~valid[None, :, None], 0)
        return out

    def _drop(self, events: Tensor, seed: int) -> Tensor:
        gen = device_generator(seed, events.device)
        if events.dtype == torch.bool:
            keep = torch.rand(events.shape, generator=gen, device=events.device) >= self.drop_rate
            return events & keep
        counts = events.float()
        prob = torch.full_like(counts, 1.0 - self.drop_rate)
        return torch.binomial(counts, prob, generator=gen).to(events.dtype)

    def __call__(self, events: Tensor) -> Tensor:
        """The trainer's events hook: ``events [T, B, 2, H, W] -> events``, drawn per sample."""
        check_events(events, "EventAugment")
        if not self.enabled:
            return events
        return self.apply(events, self.sample(events.shape[1]))

    def settings(self) -> dict[str, object]:
        return {
            "flip_prob": self.flip_prob,
            "translate": self.translate,
            "translate_mode": self.translate_mode,
            "polarity_swap_prob": self.polarity_swap_prob,
            "time_reverse_prob": self.time_reverse_prob,
            "drop_rate": self.drop_rate,
        }

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v}" for k, v in self.settings().items())
        return f"EventAugment({inner})"
