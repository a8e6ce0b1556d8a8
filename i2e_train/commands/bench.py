"""``i2e-bench``: measured speed of conversion, training step and data path, on CPU or CUDA.

    i2e-bench                                   # everything, on the GPU if there is one
    i2e-bench --part conversion --sizes 224 --batches 64 --threads 2 --device cpu
    i2e-bench --part train --models ms_resnet18 --train-sizes 224 --precisions bf16
    i2e-bench --quick --device cpu --out bench.json   # seconds: the CI smoke run

Prints one table per part and writes every row to a JSON file (``--out``, default
``i2e-bench.json``). Nothing here asserts a speed: the numbers go to docs/benchmarks.md.

* conversion: images/s of our converter (each output dtype, and on CUDA both the fused Triton
  kernel and the torch path) and of the paper's formulation (float32 image -> max -> replicate pad
  -> conv2d with eight +-1 kernels -> split by sign -> threshold), side by side in one process,
  with the ratio; on CUDA also the fraction of the memory bandwidth that the bytes which must
  move (uint8 images in, events out) would need, against the device's spec peak
  (2 x memory clock x bus width, from its properties) and a measured device-to-device copy.
* train: images/s and peak memory of a full training step (I2E + forward + backward + SGD) of
  MS-ResNet on synthetic non-zero uint8 images, T=8, for every combination of the given models,
  sizes, precisions, channels_last and torch.compile settings, with the SpikingJelly LIF kernel
  that ran (its own selection log where it writes one, and the dtypes the first LIF layer saw).
* data: images/s of the CIFAR Baseline-II augmentation (CPU workers with torchvision on PIL vs
  :mod:`i2e_train.data.device_transforms` on the device) and of JPEG folders (CPU workers decoding
  with PIL vs ``torchvision.io.decode_jpeg`` on the device), on images generated in a temp dir.

Timing: warm-up first, then the median of ``--repeats`` runs; CUDA runs are timed with CUDA
events, CPU runs with ``time.perf_counter``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.transforms.v2 import functional as TF

from ..errors import UserError
from ..files import atomic_write
from . import cli

PROG = "i2e-bench"
PARTS = ("conversion", "train", "data")
DTYPES = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "uint8": torch.uint8,
    "bool": torch.bool,
    "packed": None,
}
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
RATIO = 0.12  # the paper's ImageNet ratio; speed does not depend on it


# ----------------------------------------------------------------------------- timing
def time_call(fn: Callable[[], Any], device: torch.device, warmup: int, repeats: int) -> list[float]:
    """Seconds per call (CUDA events on the GPU), after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
    else:
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return times


def time_interleaved(
    fns: Sequence[Callable[[], Any]], device: torch.device, warmup: int, repeats: int
) -> list[list[float]]:
    """Seconds per call of each function, the functions taking turns in every repeat, so that a
    change of machine load during the run affects all of them alike (the ratios stay fair)."""
    for fn in fns:
        for _ in range(warmup):
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            times[i] += time_call(fn, device, 0, 1)
    return times


def random_images(batch: int, size: int, device: torch.device, seed: int = 0) -> Tensor:
    """uint8 [B, 3, size, size]: smooth structure plus noise (not zeros, not flat)."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand((batch, 3, max(size // 8, 1), max(size // 8, 1)), generator=gen)
    smooth = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    noise = torch.rand((batch, 3, size, size), generator=gen) * 0.2
    return ((smooth * 0.8 + noise) * 255).round().clamp(0, 255).to(torch.uint8).to(device)


# ----------------------------------------------------------------------------- conversion
def paper_weights(pairs: Sequence[tuple[int, int]], device: torch.device) -> Tensor:
    """Eight 3x3 kernels, +1 at the 'to' position and -1 at the 'from' position."""
    w = torch.zeros(len(pairs), 1, 3, 3)
    for t, (p_from, p_to) in enumerate(pairs):
        w[t, 0, (p_to - 1) // 3, (p_to - 1) % 3] += 1
        w[t, 0, (p_from - 1) // 3, (p_from - 1) % 3] -= 1
    return w.to(device)


def paper_conversion(images: Tensor, ratio: float, weights: Tensor) -> Tensor:
    """The paper's formulation, float32 (the baseline; not exact on GPUs: TF32/Winograd)."""
    # The paper converts float images in [0, 1]: torchvision's ToDtype(float32, scale=True).
    x = TF.to_dtype(images, torch.float32, scale=True)
    v = x.amax(1, keepdim=True)
    batch = v.shape[0]
    th = (ratio * (v.amax((1, 2, 3)) - v.amin((1, 2, 3)))).view(batch, 1, 1, 1)
    dv = F.conv2d(F.pad(v, (1, 1, 1, 1), mode="replicate"), weights)
    on = (F.relu(dv) >= th).float()
    off = (F.relu(-dv) >= th).float()
    return torch.stack((on, off), 2).transpose(0, 1).contiguous()  # [T, B, 2, H, W]


