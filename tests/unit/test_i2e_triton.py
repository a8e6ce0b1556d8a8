"""The fused Triton kernel against the torch reference path, bit for bit.

On a CPU the kernel runs in Triton's interpreter (the same kernel source, executed with NumPy), so
every branch of it is checked here in CI; the CUDA tests at the end run the compiled kernel where a
GPU is present. Images are kept small because the interpreter runs programs one by one.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from skimage import data as skdata
from skimage.transform import resize
from torchvision.transforms import v2

from i2e_train.data.formats import encode_packed, pack_events, unpack_events
from i2e_train.events import i2e_triton
from i2e_train.events.i2e import (
    GROUPS,
    I2E,
    _packbits_torch,
    fixed_pairs,
    i2e_convert,
    i2e_pack,
    packbits,
    uint8_to_float32_table,
)

pytest.importorskip("triton")

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.uint8, torch.bool]


def torch_events(x: torch.Tensor, ratio: float, pairs=None, dtype=torch.float32) -> torch.Tensor:
    return i2e_convert(x, ratio, pairs=pairs, dtype=dtype, backend="torch")


def kernel_events(x: torch.Tensor, ratio: float, pairs=None, dtype=torch.float32, **launch) -> torch.Tensor:
    if launch:
        return i2e_triton.convert(x, ratio, pairs if pairs is not None else fixed_pairs(), dtype, **launch)
    return i2e_convert(x, ratio, pairs=pairs, dtype=dtype, backend="triton")


def assert_same(got: torch.Tensor, expected: torch.Tensor) -> None:
    assert got.dtype == expected.dtype and got.shape == expected.shape
    diff = int((got.cpu() != expected.cpu()).sum())
    assert diff == 0, f"{diff} event(s) differ from the torch path"


@functools.cache
def photos(h: int, w: int) -> torch.Tensor:
    """uint8 [4, 3, h, w] from scikit-image's bundled photographs."""
    imgs = [skdata.astronaut(), skdata.coffee(), skdata.chelsea(), skdata.rocket()]
    small = [np.round(resize(im, (h, w), anti_aliasing=True) * 255).astype(np.uint8) for im in imgs]
    return torch.from_numpy(np.stack(small)).permute(0, 3, 1, 2).contiguous()


def random_pairs(gen: torch.Generator) -> list[tuple[int, int]]:
    return [tuple(int(v) + 1 for v in torch.randperm(9, generator=gen)[:2]) for _ in range(8)]


# --------------------------------------------------------------------------
# Interpreter (CPU): every input kind, dtype and launch shape
# --------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_random_uint8_and_float_every_dtype(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(0)
    x8 = torch.randint(0, 256, (2, 3, 9, 13), dtype=torch.uint8, generator=gen)
    xf = torch.rand((2, 3, 9, 13), generator=gen)
    for x in (x8, xf):
        expected = torch_events(x, 0.07, dtype=dtype)
        assert 0 < expected.float().mean() < 0.5
        assert_same(kernel_events(x, 0.07, dtype=dtype), expected)


@pytest.mark.parametrize("size", [(1, 1), (1, 7), (5, 1), (2, 2), (17, 23)])
def test_odd_sizes_and_batch_one(size: tuple[int, int]) -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (1, 3, *size), dtype=torch.uint8, generator=gen)
    for ratio in (0.0, 0.1):
        assert_same(kernel_events(x, ratio), torch_events(x, ratio))


def test_real_photographs_all_orders() -> None:
    x = photos(20, 28)
    for order_pairs in (fixed_pairs("gamma_alpha_beta"), fixed_pairs("alpha_beta_gamma")):
        for ratio in (0.05, 0.12):
            expected = torch_events(x, ratio, pairs=order_pairs)
            assert expected.any()
            assert_same(kernel_events(x, ratio, pairs=order_pairs), expected)
    xf = x.float() / 255 + 1e-4  # float values that are not multiples of 1/255
    assert_same(kernel_events(xf, 0.07), torch_events(xf, 0.07))


