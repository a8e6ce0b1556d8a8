"""Fused I2E conversion in one Triton kernel (CUDA; CPU tensors run in Triton's interpreter).

Bit-for-bit the same events as the torch reference path in :mod:`i2e_train.i2e` (tests compare them
on every input kind), in one launch instead of ~30 small kernels.

Design: a persistent grid of programs, each owning a private float32 scratch slot of one image.
A work item is one image, or one band of rows of an image when the batch is too small to fill the
GPU (``split`` bands per image). For each item a program

1. reads the whole image once (uint8 or float, any strides): ``V = max(R, G, B)`` in float32
   (uint8 through the 256-entry table of :func:`i2e_train.levels.uint8_to_float32_table`, i.e.
   torchvision's ``ToDtype(float32, scale=True)``), the per-image min/max, and writes ``V``
   of its band (plus one halo row each side) into its scratch slot;
2. computes the 8 timesteps of its band from the scratch: every displacement pair is two clamped
   loads (replicate padding) and one float32 subtraction, compared with ``th = ratio * (max - min)``
   exactly as the specification writes it (``dV >= th``; ``dV < 0 and -dV >= th``; flat images
   produce nothing), and stores ON/OFF directly in the output dtype, or bit-packed.

Why this split: the image is read from DRAM once; the min/max needs no second kernel and no
atomics; ``V`` is computed once per pixel (the uint8 -> float conversion is a table gather, too
slow to repeat for the 16 loads of step 2), and the 16 neighbour loads of step 2 hit the slot that
the same program has just written (L1/L2), not the input. The slots are reused by the persistent
loop, so the scratch stays small and cache-resident. Bands re-read the image for the min/max
(from L2), which only happens when the batch is small.

Images containing NaN are outside the specification (the torch path propagates NaN through the
min/max, the kernel's max ignores it); every other float value, infinities and signed zeros
included, gives the same events on both paths.

Output: events ``[8, B, 2, H, W]`` in float32/float16/bfloat16/uint8/bool, or packed
``[B, 2*H*W]`` uint8: each sample's ``[8, 2, H, W]`` flattened and packed big-endian
(``np.packbits`` order), as in :mod:`i2e_train.data.formats`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .levels import uint8_to_float32_table

NUM_STEPS = 8
_DENSE_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.uint8, torch.bool)


@functools.cache
def _triton():
    """``(triton, triton.language)`` or None when Triton is not installed."""
    try:
        import triton
        import triton.language as tl
    except ImportError:
        return None
    return triton, tl


def is_available(device: torch.device | str) -> bool:
    """Whether the fused kernel can run for tensors on ``device``.

    CUDA needs Triton and a GPU; CPU tensors run in Triton's interpreter (exact, slow: for tests).
    """
    device = torch.device(device)
    if _triton() is None:
        return False
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.version.hip is None
    return device.type == "cpu"


def is_preferred(device: torch.device | str) -> bool:
    """Whether ``backend="auto"`` picks the kernel: CUDA GPUs of compute capability 8.0 or newer
    (what the kernel was built and tuned for); older ones keep the torch path unless asked."""
    device = torch.device(device)
    return (
        device.type == "cuda" and is_available(device) and torch.cuda.get_device_capability(device) >= (8, 0)
    )


def pair_code(pairs: Sequence[tuple[int, int]]) -> int:
    """The 8 shared ``(from, to)`` pairs as one integer: 7 bits per timestep, ``9*(to-1) + from-1``.

    A scalar kernel argument, so a new random draw per batch needs no host-to-device copy.
    """
    code = 0
    for t, (p_from, p_to) in enumerate(pairs):
        code |= (9 * (p_to - 1) + (p_from - 1)) << (7 * t)
    return code


def pair_codes(pairs_TB2: Tensor) -> Tensor:
    """Per-sample pairs ``[8, B, 2]`` (from, to) as int32 codes ``[B, 8]`` (same encoding)."""
    return (9 * (pairs_TB2[..., 1] - 1) + (pairs_TB2[..., 0] - 1)).t().contiguous().to(torch.int32)


def _u8_table(device: torch.device) -> Tensor:
    # The one shared table (torchvision's ToDtype(float32, scale=True) of 0..255), cached per device.
    return uint8_to_float32_table(device)


def _define_kernel(tl):
    def i2e_kernel(
        x_ptr,  # images [B, 3, H, W], any strides
        lut_ptr,  # float32 [256]: ToDtype(float32, scale=True) of 0..255, v * float32(1/255) (uint8 only)
        ratio_ptr,  # float32 [1]: the ratio rounded to float32 (a tensor: exact in the interpreter too)
        codes_ptr,  # int32 [B, 8] per-sample pair codes (PER_SAMPLE) or unused
        scratch_ptr,  # float32 [num_programs, H, W]: per-program intensity slot
        out_ptr,  # events [8, B, 2, H, W] or packed uint8 [B, 2*H*W]
        pair_code,  # int64: 8 x 7-bit pair codes shared by the batch (not PER_SAMPLE)
        B,
        H,
        W,
        sxb,
        sxc,
        sxh,
        sxw,
        split,  # bands per image
        band_rows,  # rows per band
        IS_UINT8: tl.constexpr,
        PER_SAMPLE: tl.constexpr,
        PACKED: tl.constexpr,
        OUT_FLOAT: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        pid = tl.program_id(0)
        nprog = tl.num_programs(0)
        HW = H * W
        offs = tl.arange(0, BLOCK)
        slot = scratch_ptr + pid.to(tl.int64) * HW
        ratio = tl.load(ratio_ptr)
        for item in range(pid, B * split, nprog):
            b = item // split
            lo = (item % split) * band_rows
            hi = tl.minimum(lo + band_rows, H)
            xb = x_ptr + b.to(tl.int64) * sxb
            # 1. intensity, per-image min/max, and this band's V (+ halo rows) into the slot.
            vmin_acc = tl.full([BLOCK], float("inf"), tl.float32)
            vmax_acc = tl.full([BLOCK], float("-inf"), tl.float32)
            for start in range(0, HW, BLOCK):
                q = start + offs
                m = q < HW
                y = q // W
                x = q % W
                p = xb + y * sxh + x * sxw
                c0 = tl.load(p, mask=m, other=0)
                c1 = tl.load(p + sxc, mask=m, other=0)
                c2 = tl.load(p + 2 * sxc, mask=m, other=0)
                if IS_UINT8:
                    v8 = tl.maximum(tl.maximum(c0, c1), c2)
                    v = tl.load(lut_ptr + v8.to(tl.int32), mask=m, other=0.0)
                else:
                    # float -> float32 rounding is monotone, so max-then-round == round-then-max.
                    v = tl.maximum(tl.maximum(c0.to(tl.float32), c1.to(tl.float32)), c2.to(tl.float32))
                vmin_acc = tl.where(m, tl.minimum(vmin_acc, v), vmin_acc)
                vmax_acc = tl.where(m, tl.maximum(vmax_acc, v), vmax_acc)
                keep = m & (y >= lo - 1) & (y <= hi)
                tl.store(slot + q, v, mask=keep)
            # tl.reduce with the standard combine functions (not tl.min/tl.max): also runs in the
            # interpreter when TRITON_INTERPRET was not set before triton was imported.
            vmin = tl.reduce(vmin_acc, 0, tl.standard._elementwise_min)
            vmax = tl.reduce(vmax_acc, 0, tl.standard._elementwise_max)
            th = (vmax - vmin) * ratio
            # A flat image (max == min) has no events: its differences are all 0 (or NaN), so an
            # infinite ON threshold removes them and its OFF test is never true.
            th_on = tl.where(vmax != vmin, th, float("inf"))
            tl.debug_barrier()  # the slot writes above are read by other threads below
            # 2. events of the band from the slot.
            for start in range(lo * W, hi * W, BLOCK):
                q = start + offs
                m = q < hi * W
                y = q // W
                x = q % W
                for t in tl.static_range(8):
                    if PER_SAMPLE:
                        code = tl.load(codes_ptr + b * 8 + t)
                    else:
                        code = ((pair_code >> (7 * t)) & 127).to(tl.int32)
                    p_to = code // 9
                    p_from = code % 9
                    y_to = tl.minimum(tl.maximum(y + (p_to // 3 - 1), 0), H - 1)
                    x_to = tl.minimum(tl.maximum(x + (p_to % 3 - 1), 0), W - 1)
                    y_fr = tl.minimum(tl.maximum(y + (p_from // 3 - 1), 0), H - 1)
                    x_fr = tl.minimum(tl.maximum(x + (p_from % 3 - 1), 0), W - 1)
                    v_to = tl.load(slot + y_to * W + x_to, mask=m, other=0.0)
                    v_fr = tl.load(slot + y_fr * W + x_fr, mask=m, other=0.0)
                    dv = v_to - v_fr
                    on = dv >= th_on
                    off = (dv < 0) & (-dv >= th)
                    if PACKED:
                        # 8 consecutive pixels of one plane -> one byte, first pixel in the MSB.
                        weights = (128 >> tl.arange(0, 8))[None, :]
                        on8 = tl.reduce(
                            tl.reshape(on.to(tl.int32), (BLOCK // 8, 8)) * weights,
                            1,
                            tl.standard._sum_combine,
                        )
                        off8 = tl.reduce(
                            tl.reshape(off.to(tl.int32), (BLOCK // 8, 8)) * weights,
                            1,
                            tl.standard._sum_combine,
                        )
                        byte = tl.arange(0, BLOCK // 8)
                        bmask = start + byte * 8 < hi * W
                        base = out_ptr + b.to(tl.int64) * (2 * HW) + (2 * t * HW + start) // 8
                        tl.store(base + byte, on8.to(tl.uint8), mask=bmask)
                        tl.store(base + HW // 8 + byte, off8.to(tl.uint8), mask=bmask)
                    else:
                        out_ty = out_ptr.dtype.element_ty
                        if OUT_FLOAT:
                            # bool -> float32 -> output float type (the interpreter cannot go direct).
                            on_v = on.to(tl.float32).to(out_ty)
                            off_v = off.to(tl.float32).to(out_ty)
                        else:
                            on_v = on.to(out_ty)
                            off_v = off.to(out_ty)
                        plane = ((t * B + b) * 2).to(tl.int64) * HW
                        tl.store(out_ptr + plane + q, on_v, mask=m)
                        tl.store(out_ptr + plane + HW + q, off_v, mask=m)
            tl.debug_barrier()  # the next item overwrites the slot

    return i2e_kernel


@dataclass(frozen=True)
class KernelConfig:
    """How the kernel is launched on CUDA: pixels per block, warps, persistent programs per SM."""

    block: int
    warps: int
    programs_per_sm: int


# The launch configurations worth trying (BLOCK, warps, programs per SM). One program per SM keeps
# the scratch slots (4 bytes/pixel each) in L2; two hide more latency. scripts/gpu_check_stages.py
# (``configs``) times every one at each size class on a GPU.
CANDIDATES = tuple(
    KernelConfig(blk, w, p) for blk, w in ((512, 4), (1024, 4), (1024, 8), (2048, 8)) for p in (1, 2)
)
# A fixed configuration per size class (pixels per image, upper bound): no autotuning, so a new
# batch size or dtype costs at most one compilation (about a second) and never a tuning sweep (the
# autotuner compiled and timed 8 configs for every new batch size and dtype: the likely cause of a
# CUDA test that sat for minutes on an H200). Chosen by the kernel's design, not yet by a timed sweep: blocks
# that cover a small image in one or two passes; for large images one program per SM, whose
# scratch (132 SMs x 224 x 224 x 4 bytes = 26 MB) stays inside the H200's 50 MB L2, where two per
# SM would not.
SIZE_CLASSES: tuple[tuple[int, KernelConfig], ...] = (
    (64 * 64, KernelConfig(512, 4, 2)),
    (128 * 128, KernelConfig(1024, 4, 2)),
    (2**62, KernelConfig(2048, 8, 1)),
)


def kernel_config(height: int, width: int) -> KernelConfig:
    """The launch configuration of an image size (its size class): the same for every batch size."""
    pixels = height * width
    return next(config for bound, config in SIZE_CLASSES if pixels <= bound)


@functools.cache
def _cuda_kernel():
    triton, tl = _triton()
    # Not specialised on the batch size and the band split: the last, smaller batch of an epoch (or
    # a new split) reuses the compiled kernel. H, W and the strides stay specialised (alignment).
    return triton.jit(_define_kernel(tl), do_not_specialize=["pair_code", "B", "split", "band_rows"])


@functools.cache
def _interpreted_kernel():
    from triton.runtime.interpreter import InterpretedFunction

    _, tl = _triton()
    return InterpretedFunction(_define_kernel(tl))


def _sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def _bands(device: torch.device, batch: int, height: int, width: int, packed: bool) -> int:
    """Bands per image so that small batches still occupy every multiprocessor."""
    if device.type != "cuda" or (packed and width % 8):
        return 1  # packed bands must start on a byte boundary
    want = math.ceil(2 * _sm_count(device) / batch)
    return max(1, min(want, height // 4 or 1))


def convert(
    images: Tensor,
    ratio: float,
    pairs: Sequence[tuple[int, int]] | Tensor,
    dtype: torch.dtype = torch.float32,
    *,
    packed: bool = False,
    programs: int | None = None,
    bands: int | None = None,
    block: int = 256,
    config: KernelConfig | None = None,
) -> Tensor:
    """Events of ``images`` [B,3,H,W] with the given pairs (8 shared, or ``[8, B, 2]`` per sample).

    Inputs are assumed validated by :func:`i2e_train.i2e.i2e_convert` (the public entry point).
    ``packed`` returns ``[B, 2*H*W]`` uint8 (needs ``H*W % 8 == 0``). ``programs``/``bands``/
    ``block`` fix the launch shape (tests use them to cover every code path); ``config`` another
    CUDA launch configuration (the timed sweep). By default CUDA uses the image size's
    :func:`kernel_config`, and the interpreter ``block``.
    """
    batch, _, height, width = images.shape
    device = images.device
    hw = height * width
    if packed and hw % 8:
        raise ValueError(f"packed I2E output needs H*W divisible by 8, got {height}x{width}")
    if packed:
        out = torch.empty((batch, 2 * hw), dtype=torch.uint8, device=device)
    else:
        out = torch.empty((NUM_STEPS, batch, 2, height, width), dtype=dtype, device=device)
    if batch == 0:
        return out
    if images.dtype == torch.bool or not (images.dtype == torch.uint8 or images.dtype.is_floating_point):
        raise ValueError(f"I2E expects float images or uint8, got {images.dtype}")

    per_sample = isinstance(pairs, Tensor) and pairs.ndim == 3
    if per_sample:
        codes = pair_codes(pairs.cpu())
        if device.type == "cuda":
            codes = codes.pin_memory().to(device, non_blocking=True)
        code = 0
    else:
        codes = torch.zeros(1, dtype=torch.int32, device=device)
        code = pair_code([tuple(int(v) for v in p) for p in pairs])
    ratio_t = torch.tensor([ratio], dtype=torch.float32)
    ratio_t = ratio_t.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else ratio_t

    if block % 8 or block & (block - 1):
        raise ValueError(f"block must be a power of two >= 8, got {block}")
    split = bands or _bands(device, batch, height, width, packed)
    band_rows = math.ceil(height / split)
    split = math.ceil(height / band_rows)  # no empty bands
    if packed and split > 1 and (band_rows * width) % 8:
        raise ValueError("packed bands must start on a byte boundary")
    items = batch * split
    if config is None:
        if device.type == "cuda" and programs is None:
            config = kernel_config(height, width)
        else:  # the interpreter, or a launch shape fixed by the caller
            config = KernelConfig(block, 4, 1)
    if programs is None:
        # On the CPU the interpreter runs programs one by one; 3 exercises the persistent loop.
        programs = config.programs_per_sm * _sm_count(device) if device.type == "cuda" else 3
    programs = min(programs, items)
    scratch = torch.empty((programs, height, width), dtype=torch.float32, device=device)
    # bool is stored as bytes 0/1; the kernel writes through a uint8 view.
    target = out.view(torch.uint8) if out.dtype == torch.bool else out
    args = (
        images,
        _u8_table(device),
        ratio_t,
        codes,
        scratch,
        target,
        code,
        batch,
        height,
        width,
        *images.stride(),
        split,
        band_rows,
    )
    flags = {
        "IS_UINT8": images.dtype == torch.uint8,
        "PER_SAMPLE": per_sample,
        "PACKED": packed,
        "OUT_FLOAT": target.dtype.is_floating_point,
    }
    if device.type == "cuda":
        with torch.cuda.device(device):
            # No FMA contraction, ever: the spec is one float32 subtraction and one product.
            _cuda_kernel()[(programs,)](
                *args, **flags, BLOCK=config.block, num_warps=config.warps, enable_fp_fusion=False
            )
    else:
        _interpreted_kernel()[(programs,)](*args, **flags, BLOCK=config.block)
    return out
