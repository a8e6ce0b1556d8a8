"""The one image decoder: any image file PIL reads, as 8-bit RGB.

PIL's ``convert("RGB")`` is only right for 8-bit modes: it clips 16-bit grey ("I;16", as PIL opens
16-bit greyscale PNG and TIFF files) to 255, so a typical 16-bit photograph turns almost white.
:func:`to_rgb8` converts every mode explicitly:

- 8-bit modes (``L``, ``P``, ``RGB``, ``CMYK``, ``YCbCr``, ``RGBX``) and 1-bit ``1``: PIL's own
  conversion (1-bit black/white becomes 0/255).
- 16-bit grey (``I;16``, ``I;16L``, ``I;16B``, ``I;16N``): ``round(value * 255 / 65535)``; a value
  written as ``v * 257`` from 8 bits comes back as exactly ``v``. (16-bit RGB(A) PNGs are already
  reduced to 8 bits by PIL's decoder, which keeps the high byte: within one level.)
- transparency (``RGBA``, ``LA``, ``PA``, premultiplied ``RGBa``/``La``, a palette or ``tRNS``
  colour marked transparent): composited on white. Dropping the alpha instead would show the
  colours hidden under transparent pixels (often black or garbage), i.e. edges nobody sees, and
  I2E turns edges into events.
- 32-bit float ``F``: the float image convention, ``[0, 1]`` scaled to ``0..255`` (rounded); other
  values (HDR, signed, non-finite) are refused: they have no brightness range to map.
- 32-bit integer ``I``: refused. Its values have no agreed range (a 16-bit image stored as 32 bits
  and true 32-bit data look the same), and guessing would be silently wrong.

A refused or unreadable file raises :class:`~.corrupt.UnreadableSampleError` naming it.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from .corrupt import UnreadableSampleError, describe

WHITE = (255, 255, 255, 255)
_GREY16 = ("I;16", "I;16L", "I;16B", "I;16N")
_ALPHA = ("RGBA", "RGBa", "LA", "La", "PA")


class UnmappablePixels(ValueError):
    """Pixels without a brightness range that maps to 8 bits (the message says which and what to do)."""


def to_rgb8(image: Image.Image) -> Image.Image:
    """``image`` as an 8-bit RGB image (see the module docstring for each mode); raises
    :class:`UnmappablePixels` for 32-bit integer images and floats outside [0, 1]."""
    mode = image.mode
    if mode == "RGB":
        return image.copy()
    if mode in _GREY16:
        grey = np.asarray(image).astype(np.uint32)
        # round(v / 257) with integers; 257 is odd, so there are no ties to break.
        return Image.fromarray(((grey + 128) // 257).astype(np.uint8), "L").convert("RGB")
    if mode == "F":
        values = np.asarray(image, dtype=np.float64)
        if values.size and not (np.isfinite(values).all() and values.min() >= 0.0 and values.max() <= 1.0):
            low, high = np.nanmin(values), np.nanmax(values)
            raise UnmappablePixels(
                f"32-bit float pixels from {low:g} to {high:g}; only [0, 1] maps to 8 bits: "
                "save it as an 8- or 16-bit image"
            )
        return Image.fromarray(np.rint(values * 255.0).astype(np.uint8), "L").convert("RGB")
    if mode == "I":
        raise UnmappablePixels(
            "32-bit integer pixels (PIL mode I) have no defined brightness range: "
            "save it as an 8- or 16-bit image"
        )
    if mode in _ALPHA or "transparency" in image.info:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, WHITE), rgba).convert("RGB")
    return image.convert("RGB")


def read_image(path: str | os.PathLike[str]) -> Image.Image:
    """Decode an image file to 8-bit RGB (:func:`to_rgb8`); any failure names the file."""
    try:
        with Image.open(path) as image:
            image.load()
            return to_rgb8(image)
    except UnmappablePixels as e:
        raise UnreadableSampleError(f"cannot read image '{path}': {e}") from None
    except Exception as e:  # noqa: BLE001 - PIL raises many types for broken files
        raise UnreadableSampleError(f"cannot read image '{path}' ({describe(e)})") from None