@pytest.mark.parametrize("in_dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_other_float_inputs(in_dtype: torch.dtype) -> None:
    x = (photos(12, 10).double() / 255 + 1e-6).to(in_dtype)
    assert_same(kernel_events(x, 0.07), torch_events(x, 0.07))


def test_ties_at_the_threshold_and_float32_product() -> None:
    # dV = [0.25, -0.25, -0.5, 1.0, 0.0] with th = 0.25 exactly (see test_i2e).
    row = torch.tensor([0.5, 0.75, 0.5, 0.0, 1.0])
    x = row.expand(1, 3, 1, 5).contiguous()
    pairs = [(5, 6)] * 8
    events = kernel_events(x, 0.25, pairs=pairs)
    assert events[0, 0, 0, 0].tolist() == [1, 0, 0, 1, 0]
    assert events[0, 0, 1, 0].tolist() == [0, 1, 1, 0, 0]
    above = float(np.nextafter(np.float32(0.25), np.float32(1.0)))
    assert_same(kernel_events(x, above, pairs=pairs), torch_events(x, above, pairs=pairs))
    # A float32 product below the exact one: |dV| == float32(0.07) * float32(0.9).
    r = np.float32(0.9)
    th32 = float(np.float32(0.07) * r)
    x = torch.tensor([0.0, th32, 0.0, float(r), float(r)]).expand(1, 3, 1, 5).contiguous()
    events = kernel_events(x, 0.07, pairs=pairs)
    assert events[0, 0, 0, 0].tolist() == [1, 0, 1, 0, 0]
    assert events[0, 0, 1, 0].tolist() == [0, 1, 0, 0, 0]


def test_uint8_ties_across_the_whole_value_range() -> None:
    # 2048 random byte pairs side by side, plus 0 and 255 so that th == float32(ratio): with
    # ratio = 1/255 many differences of the 1/255 table land exactly on the threshold.
    gen = torch.Generator().manual_seed(2)
    row = torch.randint(0, 256, (4096,), dtype=torch.uint8, generator=gen)
    row[:2] = torch.tensor([0, 255])
    x = row.view(1, 1, 4, 1024).expand(1, 3, 4, 1024).contiguous()
    for ratio in (1 / 255, 2 / 255, 0.07, 0.5):
        expected = torch_events(x, ratio, pairs=[(5, 6)] * 8)
        assert_same(kernel_events(x, ratio, pairs=[(5, 6)] * 8), expected)


def test_uint8_is_todtype_float_at_every_level_and_on_photographs() -> None:
    # The kernel reads the one shared table: torchvision's ToDtype(float32, scale=True) of 0..255.
    to_float = v2.ToDtype(torch.float32, scale=True)
    assert i2e_triton._u8_table(torch.device("cpu")) is uint8_to_float32_table(torch.device("cpu"))
    assert torch.equal(
        i2e_triton._u8_table(torch.device("cpu")), to_float(torch.arange(256, dtype=torch.uint8))
    )
    # Every level: rows that are permutations of 0..255; k/255 ratios put many differences on th.
    gen = torch.Generator().manual_seed(3)
    grey = torch.stack([torch.randperm(256, generator=gen) for _ in range(4)]).to(torch.uint8)
    x8 = grey.view(1, 1, 4, 256).expand(1, 3, 4, 256).contiguous()
    for ratio in (1 / 255, 2 / 255, 0.07):
        events = kernel_events(x8, ratio)
        assert torch.equal(events, kernel_events(to_float(x8), ratio))
        assert torch.equal(events, torch_events(to_float(x8), ratio))
        if ratio < 0.01:  # a table one ulp off (x / 255) would flip events here
            assert not torch.equal(events, torch_events(x8.float() / 255, ratio))
    # Real photographs (astronaut, coffee, chelsea) at a few sizes.
    for size in ((10, 12), (16, 16)):
        x = photos(*size)[:3]
        for ratio in (1 / 255, 0.07):
            events = kernel_events(x, ratio)
            assert events.any()
            assert torch.equal(events, kernel_events(to_float(x), ratio))
            assert torch.equal(events, torch_events(to_float(x), ratio))


def test_flat_images_alone_and_in_a_batch() -> None:
    x = photos(8, 12).clone()
    x[1] = 77
    x[3] = 0
    for ratio in (0.0, 0.07):
        events = kernel_events(x, ratio)
        assert not events[:, 1].any() and not events[:, 3].any()
        assert events[:, 0].any()
        assert_same(events, torch_events(x, ratio))
    rgb = torch.zeros(1, 3, 4, 6)
    rgb[0, 0] = 0.7  # V is flat although G/B vary below R
    rgb[0, 1, ::2] = 0.2
    assert not kernel_events(rgb, 0.0).any()


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # inf - inf in the interpreter
def test_signed_zeros_and_infinities() -> None:
    x = torch.zeros(2, 3, 4, 5)
    x[0, :, 1::2, ::2] = -0.0
    x[0, :, 2, 3] = 0.5
    x[1, 0, 1, 1] = float("inf")
    x[1, 1, 2, 2] = -float("inf")
    for ratio in (0.0, 0.3):
        assert_same(kernel_events(x, ratio), torch_events(x, ratio))


def test_random_pairs_per_batch_and_per_sample() -> None:
    gen = torch.Generator().manual_seed(3)
    x = photos(10, 14)
    for _ in range(3):
        pairs = random_pairs(gen)
        assert_same(kernel_events(x, 0.07, pairs=pairs), torch_events(x, 0.07, pairs=pairs))
    pairs_tb2 = torch.stack([torch.randperm(9, generator=gen)[:2] + 1 for _ in range(8 * 4)]).view(8, 4, 2)
    assert_same(kernel_events(x, 0.05, pairs=pairs_tb2), torch_events(x, 0.05, pairs=pairs_tb2))


def test_module_backend_triton_equals_torch_in_training() -> None:
    x = photos(10, 14)
    for per_sample in (False, True):
        fast = I2E(0.07, per_sample=per_sample, seed=5, backend="triton").train()
        ref = I2E(0.07, per_sample=per_sample, seed=5, backend="torch").train()
        for _ in range(2):
            assert_same(fast(x), ref(x))
        assert "backend=triton" in repr(fast)


@pytest.mark.parametrize(
    "launch",
    [
        {"programs": 1, "bands": 1, "block": 16},  # one program loops over every image
        {"programs": 2, "bands": 3, "block": 16},  # bands with halo rows, items > programs
        {"programs": 7, "bands": 2, "block": 512},  # block larger than the image
        {"programs": 12, "bands": 5, "block": 32},  # as many programs as bands
    ],
)
def test_launch_shapes(launch: dict) -> None:
    gen = torch.Generator().manual_seed(4)
    x = photos(7, 9)
    pairs = random_pairs(gen)
    for dtype in (torch.float32, torch.bool):
        assert_same(kernel_events(x, 0.07, pairs, dtype, **launch), torch_events(x, 0.07, pairs, dtype))


def test_every_candidate_config_is_exact() -> None:
    """Whatever launch configuration a size class gets (or a timed sweep tries) gives the same
    events: the interpreter honours BLOCK, the grid follows programs per SM."""
    x = photos(9, 13)
    pairs = random_pairs(torch.Generator().manual_seed(6))
    expected = torch_events(x, 0.07, pairs, torch.bfloat16)
    for config in {*i2e_triton.CANDIDATES, *(c for _, c in i2e_triton.SIZE_CLASSES)}:
        got = i2e_triton.convert(x, 0.07, pairs, torch.bfloat16, config=config)
        assert_same(got, expected)


def test_one_config_per_size_class_whatever_the_batch() -> None:
    """No autotuning: the configuration depends on the image size alone, so the last, smaller batch
    of an epoch, a new dtype or a new batch size never starts a tuning sweep; and the kernel is not
    specialised on the batch size or band split, so they never cost a recompilation either."""
    configs = {size: i2e_triton.kernel_config(size, size) for size in (8, 16, 32, 64, 65, 128, 224, 512)}
    assert configs[8] == configs[16] == configs[32] == configs[64] == i2e_triton.KernelConfig(512, 4, 2)
    assert configs[65] == configs[128] == i2e_triton.KernelConfig(1024, 4, 2)
    assert configs[224] == configs[512] == i2e_triton.KernelConfig(2048, 8, 1)
    assert i2e_triton.kernel_config(224, 224) == i2e_triton.kernel_config(225, 223)  # a class, not a size
    assert all(c in i2e_triton.CANDIDATES for _, c in i2e_triton.SIZE_CLASSES)
    pytest.importorskip("triton.runtime.jit")
    from triton.runtime.jit import JITFunction

    kernel = i2e_triton._cuda_kernel()
    assert type(kernel) is JITFunction  # not an Autotuner
    unspecialised = {p.name for p in kernel.params if p.do_not_specialize}
    assert unspecialised == {"pair_code", "B", "split", "band_rows"}


def test_non_contiguous_inputs() -> None:
    x = photos(12, 16)
    cl = x.contiguous(memory_format=torch.channels_last)
    assert not cl.is_contiguous()
    assert_same(kernel_events(cl, 0.07), torch_events(x, 0.07))
    crop = photos(20, 28)[:, :, 3:15, 5:21]
    assert_same(kernel_events(crop, 0.07), torch_events(crop.contiguous(), 0.07))
    assert_same(kernel_events(x[::2], 0.07), torch_events(x[::2].contiguous(), 0.07))


def test_empty_batch() -> None:
    events = kernel_events(torch.zeros(0, 3, 4, 4, dtype=torch.uint8), 0.1, dtype=torch.bool)
    assert events.shape == (8, 0, 2, 4, 4)


# --------------------------------------------------------------------------
# Bit-packed output
# --------------------------------------------------------------------------


def numpy_packed(events_TB2HW: torch.Tensor) -> np.ndarray:
    per_sample = events_TB2HW.transpose(0, 1).bool().numpy().reshape(events_TB2HW.shape[1], -1)
    return np.stack([np.packbits(row, bitorder="big") for row in per_sample])


@pytest.mark.parametrize("size", [(8, 12), (4, 6), (3, 5)])
def test_packed_matches_numpy_packbits(size: tuple[int, int]) -> None:
    # 8x12 and 4x6 pack in the kernel; 3x5 (H*W odd: bytes straddle planes) packs afterwards.
    x = photos(*size)
    expected = numpy_packed(torch_events(x, 0.07, dtype=torch.bool))
    for backend in ("triton", "torch"):
        packed = i2e_pack(x, 0.07, backend=backend)
        assert packed.dtype == torch.uint8 and packed.shape == (4, 2 * size[0] * size[1])
        np.testing.assert_array_equal(packed.numpy(), expected)


def test_packed_kernel_launch_shapes_and_per_sample_pairs() -> None:
    gen = torch.Generator().manual_seed(6)
    x = photos(8, 8)[:2]
    pairs_tb2 = torch.stack([torch.randperm(9, generator=gen)[:2] + 1 for _ in range(8 * 2)]).view(8, 2, 2)
    expected = numpy_packed(torch_events(x, 0.05, pairs=pairs_tb2, dtype=torch.bool))
    for launch in ({"programs": 1, "bands": 1, "block": 64}, {"programs": 3, "bands": 4, "block": 8}):
        packed = i2e_triton.convert(x, 0.05, pairs_tb2, packed=True, **launch)
        np.testing.assert_array_equal(packed.numpy(), expected)


def test_packed_rows_are_the_published_record_payload() -> None:
    x = photos(8, 8)
    events = torch_events(x, 0.07, dtype=torch.bool)
    packed = i2e_pack(x, 0.07, backend="triton")
    for b in range(x.shape[0]):
        record = encode_packed(packed[b], (8, 2, 8, 8))
        assert record == pack_events(events[:, b])
        assert torch.equal(unpack_events(record), events[:, b])
    with pytest.raises(ValueError, match="packed"):
        encode_packed(packed[0][:-1], (8, 2, 8, 8))


def test_packbits_helper_pads_like_numpy() -> None:
    bits = torch.randint(0, 2, (3, 13), generator=torch.Generator().manual_seed(0))
    expected = np.stack([np.packbits(r, bitorder="big") for r in bits.numpy().astype(bool)])
    np.testing.assert_array_equal(packbits(bits).numpy(), expected)
    np.testing.assert_array_equal(_packbits_torch(bits).numpy(), expected)  # the path for GPU tensors


# --------------------------------------------------------------------------
# Dispatch and errors
# --------------------------------------------------------------------------


def test_auto_uses_torch_on_cpu_and_rejects_unknown_backends(monkeypatch: pytest.MonkeyPatch) -> None:
    x = photos(8, 8)
    calls = []
    monkeypatch.setattr(i2e_triton, "convert", lambda *a, **k: calls.append(1))
    assert i2e_convert(x, 0.07).shape == (8, 4, 2, 8, 8)  # auto on CPU: the torch path
    assert not calls
    with pytest.raises(ValueError, match="backend 'cuda'"):
        i2e_convert(x, 0.07, backend="cuda")
    with pytest.raises(ValueError, match="backend"):
        I2E(0.07, backend="fast")


def test_threshold_scale_takes_the_torch_path(monkeypatch: pytest.MonkeyPatch) -> None:
    # Where auto would pick the kernel (a recent CUDA GPU), a per-pixel threshold scale still goes
    # to the torch path; forcing the kernel is an error.
    x = photos(8, 8)
    scale = torch.full((1, 2, 8, 8), 1.5)
    monkeypatch.setattr(i2e_triton, "is_preferred", lambda device: True)
    monkeypatch.setattr(i2e_triton, "convert", lambda *a, **k: pytest.fail("the kernel was called"))
    events = i2e_convert(x, 0.07, threshold_scale=scale)
    assert torch.equal(events, i2e_convert(x, 0.07, backend="torch", threshold_scale=scale))
    with pytest.raises(ValueError, match="'triton' does not support a per-pixel threshold_scale"):
        i2e_convert(x, 0.07, backend="triton", threshold_scale=scale)
    with pytest.raises(ValueError, match="threshold_scale"):
        I2E(0.07, backend="triton")(x, threshold_scale=scale)


def test_triton_backend_unavailable_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(i2e_triton, "is_available", lambda device: False)
    with pytest.raises(ValueError, match="not available.*backend='torch'"):
        i2e_convert(photos(8, 8), 0.07, backend="triton")


def test_pair_codes_roundtrip() -> None:
    pairs = [g[-1] for g in GROUPS]
    code = i2e_triton.pair_code(pairs)
    decoded = [((code >> (7 * t)) & 127) for t in range(8)]
    assert [(c % 9 + 1, c // 9 + 1) for c in decoded] == pairs
    assert code < 2**63


# --------------------------------------------------------------------------
# Compiled for a Hopper GPU without one (the interpreter does not type-check like the compiler)
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("x_type", "out_type", "flags"),
    [
        ("*u8", "*bf16", {"IS_UINT8": True, "PER_SAMPLE": False, "PACKED": False, "OUT_FLOAT": True}),
        ("*fp32", "*fp32", {"IS_UINT8": False, "PER_SAMPLE": True, "PACKED": False, "OUT_FLOAT": True}),
        ("*fp64", "*u8", {"IS_UINT8": False, "PER_SAMPLE": False, "PACKED": False, "OUT_FLOAT": False}),
        ("*u8", "*u8", {"IS_UINT8": True, "PER_SAMPLE": True, "PACKED": True, "OUT_FLOAT": False}),
    ],
)
def test_kernel_compiles_for_sm90(x_type: str, out_type: str, flags: dict) -> None:
    import triton
    import triton.language as tl

    pytest.importorskip("triton.backends.nvidia")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    kernel = triton.jit(i2e_triton._define_kernel(tl), do_not_specialize=["pair_code"])
    signature = {name: "i32" for name in kernel.arg_names}
    signature.update(
        x_ptr=x_type,
        lut_ptr="*fp32",
        ratio_ptr="*fp32",
        codes_ptr="*i32",
        scratch_ptr="*fp32",
        out_ptr=out_type,
        pair_code="i64",
    )
    constants = {**flags, "BLOCK": 1024}
    signature.update({name: "constexpr" for name in constants})
    # What the JIT knows for 224x224 contiguous images: pointers and sizes divisible by 16.
    divisible = ("x_ptr", "scratch_ptr", "out_ptr", "H", "W", "sxb", "sxc", "sxh")
    attrs = {(kernel.arg_names.index(n),): [["tt.divisibility", 16]] for n in divisible}
    compiled = triton.compile(
        ASTSource(kernel, signature, constants, attrs),
        target=GPUTarget("cuda", 90, 32),
        options={"num_warps": 8, "enable_fp_fusion": True},
    )
    ptx = compiled.asm["ptx"]
    assert "cubin" in compiled.asm
    assert "fma.rn.f32" not in ptx  # even with FP fusion on, nothing contracts the float32 maths


# --------------------------------------------------------------------------
# CUDA: the compiled kernel (runs where a GPU is present)
# --------------------------------------------------------------------------


@pytest.mark.gpu
def test_cuda_kernel_matches_torch_path() -> None:
    """The compiled kernel on every output dtype and input kind. Each (input dtype, output dtype,
    alignment) is one compilation of about a second: the cases are chosen to cover each branch
    once, not every combination (the interpreter tests above cover those exactly)."""
    gen = torch.Generator().manual_seed(7)
    odd = torch.randint(0, 256, (64, 3, 17, 23), dtype=torch.uint8, generator=gen)
    cases = [
        (photos(224, 224), DTYPES),  # uint8, the large size class, every output dtype
        (odd, [torch.float32, torch.bool]),  # unaligned rows, the small size class
        (torch.randint(0, 256, (1, 3, 128, 128), dtype=torch.uint8, generator=gen), [torch.bfloat16]),
        (torch.rand((3, 3, 129, 67), generator=gen), [torch.float16]),  # float input, many bands
        (photos(128, 128).float() / 255, [torch.float32]),
    ]
    for x, dtypes in cases:
        x = x.cuda()
        for dtype in dtypes:
            for pairs in (None, random_pairs(gen)):
                expected = torch_events(x, 0.07, pairs=pairs, dtype=dtype)
                assert_same(i2e_convert(x, 0.07, pairs=pairs, dtype=dtype), expected)  # auto -> triton


@pytest.mark.gpu
def test_cuda_kernel_per_sample_packed_and_large_batch() -> None:
    gen = torch.Generator().manual_seed(8)
    x = torch.randint(0, 256, (300, 3, 32, 32), dtype=torch.uint8, generator=gen).cuda()
    pairs_tb2 = torch.stack([torch.randperm(9, generator=gen)[:2] + 1 for _ in range(8 * 300)]).view(
        8, 300, 2
    )
    expected = torch_events(x, 0.07, pairs=pairs_tb2, dtype=torch.bool)
    assert_same(i2e_convert(x, 0.07, pairs=pairs_tb2, dtype=torch.bool), expected)
    packed = i2e_pack(x, 0.07, pairs=pairs_tb2)
    np.testing.assert_array_equal(packed.cpu().numpy(), numpy_packed(expected.cpu()))
    flat = torch.full((2, 3, 64, 64), 9, dtype=torch.uint8, device="cuda")
    assert not i2e_convert(flat, 0.0).any()
