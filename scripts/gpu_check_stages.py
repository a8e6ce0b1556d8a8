"""The parts of ``scripts/gpu_check.py`` that run inside a stage's own process.

    python3 scripts/gpu_check_stages.py env        --json OUT.json
    python3 scripts/gpu_check_stages.py exactness  --json OUT.json --device cuda --size 224 --batch 256
    python3 scripts/gpu_check_stages.py configs    --json OUT.json --device cuda
    python3 scripts/gpu_check_stages.py syncs      --json OUT.json --device cuda --precisions auto,bf16

Each writes its JSON even when a part of it fails (the error is recorded in the row).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import itertools
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
# module -> distribution, for the versions the environment stage reports
DISTRIBUTIONS = {
    "torch": "torch",
    "triton": "triton",
    "spikingjelly": "spikingjelly",
    "timm": "timm",
    "hydra": "hydra-core",
    "torchvision": "torchvision",
    "numpy": "numpy",
    "sklearn": "scikit-learn",
    "pytest": "pytest",
    "pytest_timeout": "pytest-timeout",
    "skimage": "scikit-image",
}


def _write(path: str, data: dict) -> None:
    Path(path).write_text(json.dumps(data, indent=1, default=str), encoding="utf-8")


def _tail(text: str, lines: int = 12) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def stage_env(args: argparse.Namespace) -> int:
    """Versions, the device, and whether the modules a run needs import."""
    from importlib import metadata

    info: dict[str, Any] = {"python": platform.python_version(), "cpu_count": os.cpu_count(), "modules": {}}
    for name, dist in DISTRIBUTIONS.items():
        try:
            version = metadata.version(dist)
        except metadata.PackageNotFoundError:
            version = None
        info["modules"][name] = version
    info["import_errors"] = []
    for module in ("i2e_train.train", "i2e_train.commands.bench", "i2e_train.training.builders"):
        try:
            importlib.import_module(module)
        except Exception as e:  # noqa: BLE001 - reported
            info["import_errors"].append(f"{module}: {type(e).__name__}: {e}")
    import torch

    info["cuda_available"] = torch.cuda.is_available()
    info["torch_cuda"] = torch.version.cuda
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(
            device_name=props.name,
            capability=f"sm_{props.major}{props.minor}",
            memory_gib=props.total_memory / 2**30,
            multiprocessors=props.multi_processor_count,
            nccl=".".join(map(str, torch.cuda.nccl.version())),
        )
    else:
        info["device_name"] = platform.processor() or platform.machine()
    _write(args.json, info)
    print(json.dumps(info, indent=1))
    return 1 if info["import_errors"] else 0


def stage_exactness(args: argparse.Namespace) -> int:
    """Share of events that differ from the exact conversion, on the benchmark's own images: every
    backend x output dtype on the device and the paper's conv2d formulation, against the torch path
    on the CPU (float32 arithmetic checked bit for bit against the specification by the tests)."""
    import torch

    from i2e_train.commands import bench
    from i2e_train.events.i2e import fixed_pairs, i2e_convert, i2e_pack
    from i2e_train.events.i2e_triton import is_available

    device = torch.device(args.device)
    x = bench.random_images(args.batch, args.size, device)
    ref = i2e_convert(x.cpu(), bench.RATIO, dtype=torch.bool, backend="torch").to(device)
    ref_packed = i2e_pack(x.cpu(), bench.RATIO, backend="torch").to(device)
    backends = ["torch"] + (["triton"] if device.type == "cuda" and is_available(device) else [])
    rows = []
    for backend, name in itertools.product(backends, args.dtypes.split(",")):
        if name == "packed":
            differ = (i2e_pack(x, bench.RATIO, backend=backend) != ref_packed).float().mean()
        else:
            got = i2e_convert(x, bench.RATIO, dtype=bench.DTYPES[name], backend=backend)
            differ = (got.bool() != ref).float().mean()
        rows.append({"impl": "i2e-train", "backend": backend, "dtype": name, "mismatch": float(differ)})
    paper = bench.paper_conversion(x, bench.RATIO, bench.paper_weights(fixed_pairs(), device))
    rows.append(
        {
            "impl": "paper conv2d",
            "backend": "-",
            "dtype": "float32",
            "mismatch": float((paper.bool() != ref).float().mean()),
        }
    )
    result = {"size": args.size, "batch": args.batch, "event_rate": float(ref.float().mean()), "rows": rows}
    _write(args.json, result)
    print(json.dumps(result, indent=1))
    return 0


def stage_configs(args: argparse.Namespace) -> int:
    """Images/s of the I2E kernel for every candidate launch configuration at each size class (uint8
    in, bf16 out): the measurements that ``i2e_triton.SIZE_CLASSES`` should follow."""
    import torch

    from i2e_train.commands import bench
    from i2e_train.events import i2e_triton
    from i2e_train.events.i2e import fixed_pairs

    device = torch.device(args.device)
    rows = []
    for size, batch in ((int(s), int(b)) for s, b in (p.split("x") for p in args.cases.split(","))):
        x = bench.random_images(batch, size, device)
        chosen = i2e_triton.kernel_config(size, size)
        for config in i2e_triton.CANDIDATES if device.type == "cuda" else (chosen,):
            row: dict[str, Any] = {
                "size": size,
                "batch": batch,
                **config.__dict__,
                "chosen": config == chosen,
            }
            try:

                def run(x=x, config=config) -> object:  # noqa: ANN001 - bound per iteration
                    return i2e_triton.convert(x, bench.RATIO, fixed_pairs(), torch.bfloat16, config=config)

                t0 = time.perf_counter()
                run()  # the first call compiles (once per block size and warps)
                row["first_call_s"] = time.perf_counter() - t0
                times = bench.time_call(run, device, args.warmup, args.repeats)
                row["images_per_s"] = batch / statistics.median(times)
            except Exception as e:  # noqa: BLE001 - recorded
                row["error"] = f"{type(e).__name__}: {e}"
            rows.append(row)
            print(json.dumps(row), flush=True)
    _write(args.json, {"device": str(device), "rows": rows})
    return 1 if any("error" in r for r in rows) else 0


def stage_syncs(args: argparse.Namespace) -> int:
    """A run of the digits default built as ``i2e-train`` builds it (``builders.build_run``), at
    ``--size`` and ``--batch``: seconds from the build to the end of the first step (in this already
    started process: imports excluded), then host syncs per step under
    ``torch.cuda.set_sync_debug_mode("warn")`` (one warning = one synchronising CUDA call)."""
    import torch

    from i2e_train.commands import cli
    from i2e_train.training import engine
    from i2e_train.training.builders import build_run

    cli.register_resolvers()
    device = torch.device(args.device)
    rows = []
    for precision in args.precisions.split(","):
        overrides = [
            f"trainer.device={device}",
            f"trainer.precision={precision}",
            f"trainer.batch_size={args.batch}",
            f"dataset.image_size={args.size}",
            f"model={args.model}",
            "trainer.progress=false",
            "trainer.tensorboard=false",
        ]
        row: dict[str, Any] = {
            "precision": precision,
            "model": args.model,
            "size": args.size,
            "batch": args.batch,
        }
        try:
            with tempfile.TemporaryDirectory(prefix="i2e-gpu-syncs-") as tmp:
                t0 = time.perf_counter()
                trainer = build_run(cli.precheck("train", overrides), Path(tmp))
                parts = trainer.parts
                parts.plain.train()
                steps = list(itertools.islice(trainer.batches.epoch(0), args.steps))
                engine.train_step(parts, steps[0], seed=0)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                row["build_to_first_step_s"] = time.perf_counter() - t0
                row["amp"] = str(parts.amp.dtype).removeprefix("torch.") if parts.amp.dtype else "fp32"
                row["fused_optimizer"] = bool(getattr(parts.optimizer, "_step_supports_amp_scaling", False))
                per_step, where = [], Counter()
                for i, micro in enumerate(steps[1:], start=1):
                    with warnings.catch_warnings(record=True) as caught:
                        warnings.simplefilter("always")
                        if device.type == "cuda":
                            torch.cuda.synchronize(device)
                            torch.cuda.set_sync_debug_mode("warn")
                        try:
                            engine.train_step(parts, micro, seed=i)
                        finally:
                            if device.type == "cuda":
                                torch.cuda.set_sync_debug_mode("default")
                    syncs = [w for w in caught if "synchroniz" in str(w.message)]
                    per_step.append(len(syncs))
                    where.update(f"{Path(w.filename).name}:{w.lineno}" for w in syncs)
                if device.type == "cuda":
                    row.update(per_step=per_step, syncs_per_step=max(per_step), where=dict(where))
        except Exception:  # noqa: BLE001 - recorded
            row["error"] = _tail(traceback.format_exc())
        rows.append(row)
        print(json.dumps(row), flush=True)
    _write(args.json, {"device": str(device), "rows": rows})
    return 1 if any("error" in r for r in rows) else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="stage", required=True)
    sub.add_parser("env").add_argument("--json", required=True)
    s = sub.add_parser("exactness")
    s.add_argument("--json", required=True)
    s.add_argument("--device", default="cuda")
    s.add_argument("--size", type=int, default=224)
    s.add_argument("--batch", type=int, default=256)
    s.add_argument("--dtypes", default="float32,bfloat16,float16,uint8,bool,packed")
    s = sub.add_parser("configs")
    s.add_argument("--json", required=True)
    s.add_argument("--device", default="cuda")
    s.add_argument("--cases", default="32x256,128x128,224x128", help="SIZExBATCH,...")
    s.add_argument("--warmup", type=int, default=3)
    s.add_argument("--repeats", type=int, default=20)
    s = sub.add_parser("syncs")
    s.add_argument("--json", required=True)
    s.add_argument("--device", default="cuda")
    s.add_argument("--precisions", default="auto,bf16")
    s.add_argument("--model", default="ms_resnet18")
    s.add_argument("--size", type=int, default=224)
    s.add_argument("--batch", type=int, default=128)
    s.add_argument("--steps", type=int, default=6)
    args = p.parse_args(argv)
    sys.path.insert(0, str(REPO))
    with contextlib.suppress(AttributeError):
        sys.stdout.reconfigure(line_buffering=True)
    stages = {"env": stage_env, "exactness": stage_exactness, "configs": stage_configs, "syncs": stage_syncs}
    return stages[args.stage](args)


if __name__ == "__main__":
    sys.exit(main())
