"""Event frames as pictures: ON red, OFF blue, on white (used by ``i2e-viz`` and the TensorBoard preview)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    from torch import Tensor

ON_RGB = (214, 39, 40)  # red
OFF_RGB = (31, 119, 180)  # blue
BACKGROUND_RGB = (255, 255, 255)


def event_frames_rgb(
    events_TCHW: Tensor | np.ndarray,
    on: tuple[int, int, int] = ON_RGB,
    off: tuple[int, int, int] = OFF_RGB,
    background: tuple[int, int, int] = BACKGROUND_RGB,
) -> np.ndarray:
    """uint8 ``[T, H, W, 3]``: ON pixels in ``on``, OFF in ``off`` (ON wins where both; I2E never
    emits both, DVS frames may)."""
    import numpy as np
    from torch import Tensor

    ev = events_TCHW.detach().cpu().numpy() if isinstance(events_TCHW, Tensor) else np.asarray(events_TCHW)
    if ev.ndim != 4 or ev.shape[1] != 2:
        raise ValueError(f"expected events [T, 2, H, W], got shape {tuple(ev.shape)}")
    frames = np.empty((*ev.shape[:1], *ev.shape[2:], 3), dtype=np.uint8)
    frames[:] = np.asarray(background, dtype=np.uint8)
    frames[ev[:, 1] > 0] = off
    frames[ev[:, 0] > 0] = on
    return frames
