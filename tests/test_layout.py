"""The shape of the project: layering without import cycles, configs at the top level and in the wheel."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "i2e_train"
# The training stack and the command-line programs: lower layers never import these.
UPPER = {
    "i2e_train.trainer",
    "i2e_train.engine",
    "i2e_train.callbacks",
    "i2e_train.builders",
    "i2e_train.cli",
    "i2e_train.train",
    "i2e_train.evaluate",
    "i2e_train.convert",
    "i2e_train.viz",
    "i2e_train.bench",
}
LOWER_PREFIXES = (
    "i2e_train.data",
    "i2e_train.models",
    "i2e_train.i2e",
    "i2e_train.render",
    "i2e_train.config",
)


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every i2e_train module ``path`` imports, at module level or inside functions (not the
    ``if TYPE_CHECKING:`` imports of annotations, which never run)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    tree = ast.parse(path.read_text())
    typing_only = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for inner in ast.walk(node)
    }
    for node in ast.walk(tree):
        if id(node) in typing_only:  # annotations only: never executed
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("i2e_train")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("i2e_train"):
                continue
            for alias in node.names:  # `from . import engine` imports a module
                candidate = f"{target}.{alias.name}"
                found.add(candidate if _is_module(candidate) else target)
    return found - {name}


def _is_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports_of(p) for p in PACKAGE.rglob("*.py")}


def test_no_import_cycles_counting_imports_inside_functions():
    edges = graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt) :] + [nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt in edges and not state.get(nxt):
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if not state.get(node):
            visit(node)


def test_data_models_and_converter_never_import_the_training_stack():
    for name, deps in graph().items():
        if name.startswith(LOWER_PREFIXES):
            assert not deps & UPPER, f"{name} imports {sorted(deps & UPPER)}"


def test_every_config_group_ships_in_the_wheel_package_list():
    packages = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    folders = {p.parent for p in (ROOT / "configs").rglob("*.yaml")} - {ROOT / "configs"}
    groups = {".".join(f.relative_to(ROOT / "configs").parts) for f in folders}
    assert {f"i2e_train.configs.{g}" for g in groups} <= packages
    assert not (PACKAGE / "configs").exists()  # one copy: the top-level folder


@pytest.mark.slow
def test_non_editable_wheel_runs_and_composes_every_preset(tmp_path):
    wheel_dir, target, source = tmp_path / "wheel", tmp_path / "site", tmp_path / "source"
    # A copy of the project: building in place would leave build/ and *.egg-info in the checkout.
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "configs", "i2e_train"):
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(ROOT / name, source / name)
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w"]
    subprocess.run([*pip_wheel, str(wheel_dir), str(source)], check=True, capture_output=True)
    (wheel,) = wheel_dir.glob("i2e_train-*.whl")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
    )
    presets = sorted(p.stem for p in (ROOT / "configs" / "experiment").glob("*.yaml"))
    code = (
        "import sys; from i2e_train import cli; from i2e_train.cli import precheck;"
        "assert 'site' in str(cli.CONFIG_DIR), cli.CONFIG_DIR; cli.register_resolvers();"
        "[precheck('train', ['experiment=' + p, 'dataset.root=/data', 'init_from=x.pt']) for p in sys.argv[1:]];"
        "print(cli.CONFIG_DIR)"
    )
    env = {"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"}
    res = subprocess.run(
        [sys.executable, "-c", code, *presets], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr
    assert (target / "i2e_train" / "configs" / "experiment" / "imagenet_baseline2.yaml").is_file()
    run = subprocess.run(
        [sys.executable, "-m", "i2e_train.train", "--cfg", "job", "experiment=cifar10_baseline2"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0 and "name: cifar10" in run.stdout, run.stderr
