"""The shape of the project: layering without import cycles, configs at the top level and in the wheel."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "i2e_train"
# The rooms of the house from the ground up: a room (a sub-package, or a module of the package's
# top level) imports only rooms on lower floors, and modules inside one room import each other
# without cycles. docs/architecture.md draws this.
FLOORS: dict[str, int] = {
    # ground floor: no torch needed to check a command line; leaves first
    "i2e_train": 1,
    "i2e_train.errors": 1,
    "i2e_train.seeding": 1,
    "i2e_train.pairs": 1,
    "i2e_train.signals": 1,
    "i2e_train.devices": 1,
    "i2e_train.config": 2,
    "i2e_train.files": 2,
    "i2e_train.tracking": 2,
    "i2e_train.monitor": 3,
    # the network and the data, independent of each other
    "i2e_train.models": 4,
    "i2e_train.data": 4,
    # images become events (conversion, sensor, event augmentation, pictures, dataset conversion)
    "i2e_train.events": 5,
    # a training run: assembly, step, trainer, checkpoints, distributed, speed
    "i2e_train.training": 6,
    # one module per console script
    "i2e_train.commands": 7,
    # public names kept stable: python -m i2e_train.train / .evaluate, i2e_train.i2e, i2e_train.checkpoint
    "i2e_train.train": 8,
    "i2e_train.evaluate": 8,
    "i2e_train.i2e": 8,
    "i2e_train.checkpoint": 8,
}
PACKAGES = ("data", "models", "events", "training", "commands")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, typing_imports: bool = True) -> set[str]:
    """Every i2e_train module ``path`` imports, at module level or inside functions, and (unless
    ``typing_imports=False``) under ``if TYPE_CHECKING:``: an annotation-only import still ties
    the two modules together for a reader, so it counts for cycles and floors."""
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
        if not typing_imports and id(node) in typing_only:
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


def room(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 and parts[1] in PACKAGES else module


def test_every_module_is_placed_on_a_floor():
    unplaced = sorted({room(m) for m in graph()} - set(FLOORS))
    assert not unplaced, f"modules without a floor in FLOORS: {unplaced}"


def test_rooms_import_only_downward():
    wrong = [
        f"{name} (floor {FLOORS[room(name)]}) imports {dep} (floor {FLOORS[room(dep)]})"
        for name, deps in graph().items()
        for dep in deps
        if room(dep) != room(name) and FLOORS[room(dep)] >= FLOORS[room(name)]
    ]
    assert not wrong, "\n".join(wrong)


def test_the_ground_floor_and_data_never_import_torch_at_module_level_where_cli_checks_run():
    # config and pairs are read to refuse a bad command line within a second: no heavy imports
    for name in ("config", "pairs", "errors"):
        tree = ast.parse((PACKAGE / f"{name}.py").read_text())
        top = {a.name.split(".")[0] for n in tree.body if isinstance(n, ast.Import) for a in n.names}
        top |= {(n.module or "").split(".")[0] for n in tree.body if isinstance(n, ast.ImportFrom)}
        assert not top & {"torch", "numpy", "hydra"}, name


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
        "import sys; from i2e_train.commands import cli; from i2e_train.commands.cli import precheck;"
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
