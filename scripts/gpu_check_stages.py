"""The parts of ``scripts/gpu_check.py`` that run inside a stage's own process.

    python3 scripts/gpu_check_stages.py env        --json OUT.json
    python3 scripts/gpu_check_stages.py tests      --json OUT.json [--dry-run]   # without pytest
    python3 scripts/gpu_check_stages.py exactness  --json OUT.json --device cuda --size 224 --batch 256
    python3 scripts/gpu_check_stages.py syncs      --json OUT.json --device cuda --precisions bf16,fp16

Also a pytest plugin (``python3 -m pytest -p gpu_check_stages ...``, with ``scripts/`` on the path):
it gives the ``gpu`` mark to the tests that are skipped where there is no CUDA
(``skipif(not torch.cuda.is_available(), reason="needs CUDA")``), so that ``-m gpu`` selects every
CUDA test, exactly the ones the built-in runner selects.

Nothing heavy is imported at module level: this file is imported as a pytest plugin, and the
orchestrator (``gpu_check.py``) imports only the standard library.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.abc
import inspect
import itertools
import json
import math
import os
import re
import shutil
import sys
import tempfile
import time
import traceback
import types
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
TESTS = REPO / "tests"

# A file holds CUDA tests when it marks one ``gpu`` or skips one where CUDA is missing.
CUDA_FILE = re.compile(
    r"^\s*(@pytest\.mark\.gpu\b|@pytest\.mark\.skipif\(\s*not\s+torch\.cuda\.is_available\(\)"
    r"|pytestmark\s*=.*pytest\.mark\.gpu\b)",
    re.MULTILINE,
)
CUDA_REASON = re.compile(r"\bcuda\b", re.IGNORECASE)
SKIMAGE_NOTE = "scikit-image is not installed: skimage.data photographs replaced by synthetic stand-ins"


# ----------------------------------------------------------------------------- selection (shared)
def cuda_test_files(tests: Path = TESTS) -> list[Path]:
    """``tests/**/test_*.py`` files that hold CUDA tests (the others are not imported at all)."""
    return [p for p in sorted(tests.rglob("test_*.py")) if CUDA_FILE.search(p.read_text(encoding="utf-8"))]


def is_cuda_test(marks: list[Any]) -> bool:
    """Marked ``gpu``, or skipped where CUDA is missing (a ``skipif`` whose reason names CUDA).
    ``marks`` are pytest's Mark objects or the stand-in's (both have name, args, kwargs)."""
    for mark in marks:
        if mark.name == "gpu":
            return True
        if mark.name == "skipif" and CUDA_REASON.search(str(mark.kwargs.get("reason", ""))):
            return True
    return False


def pytest_collection_modifyitems(config: Any, items: list[Any]) -> None:
    """pytest plugin hook: the CUDA tests that lack the ``gpu`` mark get it (before ``-m`` selects)."""
    for item in items:
        marks = list(item.iter_markers())
        if is_cuda_test(marks) and not any(m.name == "gpu" for m in marks):
            item.add_marker("gpu")


def _loaded_as_plugin() -> bool:
    """Imported by the real pytest (``-p gpu_check_stages``), not by the built-in runner's stand-in."""
    module = sys.modules.get("pytest")
    return (
        module is not None and hasattr(module, "hookimpl") and getattr(module, "__file__", None) is not None
    )


if _loaded_as_plugin():  # tryfirst: before pytest's own -m deselection
    pytest_collection_modifyitems = sys.modules["pytest"].hookimpl(tryfirst=True)(
        pytest_collection_modifyitems
    )


# ----------------------------------------------------------------------------- helpers
# module -> distribution, for the versions the environment stage reports
DISTRIBUTIONS = {
    "torch": "torch",
    "torchvision": "torchvision",
    "triton": "triton",
    "spikingjelly": "spikingjelly",
    "timm": "timm",
    "hydra": "hydra-core",
    "omegaconf": "omegaconf",
    "antlr4": "antlr4-python3-runtime",
    "loguru": "loguru",
    "numpy": "numpy",
    "sklearn": "scikit-learn",
    "tensorboard": "tensorboard",
    "pyarrow": "pyarrow",
    "matplotlib": "matplotlib",
    "PIL": "pillow",
    "tqdm": "tqdm",
    "yaml": "PyYAML",
    "pytest": "pytest",
    "skimage": "scikit-image",
}