def peak_bandwidth(device: torch.device) -> dict[str, float | None]:
    """GB/s: the spec peak from the device properties and a measured device-to-device copy."""
    if device.type != "cuda":
        return {"spec_gbps": None, "copy_gbps": None}
    props = torch.cuda.get_device_properties(device)
    clock_khz = getattr(props, "memory_clock_rate", 0) or 0
    bus_bits = getattr(props, "memory_bus_width", 0) or 0
    spec = 2 * clock_khz * 1e3 * bus_bits / 8 / 1e9 if clock_khz and bus_bits else None
    src = torch.empty(256 * 2**20, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    times = time_call(lambda: dst.copy_(src), device, warmup=3, repeats=10)
    copy = 2 * src.numel() / statistics.median(times) / 1e9  # read + write
    return {"spec_gbps": spec, "copy_gbps": copy}


def bench_conversion(args: argparse.Namespace, device: torch.device, peak: dict) -> list[dict]:
    from ..events.i2e import fixed_pairs, i2e_convert, i2e_pack
    from ..events.i2e_triton import is_available

    pairs = fixed_pairs()
    weights = paper_weights(pairs, device)
    backends = ["torch"]
    if device.type == "cuda" and is_available(device):
        backends.insert(0, "triton")
    rows = []
    for size in args.sizes:
        for batch in args.batches:
            x = random_images(batch, size, device)
            ours = i2e_convert(x, RATIO, backend="torch")
            mismatch = float((paper_conversion(x, RATIO, weights) != ours).float().mean())
            del ours
            cases = [("paper conv2d", "-", "float32", partial(paper_conversion, x, RATIO, weights))]
            for backend in backends:
                for name in args.dtypes:
                    dtype = DTYPES[name]
                    if dtype is None:
                        fn = partial(i2e_pack, x, RATIO, backend=backend)
                    else:
                        fn = partial(i2e_convert, x, RATIO, dtype=dtype, backend=backend)
                    cases.append(("i2e-train", backend, name, fn))
            times = time_interleaved([c[3] for c in cases], device, args.warmup, args.repeats)
            paper_t = statistics.median(times[0])
            for (impl, backend, name, _), t in zip(cases, times, strict=True):
                extra = mismatch if impl == "paper conv2d" else None
                rows.append(
                    _conv_row(size, batch, impl, backend, name, statistics.median(t), paper_t, peak, extra)
                )
    return rows


def _conv_row(
    size: int,
    batch: int,
    impl: str,
    backend: str,
    dtype: str,
    seconds: float,
    paper_seconds: float,
    peak: dict,
    mismatch: float | None = None,
) -> dict:
    pixels = batch * size * size
    out_bytes = 2 * pixels if dtype == "packed" else 16 * pixels * DTYPES[dtype].itemsize
    must_move = 3 * pixels + out_bytes  # uint8 RGB in + events out
    gbps = must_move / seconds / 1e9
    row = {
        "size": size,
        "batch": batch,
        "impl": impl,
        "backend": backend,
        "dtype": dtype,
        "ms": seconds * 1e3,
        "images_per_s": batch / seconds,
        "speedup_vs_paper": paper_seconds / seconds,
        "bytes_must_move": must_move,
        "effective_gbps": gbps,
        "fraction_of_spec_bandwidth": gbps / peak["spec_gbps"] if peak.get("spec_gbps") else None,
        "fraction_of_copy_bandwidth": gbps / peak["copy_gbps"] if peak.get("copy_gbps") else None,
    }
    if mismatch is not None:
        row["event_mismatch_vs_exact"] = mismatch
    return row


# ----------------------------------------------------------------------------- training step
def bench_train(args: argparse.Namespace, device: torch.device) -> list[dict]:
    rows = []
    for model_name in args.models:
        for size in args.train_sizes:
            for precision in args.precisions:
                for channels_last in args.channels_last:
                    for compiled in args.compile:
                        for neuron_precision in args.neuron_precision:
                            for memopt in args.memopt:
                                rows.append(
                                    _train_config(
                                        args,
                                        device,
                                        model_name,
                                        size,
                                        precision,
                                        channels_last,
                                        compiled,
                                        neuron_precision,
                                        memopt,
                                    )
                                )
    return rows


def _train_config(
    args: argparse.Namespace,
    device: torch.device,
    model_name: str,
    size: int,
    precision: str,
    channels_last: bool,
    compiled: bool,
    neuron_precision: str,
    memopt: int,
) -> dict:
    """A training run assembled as ``i2e-train`` assembles it (``builders.build_run``), stepped by the
    same ``engine.train_step`` on synthetic images of the benchmark's size."""
    from ..training import engine, speed
    from ..training.builders import build_run

    row: dict[str, Any] = {
        "model": model_name,
        "size": size,
        "batch": args.train_batch,
        "T": 8,
        "precision": precision,
        "channels_last": channels_last,
        "compile": compiled,
        "neuron_precision": neuron_precision,
        "memopt": memopt,
    }
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return {**row, "error": "bf16 not supported on this GPU"}
    on_off = {True: "true", False: "false"}
    overrides = [
        f"model={model_name}",
        f"trainer.device={device}",
        f"trainer.precision={precision}",
        f"trainer.channels_last={on_off[channels_last]}",
        f"trainer.compile={on_off[compiled]}",
        f"trainer.neuron_precision={neuron_precision}",
        f"trainer.memopt={memopt}",
        f"trainer.batch_size={args.train_batch}",
        "trainer.self_check=off",
        f"i2e.ratio={RATIO}",
    ]
    report = speed.KernelReport()
    try:
        with speed.spikingjelly_log(report.add), tempfile.TemporaryDirectory(prefix="i2e-bench-run-") as tmp:
            cfg = cli.precheck("train", overrides)
            trainer = build_run(cfg, Path(tmp))
            parts = trainer.parts
            parts.plain.train()
            parts.converter.train()
            images = random_images(args.train_batch, size, device, seed=1)
            labels = torch.randint(0, trainer.data.num_classes, (args.train_batch,), device=device)
            batch = [(images, labels)]
            with speed.observe_lif(parts.plain) as seen:  # one eager step: what the first LIF layer sees
                engine.train_step(parts, batch, seed=0)
            warmup = args.train_warmup + (2 if compiled else 0)
            for i in range(warmup):
                engine.train_step(parts, batch, seed=i)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
                torch.cuda.reset_peak_memory_stats(device)
            times = time_call(lambda: engine.train_step(parts, batch, seed=0), device, 0, args.train_steps)
            seconds = statistics.median(times)
            peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
            kernel = speed.lif_kernel(parts.plain, device, parts.amp.dtype, compiled)
    except torch.OutOfMemoryError:
        return {**row, "error": "out of memory"}
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()
    row.update(
        {
            "ms_per_step": seconds * 1e3,
            "images_per_s": args.train_batch / seconds,
            "peak_memory_gib": peak / 2**30 if peak is not None else None,
            "neuron_state_method": speed.resolve_neuron_precision(
                neuron_precision, device, PRECISIONS[precision]
            ),
            "lif_kernel": kernel,
            "lif_input_dtype": str(seen.input_dtype).removeprefix("torch."),
            "lif_state_dtype": str(seen.state_dtype).removeprefix("torch."),
            "spikingjelly_selection": report.selected,
            "spikingjelly_log": report.lines,
        }
    )
    return row


# ----------------------------------------------------------------------------- data path
def _write_cifar_like(root: Path, count: int) -> Path:
    """uint8 [N, 32, 32, 3] in a .npy file, the way CIFAR sits in memory after unpickling."""
    path = root / "cifar_like.npy"
    images = random_images(count, 32, torch.device("cpu"), seed=2).permute(0, 2, 3, 1).numpy()
    np.save(path, images)
    return path


def _write_jpeg_folder(root: Path, count: int, size: tuple[int, int]) -> list[Path]:
    from PIL import Image

    folder = root / "train" / "class0"
    folder.mkdir(parents=True)
    paths = []
    h, w = size
    for i in range(count):
        img = random_images(1, max(h, w), torch.device("cpu"), seed=100 + i)[0, :, :h, :w]
        path = folder / f"{i:05d}.jpg"
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(path, quality=90)
        paths.append(path)
    return paths


class _PILArray(torch.utils.data.Dataset):
    def __init__(self, path: Path, transform: Callable | None) -> None:
        self.images = np.load(path, mmap_mode="r")
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> Any:
        from PIL import Image

        img = np.array(self.images[i])  # a writable copy out of the memory map
        if self.transform is None:
            return torch.from_numpy(img).permute(2, 0, 1)
        return self.transform(Image.fromarray(img))


class _Files(torch.utils.data.Dataset):
    def __init__(self, paths: list[Path], transform: Callable | None) -> None:
        self.paths = paths
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> Any:
        from ..data.images import read_image

        if self.transform is None:  # raw bytes: decoded on the device
            return torch.frombuffer(bytearray(self.paths[i].read_bytes()), dtype=torch.uint8)
        return self.transform(read_image(self.paths[i]))  # the loader training uses


def _rate(loader: Iterable, device: torch.device, consume: Callable[[Any], Tensor], images: int) -> float:
    """images/s of draining ``loader`` through ``consume`` (including the copy to the device)."""
    t0 = time.perf_counter()
    out = None
    for batch in loader:
        out = consume(batch)
    if device.type == "cuda" and out is not None:
        torch.cuda.synchronize(device)
    return images / (time.perf_counter() - t0)


def bench_data(args: argparse.Namespace, device: torch.device) -> list[dict]:
    from torchvision.transforms import v2

    from ..data.device_transforms import build_device_augment, decode_jpeg_batch

    rows = []
    non_blocking = device.type == "cuda"
    with tempfile.TemporaryDirectory(prefix="i2e-bench-") as tmp:
        root = Path(tmp)
        npy = _write_cifar_like(root, args.data_images)
        cpu_aug = v2.Compose(
            [
                v2.Pad(4, padding_mode="edge"),
                v2.RandomCrop(32),
                v2.Resize(128, antialias=True),
                v2.RandomHorizontalFlip(),
                v2.PILToTensor(),
            ]
        )
        device_aug = build_device_augment("baseline2", 128, seed=0)
        for workers in args.workers:
            kw = _loader_kwargs(workers, device)
            loader = torch.utils.data.DataLoader(_PILArray(npy, cpu_aug), batch_size=args.data_batch, **kw)
            rate = _rate(
                loader, device, lambda b: b.to(device, non_blocking=non_blocking), len(loader.dataset)
            )
            rows.append(_data_row("cifar baseline2 128", "CPU workers (torchvision, PIL)", workers, rate))
            loader = torch.utils.data.DataLoader(_PILArray(npy, None), batch_size=args.data_batch, **kw)
            rate = _rate(
                loader,
                device,
                lambda b: device_aug.augment(b.to(device, non_blocking=non_blocking)),
                len(loader.dataset),
            )
            rows.append(_data_row("cifar baseline2 128", f"batched on {device.type}", workers, rate))

        paths = _write_jpeg_folder(root, args.jpeg_images, tuple(args.jpeg_size))
        cpu_jpeg = v2.Compose(
            [v2.RandomResizedCrop(224, antialias=True), v2.RandomHorizontalFlip(), v2.PILToTensor()]
        )
        for workers in args.workers:
            kw = _loader_kwargs(workers, device)
            loader = torch.utils.data.DataLoader(_Files(paths, cpu_jpeg), batch_size=args.data_batch, **kw)
            rate = _rate(loader, device, lambda b: b.to(device, non_blocking=non_blocking), len(paths))
            rows.append(_data_row("jpeg folder 224", "CPU workers (PIL decode, torchvision)", workers, rate))
            loader = torch.utils.data.DataLoader(
                _Files(paths, None), batch_size=args.data_batch, collate_fn=list, **kw
            )
            rate = _rate(loader, device, lambda b: decode_jpeg_batch(b, 224, device), len(paths))
            rows.append(
                _data_row("jpeg folder 224", f"torchvision.io.decode_jpeg on {device.type}", workers, rate)
            )
    return rows


def _loader_kwargs(workers: int, device: torch.device) -> dict:
    return {
        "num_workers": workers,
        "pin_memory": device.type == "cuda",
        "shuffle": False,
        "persistent_workers": False,
        **({"prefetch_factor": 4} if workers else {}),
    }


def _data_row(data: str, path: str, workers: int, rate: float) -> dict:
    return {"data": data, "path": path, "workers": workers, "images_per_s": rate}


# ----------------------------------------------------------------------------- report
def _table(title: str, rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """Fixed-width table; ``columns`` are (key, header, format)."""
    cells = [[h for _, h, _ in columns]]
    for r in rows:
        line = []
        for key, _, fmt in columns:
            value = r.get(key)
            line.append("-" if value is None else format(value, fmt) if fmt else str(value))
        cells.append(line)
    widths = [max(len(c[i]) for c in cells) for i in range(len(columns))]
    text = [f"\n{title}"]
    for i, c in enumerate(cells):
        text.append("  ".join(v.rjust(w) for v, w in zip(c, widths, strict=True)))
        if i == 0:
            text.append("  ".join("-" * w for w in widths))
    return "\n".join(text)


def _print_tables(result: dict) -> None:
    if result.get("conversion"):
        print(
            _table(
                "I2E conversion (images/s; speedup = time of the paper's conv2d formulation / ours)",
                result["conversion"],
                [
                    ("size", "size", ""),
                    ("batch", "batch", ""),
                    ("impl", "impl", ""),
                    ("backend", "backend", ""),
                    ("dtype", "output", ""),
                    ("ms", "ms", ".3f"),
                    ("images_per_s", "images/s", ",.0f"),
                    ("speedup_vs_paper", "speedup", ".1f"),
                    ("effective_gbps", "GB/s", ".1f"),
                    ("fraction_of_spec_bandwidth", "of peak", ".0%"),
                    ("fraction_of_copy_bandwidth", "of copy", ".0%"),
                ],
            )
        )
    if result.get("train"):
        print(
            _table(
                "Training step (I2E + forward + backward + SGD, T=8)",
                result["train"],
                [
                    ("model", "model", ""),
                    ("size", "size", ""),
                    ("batch", "batch", ""),
                    ("precision", "precision", ""),
                    ("channels_last", "channels_last", ""),
                    ("compile", "compile", ""),
                    ("memopt", "memopt", ""),
                    ("neuron_state_method", "LIF state", ""),
                    ("images_per_s", "images/s", ",.1f"),
                    ("peak_memory_gib", "peak GiB", ".2f"),
                    ("lif_kernel", "LIF kernel", ""),
                    ("error", "error", ""),
                ],
            )
        )
    if result.get("data"):
        print(
            _table(
                "Data path (images/s delivered on the device)",
                result["data"],
                [
                    ("data", "data", ""),
                    ("path", "path", ""),
                    ("workers", "workers", ""),
                    ("images_per_s", "images/s", ",.0f"),
                ],
            )
        )


def _meta(args: argparse.Namespace, device: torch.device, peak: dict) -> dict:
    import spikingjelly
    import torchvision

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join([PROG, *sys.argv[1:]]),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "triton": triton_version,
        "spikingjelly": getattr(spikingjelly, "__version__", None),
        "quick": args.quick,
        "timing": "CUDA events, median" if device.type == "cuda" else "perf_counter, median",
        "warmup": args.warmup,
        "repeats": args.repeats,
        "peak_bandwidth": peak,
    }


# ----------------------------------------------------------------------------- CLI
def _csv(kind: Callable[[str], Any], choices: Sequence[str] | None = None) -> Callable[[str], list]:
    def parse(text: str) -> list:
        items = [s.strip() for s in text.split(",") if s.strip()]
        if choices is not None:
            bad = [s for s in items if s not in choices]
            if bad:
                raise argparse.ArgumentTypeError(
                    f"unknown value '{bad[0]}'; choose from {', '.join(choices)}"
                )
        try:
            return [kind(s) for s in items]
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    return parse


def _onoff(text: str) -> bool:
    return {"on": True, "off": False}[text]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "i2e-bench: measured speed of the I2E conversion (against the paper's conv2d formulation),\n"
            "of a full training step (per precision, channels_last, compile, memopt, with the LIF kernel\n"
            "that ran) and of the data path, on CPU or CUDA. Prints tables and writes every row to --out."
        ),
        formatter_class=cli.HelpFormatter,
        epilog=cli.epilog(
            PROG,
            [
                "i2e-bench --part conversion --sizes 224 --batches 256",
                "i2e-bench --part train --models ms_resnet18 --train-sizes 224 --precisions bf16,fp16",
                "i2e-bench --quick --device cpu --out bench.json",
            ],
        ),
    )
    p.add_argument(
        "--part", type=_csv(str, PARTS), default=list(PARTS), help="comma list: conversion,train,data"
    )
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="auto: CUDA if present")
    p.add_argument("--out", default="i2e-bench.json", help="JSON file for every measured row")
    p.add_argument(
        "--quick", action="store_true", help="tiny sizes and counts (CI smoke run; numbers meaningless)"
    )
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls before timing (conversion)")
    p.add_argument("--repeats", type=int, default=20, help="timed calls; the median is reported (conversion)")
    g = p.add_argument_group("conversion")
    g.add_argument("--sizes", type=_csv(int), default=[128, 224], help="image sides")
    g.add_argument("--batches", type=_csv(int), default=[1, 64, 256], help="batch sizes")
    g.add_argument("--dtypes", type=_csv(str, list(DTYPES)), default=list(DTYPES), help="output dtypes")
    g = p.add_argument_group("training step")
    g.add_argument(
        "--models", type=_csv(str, ("ms_resnet18", "ms_resnet34")), default=["ms_resnet18", "ms_resnet34"]
    )
    g.add_argument("--train-sizes", type=_csv(int), default=[128, 224], help="image sides")
    g.add_argument("--train-batch", type=int, default=128, help="batch size of the step")
    g.add_argument("--precisions", type=_csv(str, list(PRECISIONS)), default=list(PRECISIONS))
    g.add_argument("--channels-last", type=_csv(_onoff, ("on", "off")), default=[False, True], help="off,on")
    g.add_argument("--compile", type=_csv(_onoff, ("on", "off")), default=[False, True], help="off,on")
    g.add_argument(
        "--neuron-precision",
        type=_csv(str, ("auto", "spikingjelly", "cast")),
        default=["auto"],
        help="how the LIF state stays fp32 under bf16/fp16 (trainer.neuron_precision); e.g. spikingjelly,cast",
    )
    g.add_argument(
        "--memopt", type=_csv(int, ("0", "1")), default=[0], help="SpikingJelly memopt levels, e.g. 0,1"
    )
    g.add_argument("--train-warmup", type=int, default=3, help="untimed steps (+2 with compile)")
    g.add_argument("--train-steps", type=int, default=10, help="timed steps; the median is reported")
    g = p.add_argument_group("data path")
    g.add_argument("--workers", type=_csv(int), default=[2, 8], help="DataLoader worker counts")
    g.add_argument("--data-images", type=int, default=4096, help="CIFAR-like images generated")
    g.add_argument("--jpeg-images", type=int, default=512, help="JPEG files generated")
    g.add_argument(
        "--jpeg-size", type=_csv(int), default=[375, 500], help="JPEG height,width (ImageNet-like)"
    )
    g.add_argument("--data-batch", type=int, default=128, help="loader batch size")
    return p


