"""scripts/gpu_check.sh, the one-command GPU proof, rehearsed on the CPU: the wheel install (offline),
the built-in test runner that replaces pytest on a bare machine, the report, failing and hanging
stages, and (slow) the whole dry run."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
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
stages = _load("gpu_check_stages")


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
    argv = ["--out", str(tmp_path / "out"), "--work", str(tmp_path / "work")]
    args = gpu_check.build_parser().parse_args(argv)
    for k, v in kw.items():
        setattr(args, k, v)
    return args


# ----------------------------------------------------------------------------- wheels
@pytest.mark.parametrize("installer", ["pip", "unzip"])
def test_wheels_install_offline_and_import(tmp_path, installer) -> None:
    wheels = tmp_path / "wheels"
    make_wheel(wheels)
    site = tmp_path / "site"
    info = gpu_check.install_wheels(wheels, site, sys.executable, installer)
    assert info["method"] == installer and info["wheels"] == ["gpucheck_dummy-0.1-py3-none-any.whl"]
    if installer == "pip":
        assert "--no-index" in info["command"] and "--no-deps" in info["command"]
    proc = subprocess.run(
        [sys.executable, "-c", "import gpucheck_dummy; print(gpucheck_dummy.__file__, gpucheck_dummy.VALUE)"],
        env={**os.environ, "PYTHONPATH": str(site)},
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [str(site / "gpucheck_dummy" / "__init__.py"), "42"]


def test_empty_wheel_folder_and_the_setup_stage_from_the_command_line(tmp_path) -> None:
    info = gpu_check.install_wheels(tmp_path, tmp_path / "site", sys.executable, "auto")
    assert info["method"] is None and info["wheels"] == []
    wheels = tmp_path / "wheels"
    make_wheel(wheels)
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            "bash",
            str(SCRIPTS / "gpu_check.sh"),
            "--stages",
            "setup",
            "--wheels",
            str(wheels),
            "--out",
            str(out),
        ],
        env=env(PYTHON=sys.executable),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads((out / "gpu_check.json").read_text())
    setup = result["stages"]["setup"]
    assert setup["status"] == "passed" and setup["results"]["wheels"] == [
        "gpucheck_dummy-0.1-py3-none-any.whl"
    ]
    assert (Path(setup["results"]["site"]) / "gpucheck_dummy" / "__init__.py").is_file()
    assert "| wheels | passed |" in (out / "gpu_check.md").read_text()
    bad = subprocess.run(
        [sys.executable, str(SCRIPTS / "gpu_check.py"), "--out", str(out), "--wheels", str(tmp_path / "no")],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "is not a folder" in bad.stderr


# ----------------------------------------------------------------------------- the CUDA tests
def test_cuda_tests_are_found_in_the_repository() -> None:
    files = {p.name for p in stages.cuda_test_files()}
    assert {"test_i2e_triton.py", "test_i2e.py", "test_speed.py", "test_device_transforms.py"} <= files
    assert "test_gpu_check.py" not in files  # its fake test file is a string
    gpu, skip_cuda, skip_other = (
        stages.Mark("gpu"),
        stages.Mark("skipif", (True,), {"reason": "needs CUDA"}),
        stages.Mark("skipif", (True,), {"reason": "needs triton (its interpreter on CPU)"}),
    )
    assert stages.is_cuda_test([gpu]) and stages.is_cuda_test([skip_cuda])
    assert not stages.is_cuda_test([skip_other]) and not stages.is_cuda_test([stages.Mark("slow")])


FAKE_TESTS = """
import pytest

pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.mark.parametrize("a", [1, 2])
@pytest.mark.parametrize(("b", "c"), [(3, 4), pytest.param(5, 6, id="five")])
def test_grid(a, b, c):
    assert c == b + 1 and (a, b) != (2, 5)


def test_fixtures(tmp_path, monkeypatch):
    monkeypatch.setenv("GPU_CHECK_FAKE", "1")
    (tmp_path / "f").write_text("x")
    assert (tmp_path / "f").read_text() == "x"
    with pytest.raises(ValueError, match="bad"):
        raise ValueError("a bad value")
    assert 0.1 + 0.2 == pytest.approx(0.3) and [1.0, 2.0] == pytest.approx([1.0, 2.0 + 1e-9])


