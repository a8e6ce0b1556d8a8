"""I2E image-to-event conversion (arXiv 2511.08065).

An RGB image becomes 8 binary ON/OFF event frames. Each timestep compares the
intensity ``V = max(R, G, B)`` at two positions of the 3x3 neighbourhood
(a "displacement pair"), mimicking a small saccade of an event camera, and
emits an event where the change reaches a per-image threshold
``ratio * (max(V) - min(V))``.

The conversion is bit-exact by construction: every temporal difference is a
single float32 subtraction of two shifted views of the padded intensity map.
A convolution would be shorter to write but is not exact on GPUs (TF32,
Winograd), so it is deliberately avoided.

Inputs: float images in [0, 1] (any float dtype, rounded to float32), or uint8 images, which
become ``x * float32(1/255)`` exactly as torchvision's ``v2.ToDtype(torch.float32, scale=True)``
(the paper's pipeline) computes them: ``i2e_convert(x_uint8) == i2e_convert(ToDtype(x_uint8))``.

Optionally (``threshold_scale``, the sensor model of :mod:`i2e_train.sensor`) each pixel and
polarity gets its own threshold ``th * scale``; see :func:`i2e_convert`.
"""

from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ..pairs import (
    DEFAULT_ORDER,
    GROUPS,
    NUM_STEPS,
    ORDERS,
    _order_label,
    _position_rc,
    fixed_pairs,
    resolve_order,
)
from ..seeding import SeededDraws
from .levels import uint8_to_float32_table

__all__ = [
    "GROUPS",
    "BACKENDS",
    "I2E",
    "ORDERS",
    "event_rate",
    "fixed_pairs",
    "i2e_convert",
    "i2e_pack",
    "resolve_order",
    "uint8_to_float32_table",
]

# auto: the fused Triton kernel for CUDA tensors when triton is installed, else torch.
BACKENDS = ("auto", "torch", "triton")

_OUTPUT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.uint8, torch.bool)

# Every group size divides this, so ``randint(0, _DRAW_RANGE) % len(group)`` is
# exactly uniform and one vectorised draw serves groups of different sizes.
_DRAW_RANGE = math.lcm(*(len(g) for g in GROUPS))


def _check_ratio(ratio: float) -> float:
    if (
        isinstance(ratio, bool)
        or not isinstance(ratio, numbers.Real)
        or not math.isfinite(ratio)
        or ratio < 0
    ):
        raise ValueError(f"I2E ratio must be a finite number >= 0, got {ratio!r}")
    return float(ratio)


def _check_images(images: Tensor) -> None:
    if not isinstance(images, Tensor):
        raise TypeError(f"I2E expects a torch.Tensor [B,3,H,W], got {type(images).__name__}")
    if images.ndim != 4 or images.shape[1] != 3 or images.shape[2] < 1 or images.shape[3] < 1:
        raise ValueError(f"I2E expects images of shape [B,3,H,W], got {list(images.shape)}")
    if images.dtype != torch.uint8 and not images.dtype.is_floating_point:
        raise ValueError(f"I2E expects float images in [0,1] or uint8 in [0,255], got dtype {images.dtype}")


def _check_dtype(dtype: torch.dtype) -> None:
    if dtype not in _OUTPUT_DTYPES:
        names = ", ".join(str(d) for d in _OUTPUT_DTYPES)
        raise ValueError(f"unsupported I2E output dtype {dtype}; expected one of {names}")


def _check_pair_list(pairs: object) -> tuple[tuple[int, int], ...]:
    bad = ValueError(
        f"I2E pairs must be {NUM_STEPS} (from, to) pairs of distinct positions in 1..9, got {pairs!r}"
    )
    try:
        checked = tuple((operator.index(p[0]), operator.index(p[1])) for p in pairs)
        lengths_ok = all(len(p) == 2 for p in pairs)
    except (TypeError, IndexError):
        raise bad from None
    if (
        not lengths_ok
        or len(checked) != NUM_STEPS
        or any(not (1 <= a <= 9 and 1 <= b <= 9) or a == b for a, b in checked)
    ):
        raise bad
    return checked