def _dist_version(dist: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _write(path: str, data: dict) -> None:
    Path(path).write_text(json.dumps(data, indent=1, default=str), encoding="utf-8")


def hide_modules() -> None:
    """``I2E_GPU_CHECK_HIDE=a,b``: make those top-level modules unimportable (to rehearse a bare
    machine on one that has them; used by the tests)."""
    names = {n for n in os.environ.get("I2E_GPU_CHECK_HIDE", "").split(",") if n}
    if not names:
        return

    class _Hide(importlib.abc.MetaPathFinder):
        def find_spec(self, fullname, path=None, target=None):  # noqa: ANN001
            if fullname.split(".")[0] in names:
                raise ImportError(f"No module named '{fullname}' (hidden by I2E_GPU_CHECK_HIDE)")
            return None

    for name in list(sys.modules):
        if name.split(".")[0] in names:
            del sys.modules[name]
    sys.meta_path.insert(0, _Hide())


# ----------------------------------------------------------------------------- env
def stage_env(args: argparse.Namespace) -> int:
    """Versions, the device and whether every module a run needs imports (and from where)."""
    import platform
    import subprocess

    info: dict[str, Any] = {"python": platform.python_version(), "executable": sys.executable}
    info["platform"] = platform.platform()
    modules = {}
    site = os.environ.get("I2E_GPU_CHECK_SITE")
    for name, dist in DISTRIBUTIONS.items():
        entry: dict[str, Any] = {"version": None, "from_wheels": False}
        try:
            mod = importlib.import_module(name)
            entry["version"] = _dist_version(dist) or str(getattr(mod, "__version__", "unknown"))
            origin = str(getattr(mod, "__file__", "") or "")
            entry["from_wheels"] = bool(site) and origin.startswith(site)
        except Exception as e:  # noqa: BLE001
            entry["error"] = f"{type(e).__name__}: {e}"
        modules[name] = entry
    info["modules"] = modules
    missing = []
    for module in ("i2e_train.train", "i2e_train.commands.bench", "i2e_train.training.builders"):
        try:
            importlib.import_module(module)
        except Exception as e:  # noqa: BLE001
            missing.append(f"{module}: {type(e).__name__}: {e}")
    import i2e_train

    info["i2e_train_from"] = str(Path(i2e_train.__file__).resolve().parent)
    info["import_errors"] = missing
    import torch

    info["torch_cuda"] = torch.version.cuda
    info["cuda_available"] = torch.cuda.is_available()
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["device_name"] = props.name
        info["capability"] = f"sm_{props.major}{props.minor}"
        info["memory_gib"] = props.total_memory / 2**30
        info["multiprocessors"] = props.multi_processor_count
        info["bf16_supported"] = torch.cuda.is_bf16_supported()
        info["cudnn"] = torch.backends.cudnn.version()
        with contextlib.suppress(Exception):
            from i2e_train.events import i2e_triton

            info["i2e_triton_kernel"] = i2e_triton.is_available(torch.device("cuda"))
        with contextlib.suppress(Exception):
            smi = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=20,
            )
            info["driver"] = smi.stdout.strip().splitlines()[0] if smi.returncode == 0 else None
    else:
        info["device_name"] = platform.processor() or platform.machine()
    info["cpu_count"] = os.cpu_count()
    _write(args.json, info)
    print(json.dumps(info, indent=1, default=str))
    return 1 if missing else 0


# ----------------------------------------------------------------------------- tests without pytest
class Skipped(Exception):
    """pytest.skip / importorskip."""


class Failed(AssertionError):
    """pytest.fail / a pytest.raises that did not raise."""


class Mark:
    def __init__(self, name: str, args: tuple = (), kwargs: dict | None = None) -> None:
        self.name, self.args, self.kwargs = name, tuple(args), dict(kwargs or {})

    def __repr__(self) -> str:
        return f"Mark({self.name!r}, {self.args!r}, {self.kwargs!r})"


