"""A GPU proof in one command: CUDA tests, conversion and training-step benchmarks, the digits
default end to end and the host syncs of a training step, written to one markdown file and one
JSON file.

    bash scripts/gpu_check.sh --wheels WHEEL_DIR --out RESULTS_DIR      # on one CUDA GPU, < 8 min
    bash scripts/gpu_check.sh --out RESULTS_DIR --dry-run               # every stage, tiny, on the CPU

Run from anywhere; the stages run in the repository root. Only the standard library is imported
here: each stage is its own process (``python3 -m i2e_train.<module>`` or
``scripts/gpu_check_stages.py``) with its own time limit, so a stage that fails, hangs or crashes is
reported in the table with the last lines of its output, and the other stages still run.

Stages (``--stages`` picks some):

* setup       ``pip install --no-index --no-deps --target SITE WHEEL_DIR/*.whl`` (or, without pip,
              the wheels unpacked as zip files); every stage then runs with PYTHONPATH=SITE:REPO.
* env         versions, the device, and whether every module a run needs imports.
* tests       the CUDA tests of tests/ (``@pytest.mark.gpu``, and those skipped where CUDA is
              missing): ``python3 -m pytest -m gpu`` when pytest imports, else the built-in runner
              of scripts/gpu_check_stages.py (same selection, same test functions).
* conversion  ``i2e-bench --part conversion`` at 224x224, batch 256 (Triton kernel, torch path, the
              paper's conv2d formulation) + the share of events that differ from the exact conversion.
* train       ``i2e-bench --part train``: ms_resnet18, T=8, 224x224, batch 128, bf16 and fp16 (one
              process each), neuron precision spikingjelly/cast, channels_last off/on.
* digits      ``python3 -m i2e_train.train`` (the embedded default, 12 epochs): best val top-1, wall time.
* syncs       host syncs per training step of the digits run under
              ``torch.cuda.set_sync_debug_mode("warn")`` (the design target: exactly one).

Outputs in RESULTS_DIR: gpu_check.md, gpu_check.json (rewritten after every stage, so a run cut
short still leaves what it measured) and gpu_check.log (every stage's full output).
Exit status: 0 when every stage passed (or, with --dry-run, ran), 1 otherwise.
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
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = REPO / "scripts"
STAGES = ("setup", "env", "tests", "conversion", "train", "digits", "syncs")
CUDA_STAGES = ("tests", "conversion", "train", "digits", "syncs")
TITLES = {
    "setup": "wheels",
    "env": "environment",
    "tests": "CUDA tests",
    "conversion": "conversion benchmark",
    "train": "training-step benchmark",
    "digits": "digits default, end to end",
    "syncs": "host syncs per step",
}
# Seconds. A stage may use its budget but leaves the later stages their reserve of the total.
BUDGET = {"setup": 60, "env": 60, "tests": 150, "conversion": 90, "train": 210, "digits": 150, "syncs": 90}
RESERVE = {"setup": 10, "env": 15, "tests": 60, "conversion": 40, "train": 90, "digits": 60, "syncs": 40}
TOTAL_BUDGET = 470  # under 8 minutes with the report
DRY_STAGE_BUDGET = 600
DRY_TOTAL_BUDGET = 1800

# The benchmark settings; --dry-run replaces them by tiny ones on the CPU.
CONVERSION = ["--sizes", "224", "--batches", "256", "--warmup", "3", "--repeats", "20"]
CONVERSION_DRY = ["--sizes", "32", "--batches", "4", "--warmup", "0", "--repeats", "1"]
TRAIN_PRECISIONS = ("bf16", "fp16")
TRAIN = [
    "--models", "ms_resnet18", "--train-sizes", "224", "--train-batch", "128",
    "--neuron-precision", "spikingjelly,cast", "--channels-last", "off,on", "--compile", "off",
    "--memopt", "0", "--train-warmup", "3", "--train-steps", "10",
]  # fmt: skip
TRAIN_DRY = [
    "--models", "ms_resnet18", "--train-sizes", "32", "--train-batch", "2",
    "--neuron-precision", "cast", "--channels-last", "off,on", "--compile", "off",
    "--memopt", "0", "--train-warmup", "0", "--train-steps", "1",
]  # fmt: skip
DIGITS_DRY = [
    "trainer.device=cpu", "trainer.epochs=1", "trainer.batch_size=8", "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=2", "trainer.tensorboard=false",
]  # fmt: skip
DIGITS_MIN_TOP1 = 90.0  # the CPU run reaches 98.89%; far below that means something is broken
SYNC_TARGET = 1


@dataclass
class Stage:
    name: str
    title: str
    status: str = "not run"  # passed | dry-run | skipped | failed | timeout | not run
    seconds: float = 0.0
    limit_s: float | None = None
    commands: list[str] = field(default_factory=list)
    returncodes: list[int | None] = field(default_factory=list)
    summary: str = ""
    error: str | None = None
    results: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------- wheels
def pip_works(python: str) -> bool:
    try:
        proc = subprocess.run([python, "-m", "pip", "--version"], capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0


def unpack_wheel(wheel: Path, site: Path) -> None:
    """Install a pure-Python wheel by unpacking it (what pip does for them, minus scripts)."""
    with zipfile.ZipFile(wheel) as zf:
        for info in zf.infolist():
            name = info.filename
            parts = Path(name).parts
            if name.endswith("/") or Path(name).is_absolute() or ".." in parts:
                continue
            if parts[0].endswith(".data"):
                if len(parts) < 3 or parts[1] not in ("purelib", "platlib"):
                    continue  # scripts, headers, data: not needed to import the package
                parts = parts[2:]
            target = site.joinpath(*parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(zf.read(info))


def install_wheels(wheels: Path, site: Path, python: str, installer: str) -> dict[str, Any]:
    """Every ``*.whl`` of ``wheels`` into ``site``: ``pip install --no-index --no-deps --target``
    (``installer`` auto/pip), or unpacked (``unzip``, and ``auto`` where pip is missing)."""
    files = sorted(wheels.glob("*.whl"))
    info: dict[str, Any] = {"folder": str(wheels), "site": str(site), "wheels": [f.name for f in files]}
    site.mkdir(parents=True, exist_ok=True)
    if not files:
        info.update(method=None, note=f"no .whl files in {wheels}")
        return info
    if installer == "pip" or (installer == "auto" and pip_works(python)):
        cmd = [
            python,
            "-m",
            "pip",
            "install",
            "--no-index",
            "--no-deps",
            "--no-compile",
            "--no-cache-dir",
            "--disable-pip-version-check",
            "--upgrade",
            "--target",
            str(site),
            *map(str, files),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=BUDGET["setup"])
        info.update(method="pip", command=shlex.join(cmd), output=(proc.stdout + proc.stderr)[-3000:])
        if proc.returncode != 0:
            raise RuntimeError(f"pip install failed (exit {proc.returncode}):\n{_tail(info['output'])}")
    else:
        for f in files:
            unpack_wheel(f, site)
        info.update(method="unzip")
    return info


# ----------------------------------------------------------------------------- running
def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def fmt_seconds(s: float) -> str:
    return f"{s:.0f} s" if s < 90 else f"{int(s // 60)} min {s % 60:.0f} s"


class Check:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.dry = args.dry_run
        self.python = args.python
        self.out = Path(args.out).resolve()
        self.out.mkdir(parents=True, exist_ok=True)
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        root = Path(args.work).resolve() if args.work else Path(tempfile.mkdtemp(prefix="i2e-gpu-check-"))
        self.work = root / f"run-{stamp}" if args.work else root
        self.work.mkdir(parents=True, exist_ok=True)
        self.site = Path(args.site).resolve() if args.site else self.work / "site"
        self.log_path = self.out / "gpu_check.log"
        self.log_path.write_text("")
        self.start = time.monotonic()
        self.budget = args.budget or (DRY_TOTAL_BUDGET if self.dry else TOTAL_BUDGET)
        self.hidden = [m for m in args.hide_modules.split(",") if m]
        self.stages = {name: Stage(name, TITLES[name]) for name in STAGES if name in args.stages}
        self.env_info: dict[str, Any] = {}
        self.wheels: dict[str, Any] | None = None
        self.date = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")

    # -- environment of the stage processes
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        paths = ([str(self.site)] if self.wheels is not None else []) + [str(REPO)]
        if env.get("PYTHONPATH"):
            paths.append(env["PYTHONPATH"])
        env["PYTHONPATH"] = os.pathsep.join(paths)
        env["PYTHONUNBUFFERED"] = "1"
        env["I2E_GPU_CHECK_SITE"] = str(self.site)
        if self.hidden:
            env["I2E_GPU_CHECK_HIDE"] = ",".join(self.hidden)
        return env

    def left(self) -> float:
        return self.budget - (time.monotonic() - self.start)

    def limit(self, name: str) -> float:
        """This stage's time limit: its budget, minus what the later stages must keep."""
        if self.dry:
            return min(DRY_STAGE_BUDGET, self.left())
        later = STAGES[STAGES.index(name) + 1 :]
        keep = sum(RESERVE[s] for s in later if s in self.stages)
        return max(0.0, min(BUDGET[name], self.left() - keep))

    def run(
        self, stage: Stage, argv: list[str], deadline: float, extra_env: dict | None = None
    ) -> int | None:
        """Run one command of ``stage`` (its output appended to gpu_check.log); None: timed out."""
        env = self.env()
        env.update(extra_env or {})
        shown = f"PYTHONPATH={env['PYTHONPATH']} " + shlex.join(argv)
        stage.commands.append(shown)
        timeout = max(1.0, deadline - time.monotonic())
        with self.log_path.open("a") as log:
            log.write(f"\n===== [{stage.name}] {shown}\n(cwd {REPO}, limit {timeout:.0f} s)\n")
            log.flush()
            offset = log.tell()
            proc = subprocess.Popen(
                argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
            try:
                rc: int | None = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                rc = None
                self._kill(proc)
            log.write(f"\n===== [{stage.name}] exit {rc if rc is not None else 'timeout'}\n")
        stage.returncodes.append(rc)
        if rc != 0:
            with self.log_path.open() as log:
                log.seek(offset)
                output = log.read()
            what = "timed out" if rc is None else f"exit {rc}"
            stage.error = (
                (stage.error or "") + f"{what}: {shlex.join(argv[:4])} ...\n{_tail(output)}\n"
            ).strip()
        return rc

    @staticmethod
    def _kill(proc: subprocess.Popen) -> None:
        for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                proc.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue

    # -- the stages
    def run_all(self) -> int:
        print(
            f"gpu_check: {'DRY RUN on the CPU, tiny sizes' if self.dry else 'full run'}; "
            f"results in {self.out}, work files in {self.work}",
            flush=True,
        )
        for name, stage in self.stages.items():
            if (
                name in CUDA_STAGES
                and not self.dry
                and self.env_info
                and not self.env_info.get("cuda_available")
            ):
                stage.status = "not run"
                stage.error = (
                    "no CUDA GPU (torch.cuda.is_available() is False); --dry-run rehearses on the CPU"
                )
                self.write()
                continue
            limit = self.limit(name)
            stage.limit_s = round(limit)
            if limit < 5:
                stage.status, stage.error = (
                    "not run",
                    "out of time (the total budget was used by earlier stages)",
                )
                self.write()
                continue
            print(
                f"[{fmt_seconds(time.monotonic() - self.start):>9}] {name}: running (limit {limit:.0f} s)",
                flush=True,
            )
            t0 = time.monotonic()
            try:
                getattr(self, f"stage_{name}")(stage, t0 + limit)
            except Exception as e:  # noqa: BLE001 - reported in the table, the next stage runs
                stage.status = "failed"
                stage.error = ((stage.error or "") + f"\n{type(e).__name__}: {e}").strip()
            stage.seconds = time.monotonic() - t0
            if stage.status == "not run":
                stage.status = "timeout" if None in stage.returncodes else "failed"
            print(
                f"[{fmt_seconds(time.monotonic() - self.start):>9}] {name}: {stage.status} "
                f"in {fmt_seconds(stage.seconds)}  {stage.summary}",
                flush=True,
            )
            self.write()
        self.write()
        total = time.monotonic() - self.start
        print(
            f"\n{self.markdown_summary()}\ntotal {fmt_seconds(total)}; wrote {self.out / 'gpu_check.md'}, "
            f"{self.out / 'gpu_check.json'}, {self.log_path}"
        )
        return 0 if self.ok() else 1

    def ok(self) -> bool:
        return all(s.status in ("passed", "dry-run", "skipped") for s in self.stages.values())

    def _done(self, stage: Stage, good: bool, summary: str) -> None:
        stage.summary = summary
        if None in stage.returncodes:
            stage.status = "timeout"
        elif not good:
            stage.status = "failed"
        else:
            stage.status = "dry-run" if self.dry and stage.name in CUDA_STAGES else "passed"

    def stage_setup(self, stage: Stage, deadline: float) -> None:
        if not self.args.wheels:
            stage.status, stage.summary = "skipped", "no --wheels: the installed packages are used"
            return
        info = install_wheels(Path(self.args.wheels), self.site, self.python, self.args.installer)
        self.wheels = info
        stage.results = info
        if info.get("command"):
            stage.commands.append(info["command"])
        self._done(
            stage,
            True,
            f"{len(info['wheels'])} wheel(s) into {self.site} ({info['method'] or 'nothing to do'})",
        )

    def stage_env(self, stage: Stage, deadline: float) -> None:
        out = self.work / "env.json"
        rc = self.run(
            stage, [self.python, "scripts/gpu_check_stages.py", "env", "--json", str(out)], deadline
        )
        if out.exists():
            self.env_info = json.loads(out.read_text())
            stage.results = self.env_info
        info = self.env_info
        problems = list(info.get("import_errors", []))
        if problems and not stage.error:
            stage.error = "\n".join(problems)
        device = info.get("device_name", "?")
        summary = f"{device}, torch {_mod(info, 'torch')}, triton {_mod(info, 'triton')}, spikingjelly {_mod(info, 'spikingjelly')}"
        if not self.dry and info and not info.get("cuda_available"):
            summary += "; NO CUDA GPU"
        self._done(stage, rc == 0 and bool(info), summary)

    def stage_tests(self, stage: Stage, deadline: float) -> None:
        runner = self.args.tests_runner
        if runner == "auto":
            runner = "pytest" if self._imports("pytest") else "builtin"
        if runner == "pytest":
            from gpu_check_stages import SKIMAGE_NOTE, cuda_test_files  # stdlib-only at import

            xml = self.work / "tests.xml"
            files = [str(p.relative_to(REPO)) for p in cuda_test_files()]
            argv = [
                self.python,
                "-m",
                "pytest",
                "-q",
                "-p",
                "no:cacheprovider",
                "-p",
                "gpu_check_stages",
                "-m",
                "gpu",
                "-rfEs",
                f"--junitxml={xml}",
                *files,
            ]
            rc = self.run(
                stage, argv, deadline, {"PYTHONPATH": f"{SCRIPTS}{os.pathsep}{self.env()['PYTHONPATH']}"}
            )
            result = parse_junit(xml) if xml.exists() else {"tests": [], "counts": {}}
            result["runner"] = "pytest"
            result["notes"] = [] if self._imports("skimage") else [SKIMAGE_NOTE]
            ok = rc == 0
        else:
            out = self.work / "tests.json"
            argv = [self.python, "scripts/gpu_check_stages.py", "tests", "--json", str(out)]
            rc = self.run(stage, argv + (["--dry-run"] if self.dry else []), deadline)
            result = json.loads(out.read_text()) if out.exists() else {"tests": [], "counts": {}}
            ok = rc == 0
        counts = result.get("counts", {})
        ran = counts.get("passed", 0) + counts.get("failed", 0) + counts.get("error", 0)
        if not self.dry and ok and ran == 0:
            ok, stage.error = False, "no CUDA test ran (all skipped or none collected)"
        if not result.get("tests"):
            ok, stage.error = False, (stage.error or "no CUDA tests were collected")
        stage.results = result
        parts = [f"{counts.get(k, 0)} {k}" for k in ("passed", "failed", "error", "skipped") if counts.get(k)]
        self._done(stage, ok, f"{', '.join(parts) or 'nothing'}; {result['runner']}")

    def stage_conversion(self, stage: Stage, deadline: float) -> None:
        device = "cpu" if self.dry else "cuda"
        bench_json = self.work / "bench-conversion.json"
        argv = [
            self.python,
            "-m",
            "i2e_train.commands.bench",
            "--part",
            "conversion",
            "--device",
            device,
            *(CONVERSION_DRY if self.dry else CONVERSION),
            "--out",
            str(bench_json),
        ]
        rc = self.run(stage, argv, deadline)
        size, batch = (32, 4) if self.dry else (224, 256)
        exact_json = self.work / "exactness.json"
        argv = [
            self.python,
            "scripts/gpu_check_stages.py",
            "exactness",
            "--json",
            str(exact_json),
            "--device",
            device,
            "--size",
            str(size),
            "--batch",
            str(batch),
        ]
        rc2 = self.run(stage, argv, deadline)
        rows = json.loads(bench_json.read_text())["conversion"] if bench_json.exists() else []
        exact = json.loads(exact_json.read_text()) if exact_json.exists() else {"rows": []}
        mismatch = {
            (r.get("impl", "i2e-train"), r["backend"], r["dtype"]): r["event_mismatch_vs_exact"]
            for r in exact["rows"]
        }
        for r in rows:
            r["event_mismatch_vs_exact"] = mismatch.get(
                (r["impl"], r["backend"], r["dtype"]), r.get("event_mismatch_vs_exact")
            )
        stage.results = {"rows": rows, "exactness": exact}
        ours = [r for r in rows if r["impl"] == "i2e-train"]
        inexact = [r for r in ours if r.get("event_mismatch_vs_exact")]
        ok = rc == 0 and rc2 == 0 and bool(rows)
        if inexact:
            ok = False
            stage.error = (
                (stage.error or "")
                + "events differ from the exact conversion: "
                + ", ".join(
                    f"{r['backend']} {r['dtype']} {r['event_mismatch_vs_exact']:.2e}" for r in inexact
                )
            )
        if not self.dry and rows and not any(r["backend"] == "triton" for r in rows):
            ok = False
            stage.error = (
                stage.error or ""
            ) + "\nno Triton rows: the fused kernel is not available on this GPU"
        best = max(ours, key=lambda r: r["images_per_s"], default=None)
        bf16 = [r for r in ours if r["dtype"] == "bfloat16"]
        pick = next((r for r in bf16 if r["backend"] == "triton"), bf16[0] if bf16 else best)
        paper = next((r for r in rows if r["impl"] == "paper conv2d"), None)
        summary = ""
        if pick:
            summary = (
                f"{pick['backend']} {pick['dtype']} {pick['images_per_s']:,.0f} img/s "
                f"({pick['speedup_vs_paper']:.1f}x paper)"
            )
        if paper and paper.get("event_mismatch_vs_exact") is not None:
            summary += f"; paper conv2d events off exact: {100 * paper['event_mismatch_vs_exact']:.4f}%"
        if ours:
            summary += "; ours exact" if not inexact else "; OURS NOT EXACT"
        self._done(stage, ok, summary)

    def stage_train(self, stage: Stage, deadline: float) -> None:
        device = "cpu" if self.dry else "cuda"
        rows: list[dict] = []
        rcs = []
        for precision in ("fp32",) if self.dry else TRAIN_PRECISIONS:
            out = self.work / f"bench-train-{precision}.json"
            argv = [
                self.python,
                "-m",
                "i2e_train.commands.bench",
                "--part",
                "train",
                "--device",
                device,
                "--precisions",
                precision,
                *(TRAIN_DRY if self.dry else TRAIN),
                "--out",
                str(out),
            ]
            rcs.append(self.run(stage, argv, deadline))
            if out.exists():
                rows += json.loads(out.read_text())["train"]
        stage.results = {"rows": rows}
        errors = [r for r in rows if r.get("error")]
        if errors:
            stage.error = (
                (stage.error or "")
                + "\n"
                + "\n".join(
                    f"{r['precision']} {r['neuron_precision']} channels_last={r['channels_last']}: {r['error']}"
                    for r in errors
                )
            )
        good = [r for r in rows if r.get("images_per_s")]
        parts = [f"{len(good)}/{len(rows)} configs"]
        for precision in dict.fromkeys(r["precision"] for r in good):
            best = max((r for r in good if r["precision"] == precision), key=lambda r: r["images_per_s"])
            cl = "on" if best["channels_last"] else "off"
            peak = f", {best['peak_memory_gib']:.1f} GiB" if best.get("peak_memory_gib") else ""
            parts.append(
                f"{precision} best {best['images_per_s']:,.0f} img/s "
                f"({best['neuron_precision']}, channels_last {cl}{peak})"
            )
        summary = "; ".join(parts)
        self._done(stage, all(rc == 0 for rc in rcs) and bool(rows) and not errors, summary)

    def stage_digits(self, stage: Stage, deadline: float) -> None:
        run_dir = self.work / "digits-run"
        argv = [
            self.python,
            "-m",
            "i2e_train.train",
            f"run_dir={run_dir}",
            "trainer.progress=false",
            *(DIGITS_DRY if self.dry else []),
        ]
        t0 = time.monotonic()
        rc = self.run(stage, argv, deadline)
        wall = time.monotonic() - t0
        metrics = run_dir / "metrics.jsonl"
        rows = (
            [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
            if metrics.exists()
            else []
        )
        result: dict[str, Any] = {"wall_seconds": wall, "epochs": len(rows), "run_dir": str(run_dir)}
        if rows:
            best = max(rows, key=lambda r: r["val_top1"])
            result.update(
                best_val_top1=best["val_top1"],
                best_epoch=best["epoch"],
                final_val_top1=rows[-1]["val_top1"],
                val_samples=rows[-1]["val_samples"],
                train_images_per_second_last_epoch=rows[-1].get("train_images_per_second"),
                epoch_seconds=[r.get("epoch_seconds") for r in rows],
                self_check=next((r["self_check"] for r in rows if "self_check" in r), None),
                curve=[
                    {"epoch": r["epoch"], "val_top1": r["val_top1"], "train_loss": r["train_loss"]}
                    for r in rows
                ],
            )
        log = run_dir / "train.log"
        if log.exists():
            text = log.read_text(errors="replace")
            found = re.search(r"LIF kernel: [^\n]*", text)
            result["settings_line"] = found.group(0) if found else None
        stage.results = result
        ok = rc == 0 and bool(rows)
        if ok and not self.dry and result["best_val_top1"] < DIGITS_MIN_TOP1:
            ok = False
            stage.error = (
                f"best val top-1 {result['best_val_top1']:.2f}% < {DIGITS_MIN_TOP1}% (the CPU run: 98.89%)"
            )
        checks = result.get("self_check") or {}
        if any(c.get("status") != "passed" for c in checks.values()):
            ok = False
            stage.error = (
                (stage.error or "")
                + "\nself-check: "
                + "; ".join(f"{k} {c.get('status')} ({c.get('detail')})" for k, c in checks.items())
            )
        summary = (
            f"exit {rc}"
            if not rows
            else (
                f"best val top-1 {result['best_val_top1']:.2f}% (epoch {result['best_epoch']}/{len(rows)}), "
                f"wall {fmt_seconds(wall)}"
            )
        )
        self._done(stage, ok, summary)

    def stage_syncs(self, stage: Stage, deadline: float) -> None:
        out = self.work / "syncs.json"
        args = (
            ["--device", "cpu", "--precisions", "fp32", "--batch", "8", "--steps", "2"]
            if self.dry
            else ["--device", "cuda", "--precisions", "bf16,fp16", "--batch", "64", "--steps", "6"]
        )
        rc = self.run(
            stage, [self.python, "scripts/gpu_check_stages.py", "syncs", "--json", str(out), *args], deadline
        )
        result = json.loads(out.read_text()) if out.exists() else {"rows": []}
        stage.results = result
        rows = result["rows"]
        ok = rc == 0 and bool(rows)
        parts = []
        for r in rows:
            steady = r.get("steady_per_step")
            if steady is None:
                parts.append(f"{r['precision']}: {'n/a on the CPU' if self.dry else 'not measured'}")
                continue
            parts.append(f"{r['precision']}: {steady:g} per step")
            if r["precision"] == "bf16" and steady != SYNC_TARGET:
                ok = False
                where = ", ".join(f"{k} x{v}" for k, v in (r.get("where") or {}).items())
                stage.error = (
                    stage.error or ""
                ) + f"\nbf16: {steady:g} host syncs per step (target {SYNC_TARGET}) at {where}"
        self._done(stage, ok, "; ".join(parts) + (f" (target {SYNC_TARGET})" if not self.dry else ""))

    def _imports(self, module: str) -> bool:
        if module in self.hidden:
            return False
        code = f"import importlib.util, sys; sys.exit(importlib.util.find_spec({module!r}) is None)"
        try:
            proc = subprocess.run([self.python, "-c", code], env=self.env(), capture_output=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            return False
        return proc.returncode == 0

    # -- reports
    def meta(self) -> dict[str, Any]:
        info = self.env_info
        return {
            "date": self.date,
            "dry_run": self.dry,
            "command": shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]),
            "cwd": str(REPO),
            "commit": _git_commit(),
            "note": self.args.note or None,
            "device_name": info.get("device_name"),
            "capability": info.get("capability"),
            "memory_gib": info.get("memory_gib"),
            "driver": info.get("driver"),
            "python": info.get("python"),
            "torch": _mod(info, "torch"),
            "torch_cuda": info.get("torch_cuda"),
            "triton": _mod(info, "triton"),
            "spikingjelly": _mod(info, "spikingjelly"),
            "versions": {k: v.get("version") for k, v in info.get("modules", {}).items()},
            "wheels": self.wheels,
            "total_seconds": time.monotonic() - self.start,
            "budget_seconds": self.budget,
            "work_dir": str(self.work),
        }

    def write(self) -> None:
        data = {
            "status": "passed" if self.ok() else "failed",
            "meta": self.meta(),
            "stages": {name: asdict(s) for name, s in self.stages.items()},
        }
        (self.out / "gpu_check.json").write_text(json.dumps(data, indent=1, default=str))
        (self.out / "gpu_check.md").write_text(self.markdown())

    def markdown_summary(self) -> str:
        lines = ["| stage | status | time | limit | result |", "|---|---|---|---|---|"]
        for s in self.stages.values():
            status = f"**{s.status}**" if s.status in ("failed", "timeout", "not run") else s.status
            limit = f"{s.limit_s} s" if s.limit_s is not None else "-"
            lines.append(
                f"| {s.title} | {status} | {fmt_seconds(s.seconds)} | {limit} | {_cell(s.summary)} |"
            )
        return "\n".join(lines)

    def markdown(self) -> str:
        m = self.meta()
        mode = "**dry run** on the CPU with tiny sizes (numbers meaningless)" if self.dry else "full run"
        device = m["device_name"] or "?"
        if m.get("capability"):
            device += f" ({m['capability']}, {m['memory_gib']:.0f} GiB"
            device += f", driver {m['driver']})" if m.get("driver") else ")"
        versions = m["versions"]
        soft = (
            f"Python {m['python']}, torch {m['torch']} (CUDA {m['torch_cuda']}), triton {m['triton']}, "
            f"spikingjelly {m['spikingjelly']}, torchvision {versions.get('torchvision')}, "
            f"timm {versions.get('timm')}, hydra-core {versions.get('hydra')}, numpy {versions.get('numpy')}"
        )
        out = [
            f"# GPU check: {device}",
            "",
            "| | |",
            "|---|---|",
            f"| device | {device} |",
            f"| software | {soft} |",
            f"| date | {m['date']} |",
            f"| mode | {mode} |",
            f"| commit | {m['commit'] or 'unknown (no git here)'} |",
            *([f"| note | {_cell(self.args.note)} |"] if self.args.note else []),
            f"| total time | {fmt_seconds(m['total_seconds'])} (budget {fmt_seconds(m['budget_seconds'])}) |",
            f"| command | `{m['command']}` (in the repository root) |",
            f"| overall | **{'passed' if self.ok() else 'FAILED'}** |",
            "",
            "## Summary",
            "",
            self.markdown_summary(),
        ]
        targets = self.targets()
        if targets:
            out += ["", "## Targets (docs/benchmarks.md)", ""]
            if self.dry:
                out += ["Dry run: the numbers are the CPU's, at tiny sizes; nothing is judged.", ""]
            out += ["| target | measured | status |", "|---|---|---|"]
            out += [f"| {t} | {_cell(v)} | {st} |" for t, v, st in targets]
        defaults = self.defaults()
        if defaults:
            out += ["", "## What the measurements say about the speed defaults", ""]
            out += ["| setting | comparison (images/s) | faster |", "|---|---|---|"]
            out += [f"| {k} | {_cell(v)} | {f} |" for k, v, f in defaults]
        for name, s in self.stages.items():
            section = getattr(self, f"md_{name}", None)
            body = section(s) if section and s.results else []
            if body:
                out += ["", f"## {s.title[0].upper()}{s.title[1:]}", "", *body]
        failed = [s for s in self.stages.values() if s.error]
        if failed:
            out += ["", "## Problems", ""]
            for s in failed:
                out += [f"**{s.title}** ({s.status}):", "", "```", s.error.strip(), "```", ""]
        out += ["", "## Commands", "", "Each ran in the repository root, in this order:", ""]
        for s in self.stages.values():
            for c in s.commands:
                out.append(f"- {s.name}: `{c}`")
        return "\n".join(out).rstrip() + "\n"

    def targets(self) -> list[tuple[str, str, str]]:
        """The targets of docs/benchmarks.md and the digits row of the README, from the results."""
        out = []

        def status(met: bool | None) -> str:
            return "(dry run)" if self.dry else "-" if met is None else "**met**" if met else "**not met**"

        conv = self.stages.get("conversion")
        rows = conv.results.get("rows", []) if conv else []
        if rows:
            triton = [r for r in rows if r["backend"] == "triton"]
            pick = next((r for r in triton if r["dtype"] == "bfloat16"), None)
            if pick is None:  # no Triton (or the dry run): the torch path's bf16 row
                pick = next((r for r in rows if r["impl"] == "i2e-train" and r["dtype"] == "bfloat16"), None)
            if pick:
                name = f"{pick['backend']} bfloat16"
                lo = min((r["speedup_vs_paper"] for r in triton), default=None)
                hi = max((r["speedup_vs_paper"] for r in triton), default=None)
                span = f" (Triton rows {lo:.1f}-{hi:.1f}x)" if triton else ""
                out.append(
                    (
                        f"conversion {pick['size']}x{pick['size']}, batch {pick['batch']} >= 10x the paper's formulation",
                        f"{name}: {pick['speedup_vs_paper']:.1f}x{span}",
                        status(pick["speedup_vs_paper"] >= 10 if pick["backend"] == "triton" else None),
                    )
                )
                frac = pick.get("fraction_of_spec_bandwidth")
                out.append(
                    (
                        ">= 50% of the memory bandwidth for the bytes that must move",
                        f"{name}: {_num(frac, '.0%')} of spec, {_num(pick.get('fraction_of_copy_bandwidth'), '.0%')} of copy",
                        status(None if frac is None else frac >= 0.5),
                    )
                )
            ours = [
                r for r in rows if r["impl"] == "i2e-train" and r.get("event_mismatch_vs_exact") is not None
            ]
            if ours:
                worst = max(r["event_mismatch_vs_exact"] for r in ours)
                backends = sorted({r["backend"] for r in ours})
                out.append(
                    (
                        "exact conversion on the device (every backend and output)",
                        f"{', '.join(backends)}: largest share of differing events {100 * worst:.4f}%",
                        status(worst == 0),
                    )
                )
        train = self.stages.get("train")
        rows = [r for r in (train.results.get("rows", []) if train else []) if r.get("images_per_s")]
        want = "fp32" if self.dry else "bf16"
        best = max((r for r in rows if r["precision"] == want), key=lambda r: r["images_per_s"], default=None)
        if best:
            peak = f", peak {best['peak_memory_gib']:.1f} GiB" if best.get("peak_memory_gib") else ""
            out.append(
                (
                    "ms_resnet18, T=8, 224, bf16 >= 1,000 training images/s, batch 128 fits with room",
                    f"{best['images_per_s']:,.0f} images/s ({best['precision']}, {best['neuron_precision']}, "
                    f"channels_last {'on' if best['channels_last'] else 'off'}, size {best['size']}, "
                    f"batch {best['batch']}){peak}",
                    status(best["images_per_s"] >= 1000),
                )
            )
        syncs = self.stages.get("syncs")
        for r in syncs.results.get("rows", []) if syncs else []:
            if r.get("steady_per_step") is not None:
                out.append(
                    (
                        f"exactly {SYNC_TARGET} host sync per training step ({r['precision']})",
                        f"{r['steady_per_step']:g} per step",
                        status(r["steady_per_step"] == SYNC_TARGET)
                        if r["precision"] == "bf16"
                        else "(information)",
                    )
                )
        digits = self.stages.get("digits")
        if digits and digits.results.get("epochs"):
            r = digits.results
            out.append(
                (
                    "README: the digits default on one GPU (12 epochs)",
                    f"best val top-1 {r['best_val_top1']:.2f}% (epoch {r['best_epoch']}), whole command "
                    f"{fmt_seconds(r['wall_seconds'])}",
                    status(r["best_val_top1"] >= DIGITS_MIN_TOP1),
                )
            )
        return out

    def defaults(self) -> list[tuple[str, str, str]]:
        """The comparisons that decide the speed defaults (docs/benchmarks.md), where measured."""
        out = []
        conv = self.stages.get("conversion")
        rows = conv.results.get("rows", []) if conv else []
        by = {(r["backend"], r["dtype"]): r["images_per_s"] for r in rows if r["impl"] == "i2e-train"}
        pairs = [d for (b, d) in by if b == "triton" and ("torch", d) in by]
        if pairs:
            text = ", ".join(f"{d} {by[('triton', d)]:,.0f} vs {by[('torch', d)]:,.0f}" for d in pairs)
            wins = sum(by[("triton", d)] > by[("torch", d)] for d in pairs)
            out.append(("i2e.backend (triton vs torch)", text, f"triton in {wins} of {len(pairs)}"))
        train = self.stages.get("train")
        rows = [r for r in (train.results.get("rows", []) if train else []) if r.get("images_per_s")]
        for key, a, b, label in (
            ("neuron_precision", "spikingjelly", "cast", "trainer.neuron_precision (spikingjelly vs cast)"),
            ("channels_last", True, False, "trainer.channels_last (on vs off)"),
        ):
            cmp = []
            for r in rows:
                if r[key] != a:
                    continue
                other = next(
                    (
                        o
                        for o in rows
                        if o[key] == b
                        and all(
                            o[k] == r[k]
                            for k in ("precision", "neuron_precision", "channels_last")
                            if k != key
                        )
                    ),
                    None,
                )
                if other:
                    cmp.append((r, other))
            if cmp:
                text = "; ".join(
                    f"{r['precision']}"
                    + (f" {r['neuron_precision']}" if key != "neuron_precision" else "")
                    + (f" cl {'on' if r['channels_last'] else 'off'}" if key != "channels_last" else "")
                    + f": {r['images_per_s']:,.0f} vs {o['images_per_s']:,.0f}"
                    for r, o in cmp
                )
                wins = sum(r["images_per_s"] > o["images_per_s"] for r, o in cmp)
                name = "spikingjelly" if key == "neuron_precision" else "on"
                out.append((label, text, f"{name} in {wins} of {len(cmp)}"))
        return out

    def md_env(self, s: Stage) -> list[str]:
        mods = s.results.get("modules", {})
        lines = ["| module | version | from the wheels |", "|---|---|---|"]
        for k, v in mods.items():
            version = v.get("version") or f"missing ({_cell(v.get('error', ''))[:80]})"
            lines.append(f"| {k} | {version} | {'yes' if v.get('from_wheels') else ''} |")
        return [f"i2e_train imported from `{s.results.get('i2e_train_from')}`.", "", *lines]

    def md_tests(self, s: Stage) -> list[str]:
        r = s.results
        lines = [f"Runner: {r.get('runner')}."]
        lines += [f"Note: {n}" for n in r.get("notes", [])]
        lines += [
            f"Module `{m['file']}`: {m['status']} {_cell(m.get('reason') or m.get('error') or '')}"
            for m in r.get("modules", [])
            if m["status"] != "imported"
        ]
        lines += ["", "| test | outcome | s | message |", "|---|---|---|---|"]
        for t in r.get("tests", []):
            msg = (t.get("message") or "").strip().splitlines()
            lines.append(
                f"| `{t['nodeid']}` | {t['outcome']} | {t.get('seconds', 0):.1f} | {_cell(msg[-1] if msg else '')[:160]} |"
            )
        return lines

    def md_conversion(self, s: Stage) -> list[str]:
        rows = s.results.get("rows", [])
        exact = s.results.get("exactness", {})
        lines = [
            "Images/s of one call (median), `× paper` = time of the paper's conv2d formulation / ours; "
            "`events ≠ exact` = share of events differing from the exact conversion (the torch path on the CPU)"
            + (
                f", on the benchmark's own {exact.get('batch')} images of {exact.get('size')}x{exact.get('size')} "
                f"(event rate {100 * exact['event_rate']:.2f}%)."
                if exact.get("event_rate") is not None
                else "."
            ),
            "",
            "| size | batch | impl | backend | output | ms | images/s | × paper | GB/s | of peak | of copy | events ≠ exact |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            mm = r.get("event_mismatch_vs_exact")
            lines.append(
                f"| {r['size']} | {r['batch']} | {r['impl']} | {r['backend']} | {r['dtype']} | {r['ms']:.3f} | "
                f"{r['images_per_s']:,.0f} | {r['speedup_vs_paper']:.1f} | {_num(r.get('effective_gbps'), '.1f')} | "
                f"{_num(r.get('fraction_of_spec_bandwidth'), '.0%')} | {_num(r.get('fraction_of_copy_bandwidth'), '.0%')} | "
                f"{'-' if mm is None else f'{100 * mm:.4f}%'} |"
            )
        return lines

    def md_train(self, s: Stage) -> list[str]:
        lines = [
            "One full step (I2E on the device, forward, backward, SGD, reset), T=8, synthetic images; "
            "median of the timed steps.",
            "",
            "| model | size | batch | precision | neuron_precision | LIF state | channels_last | images/s | ms/step | peak GiB | LIF kernel | LIF in/state | error |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in s.results.get("rows", []):
            lines.append(
                f"| {r['model']} | {r['size']} | {r['batch']} | {r['precision']} | {r['neuron_precision']} | "
                f"{r.get('neuron_state_method', '-')} | {'on' if r['channels_last'] else 'off'} | "
                f"{_num(r.get('images_per_s'), ',.1f')} | {_num(r.get('ms_per_step'), '.1f')} | "
                f"{_num(r.get('peak_memory_gib'), '.2f')} | {_cell(r.get('lif_kernel') or '-')} | "
                f"{r.get('lif_input_dtype', '-')}/{r.get('lif_state_dtype', '-')} | {_cell(r.get('error') or '')} |"
            )
        return lines

    def md_digits(self, s: Stage) -> list[str]:
        r = s.results
        if not r.get("epochs"):
            return [f"No epoch finished (wall {fmt_seconds(r.get('wall_seconds', 0))})."]
        checks = r.get("self_check") or {}
        check_text = (
            "; ".join(f"{k}: {c.get('status')} ({c.get('detail')})" for k, c in checks.items()) or "-"
        )
        ips = r.get("train_images_per_second_last_epoch")
        lines = [
            "| best val top-1 | at epoch | final val top-1 | epochs | val samples | wall time (whole command) | train images/s (last epoch) | self-checks |",
            "|---|---|---|---|---|---|---|---|",
            f"| **{r['best_val_top1']:.2f}%** | {r['best_epoch']} | {r['final_val_top1']:.2f}% | {r['epochs']} | "
            f"{r['val_samples']} | {fmt_seconds(r['wall_seconds'])} | {_num(ips, ',.0f')} | {_cell(check_text)} |",
        ]
        if r.get("settings_line"):
            lines += ["", f"`{r['settings_line']}`"]
        lines += ["", "val top-1 by epoch: " + ", ".join(f"{c['val_top1']:.1f}" for c in r.get("curve", []))]
        return lines

    def md_syncs(self, s: Stage) -> list[str]:
        lines = [
            "Steps of the digits default (build_run, the run's own loader), each under "
            '`torch.cuda.set_sync_debug_mode("warn")`; one warning = one synchronizing CUDA call. '
            "The first step (cuDNN autotuning, lazy initialisation) is shown apart.",
            "",
            "| precision | batch | steps | per step after the first | first step | each step | where (after the first) | error |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in s.results.get("rows", []):
            where = ", ".join(f"`{k}` x{v}" for k, v in (r.get("where") or {}).items()) or "-"
            lines.append(
                f"| {r['precision']} | {r['batch']} | {r.get('steps', '-')} | {_num(r.get('steady_per_step'), 'g')} | "
                f"{_num(r.get('first_step'), 'd')} | {r.get('per_step') or '-'} | {where} | {_cell(r.get('error') or '')} |"
            )
        return lines


def parse_junit(path: Path) -> dict[str, Any]:
    """pytest's --junitxml: one row per test case."""
    tests = []
    for case in ElementTree.parse(path).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[child.tag]
                message = (child.get("message") or "") + "\n" + (child.text or "")
        module = case.get("classname", "").replace(".", "/")
        tests.append(
            {
                "nodeid": f"{module}.py::{case.get('name')}",
                "outcome": outcome,
                "seconds": float(case.get("time") or 0),
                "message": _tail(message, 15),
            }
        )
    counts: dict[str, int] = {}
    for t in tests:
        counts[t["outcome"]] = counts.get(t["outcome"], 0) + 1
    return {"tests": tests, "counts": counts}


def _mod(info: dict, name: str) -> str | None:
    return (info.get("modules", {}).get(name) or {}).get("version")


def _num(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ").strip()


def _git_commit() -> str | None:
    try:
        proc = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gpu_check",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", required=True, help="folder for gpu_check.md, gpu_check.json, gpu_check.log")
    p.add_argument(
        "--wheels", help="folder of .whl files to install first (pip --no-index --no-deps --target)"
    )
    p.add_argument(
        "--dry-run", action="store_true", help="every stage on the CPU with tiny sizes (no CUDA needed)"
    )
    p.add_argument("--stages", default=",".join(STAGES), type=_stages, help="comma list (default: all)")
    p.add_argument("--work", help="folder for the work files (default: a new temporary folder)")
    p.add_argument("--site", help="where the wheels are installed (default: WORK/site)")
    p.add_argument("--python", default=sys.executable, help="the Python of every stage (default: this one)")
    p.add_argument(
        "--budget",
        type=float,
        default=None,
        help=f"total seconds (default {TOTAL_BUDGET}; {DRY_TOTAL_BUDGET} with --dry-run)",
    )
    p.add_argument(
        "--tests-runner",
        choices=("auto", "pytest", "builtin"),
        default="auto",
        help="auto: pytest when it imports, else the built-in runner",
    )
    p.add_argument(
        "--installer",
        choices=("auto", "pip", "unzip"),
        default="auto",
        help="how wheels are installed (auto: pip when it works, else unpacked)",
    )
    p.add_argument("--note", default="", help="a line for the report's header (e.g. the commit measured)")
    p.add_argument("--hide-modules", default="", help=argparse.SUPPRESS)  # tests: rehearse a bare machine
    return p


def _stages(text: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in names if s not in STAGES]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown stage '{bad[0]}'; choose from {', '.join(STAGES)}")
    return names


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.wheels and not Path(args.wheels).is_dir():
        print(f"gpu_check: error: --wheels: '{args.wheels}' is not a folder", file=sys.stderr)
        return 2
    sys.path.insert(0, str(SCRIPTS))
    return Check(args).run_all()


if __name__ == "__main__":
    sys.exit(main())
