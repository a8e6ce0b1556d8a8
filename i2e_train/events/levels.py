"""uint8 image levels as the float32 values I2E converts: torchvision's ``ToDtype(float32, scale=True)``.

One 256-entry table, used by the torch path (:mod:`i2e_train.i2e`) and the fused kernel
(:mod:`i2e_train.i2e_triton`) alike.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor


@functools.cache
def _u8_table_cpu() -> Tensor:
    # Imported here: torchvision is only needed for uint8 images.
    from torchvision.transforms.v2 import functional as TF

    return TF.to_dtype(torch.arange(256, dtype=torch.uint8), torch.float32, scale=True)


@functools.cache
def uint8_to_float32_table(device: torch.device | str = "cpu") -> Tensor:
    """The 256 float32 values I2E gives the uint8 levels 0..255, on ``device``.

    The table IS torchvision's ``v2.ToDtype(torch.float32, scale=True)`` (the paper's pipeline)
    applied to ``arange(256)`` on the CPU: ``x.to(float32).mul_(1 / 255)``, i.e. ``x`` times the
    float32 constant ``float32(1/255)`` — not the quotient ``x / 255``, which differs by one ulp for
    126 of the 256 levels. Computed by calling torchvision, once, so it cannot drift from it; the
    torch path and the Triton kernel both read this one table. Read-only: do not modify it.
    """
    return _u8_table_cpu().to(torch.device(device))