def test_fails():
    assert 1 == 2, "one is not two"


def test_skips():
    pytest.importorskip("no_such_module_anywhere")


@pytest.mark.skip(reason="not today")
def test_marked_skip():
    raise AssertionError


@pytest.mark.slow
def test_slow_is_left_out():
    raise AssertionError


@pytest.mark.{gpu}
def test_on_the_gpu():
    import torch

    assert torch.ones(1, device="cuda").item() == 1


@pytest.mark.skipif(True, reason="needs CUDA")
def test_also_on_the_gpu():
    pass
"""


def run_builtin(tests: Path, out: Path, *extra: str, **env_extra: str) -> dict:
    proc = subprocess.run(
        [
            sys.executable,
            str(SCRIPTS / "gpu_check_stages.py"),
            "tests",
            "--json",
            str(out),
            "--tests-dir",
            str(tests),
            *extra,
        ],
        env=env(**env_extra),
        capture_output=True,
        text=True,
        timeout=300,
    )
    result = json.loads(out.read_text())
    result["returncode"] = proc.returncode
    return result


def test_builtin_runner_without_pytest(tmp_path) -> None:
    tests = tmp_path / "tests"
    tests.mkdir()
    (tests / "test_fake.py").write_text(FAKE_TESTS.replace("{gpu}", "gpu"))  # not a CUDA test file itself
    # The CPU tests of the file check the runner itself; pytest is hidden, as on a bare machine.
    result = run_builtin(tests, tmp_path / "cpu.json", "--select", "cpu", I2E_GPU_CHECK_HIDE="pytest")
    outcomes = {t["nodeid"].split("::")[1]: t["outcome"] for t in result["tests"]}
    assert outcomes == {
        "test_grid[1-3-4]": "passed",
        "test_grid[1-five]": "passed",
        "test_grid[2-3-4]": "passed",
        "test_grid[2-five]": "failed",
        "test_fixtures": "passed",
        "test_fails": "failed",
        "test_skips": "skipped",
        "test_marked_skip": "skipped",
    }
    failed = next(t for t in result["tests"] if t["nodeid"].endswith("test_fails"))
    assert "one is not two" in failed["message"]
    assert result["returncode"] == 1 and "GPU_CHECK_FAKE" not in os.environ
    # (which tests of a file are CUDA tests: test_cuda_tests_are_found_in_the_repository, and the dry runs)


def test_skimage_standin_shapes() -> None:
    standin = stages.make_skimage_standin()
    photo = standin.data.coffee()
    assert photo.shape == (400, 600, 3) and photo.dtype.name == "uint8" and photo.std() > 20
    small = standin.transform.resize(photo, (32, 48), anti_aliasing=True)
    assert (
        small.shape == (32, 48, 3) and small.dtype.name == "float64" and 0 <= small.min() <= small.max() <= 1
    )
    assert (standin.data.coffee() == photo).all()  # deterministic


# ----------------------------------------------------------------------------- stages and report
def test_a_failing_and_a_hanging_command_are_reported(tmp_path) -> None:
    check = gpu_check.Check(check_args(tmp_path, stages=["conversion"]))
    stage = check.stages["conversion"]
    t0 = time.monotonic()
    rc = check.run(
        stage, [sys.executable, "-c", "import time; print('started', flush=True); time.sleep(60)"], t0 + 1.5
    )
    assert rc is None and time.monotonic() - t0 < 30
    rc = check.run(
        stage, [sys.executable, "-c", "import sys; print('last words'); sys.exit(3)"], time.monotonic() + 60
    )
    assert rc == 3 and stage.returncodes == [None, 3]
    assert "timed out" in stage.error and "started" in stage.error and "last words" in stage.error
    log = (tmp_path / "out" / "gpu_check.log").read_text()
    assert "started" in log and "exit timeout" in log and "exit 3" in log


def test_without_cuda_a_full_run_marks_the_cuda_stages_not_run(tmp_path, monkeypatch) -> None:
    def fake_env(self, stage, deadline):
        self.env_info = {"cuda_available": False, "device_name": "x86_64", "modules": {}}
        self._done(stage, True, "no GPU here")

    monkeypatch.setattr(gpu_check.Check, "stage_env", fake_env)
    check = gpu_check.Check(check_args(tmp_path, stages=["env", "tests", "train", "syncs"]))
    assert check.run_all() == 1
    result = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert result["status"] == "failed"
    assert [result["stages"][s]["status"] for s in ("env", "tests", "train", "syncs")] == [
        "passed",
        "not run",
        "not run",
        "not run",
    ]
    assert "no CUDA GPU" in (tmp_path / "out" / "gpu_check.md").read_text()


def test_budget_keeps_the_reserve_of_later_stages(tmp_path) -> None:
    check = gpu_check.Check(check_args(tmp_path))
    assert check.limit("tests") == gpu_check.BUDGET["tests"]
    check.start -= gpu_check.TOTAL_BUDGET - 200  # 200 s left
    later = sum(gpu_check.RESERVE[s] for s in ("digits", "syncs"))
    assert check.limit("train") == pytest.approx(200 - later, abs=1)
    check.start -= 1000
    assert check.limit("syncs") == 0


def test_report_of_measured_results(tmp_path) -> None:
    check = gpu_check.Check(check_args(tmp_path, stages=["conversion", "train", "digits", "syncs"]))
    check.env_info = {
        "device_name": "NVIDIA H200",
        "capability": "sm_90",
        "memory_gib": 139.8,
        "modules": {"torch": {"version": "2.11.0"}, "triton": {"version": "3.6.0"}},
    }
    conv = [
        {"size": 224, "batch": 256, "impl": "paper conv2d", "backend": "-", "dtype": "float32", "ms": 20.0},
        {"size": 224, "batch": 256, "impl": "i2e-train", "backend": "triton", "dtype": "bfloat16", "ms": 1.0},
        {"size": 224, "batch": 256, "impl": "i2e-train", "backend": "torch", "dtype": "bfloat16", "ms": 4.0},
    ]
    for r in conv:
        r.update(
            images_per_s=256 / r["ms"] * 1e3, speedup_vs_paper=20.0 / r["ms"], event_mismatch_vs_exact=0.0
        )
        r.update(effective_gbps=3000.0, fraction_of_spec_bandwidth=0.62, fraction_of_copy_bandwidth=0.7)
    conv[0]["event_mismatch_vs_exact"] = 1.2e-5
    check.stages["conversion"].results = {"rows": conv, "exactness": {"size": 224, "batch": 256}}
    train = [
        {
            "model": "ms_resnet18",
            "size": 224,
            "batch": 128,
            "precision": "bf16",
            "neuron_precision": np,
            "channels_last": cl,
            "images_per_s": ips,
            "ms_per_step": 128e3 / ips,
            "peak_memory_gib": 40.0,
            "lif_kernel": "triton",
        }
        for np, cl, ips in (
            ("spikingjelly", False, 1100.0),
            ("cast", False, 900.0),
            ("spikingjelly", True, 1300.0),
        )
    ]
    check.stages["train"].results = {"rows": train}
    check.stages["digits"].results = {
        "epochs": 12,
        "best_val_top1": 98.6,
        "best_epoch": 11,
        "final_val_top1": 98.3,
        "val_samples": 360,
        "wall_seconds": 52.0,
        "curve": [],
    }
    check.stages["syncs"].results = {
        "rows": [
            {"precision": "bf16", "batch": 64, "steps": 6, "steady_per_step": 2.0, "where": {"a.py:1": 5}}
        ]
    }
    text = check.markdown()
    assert "# GPU check: NVIDIA H200 (sm_90, 140 GiB)" in text
    assert "| triton bfloat16: 20.0x (Triton rows 20.0-20.0x) | **met** |" in text
    assert "triton bfloat16: 62% of spec, 70% of copy | **met** |" in text
    assert (
        "1,300 images/s (bf16, spikingjelly, channels_last on, size 224, batch 128), peak 40.0 GiB | **met** |"
        in text
    )
    assert "| exactly 1 host sync per training step (bf16) | 2 per step | **not met** |" in text
    assert "best val top-1 98.60% (epoch 11), whole command 52 s | **met** |" in text
    assert "| i2e.backend (triton vs torch) | bfloat16 256,000 vs 64,000 | triton in 1 of 1 |" in text
    assert "spikingjelly in 1 of 1" in text and "on in 1 of 1" in text
    assert "| 224 | 256 | paper conv2d | - | float32 | 20.000 | 12,800 | 1.0 |" in text
    assert "0.0012%" in text


# ----------------------------------------------------------------------------- the whole dry run
@pytest.mark.slow
def test_dry_run_of_every_stage_on_a_bare_machine_rehearsal(tmp_path) -> None:
    wheels = tmp_path / "wheels"
    make_wheel(wheels)
    out = tmp_path / "results"
    proc = subprocess.run(
        [
            "bash",
            str(SCRIPTS / "gpu_check.sh"),
            "--wheels",
            str(wheels),
            "--out",
            str(out),
            "--dry-run",
            "--work",
            str(tmp_path / "work"),
            "--hide-modules",
            "pytest,skimage",
        ],  # fmt: skip
        env=env(PYTHON=sys.executable),
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["gpu_check.json", "gpu_check.log", "gpu_check.md"]
    result = json.loads((out / "gpu_check.json").read_text())
    st = result["stages"]
    assert list(st) == list(gpu_check.STAGES) and result["status"] == "passed"
    assert st["setup"]["status"] == "passed" and st["env"]["status"] == "passed"
    assert all(st[s]["status"] == "dry-run" for s in gpu_check.CUDA_STAGES), {s: st[s]["status"] for s in st}
    assert result["meta"]["dry_run"] is True and result["meta"]["torch"]
    tests = st["tests"]["results"]
    assert tests["runner"].startswith("built-in") and tests["notes"]  # no pytest, no skimage: the stand-ins
    assert len(tests["tests"]) >= 13 and all(t["outcome"] == "skipped" for t in tests["tests"])
    assert all(m["status"] == "imported" for m in tests["modules"])
    conv = st["conversion"]["results"]["rows"]
    assert {r["impl"] for r in conv} == {"paper conv2d", "i2e-train"}
    assert all(r["event_mismatch_vs_exact"] == 0 for r in conv)
    assert {r["channels_last"] for r in st["train"]["results"]["rows"]} == {False, True}
    assert st["digits"]["results"]["epochs"] == 1 and st["syncs"]["results"]["rows"][0]["steps"] == 2
    md = (out / "gpu_check.md").read_text()
    for title in gpu_check.TITLES.values():
        assert f"| {title} |" in md
    assert "**dry run**" in md and "## Commands" in md and "-m i2e_train.train run_dir=" in md
    assert "-m i2e_train.commands.bench --part conversion --device cpu" in md


@pytest.mark.slow
def test_dry_run_of_the_tests_stage_with_pytest(tmp_path) -> None:
    out = tmp_path / "results"
    proc = subprocess.run(
        [
            sys.executable,
            str(SCRIPTS / "gpu_check.py"),
            "--stages",
            "tests",
            "--tests-runner",
            "pytest",
            "--dry-run",
            "--out",
            str(out),
        ],  # fmt: skip
        env=env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-3000:]
    tests = json.loads((out / "gpu_check.json").read_text())["stages"]["tests"]["results"]
    assert tests["runner"] == "pytest"
    names = {t["nodeid"] for t in tests["tests"]}
    # -m gpu plus the plugin: the marked tests and those skipped where CUDA is missing
    assert "tests/unit/test_i2e.py::test_cuda_uint8_is_todtype_and_threshold_scale" in names
    assert "tests/unit/test_speed.py::test_cuda_bf16_runs_a_fused_lif_kernel[cast]" in names
    assert len(names) >= 13 and all(t["outcome"] == "skipped" for t in tests["tests"])


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
    assert [t["nodeid"] for t in result["tests"]] == [
        "tests/test_i2e.py::test_a",
        "tests/test_i2e.py::test_b[x]",
        "tests/test_speed.py::test_c",
    ]
    assert result["tests"][1]["message"].endswith("E assert 1 == 2")