class MarkDecorator:
    def __init__(self, mark: Mark) -> None:
        self.mark = mark

    @property
    def name(self) -> str:
        return self.mark.name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if len(args) == 1 and not kwargs and (inspect.isfunction(args[0]) or inspect.isclass(args[0])):
            target = args[0]
            target.pytestmark = [*getattr(target, "pytestmark", []), self.mark]
            return target
        m = self.mark
        return MarkDecorator(Mark(m.name, m.args + args, {**m.kwargs, **kwargs}))


class _MarkGenerator:
    def __getattr__(self, name: str) -> MarkDecorator:
        if name.startswith("__"):
            raise AttributeError(name)
        return MarkDecorator(Mark(name))


class ParameterSet:
    def __init__(self, values: tuple, id: str | None = None, marks: Any = ()) -> None:  # noqa: A002
        self.values, self.id = values, id
        self.marks = [m.mark if isinstance(m, MarkDecorator) else m for m in _as_list(marks)]


def _as_list(x: Any) -> list:
    return list(x) if isinstance(x, list | tuple) else [x]


class _RaisesInfo:
    value: BaseException | None = None
    type: type | None = None

    def match(self, pattern: str) -> bool:
        assert re.search(pattern, str(self.value)), f"{pattern!r} does not match {str(self.value)!r}"
        return True


class _Raises:
    def __init__(self, expected: Any, match: str | None) -> None:
        self.expected, self.match, self.info = expected, match, _RaisesInfo()

    def __enter__(self) -> _RaisesInfo:
        return self.info

    def __exit__(self, kind: Any, value: Any, tb: Any) -> bool:
        if kind is None:
            raise Failed(f"DID NOT RAISE {self.expected}")
        if not issubclass(kind, self.expected):
            return False
        if self.match is not None and not re.search(self.match, str(value)):
            raise AssertionError(f"Regex pattern {self.match!r} does not match {str(value)!r}")
        self.info.value, self.info.type = value, kind
        return True


class _Approx:
    def __init__(self, expected: Any, rel: float | None = None, abs: float | None = None) -> None:  # noqa: A002
        self.expected = expected
        self.rel = rel if rel is not None else (0.0 if abs is not None else 1e-6)
        self.abs = abs if abs is not None else 1e-12

    def _close(self, got: Any, want: Any) -> bool:
        if isinstance(want, dict):
            return (
                isinstance(got, dict)
                and got.keys() == want.keys()
                and all(self._close(got[k], want[k]) for k in want)
            )
        if isinstance(want, list | tuple):
            return len(got) == len(want) and all(self._close(g, w) for g, w in zip(got, want, strict=True))
        if hasattr(want, "shape") or hasattr(got, "shape"):  # numpy arrays and tensors
            import numpy as np

            g = np.asarray(got, dtype=float)
            w = np.asarray(want, dtype=float)
            return bool(np.all(np.abs(g - w) <= np.maximum(self.rel * np.abs(w), self.abs)))
        if want == got:
            return True
        try:
            g, w = float(got), float(want)
        except (TypeError, ValueError):
            return False
        if math.isinf(w) or math.isnan(w):
            return False
        return abs(g - w) <= max(self.rel * abs(w), self.abs)

    def __eq__(self, other: object) -> bool:
        return self._close(other, self.expected)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"approx({self.expected!r})"


_NOTSET = object()


