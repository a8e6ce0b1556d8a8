"""The conversion's public name, ``i2e_train.i2e`` (DESIGN's Python API): :mod:`i2e_train.events.i2e`."""

from .events.i2e import I2E, fixed_pairs, i2e_convert, i2e_pack, resolve_order

__all__ = ["I2E", "fixed_pairs", "i2e_convert", "i2e_pack", "resolve_order"]
