"""Seeds and per-step randomness: the ground floor every random part of a run draws from.

A run's randomness is a pure function of ``(seed, epoch, step, rank)``: nothing stores generator
states, so a resumed run replays the same augmentation, I2E pairs, sensor noise and event
augmentation. :func:`mix_seed` derives the seeds; :class:`SeededDraws` gives a part its own CPU
generator that the training step reseeds.
"""

from __future__ import annotations

import torch

_MASK63 = (1 << 63) - 1


def mix_seed(*parts: int) -> int:
    """A well-spread 63-bit seed from integers (splitmix64 over the parts)."""
    x = 0x9E3779B97F4A7C15
    for p in parts:
        x = (x ^ (int(p) & 0xFFFFFFFFFFFFFFFF)) & 0xFFFFFFFFFFFFFFFF
        x = (x * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        x ^= x >> 31
        x = (x * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
        x ^= x >> 29
    return x & _MASK63


class SeededDraws:
    """Randomness from an object's own CPU ``torch.Generator`` (never the global RNG), reseeded by the
    trainer every step from ``(seed, epoch, step, rank)`` through :meth:`manual_seed`: a resumed run
    draws the same without storing generator states. Used by I2E's displacement pairs, the sensor
    model and event augmentation."""

    def _init_draws(self, seed: int) -> None:
        self._generator = torch.Generator(device="cpu")
        self._generator.manual_seed(int(seed))

    def manual_seed(self, seed: int) -> None:
        """Reseed the draws (the trainer calls this every step with a derived seed)."""
        self._generator.manual_seed(int(seed))

    def rng_state(self) -> torch.Tensor:
        """State of the generator, to replay a draw."""
        return self._generator.get_state()

    def set_rng_state(self, state: torch.Tensor) -> None:
        """Restore a state returned by :meth:`rng_state`."""
        self._generator.set_state(state)