def _check_pair_tensor(pairs_TB2: Tensor, batch_size: int) -> Tensor:
    """Validate per-sample pairs ``[8, B, 2]``; returns them as int64."""
    if pairs_TB2.dtype.is_floating_point or pairs_TB2.dtype.is_complex:
        raise ValueError(f"I2E per-sample pairs must be an integer tensor, got {pairs_TB2.dtype}")
    if pairs_TB2.shape != (NUM_STEPS, batch_size, 2):
        raise ValueError(
            f"I2E per-sample pairs must have shape [{NUM_STEPS}, B={batch_size}, 2], "
            f"got {list(pairs_TB2.shape)}"
        )
    pairs_TB2 = pairs_TB2.long()
    # One host sync if the pairs live on a GPU; the module keeps them on the CPU.
    if bool(((pairs_TB2 < 1) | (pairs_TB2 > 9) | (pairs_TB2[..., 0] == pairs_TB2[..., 1])[..., None]).any()):
        raise ValueError("I2E per-sample pairs must be (from, to) positions in 1..9 with from != to")
    return pairs_TB2


def _intensity(images_BCHW: Tensor) -> Tensor:
    """``V = max(R, G, B)`` in float32.

    The max is taken before the conversion: uint8 -> float32 (``x * float32(1/255)``, see
    :func:`uint8_to_float32_table`) and float -> float32 rounding are both monotone, so the result
    is identical to converting first, at a third of the conversion cost. uint8 goes through the
    256-entry table: exactly torchvision's ``ToDtype(float32, scale=True)`` on CPU and CUDA alike.
    """
    v_BHW = images_BCHW.amax(dim=1)
    if images_BCHW.dtype == torch.uint8:
        table = uint8_to_float32_table(v_BHW.device)
        return table.index_select(0, v_BHW.reshape(-1).int()).view(v_BHW.shape)
    return v_BHW.float()


def _resolve_backend(backend: str, device: torch.device) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"unknown I2E backend {backend!r}; choose one of: {', '.join(BACKENDS)}")
    if backend == "torch":
        return "torch"
    from . import i2e_triton

    if backend == "triton":
        if not i2e_triton.is_available(device):
            raise ValueError(
                f"I2E backend 'triton' is not available for {device} tensors "
                "(needs the triton package and a CUDA GPU); use backend='torch' or 'auto'"
            )
        return "triton"
    # auto: the fused kernel on recent CUDA GPUs; CPU tensors would only run in Triton's slow interpreter.
    return "triton" if i2e_triton.is_preferred(device) else "torch"


def i2e_convert(
    images: Tensor,
    ratio: float,
    order: str | Sequence[int] = DEFAULT_ORDER,
    pairs: Sequence[tuple[int, int]] | Tensor | None = None,
    dtype: torch.dtype = torch.float32,
    backend: str = "auto",
    threshold_scale: Tensor | None = None,
) -> Tensor:
    """Convert images ``[B,3,H,W]`` into events ``[8, B, 2, H, W]`` (ON, OFF).

    ``pairs`` overrides the order's fixed pairs: 8 ``(from, to)`` pairs shared by
    the batch, or an integer tensor ``[8, B, 2]`` with one pair per sample.
    ``backend``: ``auto`` (the fused Triton kernel on CUDA, torch elsewhere), ``torch``
    (the reference path) or ``triton``; all give identical events.

    ``threshold_scale`` (optional): a float32 tensor ``[B or 1, 2, H, W]`` on the images' device,
    a per-pixel, per-polarity multiplier of the per-image threshold ``th`` (channel 0 ON, 1 OFF;
    a leading 1 broadcasts over the batch): ``th_on = th * scale[:, 0]`` and
    ``th_off = th * scale[:, 1]``, each one float32 product, then ``ON = dV >= th_on`` and
    ``OFF = dV < 0 and -dV >= th_off``; a flat image still gives no events. Scales are meant to be
    finite and > 0 (not checked: that would need a device sync); a scale of exactly 1 gives the
    spec's events. Only the torch path implements it: ``auto`` then uses torch, and
    ``backend="triton"`` is an error. ``None`` (the default) is the unchanged specification.
    """
    _check_images(images)
    ratio = _check_ratio(ratio)
    _check_dtype(dtype)
    pairs_checked = _checked_pairs(order, pairs, images.shape[0])
    if threshold_scale is not None:
        _check_threshold_scale(threshold_scale, images)
        if backend not in BACKENDS:
            _resolve_backend(backend, images.device)  # the usual unknown-backend error
        if backend == "triton":
            raise ValueError(
                "I2E backend 'triton' does not support a per-pixel threshold_scale (sensor threshold "
                "mismatch); use backend='torch' or 'auto' (which then takes the torch path)"
            )
        return _convert_torch(images, ratio, pairs_checked, dtype, threshold_scale)
    if _resolve_backend(backend, images.device) == "triton":
        from . import i2e_triton

        return i2e_triton.convert(images, ratio, pairs_checked, dtype)
    return _convert_torch(images, ratio, pairs_checked, dtype)