class MonkeyPatch:
    """The parts of pytest's monkeypatch the tests use (undone after the test)."""

    def __init__(self) -> None:
        self._undo: list[Any] = []

    def setattr(self, target: Any, name: Any = _NOTSET, value: Any = _NOTSET, raising: bool = True) -> None:
        if isinstance(target, str):  # setattr("pkg.module.attr", value)
            value = name
            module, _, name = target.rpartition(".")
            target = importlib.import_module(module)
        old = getattr(target, name, _NOTSET)
        if old is _NOTSET and raising:
            raise AttributeError(f"{target!r} has no attribute {name!r}")
        setattr(target, name, value)
        self._undo.append(lambda: delattr(target, name) if old is _NOTSET else setattr(target, name, old))

    def delattr(self, target: Any, name: str, raising: bool = True) -> None:
        if not hasattr(target, name):
            if raising:
                raise AttributeError(name)
            return
        old = getattr(target, name)
        delattr(target, name)
        self._undo.append(lambda: setattr(target, name, old))

    def setitem(self, mapping: Any, key: Any, value: Any) -> None:
        old = mapping.get(key, _NOTSET)
        mapping[key] = value
        self._undo.append(lambda: mapping.pop(key, None) if old is _NOTSET else mapping.__setitem__(key, old))

    def delitem(self, mapping: Any, key: Any, raising: bool = True) -> None:
        if key not in mapping:
            if raising:
                raise KeyError(key)
            return
        old = mapping.pop(key)
        self._undo.append(lambda: mapping.__setitem__(key, old))

    def setenv(self, name: str, value: str, prepend: str | None = None) -> None:
        value = str(value)
        if prepend and name in os.environ:
            value = value + prepend + os.environ[name]
        self.setitem(os.environ, name, value)

    def delenv(self, name: str, raising: bool = True) -> None:
        self.delitem(os.environ, name, raising)

    def syspath_prepend(self, path: Any) -> None:
        sys.path.insert(0, str(path))
        self._undo.append(lambda: sys.path.remove(str(path)))

    def chdir(self, path: Any) -> None:
        old = os.getcwd()
        os.chdir(path)
        self._undo.append(lambda: os.chdir(old))

    def undo(self) -> None:
        while self._undo:
            self._undo.pop()()


class _TmpPathFactory:
    def __init__(self, root: Path) -> None:
        self.root, self.count = root, itertools.count()

    def mktemp(self, basename: str, numbered: bool = True) -> Path:
        path = self.root / (f"{basename}{next(self.count)}" if numbered else basename)
        path.mkdir(parents=True)
        return path

    def getbasetemp(self) -> Path:
        return self.root


def make_pytest_standin() -> types.ModuleType:
    """A module named ``pytest`` with what the test files use at import and in their CUDA tests:
    marks (parametrize, skipif, ...), param, importorskip, skip, fail, raises, approx, warns,
    fixture (a no-op: the runner supplies tmp_path, tmp_path_factory and monkeypatch), MonkeyPatch."""
    mod = types.ModuleType("pytest")
    mod.__version__ = "stand-in (scripts/gpu_check_stages.py)"
    mod.mark = _MarkGenerator()
    mod.param = lambda *values, id=None, marks=(): ParameterSet(values, id, marks)  # noqa: A002

    def importorskip(modname: str, minversion: str | None = None, reason: str | None = None) -> Any:
        try:
            return importlib.import_module(modname)
        except ImportError as e:
            raise Skipped(reason or f"could not import {modname!r}: {e}") from None

    def skip(reason: str = "", *, allow_module_level: bool = False) -> None:
        raise Skipped(reason)

    def fail(reason: str = "", pytrace: bool = True) -> None:
        raise Failed(reason)

    def raises(expected: Any, *args: Any, match: str | None = None, **kwargs: Any) -> Any:
        ctx = _Raises(expected, match)
        if not args:
            return ctx
        with ctx:
            args[0](*args[1:], **kwargs)
        return ctx.info

    @contextlib.contextmanager
    def warns(category: type = Warning, match: str | None = None):  # noqa: ANN202
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield caught
        hits = [w for w in caught if issubclass(w.category, category)]
        if match is not None:
            hits = [w for w in hits if re.search(match, str(w.message))]
        if not hits:
            raise Failed(f"DID NOT WARN {category.__name__}" + (f" matching {match!r}" if match else ""))

    def fixture(*args: Any, **kwargs: Any) -> Any:
        if len(args) == 1 and callable(args[0]) and not kwargs:
            return args[0]
        return lambda f: f

    skip.Exception = Skipped  # type: ignore[attr-defined]
    fail.Exception = Failed  # type: ignore[attr-defined]
    mod.importorskip, mod.skip, mod.fail, mod.raises, mod.warns, mod.fixture = (
        importorskip,
        skip,
        fail,
        raises,
        warns,
        fixture,
    )
    mod.approx = _Approx
    mod.MonkeyPatch = MonkeyPatch
    mod.hookimpl = lambda *a, **k: lambda f: f
    for name in ("Config", "Item", "FixtureRequest", "TempPathFactory", "CaptureFixture"):
        setattr(mod, name, type(name, (), {}))
    return mod


