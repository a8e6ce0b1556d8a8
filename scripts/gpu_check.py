"""A GPU proof in one command, under 7 minutes on one H200: the CUDA tests, the conversion and
training-step benchmarks, the digits default, the digits default under torchrun with NCCL, and the
host syncs of a training step; one markdown report and one JSON file.

    bash scripts/gpu_check.sh --wheels WHEEL_DIR --out RESULTS_DIR      # on one CUDA GPU
    bash scripts/gpu_check.sh --out RESULTS_DIR --dry-run               # every stage, tiny, on the CPU

Each command of a stage is its own process with its own time limit (its stage's budget, minus what
its earlier commands used), killed with its process group when it runs over: a failing or hanging
command is reported with the last lines of its output and the later stages still get their full
budgets. Every command, test and benchmark configuration is named in the log as it starts.
Only the standard library is imported here.

Stages (``--stages`` picks some; seconds are the budget on a GPU):

* setup (15)       ``pip install --no-index --no-deps --target SITE WHEEL_DIR/*.whl``; every later
                   process runs with ``PYTHONPATH=SITE:REPO``.
* env (15)         versions, the device, whether the modules a run needs import.
* tests (70)       ``pytest -v -m gpu`` on the test files that hold CUDA tests, each test limited
                   to 30 s (``I2E_TEST_TIMEOUT``, tests/conftest.py), with ``--durations``.
* conversion (55)  ``i2e-bench --part conversion`` at 224x224, batch 256; the share of events that
                   differ from the exact conversion; the I2E kernel's launch configurations timed
                   at each size class.
* train (95)       ``i2e-bench --part train``, T=8, 224x224, batch 128, channels_last, SpikingJelly
                   LIF state: ms_resnet18 fp16 and bf16, ms_resnet34 fp16 (one process each).
* digits (50)      ``python3 -m i2e_train.train`` (the embedded default): best top-1, wall time,
                   the first-batch self-checks.
* nccl (60)        the digits default under ``torchrun --nproc_per_node=1`` (NCCL, DDP,
                   ``trainer.sync_batchnorm=true``): 2 epochs, then resumed for a third.
* syncs (40)       ms_resnet18 at 224, batch 128, as ``i2e-train`` builds it: seconds from the
                   build to the first finished step, then host syncs per step (target: one) for
                   the default precision and bf16.

Outputs in RESULTS_DIR: gpu_check.md, gpu_check.json (rewritten after every stage) and
gpu_check.log (every command's full output). Exit status 0 when every stage passed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

REPO = Path(__file__).resolve().parent.parent
STAGES = ("setup", "env", "tests", "conversion", "train", "digits", "nccl", "syncs")
CUDA_STAGES = STAGES[2:]
TITLES = {
    "setup": "wheels",
    "env": "environment",
    "tests": "CUDA tests",
    "conversion": "conversion benchmark",
    "train": "training-step benchmark",
    "digits": "digits default, end to end",
    "nccl": "digits under torchrun with NCCL, resumed",
    "syncs": "first step and host syncs per step",
}
# Seconds per stage on a GPU: 400 in all, under 7 minutes with the report.
BUDGET = {
    "setup": 15,
    "env": 15,
    "tests": 70,
    "conversion": 55,
    "train": 95,
    "digits": 50,
    "nccl": 60,
    "syncs": 40,
}
DRY_BUDGET = 600  # per stage on a CPU (tiny sizes, but 2 shared cores)
TEST_LIMIT = 30  # seconds per CUDA test
DIGITS_MIN_TOP1 = 90.0  # the CPU run reaches 98%; far below means something is broken
FIRST_STEP_TARGET = 15.0  # seconds from build to the first finished step, ms_resnet18 at 224
SYNC_TARGET = 1

TRAIN_ROWS = (("ms_resnet18", "fp16"), ("ms_resnet18", "bf16"), ("ms_resnet34", "fp16"))
TRAIN_ARGS = [
    "--train-sizes", "224", "--train-batch", "128", "--neuron-precision", "spikingjelly",
    "--channels-last", "on", "--compile", "off", "--memopt", "0", "--train-warmup", "3", "--train-steps", "10",
]  # fmt: skip
TRAIN_DRY = [
    "--train-sizes", "16", "--train-batch", "2", "--neuron-precision", "cast",
    "--channels-last", "off", "--compile", "off", "--memopt", "0", "--train-warmup", "0", "--train-steps", "1",
]  # fmt: skip
CONVERSION_ARGS = ["--sizes", "224", "--batches", "256", "--warmup", "3", "--repeats", "20"]
CONVERSION_DRY = ["--sizes", "16", "--batches", "2", "--warmup", "0", "--repeats", "1"]
TINY = [
    "trainer.device=cpu",
    "trainer.batch_size=8",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
]


@dataclass
class Stage:
    name: str
    title: str
    status: str = "not run"  # passed | dry-run | skipped | failed | timeout | not run
    seconds: float = 0.0
    limit_s: float = 0.0
    commands: list[str] = field(default_factory=list)
    returncodes: list[int | None] = field(default_factory=list)
    summary: str = ""
    error: str = ""
    results: dict[str, Any] = field(default_factory=dict)


def fmt_seconds(s: float) -> str:
    return f"{s:.0f} s" if s < 90 else f"{int(s // 60)} min {s % 60:.0f} s"


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ").strip()


def _num(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _read_json(path: Path, default: Any) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return default


def _metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [json.loads(line) for line in lines if line.strip()]


class Check:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.dry = args.dry_run
        self.python = args.python
        self.out = Path(args.out).resolve()
        self.out.mkdir(parents=True, exist_ok=True)
        self.work = (
            Path(args.work).resolve() if args.work else Path(tempfile.mkdtemp(prefix="i2e-gpu-check-"))
        )
        self.work.mkdir(parents=True, exist_ok=True)
        self.site = self.work / "site"
        self.log_path = self.out / "gpu_check.log"
        self.log_path.write_text("")
        self.start = time.monotonic()
        self.stages = {name: Stage(name, TITLES[name]) for name in STAGES if name in args.stages}
        self.env_info: dict[str, Any] = {}
        self.wheels = False
        self.date = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")

    def budget(self, name: str) -> float:
        return DRY_BUDGET if self.dry else BUDGET[name] * self.args.budget_scale

    def env(self) -> dict[str, str]:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        paths = ([str(self.site)] if self.wheels else []) + [str(REPO)]
        env["PYTHONPATH"] = os.pathsep.join(paths + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        return env

    def log(self, text: str) -> None:
        """A line on the terminal and in the log, with the time since the start."""
        line = f"[{fmt_seconds(time.monotonic() - self.start):>9}] {text}"
        print(line, flush=True)
        with self.log_path.open("a") as log:
            log.write(line + "\n")

    def run(
        self, stage: Stage, argv: list[str], deadline: float, env: dict[str, str] | None = None
    ) -> int | None:
        """One command of ``stage``, its output appended to the log; None: cut at the deadline."""
        shown = shlex.join(argv)
        stage.commands.append(shown)
        timeout = max(1.0, deadline - time.monotonic())
        self.log(f"{stage.name}: {shown}  (limit {timeout:.0f} s)")
        with self.log_path.open("a") as log:
            offset = log.tell()
            proc = subprocess.Popen(
                argv,
                cwd=REPO,
                env=env or self.env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            try:
                rc: int | None = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                rc = None
                for sig in (signal.SIGTERM, signal.SIGKILL):
                    try:
                        os.killpg(proc.pid, sig)
                        proc.wait(timeout=10)
                        break
                    except ProcessLookupError:
                        break
                    except subprocess.TimeoutExpired:
                        continue
        stage.returncodes.append(rc)
        self.log(f"{stage.name}: {'cut at its time limit' if rc is None else f'exit {rc}'}")
        if rc != 0:
            with self.log_path.open() as log:
                log.seek(offset)
                output = log.read()
            stage.error += f"{'timed out' if rc is None else f'exit {rc}'}: {shlex.join(argv[:6])} ...\n{_tail(output)}\n"
        return rc

    def py(self, *args: str) -> list[str]:
        return [self.python, *args]

    # ------------------------------------------------------------------------- the stages
    def run_all(self) -> int:
        self.log(f"gpu_check: {'DRY RUN on the CPU' if self.dry else 'full run'}; results in {self.out}")
        for name, stage in self.stages.items():
            if (
                name in CUDA_STAGES
                and not self.dry
                and self.env_info
                and not self.env_info.get("cuda_available")
            ):
                stage.error = (
                    "no CUDA GPU (torch.cuda.is_available() is False); --dry-run rehearses on the CPU"
                )
                self.write()
                continue
            stage.limit_s = self.budget(name)
            self.log(f"{name}: starting (budget {stage.limit_s:.0f} s)")
            t0 = time.monotonic()
            try:
                good, stage.summary = getattr(self, f"stage_{name}")(stage, t0 + stage.limit_s)
            except Exception as e:  # noqa: BLE001 - reported in the table, the next stage runs
                good, stage.error = False, stage.error + f"{type(e).__name__}: {e}"
            stage.seconds = time.monotonic() - t0
            if None in stage.returncodes:
                stage.status = "timeout"
            elif not good:
                stage.status = "failed"
            elif stage.status == "not run":
                stage.status = "dry-run" if self.dry and name in CUDA_STAGES else "passed"
            self.log(f"{name}: {stage.status} in {fmt_seconds(stage.seconds)}; {stage.summary}")
            self.write()
        total = time.monotonic() - self.start
        print(f"\n{self.summary_table()}\n\ntotal {fmt_seconds(total)}; wrote {self.out / 'gpu_check.md'}")
        return 0 if self.ok() else 1

    def ok(self) -> bool:
        return all(s.status in ("passed", "dry-run", "skipped") for s in self.stages.values())

    def stage_setup(self, stage: Stage, deadline: float) -> tuple[bool, str]:
        if not self.args.wheels:
            stage.status = "skipped"
            return True, "no --wheels: the installed packages are used"
        wheels = sorted(Path(self.args.wheels).glob("*.whl"))
        argv = self.py("-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--upgrade")
        rc = self.run(stage, [*argv, "--target", str(self.site), *map(str, wheels)], deadline)
        self.wheels = rc == 0
        stage.results = {"wheels": [w.name for w in wheels], "site": str(self.site)}
        return rc == 0 and bool(wheels), f"{len(wheels)} wheel(s) into {self.site}"

    def stage_env(self, stage: Stage, deadline: float) -> tuple[bool, str]:
        out = self.work / "env.json"
        rc = self.run(stage, self.py("scripts/gpu_check_stages.py", "env", "--json", str(out)), deadline)
        self.env_info = stage.results = _read_json(out, {})
        stage.error += "\n".join(self.env_info.get("import_errors", []))
        mods = self.env_info.get("modules", {})
        summary = (
            f"{self.env_info.get('device_name', '?')}, torch {mods.get('torch')}, triton {mods.get('triton')}"
        )
        return rc == 0, summary

    def stage_tests(self, stage: Stage, deadline: float) -> tuple[bool, str]:
        files = sorted(
            p.relative_to(REPO).as_posix()
            for p in sorted((REPO / "tests").rglob("test_*.py"))
            if "mark.gpu" in p.read_text()
        )
        xml = self.work / "tests.xml"
        argv = self.py(
            "-m", "pytest", "-v", "-m", "gpu", "-p", "no:cacheprovider", "-p", "no:xdist",
            "--durations=10", "-rfEs", f"--junitxml={xml}", *files,
        )  # fmt: skip
        rc = self.run(stage, argv, deadline, env={**self.env(), "I2E_TEST_TIMEOUT": str(TEST_LIMIT)})
        stage.results = parse_junit(xml) if xml.exists() else {"tests": [], "counts": {}}
        counts = stage.results["counts"]
        ran = sum(counts.get(k, 0) for k in ("passed", "failed", "error"))
        good = rc == 0 and bool(stage.results["tests"]) and (self.dry or ran > 0)
        summary = ", ".join(f"{v} {k}" for k, v in counts.items()) or "nothing collected"
        return good, f"{summary}; each limited to {TEST_LIMIT} s"

    def stage_conversion(self, stage: Stage, deadline: float) -> tuple[bool, str]:
        device = "cpu" if self.dry else "cuda"
        bench, exact, configs = (self.work / f"{n}.json" for n in ("conversion", "exactness", "configs"))
        args = CONVERSION_DRY if self.dry else CONVERSION_ARGS
        rcs = [
            self.run(
                stage,
                self.py(
                    "-m",
                    "i2e_train.commands.bench",
                    "--part",
                    "conversion",
                    "--device",
                    device,
                    *args,
                    "--out",
                    str(bench),
                ),
                deadline,
            )
        ]
        size, batch = ("16", "2") if self.dry else ("224", "256")
        exact_args = ["--json", str(exact), "--device", device, "--size", size, "--batch", batch]
        rcs.append(
            self.run(stage, self.py("scripts/gpu_check_stages.py", "exactness", *exact_args), deadline)
        )
        sweep = ["--cases", "16x2", "--warmup", "0", "--repeats", "1"] if self.dry else []
        rcs.append(
            self.run(
                stage,
                self.py(
                    "scripts/gpu_check_stages.py",
                    "configs",
                    "--json",
                    str(configs),
                    "--device",
                    device,
                    *sweep,
                ),
                deadline,
            )
        )
        rows = _read_json(bench, {}).get("conversion", [])
        exactness = _read_json(exact, {"rows": []})
        stage.results = {
            "rows": rows,
            "exactness": exactness,
            "configs": _read_json(configs, {}).get("rows", []),
        }
        ours = [r for r in exactness["rows"] if r["impl"] == "i2e-train"]
        inexact = [f"{r['backend']} {r['dtype']} {r['mismatch']:.2e}" for r in ours if r["mismatch"]]
        if inexact:
            stage.error += "events differ from the exact conversion: " + ", ".join(inexact)
        if not self.dry and not any(r["backend"] == "triton" for r in ours):
            stage.error += "\nno Triton rows: the fused kernel is not available on this GPU"
            inexact.append("no triton")
        pick = next((r for r in rows if r.get("backend") == "triton" and r.get("dtype") == "bfloat16"), None)
        pick = pick or next((r for r in rows if r.get("impl") == "i2e-train"), None)
        summary = (
            f"{pick['backend']} {pick['dtype']} {pick['images_per_s']:,.0f} img/s ({pick['speedup_vs_paper']:.1f}x paper)"
            if pick
            else "no rows"
        )
        return all(rc == 0 for rc in rcs) and bool(rows) and not inexact, summary + (
            "; exact" if ours and not inexact else ""
        )

    def stage_train(self, stage: Stage, deadline: float) -> tuple[bool, str]:
        rows, rcs = [], []
        todo = (("ms_resnet18", "fp32"),) if self.dry else TRAIN_ROWS
        for i, (model, precision) in enumerate(todo):
            # Each row gets its share of what is left, so a slow one cannot starve the next.
            share = time.monotonic() + (deadline - time.monotonic()) / (len(todo) - i)
            out = self.work / f"train-{model}-{precision}.json"
            argv = self.py(
                "-m", "i2e_train.commands.bench", "--part", "train", "--device", "cpu" if self.dry else "cuda",
                "--models", model, "--precisions", precision, *(TRAIN_DRY if self.dry else TRAIN_ARGS), "--out", str(out),
            )  # fmt: skip
            rcs.append(self.run(stage, argv, share))
            rows += _read_json(out, {}).get("train", []) or [
                {"model": model, "precision": precision, "error": "no result"}
            ]
        stage.results = {"rows": rows}
        for r in rows:
            if r.get("error"):
                stage.error += f"\n{r['model']} {r['precision']}: {r['error']}"
        summary = "; ".join(
            f"{r['model']} {r['precision']} {_num(r.get('images_per_s'), ',.0f')} img/s, {_num(r.get('peak_memory_gib'), '.1f')} GiB"
            for r in rows
        )
        return all(rc == 0 for rc in rcs) and not any(r.get("error") for r in rows), summary

    def stage_digits(self, stage: Stage, deadline: float) -> tuple[bool, str]:
        run_dir = self.work / "digits"
        extra = [*TINY, "trainer.epochs=1"] if self.dry else []
        t0 = time.monotonic()
        rc = self.run(
            stage,
            self.py("-m", "i2e_train.train", f"run_dir={run_dir}", "trainer.progress=false", *extra),
            deadline,
        )
        rows = _metrics(run_dir)
        stage.results = result = {"wall_seconds": time.monotonic() - t0, "epochs": len(rows)}
        if not rows:
            return False, f"exit {rc}, no epoch finished"
        best = max(rows, key=lambda r: r["val_top1"])
        checks = next((r["self_check"] for r in rows if "self_check" in r), {})
        log = (run_dir / "train.log").read_text(errors="replace") if (run_dir / "train.log").exists() else ""
        settings = re.search(r"LIF kernel: [^\n]*", log)
        result.update(
            best_val_top1=best["val_top1"], best_epoch=best["epoch"], self_check=checks,
            settings=settings.group(0) if settings else None, curve=[round(r["val_top1"], 2) for r in rows],
        )  # fmt: skip
        good = rc == 0
        if not self.dry and best["val_top1"] < DIGITS_MIN_TOP1:
            good, stage.error = (
                False,
                stage.error + f"best val top-1 {best['val_top1']:.2f}% < {DIGITS_MIN_TOP1}%",
            )
        failed = {k: c for k, c in checks.items() if c.get("status") != "passed"}
        if failed:
            good, stage.error = False, stage.error + f"\nself-checks: {failed}"
        passed = ", ".join(f"{k} {c.get('status')}" for k, c in checks.items()) or "none"
        wall = fmt_seconds(result["wall_seconds"])
        return (
            good,
            f"best val top-1 {best['val_top1']:.2f}% (epoch {best['epoch']}/{len(rows)}), wall {wall}; self-checks {passed}",
        )

    def stage_nccl(self, stage: Stage, deadline: float) -> tuple[bool, str]:
        run_dir = self.work / "nccl"
        torchrun = self.py(
            "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", "-m", "i2e_train.train"
        )
        common = [f"run_dir={run_dir}", "trainer.progress=false"]
        common += [*TINY, "trainer.sync_batchnorm=false"] if self.dry else ["trainer.sync_batchnorm=true"]
        first_epochs, last_epochs = (1, 2) if self.dry else (2, 3)
        halfway = time.monotonic() + (deadline - time.monotonic()) / 2
        rcs = [self.run(stage, [*torchrun, *common, f"trainer.epochs={first_epochs}"], halfway)]
        rcs.append(
            self.run(stage, [*torchrun, *common, f"trainer.epochs={last_epochs}", "resume=auto"], deadline)
        )
        rows = _metrics(run_dir)
        log = (run_dir / "train.log").read_text(errors="replace") if (run_dir / "train.log").exists() else ""
        backend = re.findall(r"process group: (\w+)", log)
        stage.results = {
            "epochs": [r["epoch"] for r in rows],
            "val_top1": [r["val_top1"] for r in rows],
            "backends": backend,
        }
        want = "gloo" if self.dry else "nccl"
        good = all(rc == 0 for rc in rcs) and len(rows) == last_epochs and backend.count(want) == 2
        if not good:
            stage.error += f"\nexpected {last_epochs} epochs over 2 runs on {want}: epochs {stage.results['epochs']}, backends {backend}"
        top1 = f", val top-1 {rows[-1]['val_top1']:.2f}%" if rows else ""
        runs = f"{first_epochs} + resumed {last_epochs - first_epochs}"
        return good, f"{len(rows)} epochs ({runs}) on {'/'.join(backend) or '?'}{top1}"

    def stage_syncs(self, stage: Stage, deadline: float) -> tuple[bool, str]:
        out = self.work / "syncs.json"
        if self.dry:
            args = ["--device", "cpu", "--precisions", "fp32", "--size", "16", "--batch", "8", "--steps", "2"]
        else:
            args = [
                "--device",
                "cuda",
                "--precisions",
                "auto,bf16",
                "--size",
                "224",
                "--batch",
                "128",
                "--steps",
                "6",
            ]
        rc = self.run(
            stage, self.py("scripts/gpu_check_stages.py", "syncs", "--json", str(out), *args), deadline
        )
        rows = _read_json(out, {}).get("rows", [])
        stage.results = {"rows": rows}
        good, parts = rc == 0 and bool(rows), []
        for r in rows:
            parts.append(f"{r['precision']}: first step {_num(r.get('build_to_first_step_s'), '.1f')} s, "
                         f"{_num(r.get('syncs_per_step'), 'd')} sync(s) per step")  # fmt: skip
            if not self.dry and r.get("syncs_per_step") != SYNC_TARGET:
                good, stage.error = (
                    False,
                    stage.error
                    + f"\n{r['precision']}: syncs per step {r.get('per_step')} at {r.get('where')}",
                )
        return good, "; ".join(parts)

    # ------------------------------------------------------------------------- the report
    def targets(self) -> list[tuple[str, str, str]]:
        def status(ok: bool) -> str:
            return "dry run" if self.dry else ("**met**" if ok else "**not met**")

        out = []
        tests = self.stages.get("tests")
        if tests and tests.results.get("tests"):
            slow = max(tests.results["tests"], key=lambda t: t["seconds"])
            out.append(
                (
                    f"CUDA tests pass in under 60 s (each under {TEST_LIMIT} s)",
                    f"{tests.status} in {fmt_seconds(tests.seconds)}; slowest {slow['nodeid']} {slow['seconds']:.1f} s",
                    status(tests.status == "passed" and tests.seconds < 60),
                )
            )
        syncs = self.stages.get("syncs")
        for r in syncs.results.get("rows", []) if syncs else []:
            if r.get("build_to_first_step_s") is not None and r["precision"] == "auto":
                out.append(
                    (
                        f"build to first finished step < {FIRST_STEP_TARGET:g} s ({r['model']} at {r['size']})",
                        f"{r['build_to_first_step_s']:.1f} s (imports excluded)",
                        status(r["build_to_first_step_s"] < FIRST_STEP_TARGET),
                    )
                )
            if r.get("syncs_per_step") is not None:
                out.append(
                    (
                        f"{SYNC_TARGET} host sync per step ({r['precision']} = {r.get('amp')})",
                        f"{r['per_step']}",
                        status(r["syncs_per_step"] == SYNC_TARGET),
                    )
                )
        total = sum(s.seconds for s in self.stages.values())
        out.append(("the whole proof under 7 minutes", fmt_seconds(total), status(total < 420)))
        return out

    def summary_table(self) -> str:
        lines = ["| stage | status | time | budget | result |", "|---|---|---|---|---|"]
        for s in self.stages.values():
            status = s.status if s.status in ("passed", "dry-run", "skipped") else f"**{s.status}**"
            lines.append(
                f"| {s.title} | {status} | {fmt_seconds(s.seconds)} | {s.limit_s:.0f} s | {_cell(s.summary)} |"
            )
        return "\n".join(lines)

    def markdown(self) -> str:
        info = self.env_info
        mods = info.get("modules", {})
        lines = [
            f"# GPU check: {info.get('device_name', '?')}"
            + (f" ({info['capability']}, {info['memory_gib']:.0f} GiB)" if info.get("capability") else ""),
            "",
            f"{'**dry run** on the CPU with tiny sizes (numbers meaningless)' if self.dry else 'full run'}, {self.date}, "
            f"commit {_git_commit() or '?'}; torch {mods.get('torch')} (CUDA {info.get('torch_cuda')}), triton {mods.get('triton')}, "
            f"spikingjelly {mods.get('spikingjelly')}, NCCL {info.get('nccl', '-')}, Python {info.get('python')}.",
            "",
            self.summary_table(),
            "",
            "## Targets",
            "",
            "| target | measured | status |",
            "|---|---|---|",
            *(f"| {a} | {_cell(b)} | {c} |" for a, b, c in self.targets()),
        ]
        for s in self.stages.values():
            section = getattr(self, f"md_{s.name}", None)
            body = section(s) if section and s.results else []
            if body or s.error:
                lines += ["", f"## {s.title}", "", *body]
            if s.error:
                lines += ["", "```", _tail(s.error, 30), "```"]
        lines += [
            "",
            "## Commands",
            "",
            "```",
            *(c for s in self.stages.values() for c in s.commands),
            "```",
            "",
        ]
        return "\n".join(lines)

    def md_tests(self, s: Stage) -> list[str]:
        lines = ["| test | outcome | s | message |", "|---|---|---|---|"]
        for t in s.results["tests"]:
            lines.append(
                f"| `{t['nodeid']}` | {t['outcome']} | {t['seconds']:.1f} | {_cell(t['message'])[:160]} |"
            )
        return lines

    def md_conversion(self, s: Stage) -> list[str]:
        lines = [
            "| size | batch | impl | backend | output | ms | images/s | x paper | of spec bandwidth |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in s.results["rows"]:
            lines.append(
                f"| {r['size']} | {r['batch']} | {r['impl']} | {r['backend']} | {r['dtype']} | {r['ms']:.3f} | {r['images_per_s']:,.0f} | {r['speedup_vs_paper']:.1f} | {_num(r.get('fraction_of_spec_bandwidth'), '.0%')} |"
            )
        ex = s.results["exactness"]
        lines += ["", f"Events differing from the exact conversion ({ex.get('batch')} images of {ex.get('size')}x{ex.get('size')}): "
                  + ", ".join(f"{r['impl']} {r['backend']} {r['dtype']} {100 * r['mismatch']:.4f}%" for r in ex.get("rows", []))]  # fmt: skip
        lines += ["", "I2E kernel launch configurations (uint8 in, bf16 out; `chosen`: the size class's fixed configuration):", "",
                  "| size | batch | block | warps | programs/SM | first call s | images/s | chosen |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for r in s.results["configs"]:
            lines.append(
                f"| {r['size']} | {r['batch']} | {r['block']} | {r['warps']} | {r['programs_per_sm']} | {_num(r.get('first_call_s'), '.2f')} | {_num(r.get('images_per_s'), ',.0f')} | {'yes' if r['chosen'] else ''} |"
            )
        return lines

    def md_train(self, s: Stage) -> list[str]:
        lines = [
            "| model | size | batch | precision | LIF state | channels_last | images/s | peak GiB | LIF kernel | error |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in s.results["rows"]:
            lines.append(
                f"| {r.get('model')} | {r.get('size', '-')} | {r.get('batch', '-')} | {r.get('precision')} | {r.get('neuron_precision', '-')} | {r.get('channels_last', '-')} | {_num(r.get('images_per_s'), ',.0f')} | {_num(r.get('peak_memory_gib'), '.1f')} | {_cell(r.get('lif_kernel', '-'))} | {_cell(r.get('error', ''))} |"
            )
        return lines

    def md_digits(self, s: Stage) -> list[str]:
        r = s.results
        return [
            f"val top-1 by epoch: {r.get('curve')}",
            "",
            f"`{r.get('settings')}`",
            "",
            f"self-checks: `{json.dumps(r.get('self_check'))}`",
        ]

    def md_syncs(self, s: Stage) -> list[str]:
        lines = [
            "| precision | amp | fused optimizer | build to first step s | syncs per step | where |",
            "|---|---|---|---|---|---|",
        ]
        for r in s.results["rows"]:
            lines.append(
                f"| {r['precision']} | {r.get('amp', '-')} | {r.get('fused_optimizer', '-')} | {_num(r.get('build_to_first_step_s'), '.1f')} | {r.get('per_step', '-')} | {_cell(r.get('where') or r.get('error', ''))} |"
            )
        return lines

    def write(self) -> None:
        data = {
            "status": "passed" if self.ok() else "failed",
            "dry_run": self.dry,
            "date": self.date,
            "env": self.env_info,
            "stages": {name: asdict(s) for name, s in self.stages.items()},
        }
        (self.out / "gpu_check.json").write_text(json.dumps(data, indent=1, default=str))
        (self.out / "gpu_check.md").write_text(self.markdown())


def parse_junit(path: Path) -> dict[str, Any]:
    """pytest's --junitxml: one row per test."""
    tests = []
    for case in ElementTree.parse(path).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[child.tag]
                message = f"{child.get('message') or ''}\n{child.text or ''}"
        module = case.get("classname", "").replace(".", "/")
        tests.append(
            {
                "nodeid": f"{module}.py::{case.get('name')}",
                "outcome": outcome,
                "seconds": float(case.get("time") or 0),
                "message": _tail(message, 3),
            }
        )
    counts: dict[str, int] = {}
    for t in tests:
        counts[t["outcome"]] = counts.get(t["outcome"], 0) + 1
    return {"tests": tests, "counts": counts}


def _git_commit() -> str | None:
    try:
        proc = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() or None


def _stages(text: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in names if s not in STAGES]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown stage '{bad[0]}'; choose from {', '.join(STAGES)}")
    return names


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gpu_check", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="folder for gpu_check.md, gpu_check.json, gpu_check.log")
    p.add_argument(
        "--wheels", help="folder of .whl files to install first (pip --no-index --no-deps --target)"
    )
    p.add_argument(
        "--dry-run", action="store_true", help="every stage on the CPU with tiny sizes (no CUDA needed)"
    )
    p.add_argument("--stages", default=",".join(STAGES), type=_stages, help="comma list (default: all)")
    p.add_argument("--work", help="folder for the work files (default: a new temporary folder)")
    p.add_argument("--python", default=sys.executable, help="the Python of every stage (default: this one)")
    p.add_argument(
        "--budget-scale", type=float, default=1.0, help="multiply every stage's budget (a slower GPU)"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.wheels and not Path(args.wheels).is_dir():
        print(f"gpu_check: error: --wheels: '{args.wheels}' is not a folder", file=sys.stderr)
        return 2
    return Check(args).run_all()


if __name__ == "__main__":
    sys.exit(main())