def _check_threshold_scale(scale: Tensor, images: Tensor) -> None:
    batch, _, height, width = images.shape
    if not isinstance(scale, Tensor):
        raise TypeError(f"I2E threshold_scale must be a torch.Tensor, got {type(scale).__name__}")
    if scale.dtype != torch.float32:
        raise ValueError(f"I2E threshold_scale must be float32, got {scale.dtype}")
    if scale.ndim != 4 or scale.shape[0] not in (1, batch) or tuple(scale.shape[1:]) != (2, height, width):
        raise ValueError(
            f"I2E threshold_scale must have shape [B={batch} or 1, 2, H={height}, W={width}], "
            f"got {list(scale.shape)}"
        )
    if scale.device != images.device:
        raise ValueError(f"I2E threshold_scale is on {scale.device} but the images are on {images.device}")


def i2e_pack(
    images: Tensor,
    ratio: float,
    order: str | Sequence[int] = DEFAULT_ORDER,
    pairs: Sequence[tuple[int, int]] | Tensor | None = None,
    backend: str = "auto",
) -> Tensor:
    """Events bit-packed for storage: uint8 ``[B, 2*H*W]``, row ``b`` = ``np.packbits`` of sample
    ``b``'s ``[8, 2, H, W]`` events (big-endian), the payload of
    :func:`i2e_train.data.formats.pack_events` (see ``formats.encode_packed``)."""
    _check_images(images)
    ratio = _check_ratio(ratio)
    batch, _, height, width = images.shape
    pairs_checked = _checked_pairs(order, pairs, batch)
    if _resolve_backend(backend, images.device) == "triton":
        from . import i2e_triton

        if (height * width) % 8 == 0:
            return i2e_triton.convert(images, ratio, pairs_checked, packed=True)
        # A byte would straddle two event planes: convert, then pack.
        events = i2e_triton.convert(images, ratio, pairs_checked, torch.uint8)
    else:
        events = _convert_torch(images, ratio, pairs_checked, torch.uint8)
    return packbits(events.transpose(0, 1).reshape(batch, -1))


def packbits(bits_BN: Tensor) -> Tensor:
    """``np.packbits(..., bitorder="big")`` of each row of a 0/1 tensor ``[B, N]``, on its device."""
    if bits_BN.device.type == "cpu":
        return torch.from_numpy(np.packbits(bits_BN.to(torch.uint8).numpy(), axis=1, bitorder="big"))
    return _packbits_torch(bits_BN)


def _packbits_torch(bits_BN: Tensor) -> Tensor:
    batch, n = bits_BN.shape
    bits_BN = bits_BN.to(torch.uint8)
    if n % 8:
        bits_BN = nn.functional.pad(bits_BN, (0, 8 - n % 8))
    weights = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8, device=bits_BN.device)
    # Sums of distinct powers of two below 256: exact in uint8.
    return (bits_BN.view(batch, -1, 8) * weights).sum(-1, dtype=torch.uint8)


def _checked_pairs(
    order: str | Sequence[int], pairs: Sequence[tuple[int, int]] | Tensor | None, batch: int
) -> tuple[tuple[int, int], ...] | Tensor:
    """8 shared (from, to) pairs, or validated per-sample pairs ``[8, B, 2]`` (int64)."""
    if isinstance(pairs, Tensor) and pairs.ndim == 3:
        return _check_pair_tensor(pairs, batch)
    if pairs is None:
        return fixed_pairs(order)
    resolve_order(order)  # still reject a bad order even though it is unused
    return _check_pair_list(pairs.tolist() if isinstance(pairs, Tensor) else pairs)