def make_skimage_standin() -> types.ModuleType:
    """``skimage`` where scikit-image is not installed: ``data.astronaut()`` & co. as deterministic
    photo-like images of the same shapes (smooth shading, hard-edged shapes, texture noise) and
    ``transform.resize`` (antialiased). The CUDA tests compare two implementations on the same
    input, so the content only has to exercise them; the result says the stand-in was used."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    def photo(shape: tuple[int, ...], seed: int) -> Any:
        h, w = shape[:2]
        gen = torch.Generator().manual_seed(seed)
        coarse = torch.rand((1, 3, 6, 8), generator=gen)
        img = F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False)[0]
        yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        for _ in range(12):  # discs and boxes with sharp edges
            cy, cx = float(torch.rand(1, generator=gen)) * h, float(torch.rand(1, generator=gen)) * w
            r = (0.05 + 0.2 * float(torch.rand(1, generator=gen))) * min(h, w)
            colour = torch.rand((3, 1, 1), generator=gen)
            if float(torch.rand(1, generator=gen)) < 0.5:
                inside = (yy - cy) ** 2 + (xx - cx) ** 2 < r**2
            else:
                inside = ((yy - cy).abs() < r) & ((xx - cx).abs() < r * 0.6)
            img = torch.where(inside, colour.expand(3, h, w), img)
        img = img + 0.06 * torch.randn((3, h, w), generator=gen)
        out = (img.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        return out if len(shape) == 3 else out.max(axis=2)

    shapes = {
        "astronaut": (512, 512, 3),
        "coffee": (400, 600, 3),
        "chelsea": (300, 451, 3),
        "rocket": (427, 640, 3),
        "camera": (512, 512),
    }
    data = types.ModuleType("skimage.data")
    for i, (name, shape) in enumerate(shapes.items()):
        setattr(data, name, lambda shape=shape, seed=i: photo(shape, seed))

    def resize(image: Any, output_shape: Any, anti_aliasing: bool = True, **_: Any) -> Any:
        arr = np.asarray(image)
        x = torch.from_numpy(arr.astype(np.float64))
        if arr.dtype == np.uint8:
            x = x / 255.0
        gray = x.ndim == 2
        x = x[..., None] if gray else x
        x = x.permute(2, 0, 1)[None].float()
        out = F.interpolate(x, size=tuple(output_shape[:2]), mode="bilinear", antialias=anti_aliasing)
        out = out[0].permute(1, 2, 0).double().clamp(0, 1).numpy()
        return out[..., 0] if gray else out

    transform = types.ModuleType("skimage.transform")
    transform.resize = resize
    pkg = types.ModuleType("skimage")
    pkg.__version__ = "stand-in (scikit-image not installed)"
    pkg.__path__ = []  # a package, so that "from skimage.transform import resize" resolves
    pkg.data, pkg.transform = data, transform
    return pkg


def _param_cases(func: Any) -> list[tuple[str, dict, list]]:
    """(id, arguments, marks) of every parametrized case of ``func`` (one case without parametrize)."""
    axes = []
    for mark in reversed(getattr(func, "pytestmark", [])):  # the decorator nearest the def first
        if mark.name != "parametrize":
            continue
        names, values = mark.args[0], mark.args[1]
        names = [n.strip() for n in names.split(",")] if isinstance(names, str) else list(names)
        ids = mark.kwargs.get("ids")
        axis = []
        for i, value in enumerate(values):
            pmarks: list = []
            pid = None
            if isinstance(value, ParameterSet):
                pmarks, pid, value = value.marks, value.id, value.values
                value = value if len(names) > 1 else value[0]
            row = dict(zip(names, value, strict=True)) if len(names) > 1 else {names[0]: value}
            if pid is None and isinstance(ids, list | tuple):
                pid = str(ids[i])
            elif pid is None and callable(ids):
                pid = "-".join(str(ids(v)) for v in row.values())
            if pid is None:
                pid = "-".join(
                    str(v) if isinstance(v, int | float | str | bool) or v is None else f"{k}{i}"
                    for k, v in row.items()
                )
            axis.append((pid, row, pmarks))
        axes.append(axis)
    cases = []
    for combo in itertools.product(*axes):
        cid = "-".join(c[0] for c in combo)
        args = {k: v for c in combo for k, v in c[1].items()}
        cases.append((f"[{cid}]" if combo else "", args, [m for c in combo for m in c[2]]))
    return cases


def _tail(text: str, lines: int = 12) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def stage_tests(args: argparse.Namespace) -> int:
    """The CUDA tests of tests/ without pytest: import the files that hold them (with a stand-in
    ``pytest`` module), expand parametrize, call each selected test with the fixtures it names."""
    hide_modules()
    sys.modules["pytest"] = make_pytest_standin()
    notes = [SKIMAGE_NOTE] if install_skimage_standin() else []
    tests = Path(args.tests_dir) if args.tests_dir else TESTS
    sys.path.insert(0, str(tests))
    import torch

    cuda = torch.cuda.is_available()
    results: list[dict] = []
    modules: list[dict] = []
    files = cuda_test_files(tests)
    if args.files:
        files = [f for f in files if f.name in args.files.split(",")]
    for path in files:
        rel = path.relative_to(tests.parent).as_posix()
        entry = {"file": rel, "status": "imported"}
        modules.append(entry)
        if str(path.parent) not in sys.path:
            sys.path.insert(0, str(path.parent))
        try:
            module = importlib.import_module(path.stem)
        except Skipped as e:
            entry.update(status="skipped", reason=str(e))
            continue
        except Exception:  # noqa: BLE001
            entry.update(status="error", error=_tail(traceback.format_exc()))
            continue
        module_marks = _as_list(getattr(module, "pytestmark", []))
        module_marks = [m.mark if isinstance(m, MarkDecorator) else m for m in module_marks]
        for name, func in vars(module).items():
            if (
                not (name.startswith("test_") and inspect.isfunction(func))
                or func.__module__ != module.__name__
            ):
                continue
            marks = [*module_marks, *getattr(func, "pytestmark", [])]
            for cid, params, pmarks in _param_cases(func):
                all_marks = marks + pmarks
                # --select cpu (a self-test of this runner): the files' other, fast tests instead
                wanted = is_cuda_test(all_marks) != (args.select == "cpu")
                if not wanted or (args.select == "cpu" and any(m.name == "slow" for m in all_marks)):
                    continue
                nodeid = f"{rel}::{name}{cid}"
                needs_cuda = args.select == "cuda"
                results.append(
                    _run_one(nodeid, func, params, all_marks, cuda or not needs_cuda, args.dry_run)
                )
                print(f"{results[-1]['outcome']:>8}  {nodeid}", flush=True)
    counts = Counter(r["outcome"] for r in results)
    summary = {
        "runner": "built-in runner (no pytest)",
        "modules": modules,
        "tests": results,
        "counts": dict(counts),
        "cuda": cuda,
        "notes": notes,
    }
    _write(args.json, summary)
    bad = counts.get("failed", 0) + counts.get("error", 0) + sum(m["status"] == "error" for m in modules)
    print(f"{dict(counts)}; module import errors: {sum(m['status'] == 'error' for m in modules)}")
    return 1 if bad else 0


def _run_one(nodeid: str, func: Any, params: dict, marks: list, runnable: bool, dry_run: bool) -> dict:
    row: dict[str, Any] = {"nodeid": nodeid, "outcome": "passed", "seconds": 0.0}
    for mark in marks:
        if mark.name == "skip":
            return {**row, "outcome": "skipped", "message": str(mark.kwargs.get("reason", mark.args))}
        if mark.name == "skipif" and mark.args and mark.args[0] and not isinstance(mark.args[0], str):
            return {**row, "outcome": "skipped", "message": str(mark.kwargs.get("reason", ""))}
    if not runnable:
        reason = "no CUDA GPU (dry run: collected, not called)" if dry_run else "no CUDA GPU"
        return {**row, "outcome": "skipped", "message": reason}
    kwargs = dict(params)
    patches: list[MonkeyPatch] = []
    tmp = Path(tempfile.mkdtemp(prefix="i2e-gpu-test-"))
    for name in inspect.signature(func).parameters:
        if name in kwargs:
            continue
        if name == "tmp_path":
            kwargs[name] = tmp
        elif name == "tmp_path_factory":
            kwargs[name] = _TmpPathFactory(tmp)
        elif name == "monkeypatch":
            patches.append(MonkeyPatch())
            kwargs[name] = patches[-1]
        else:
            return {**row, "outcome": "error", "message": f"fixture '{name}' is not available without pytest"}
    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            func(**kwargs)
    except Skipped as e:
        row.update(outcome="skipped", message=str(e))
    except Exception:  # noqa: BLE001 - AssertionError and anything else: the test failed
        row.update(outcome="failed", message=_tail(traceback.format_exc(), 15))
    finally:
        for p in patches:
            p.undo()
        shutil.rmtree(tmp, ignore_errors=True)
        torch = sys.modules["torch"]
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
    row["seconds"] = time.perf_counter() - t0
    return row


# ----------------------------------------------------------------------------- exactness
def stage_exactness(args: argparse.Namespace) -> int:
    """Share of events that differ from the exact conversion, for the benchmark's own images
    (``bench.random_images(batch, size)``, seed 0): every backend x output dtype on the device and
    the paper's conv2d formulation, against the torch path on the CPU (float32 arithmetic that the
    tests check bit for bit against a NumPy transcription of the specification)."""
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
    for backend in backends:
        for name in args.dtypes.split(","):
            if name == "packed":
                got = i2e_pack(x, bench.RATIO, backend=backend)
                differ = float((got != ref_packed).float().mean())  # share of differing bytes
            else:
                got = i2e_convert(x, bench.RATIO, dtype=bench.DTYPES[name], backend=backend)
                differ = float((got.bool() != ref).float().mean())
            del got
            rows.append({"backend": backend, "dtype": name, "event_mismatch_vs_exact": differ})
    weights = bench.paper_weights(fixed_pairs(), device)
    paper = bench.paper_conversion(x, bench.RATIO, weights)
    rows.append(
        {
            "backend": "-",
            "dtype": "float32",
            "impl": "paper conv2d",
            "event_mismatch_vs_exact": float((paper.bool() != ref).float().mean()),
        }
    )
    result = {"size": args.size, "batch": args.batch, "device": str(device), "rows": rows}
    result["events"] = int(ref.numel())
    result["event_rate"] = float(ref.float().mean())
    _write(args.json, result)
    print(json.dumps(result, indent=1))
    return 0


# ----------------------------------------------------------------------------- host syncs
def stage_syncs(args: argparse.Namespace) -> int:
    """Host syncs of the training steps of the digits default, as ``i2e-train`` builds it
    (``builders.build_run``): the batches come from the run's own loader (drawn before counting),
    each step runs under ``torch.cuda.set_sync_debug_mode("warn")``, and every warning it raises
    is one synchronizing CUDA call (with the Python line that made it)."""
    import torch

    from i2e_train.commands import cli
    from i2e_train.training import engine
    from i2e_train.training.builders import build_run

    cli.register_resolvers()
    device = torch.device(args.device)
    results = []
    for precision in args.precisions.split(","):
        overrides = [
            f"trainer.device={device}",
            f"trainer.precision={precision}",
            f"trainer.batch_size={args.batch}",
            "trainer.progress=false",
            "trainer.tensorboard=false",
        ]
        row: dict[str, Any] = {"precision": precision, "batch": args.batch, "overrides": overrides}
        try:
            with tempfile.TemporaryDirectory(prefix="i2e-gpu-syncs-") as tmp:
                trainer = build_run(cli.precheck("train", overrides), Path(tmp))
                parts = trainer.parts
                parts.plain.train()
                if parts.converter is not None:
                    parts.converter.train()
                steps = list(itertools.islice(trainer.batches.epoch(0), args.steps))
                per_step, where = [], Counter()
                for i, micro_batches in enumerate(steps):
                    with warnings.catch_warnings(record=True) as caught:
                        warnings.simplefilter("always")
                        if device.type == "cuda":
                            torch.cuda.synchronize(device)
                            torch.cuda.set_sync_debug_mode("warn")
                        try:
                            engine.train_step(parts, micro_batches, seed=i)
                        finally:
                            if device.type == "cuda":
                                torch.cuda.set_sync_debug_mode("default")
                    syncs = [w for w in caught if "synchroniz" in str(w.message)]
                    per_step.append(len(syncs))
                    if i > 0:
                        where.update(f"{_short(w.filename)}:{w.lineno}" for w in syncs)
                steady = per_step[1:]
                row.update(
                    amp_dtype=str(parts.amp.dtype).removeprefix("torch.") if parts.amp.dtype else "fp32",
                    steps=len(per_step),
                    per_step=per_step if device.type == "cuda" else None,
                    first_step=per_step[0] if device.type == "cuda" and per_step else None,
                    steady_per_step=(sum(steady) / len(steady)) if device.type == "cuda" and steady else None,
                    where=dict(where) if device.type == "cuda" else None,
                )
        except Exception:  # noqa: BLE001
            row["error"] = _tail(traceback.format_exc())
        results.append(row)
    out = {"device": str(device), "rows": results}
    _write(args.json, out)
    print(json.dumps(out, indent=1))
    return 1 if any("error" in r for r in results) else 0


def _short(filename: str) -> str:
    path = Path(filename)
    for anchor in ("i2e_train", "torch", "spikingjelly", "timm"):
        if anchor in path.parts:
            return "/".join(path.parts[path.parts.index(anchor) :])
    return path.name


def install_skimage_standin() -> bool:
    """Put the stand-in in place of a missing scikit-image (True when it was needed)."""
    try:
        import skimage  # noqa: F401
    except ImportError:
        standin = make_skimage_standin()
        sys.modules["skimage"] = standin
        sys.modules["skimage.data"], sys.modules["skimage.transform"] = standin.data, standin.transform
        return True
    return False


def pytest_configure(config: Any) -> None:
    """pytest plugin hook (before collection): the test files import skimage at module level."""
    hide_modules()
    install_skimage_standin()


# ----------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="stage", required=True)
    s = sub.add_parser("env")
    s.add_argument("--json", required=True)
    s = sub.add_parser("tests")
    s.add_argument("--json", required=True)
    s.add_argument("--dry-run", action="store_true")
    s.add_argument("--select", choices=("cuda", "cpu"), default="cuda", help="cpu: self-test on CPU tests")
    s.add_argument("--files", default="", help="comma list of test file names (default: all with CUDA tests)")
    s.add_argument("--tests-dir", default="", help="the tests folder (default: the repository's tests/)")
    s = sub.add_parser("exactness")
    s.add_argument("--json", required=True)
    s.add_argument("--device", default="cuda")
    s.add_argument("--size", type=int, default=224)
    s.add_argument("--batch", type=int, default=256)
    s.add_argument("--dtypes", default="float32,bfloat16,float16,uint8,bool,packed")
    s = sub.add_parser("syncs")
    s.add_argument("--json", required=True)
    s.add_argument("--device", default="cuda")
    s.add_argument("--precisions", default="bf16,fp16")
    s.add_argument("--batch", type=int, default=64)
    s.add_argument("--steps", type=int, default=6)
    args = p.parse_args(argv)
    stage = {"env": stage_env, "tests": stage_tests, "exactness": stage_exactness, "syncs": stage_syncs}
    return stage[args.stage](args)


if __name__ == "__main__":
    sys.exit(main())
