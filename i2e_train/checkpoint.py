"""Checkpoint loading's public name, ``i2e_train.checkpoint`` (DESIGN's Python API):
:mod:`i2e_train.training.checkpoint`."""

from .training.checkpoint import load_weights

__all__ = ["load_weights"]
