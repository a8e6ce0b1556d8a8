"""scripts/gpu_check.sh, the one-command GPU proof, rehearsed on the CPU: the budgets, a command cut
at its limit without starving the next stage, the wheel install (offline), the per-test time limit,
the report, and (slow) the whole dry run of every stage."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "scripts"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


gpu_check = _load("gpu_check")


def env(**extra: str) -> dict[str, str]:
    paths = [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(paths),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"),
        **extra,
    }


def make_wheel(folder: Path, name: str = "gpucheck_dummy", version: str = "0.1") -> Path:
    """A pure-Python wheel written by hand (no build backend, no network)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-{version}-py3-none-any.whl"
    info = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": "VALUE = 42\n",
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = [f"{n},," for n in files] + [f"{info}/RECORD,,"]
    with zipfile.ZipFile(path, "w") as zf:
        for n, text in files.items():
            zf.writestr(n, text)
        zf.writestr(f"{info}/RECORD", "\n".join(record) + "\n")
    return path


def check_args(tmp_path: Path, **kw) -> argparse.Namespace:
    args = gpu_check.build_parser().parse_args(
        ["--out", str(tmp_path / "out"), "--work", str(tmp_path / "work")]
    )
    for k, v in kw.items():
        setattr(args, k, v)
    return args


# ----------------------------------------------------------------------------- budgets
def test_the_stage_budgets_fit_seven_minutes_with_room() -> None:
    assert set(gpu_check.BUDGET) == set(gpu_check.STAGES) == set(gpu_check.TITLES)
    assert sum(gpu_check.BUDGET.values()) <= 400 < 7 * 60
    assert gpu_check.BUDGET["tests"] >= 60 and gpu_check.BUDGET["tests"] > gpu_check.TEST_LIMIT


def test_a_command_over_its_limit_is_cut_and_the_next_stage_keeps_its_budget(tmp_path, monkeypatch) -> None:
    """A hanging benchmark (here: a sleeping process that ignores nothing) is killed at its stage's
    budget; the next stage starts at once with all of its own."""
    monkeypatch.setitem(gpu_check.BUDGET, "conversion", 1.5)
    started = {}

    def hangs(self, stage, deadline):
        self.run(
            stage,
            [sys.executable, "-c", "import time; print('started', flush=True); time.sleep(60)"],
            deadline,
        )
        return True, "never"

    def quick(self, stage, deadline):
        started["budget"] = deadline - time.monotonic()
        rc = self.run(stage, [sys.executable, "-c", "import sys; print('last words'); sys.exit(3)"], deadline)
        return rc == 0, "exit 3"

    monkeypatch.setattr(gpu_check.Check, "stage_conversion", hangs)
    monkeypatch.setattr(gpu_check.Check, "stage_train", quick)
    check = gpu_check.Check(check_args(tmp_path, stages=["conversion", "train"]))
    t0 = time.monotonic()
    assert check.run_all() == 1
    assert time.monotonic() - t0 < 30
    conversion, train = check.stages["conversion"], check.stages["train"]
    assert (conversion.status, train.status) == ("timeout", "failed")
    assert started["budget"] > gpu_check.BUDGET["train"] - 5
    assert "timed out" in conversion.error and "started" in conversion.error
    assert "exit 3" in train.error and "last words" in train.error
    log = (tmp_path / "out" / "gpu_check.log").read_text()
    assert "conversion: cut at its time limit" in log and "train: exit 3" in log
    md = (tmp_path / "out" / "gpu_check.md").read_text()
    assert "| conversion benchmark | **timeout** |" in md and "| training-step benchmark | **failed** |" in md


def test_without_cuda_a_full_run_marks_the_cuda_stages_not_run(tmp_path, monkeypatch) -> None:
    def fake_env(self, stage, deadline):
        self.env_info = {"cuda_available": False, "device_name": "x86_64", "modules": {}}
        return True, "no GPU here"

    monkeypatch.setattr(gpu_check.Check, "stage_env", fake_env)
    check = gpu_check.Check(check_args(tmp_path, stages=["env", "tests", "nccl"]))
    assert check.run_all() == 1
    result = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert [result["stages"][s]["status"] for s in ("env", "tests", "nccl")] == [
        "passed",
        "not run",
        "not run",
    ]
    assert "no CUDA GPU" in (tmp_path / "out" / "gpu_check.md").read_text()