QUICK = {
    "sizes": [32],
    "batches": [1, 4],
    "warmup": 1,
    "repeats": 2,
    "models": ["ms_resnet18"],
    "train_sizes": [32],
    "train_batch": 2,
    "precisions": ["fp32"],
    "compile": [False],
    "train_warmup": 0,
    "train_steps": 1,
    "workers": [0],
    "data_images": 64,
    "jpeg_images": 8,
    "jpeg_size": [48, 64],
    "data_batch": 16,
}


def run(args: argparse.Namespace) -> dict:
    if args.quick:
        defaults = build_parser().parse_args([])
        for key, value in QUICK.items():
            if getattr(args, key) == getattr(defaults, key):  # explicit options still win
                setattr(args, key, value)
    from ..devices import resolve_device

    cli.register_resolvers()
    try:
        device = resolve_device(args.device, key="--device")
    except ValueError as e:
        raise UserError(str(e)) from None
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if len(args.jpeg_size) != 2:
        raise UserError(f"--jpeg-size must be HEIGHT,WIDTH, got {args.jpeg_size}")
    out = Path(args.out)
    if out.parent and not out.parent.exists():
        raise UserError(f"--out: folder '{out.parent}' does not exist")
    peak = peak_bandwidth(device)
    result: dict[str, Any] = {"meta": _meta(args, device, peak)}
    if "conversion" in args.part:
        result["conversion"] = bench_conversion(args, device, peak)
    if "train" in args.part:
        result["train"] = bench_train(args, device)
    if "data" in args.part:
        result["data"] = bench_data(args, device)
    _print_tables(result)
    atomic_write(out, lambda f: f.write(json.dumps(result, indent=1, default=str).encode()))
    print(f"\nwrote {out}")
    return result


@cli.guard(PROG)
def _guarded(args: argparse.Namespace) -> dict:
    return run(args)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    with contextlib.suppress(BrokenPipeError):
        _guarded(args)


if __name__ == "__main__":
    main()