def _convert_torch(
    images: Tensor,
    ratio: float,
    pairs: tuple[tuple[int, int], ...] | Tensor,
    dtype: torch.dtype,
    threshold_scale: Tensor | None = None,
) -> Tensor:
    """The reference path: a handful of whole-tensor torch ops per timestep.

    With ``threshold_scale`` (validated by :func:`i2e_convert`) each timestep compares ``dV`` with
    the per-pixel thresholds ``th * scale`` instead (two comparisons per polarity, written as the
    specification reads); without it the code below is the plain specification path."""
    batch, _, height, width = images.shape
    device = images.device
    per_sample = isinstance(pairs, Tensor)
    if batch == 0:  # aminmax below has nothing to reduce over
        return torch.zeros((NUM_STEPS, 0, 2, height, width), dtype=dtype, device=device)

    v_BHW = _intensity(images)
    vmin_B, vmax_B = v_BHW.reshape(batch, -1).aminmax(dim=1)
    flat_B = vmax_B == vmin_B
    # float32(ratio) * float32(range), spelled out so references can match it.
    # A 0-d CPU tensor is used as a scalar by CUDA kernels: no host-to-device copy.
    ratio_t = torch.tensor(ratio, dtype=torch.float32)
    th_B = (vmax_B - vmin_B) * ratio_t
    # ON: dV >= th (th >= 0, so dV >= 0 is implied).
    # OFF: dV < 0 and -dV >= th  <=>  dV < min(nextafter(-th, +inf), 0), which is
    # exact also for th == 0 and lets each polarity be a single comparison.
    # A flat image has th == 0 and only zero differences: its OFF test is already
    # never true, and an infinite ON threshold removes its ON events.
    on_th_B11 = torch.where(flat_B, math.inf, th_B).view(batch, 1, 1)
    off_lt_B = torch.nextafter(-th_B, torch.full_like(th_B, math.inf)).clamp_(max=0.0)
    off_lt_B11 = off_lt_B.view(batch, 1, 1)

    vpad_BHW = nn.functional.pad(v_BHW.unsqueeze(1), (1, 1, 1, 1), mode="replicate").squeeze(1)
    events_TBCHW = torch.empty((NUM_STEPS, batch, 2, height, width), dtype=dtype, device=device)
    scaled = threshold_scale is not None
    staged = dtype == torch.float32 and not scaled  # see the loop below
    dv_BHW = None if staged else torch.empty((batch, height, width), dtype=torch.float32, device=device)
    if scaled:
        # th_on = th * scale_on, th_off = th * scale_off: one float32 product each, [B, H, W].
        th_B11 = th_B.view(batch, 1, 1)
        th_on_BHW = torch.where(flat_B.view(batch, 1, 1), math.inf, th_B11 * threshold_scale[:, 0])
        th_off_BHW = th_B11 * threshold_scale[:, 1]

    if per_sample:
        # All 9 shifts as a zero-copy view [B, 3, 3, H, W]; each sample then
        # gathers its own shift, avoiding a loop over samples.
        shifts_B33HW = vpad_BHW.unfold(1, height, 1).unfold(2, width, 1)
        rc_4TB = torch.stack(
            (
                (pairs[..., 1] - 1) // 3,
                (pairs[..., 1] - 1) % 3,
                (pairs[..., 0] - 1) // 3,
                (pairs[..., 0] - 1) % 3,
            )
        )
        if device.type == "cuda" and rc_4TB.device.type == "cpu":
            rc_4TB = rc_4TB.pin_memory()  # lets the copy below run without a host sync
        rc_4TB = rc_4TB.to(device, non_blocking=True)
        b_idx = torch.arange(batch, device=device)

    # float32 events can hold the differences themselves: each dV goes into its OFF slot, then two
    # comparisons over all timesteps finish the job (10 whole-tensor ops instead of 24, no extra
    # buffer; fewer ops also suffer less from a busy CPU).
    for t in range(NUM_STEPS):
        if per_sample:
            to_r, to_c, from_r, from_c = rc_4TB[:, t]
            v_to = shifts_B33HW[b_idx, to_r, to_c]
            v_from = shifts_B33HW[b_idx, from_r, from_c]
        else:
            p_from, p_to = pairs[t]
            (fr, fc), (tr, tc) = _position_rc(p_from), _position_rc(p_to)
            v_to = vpad_BHW[:, tr : tr + height, tc : tc + width]
            v_from = vpad_BHW[:, fr : fr + height, fc : fc + width]
        if staged:
            torch.sub(v_to, v_from, out=events_TBCHW[t, :, 1])
            continue
        torch.sub(v_to, v_from, out=dv_BHW)
        if scaled:
            # ON: dV >= th_on. OFF: dV < 0 and -dV >= th_off (negation is exact).
            torch.ge(dv_BHW, th_on_BHW, out=events_TBCHW[t, :, 0])
            off_BHW = torch.lt(dv_BHW, 0).logical_and_(torch.ge(torch.neg(dv_BHW), th_off_BHW))
            events_TBCHW[t, :, 1].copy_(off_BHW)
            continue
        torch.ge(dv_BHW, on_th_B11, out=events_TBCHW[t, :, 0])
        torch.lt(dv_BHW, off_lt_B11, out=events_TBCHW[t, :, 1])
    if staged:
        dv_TBHW = events_TBCHW[:, :, 1]
        torch.ge(dv_TBHW, on_th_B11, out=events_TBCHW[:, :, 0])
        dv_TBHW.lt_(off_lt_B11)
    return events_TBCHW