# ----------------------------------------------------------------------------- wheels
def test_the_setup_stage_installs_wheels_offline_from_the_command_line(tmp_path) -> None:
    wheels = tmp_path / "wheels"
    make_wheel(wheels)
    out = tmp_path / "out"
    argv = [
        "bash",
        str(SCRIPTS / "gpu_check.sh"),
        "--stages",
        "setup",
        "--wheels",
        str(wheels),
        "--out",
        str(out),
    ]
    argv += ["--work", str(tmp_path / "work")]
    proc = subprocess.run(argv, env=env(PYTHON=sys.executable), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    setup = json.loads((out / "gpu_check.json").read_text())["stages"]["setup"]
    assert setup["status"] == "passed" and setup["results"]["wheels"] == [
        "gpucheck_dummy-0.1-py3-none-any.whl"
    ]
    assert "--no-index" in setup["commands"][0] and "--no-deps" in setup["commands"][0]
    assert (tmp_path / "work" / "site" / "gpucheck_dummy" / "__init__.py").is_file()
    bad = subprocess.run(
        [sys.executable, str(SCRIPTS / "gpu_check.py"), "--out", str(out), "--wheels", str(tmp_path / "no")],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "is not a folder" in bad.stderr


# ----------------------------------------------------------------------------- the CUDA tests
def test_one_hanging_test_fails_at_its_limit_and_the_others_run(tmp_path) -> None:
    """tests/conftest.py's per-test limit (``I2E_TEST_TIMEOUT``), which the tests stage sets."""
    shutil.copy(REPO / "tests" / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_limits.py").write_text(
        "import time\n\ndef test_hangs():\n    time.sleep(60)\n\ndef test_after_it():\n    assert True\n"
    )
    argv = [sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", "-p", "no:xdist", str(tmp_path)]
    t0 = time.monotonic()
    proc = subprocess.run(argv, cwd=tmp_path, env=env(I2E_TEST_TIMEOUT="1"), capture_output=True, text=True)
    assert time.monotonic() - t0 < 30
    assert "ran over its 1 s limit (I2E_TEST_TIMEOUT)" in proc.stdout
    assert "test_hangs FAILED" in proc.stdout and "test_after_it PASSED" in proc.stdout


def test_junit_report_of_pytest_is_read(tmp_path) -> None:
    xml = tmp_path / "t.xml"
    xml.write_text(
        '<?xml version="1.0"?><testsuites><testsuite name="pytest">'
        '<testcase classname="tests.test_i2e" name="test_a" time="1.5"/>'
        '<testcase classname="tests.test_i2e" name="test_b[x]" time="0.1">'
        '<failure message="assert 1 == 2">long\ntrace\nE assert 1 == 2</failure></testcase>'
        '<testcase classname="tests.test_speed" name="test_c" time="0"><skipped message="needs CUDA"/></testcase>'
        "</testsuite></testsuites>"
    )
    result = gpu_check.parse_junit(xml)
    assert result["counts"] == {"passed": 1, "failed": 1, "skipped": 1}
    assert [t["nodeid"] for t in result["tests"]][1] == "tests/test_i2e.py::test_b[x]"
    assert result["tests"][1]["message"].endswith("E assert 1 == 2")


# ----------------------------------------------------------------------------- the report
def test_report_of_measured_results(tmp_path) -> None:
    check = gpu_check.Check(check_args(tmp_path, stages=["tests", "train", "syncs"]))
    check.env_info = {"device_name": "NVIDIA H200", "capability": "sm_90", "memory_gib": 139.8, "modules": {}}
    tests = check.stages["tests"]
    tests.status, tests.seconds = "passed", 41.0
    tests.results = {
        "tests": [{"nodeid": "tests/test_x.py::test_a", "outcome": "passed", "seconds": 12.5, "message": ""}]
    }
    check.stages["train"].results = {
        "rows": [
            {"model": "ms_resnet18", "size": 224, "batch": 128, "precision": "fp16", "neuron_precision": "spikingjelly",
             "channels_last": True, "images_per_s": 1870.0, "peak_memory_gib": 21.4, "lif_kernel": "triton"},
            {"model": "ms_resnet34", "precision": "fp16", "error": "out of memory"},
        ]
    }  # fmt: skip
    check.stages["syncs"].results = {
        "rows": [
            {"precision": "auto", "amp": "float16", "model": "ms_resnet18", "size": 224, "build_to_first_step_s": 9.2,
             "per_step": [1, 1, 1], "syncs_per_step": 1, "fused_optimizer": True, "where": {"distributed.py:160": 3}},
            {"precision": "bf16", "amp": "bfloat16", "model": "ms_resnet18", "size": 224, "build_to_first_step_s": 3.0,
             "per_step": [1, 2, 1], "syncs_per_step": 2, "fused_optimizer": False, "where": {}},
        ]
    }  # fmt: skip
    text = check.markdown()
    assert "# GPU check: NVIDIA H200 (sm_90, 140 GiB)" in text
    assert (
        "| CUDA tests pass in under 60 s (each under 30 s) | passed in 41 s; slowest tests/test_x.py::test_a 12.5 s | **met** |"
        in text
    )
    assert (
        "| build to first finished step < 15 s (ms_resnet18 at 224) | 9.2 s (imports excluded) | **met** |"
        in text
    )
    assert "| 1 host sync per step (auto = float16) | [1, 1, 1] | **met** |" in text
    assert "| 1 host sync per step (bf16 = bfloat16) | [1, 2, 1] | **not met** |" in text
    assert "| ms_resnet18 | 224 | 128 | fp16 | spikingjelly | True | 1,870 | 21.4 | triton |  |" in text
    assert "| ms_resnet34 | - | - | fp16 | - | - | - | - | - | out of memory |" in text


# ----------------------------------------------------------------------------- the whole dry run
@pytest.mark.slow
def test_dry_run_of_every_stage(tmp_path) -> None:
    out = tmp_path / "results"
    wheels = tmp_path / "wheels"
    make_wheel(wheels)
    argv = ["bash", str(SCRIPTS / "gpu_check.sh"), "--wheels", str(wheels), "--out", str(out), "--dry-run"]
    argv += ["--work", str(tmp_path / "work")]
    proc = subprocess.run(argv, env=env(PYTHON=sys.executable), capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["gpu_check.json", "gpu_check.log", "gpu_check.md"]
    result = json.loads((out / "gpu_check.json").read_text())
    st = result["stages"]
    assert list(st) == list(gpu_check.STAGES) and result["status"] == "passed"
    assert st["setup"]["status"] == "passed" and st["env"]["status"] == "passed"
    assert all(st[s]["status"] == "dry-run" for s in gpu_check.CUDA_STAGES), {s: st[s]["status"] for s in st}
    names = {t["nodeid"] for t in st["tests"]["results"]["tests"]}
    assert (
        "tests/unit/test_event_augment.py::test_on_a_device_equals_the_cpu_and_drops_at_its_rate[cuda]"
        in names
    )
    assert "tests/unit/test_i2e_triton.py::test_cuda_kernel_matches_torch_path" in names
    assert all(t["outcome"] == "skipped" for t in st["tests"]["results"]["tests"])
    conv = st["conversion"]["results"]
    assert {r["impl"] for r in conv["rows"]} == {"paper conv2d", "i2e-train"} and conv["configs"][0]["chosen"]
    assert all(r["mismatch"] == 0 for r in conv["exactness"]["rows"])
    assert st["train"]["results"]["rows"][0]["images_per_s"] > 0
    assert st["digits"]["results"]["epochs"] == 1
    assert st["nccl"]["results"]["epochs"] == [1, 2] and st["nccl"]["results"]["backends"] == ["gloo", "gloo"]
    assert st["syncs"]["results"]["rows"][0]["build_to_first_step_s"] > 0
    log = (out / "gpu_check.log").read_text()
    assert (
        "tests/unit/test_i2e_triton.py::test_cuda_kernel_matches_torch_path SKIPPED" in log
    )  # -v names each test
    assert "slowest 10 durations" in log and "--models ms_resnet18 --precisions fp32" in log
    md = (out / "gpu_check.md").read_text()
    for title in gpu_check.TITLES.values():
        assert f"| {title} |" in md
    assert "**dry run**" in md and "## Commands" in md