class I2E(SeededDraws, nn.Module):
    """I2E conversion as a module, with random displacement vectors in training.

    In training (with ``random_vectors``) each timestep draws one pair of its
    group uniformly, once per batch or per sample, from the module's own CPU
    generator so that runs are reproducible and resumable without touching the
    global RNG. In eval every timestep uses its group's first pair.
    """

    def __init__(
        self,
        ratio: float,
        order: str | Sequence[int] = DEFAULT_ORDER,
        random_vectors: bool = True,
        per_sample: bool = False,
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        if backend not in BACKENDS:
            raise ValueError(f"unknown I2E backend {backend!r}; choose one of: {', '.join(BACKENDS)}")
        self.backend = backend
        self.ratio = _check_ratio(ratio)
        self.order = resolve_order(order)
        self._order_label = _order_label(order)
        _check_dtype(dtype)
        self.random_vectors = bool(random_vectors)
        self.per_sample = bool(per_sample)
        self.seed = int(seed)
        self.dtype = dtype
        # A Generator is not a tensor, so it stays out of state_dict on purpose.
        self._init_draws(self.seed)
        # Pairs of each timestep's group padded to a common length [8, L, 2];
        # padding entries are never selected (index is taken modulo group size).
        longest = max(len(g) for g in GROUPS)
        table = [[GROUPS[g][i % len(GROUPS[g])] for i in range(longest)] for g in self.order]
        self._choices_TL2 = torch.tensor(table, dtype=torch.long)
        self._sizes_T = torch.tensor([len(GROUPS[g]) for g in self.order], dtype=torch.long)

    def sample_pairs(self, batch_size: int) -> Tensor:
        """Draw pairs on the CPU: ``[8, 2]`` per batch or ``[8, B, 2]`` per sample."""
        if self.per_sample:
            draw = torch.randint(0, _DRAW_RANGE, (NUM_STEPS, batch_size), generator=self._generator)
            idx_TB = draw % self._sizes_T[:, None]
            return self._choices_TL2[torch.arange(NUM_STEPS)[:, None], idx_TB]
        draw = torch.randint(0, _DRAW_RANGE, (NUM_STEPS,), generator=self._generator)
        idx_T = draw % self._sizes_T
        return self._choices_TL2[torch.arange(NUM_STEPS), idx_T]

    def forward(self, images: Tensor, threshold_scale: Tensor | None = None) -> Tensor:
        """Events ``[8, B, 2, H, W]`` on the images' device.

        ``threshold_scale``: optional per-pixel threshold multipliers ``[B or 1, 2, H, W]``
        (float32, see :func:`i2e_convert`; made by :class:`i2e_train.sensor.SensorModel`).
        """
        # Validate before drawing so a rejected batch does not advance the RNG.
        _check_images(images)
        if threshold_scale is not None:
            _check_threshold_scale(threshold_scale, images)
        pairs = None
        if self.training and self.random_vectors:
            pairs = self.sample_pairs(images.shape[0])
        return i2e_convert(
            images,
            self.ratio,
            self.order,
            pairs=pairs,
            dtype=self.dtype,
            backend=self.backend,
            threshold_scale=threshold_scale,
        )

    def resolved_backend(self, device: torch.device | str) -> str:
        """The backend ``auto`` resolves to for tensors on ``device`` (``torch`` or ``triton``)."""
        return _resolve_backend(self.backend, torch.device(device))

    def extra_repr(self) -> str:
        return (
            f"ratio={self.ratio}, order={self._order_label}, "
            f"random_vectors={self.random_vectors}, per_sample={self.per_sample}, "
            f"seed={self.seed}, dtype={self.dtype}, backend={self.backend}"
        )


def event_rate(events: Tensor) -> float:
    """Fraction of ones in an event tensor (any dtype with values in {0, 1})."""
    if events.numel() == 0:
        raise ValueError("event_rate of an empty tensor is undefined")
    return events.count_nonzero().item() / events.numel()
