"""Command-line plumbing shared by the console scripts.

Hydra reports config mistakes as multi-line exceptions; a user who mistypes a key or preset
should get one line naming it and the valid choices. ``main`` composes the config once before
handing over to Hydra, translating composition errors, and ``guard`` turns the :class:`UserError`
raised inside a run into ``prog: error: ...`` with a non-zero exit code.
"""

from __future__ import annotations

import argparse
import datetime
import difflib
import errno
import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ..errors import UserError


def _config_dir() -> Path:
    """The Hydra configs: in a source checkout the top-level ``configs/`` beside this package, else
    the package ``i2e_train.configs`` (a wheel, or an editable install that maps it to ``configs/``)."""
    import importlib.util

    # A checkout imported directly (PYTHONPATH) next to another one installed in editable mode would
    # otherwise get the installed checkout's configs with its own code.
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "pyproject.toml").is_file() and (checkout / "configs" / "train.yaml").is_file():
        return checkout / "configs"
    spec = importlib.util.find_spec("i2e_train.configs")
    for location in (spec.submodule_search_locations or []) if spec is not None else []:
        if (Path(location) / "train.yaml").is_file():
            return Path(location)
    return checkout / "configs"


CONFIG_DIR = _config_dir()
# Hydra flags that take a value, and flags that change what Hydra does with the config.
_FLAGS_WITH_VALUE = {
    "--cfg",
    "-c",
    "--package",
    "-p",
    "--config-path",
    "-cp",
    "--config-name",
    "-cn",
    "--config-dir",
    "-cd",
    "--info",
    "-i",
    "--experimental-rerun",
}
_SKIP_PRECHECK = {
    "--help",
    "-h",
    "--hydra-help",
    "--version",
    "--shell-completion",
    "-sc",
    "--multirun",
    "-m",
    "--config-path",
    "-cp",
    "--config-name",
    "-cn",
    "--config-dir",
    "-cd",
    "--experimental-rerun",
}


COMMANDS = {
    "i2e-train": "train an SNN on I2E events",
    "i2e-eval": "evaluate a checkpoint",
    "i2e-convert": "pre-convert a dataset to events",
    "i2e-viz": "look at events",
    "i2e-report": "compare runs: table and plots",
    "i2e-bench": "speed",
}


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults in the option list; the description and the examples as written."""


def epilog(prog: str, examples: list[str]) -> str:
    """The end of an argparse CLI's --help: examples, then the other commands."""
    others = ", ".join(f"{name} ({what})" for name, what in COMMANDS.items() if name != prog)
    lines = ["examples:", *(f"  {e}" for e in examples), "", f"other commands: {others}; each has --help."]
    return "\n".join(lines)


def fail(prog: str, message: str, code: int = 2) -> None:
    print(f"{prog}: error: {message}", file=sys.stderr)
    sys.exit(code)


# ----------------------------------------------------------------------------- resolvers
def _run_stamp() -> str:
    """Timestamp naming a run folder; identical for every rank of one torchrun launch."""
    if os.environ.get("I2E_RUN_STAMP"):
        return os.environ["I2E_RUN_STAMP"]
    started = _launcher_start_time() if "LOCAL_RANK" in os.environ else None
    moment = datetime.datetime.fromtimestamp(started) if started else datetime.datetime.now()
    return moment.strftime("%Y-%m-%d_%H-%M-%S")


def _launcher_start_time() -> float | None:
    # All local ranks are children of the same torchrun agent: its start time is shared.
    try:
        stat = Path(f"/proc/{os.getppid()}/stat").read_text()
        ticks = int(stat.rsplit(")", 1)[1].split()[19])
        boot = next(
            int(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime")
        )
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def _eval_dir(checkpoint: str) -> str:
    path = Path(str(checkpoint))
    if path.parent.name == "checkpoints":
        return str(path.parent.parent / "eval" / path.stem)
    return str(path.parent / f"{path.stem}_eval")


def register_resolvers() -> None:
    for name, fn in (
        ("i2e_run_stamp", _run_stamp),
        ("i2e_eval_dir", _eval_dir),
    ):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn, use_cache=True)


# ----------------------------------------------------------------------------- errors
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


def guard(prog: str) -> Callable[[Callable[[DictConfig], Any]], Callable[[DictConfig], Any]]:
    """Decorator for a Hydra task: user mistakes become one line and exit code 2."""

    def deco(task: Callable[[DictConfig], Any]) -> Callable[[DictConfig], Any]:
        @functools.wraps(task)
        def wrapper(cfg: DictConfig) -> Any:
            try:
                return task(cfg)
            except UserError as e:
                if int(os.environ.get("RANK", "0")) != 0:
                    sys.exit(2)  # rank 0 reports it; N copies of one line help nobody
                fail(prog, str(e))
            except OSError as e:
                if e.errno not in _WRITE_ERRNOS:
                    raise
                # The disk filled up or the folder became read-only mid-run (logs, metrics, plots).
                where = f"'{e.filename}'" if e.filename else "a file"
                fail(
                    prog,
                    f"cannot write {where} ({e.strerror}); free some space or write elsewhere, then run again",
                )
            except KeyboardInterrupt:
                print(f"{prog}: interrupted", file=sys.stderr)
                sys.exit(130)

        return wrapper

    return deco


def user_overrides(argv: list[str]) -> list[str]:
    """Config overrides from a command line, without Hydra's own flags and hydra.* settings."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg.startswith("-"):
            skip = arg in _FLAGS_WITH_VALUE and "=" not in arg
            continue
        if arg.lstrip("+~").startswith(("hydra.", "hydra/")):
            continue
        out.append(arg)
    return out


def precheck(config_name: str, argv: list[str]) -> DictConfig | None:
    """Compose the config as Hydra will; raise UserError with one clear line if it cannot be."""
    if any(a.split("=")[0] in _SKIP_PRECHECK for a in argv):
        return None
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException, MissingConfigException, OverrideParseException
    from omegaconf.errors import OmegaConfBaseException

    overrides = user_overrides(argv)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = compose(config_name=config_name, overrides=overrides)
    except OverrideParseException as e:
        raise UserError(_parse_message(e, overrides)) from None
    except MissingConfigException as e:
        raise UserError(_missing_config_message(e, overrides)) from None
    except (HydraException, OmegaConfBaseException) as e:
        raise UserError(_composition_message(e, config_name, overrides)) from None
    finally:
        GlobalHydra.instance().clear()
    # Printing the config (--cfg/--info) shows required settings as ???; only a run needs them.
    printing = any(a.split("=")[0] in ("--cfg", "-c", "--info", "-i") for a in argv)
    missing = [] if printing else _missing_keys(cfg)
    if missing:
        raise UserError(f"missing required setting '{missing[0]}' (give it as {missing[0]}=...)")
    return cfg


# Hydra's grammar needs quotes around values with these (besides spaces and non-ASCII letters).
_QUOTE_HINT = "values with spaces, non-ASCII letters or any of ()[]{}:=,'\" need quotes"


def _parse_message(e: Exception, overrides: list[str]) -> str:
    """One line for a command line Hydra's lexer/parser rejects, naming the setting and how to quote it."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    for i, ov in enumerate(overrides):
        if "=" in ov or ov.startswith("~"):
            continue
        # A word without '=': usually the rest of a value the shell split at a space.
        before = overrides[i - 1] if i else ""
        if "=" not in before:
            return f"'{ov}' is not a key=value setting (e.g. trainer.epochs=5)"
        words = [before]
        for rest in overrides[i:]:
            if "=" in rest:
                break
            words.append(rest)
        key, _, value = " ".join(words).partition("=")
        return (
            f"'{ov}' is not a key=value setting; if it belongs to the value of {key} (the shell splits "
            f"at spaces), quote the whole setting: '{key}=\"{value}\"'"
        )
    parser = OverridesParser.create()
    for ov in overrides:
        try:
            parser.parse_override(ov)
        except Exception as bad:  # noqa: BLE001 - Hydra's lexer and parser raise several types
            key, _, value = ov.partition("=")
            return (
                f"cannot parse the setting '{ov}' ({_first_line(bad)}); {_QUOTE_HINT}: quote the value and "
                f"the whole setting, e.g. '{key}=\"{value}\"'"
            )
    return f"cannot parse the command line: {_first_line(e)}"


def _missing_keys(cfg: DictConfig, prefix: str = "") -> list[str]:
    """Keys set to ``???``, found without resolving interpolations (which may depend on them)."""
    out = []
    for key in cfg:
        if OmegaConf.is_missing(cfg, key):
            out.append(f"{prefix}{key}")
        elif not OmegaConf.is_interpolation(cfg, key) and isinstance(cfg._get_node(key), DictConfig):
            out += _missing_keys(cfg._get_node(key), f"{prefix}{key}.")
    return out


def _runs(argv: list[str]) -> bool:
    """Whether the command runs the application (not --cfg/--info/--help)."""
    return not any(a.split("=")[0] in ("--cfg", "-c", "--info", "-i", *_SKIP_PRECHECK) for a in argv)


def group_options(group: str) -> list[str]:
    folder = CONFIG_DIR / group
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def _missing_config_message(e: Exception, overrides: list[str]) -> str:
    for ov in overrides:
        key, _, value = ov.lstrip("+~").partition("=")
        if "." not in key and (CONFIG_DIR / key).is_dir() and value not in group_options(key):
            choices = ", ".join(group_options(key)) or "(none available)"
            return f"unknown {key} '{value}'; choose one of: {choices}"
    return _first_line(e)


def _composition_message(e: Exception, config_name: str, overrides: list[str]) -> str:
    text = str(e)
    if "not in struct" in text or "Could not override" in text or "Could not append" in text:
        for ov in overrides:
            key = ov.lstrip("+~").partition("=")[0]
            if key and not _key_exists(config_name, key, overrides):
                return _unknown_key_message(config_name, key, overrides)
    return _first_line(e)


def _first_line(e: Exception) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return lines[0] if lines else type(e).__name__


def _base_config(config_name: str, overrides: list[str]) -> DictConfig | None:
    """The config with only the group choices from ``overrides`` applied (to list valid keys)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    groups = [
        o
        for o in overrides
        if "." not in o.partition("=")[0] and (CONFIG_DIR / o.partition("=")[0].lstrip("+~")).is_dir()
    ]
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            return compose(config_name=config_name, overrides=groups)
    except Exception:  # noqa: BLE001 - only used to improve an error message
        return None
    finally:
        GlobalHydra.instance().clear()


def _key_exists(config_name: str, key: str, overrides: list[str]) -> bool:
    cfg = _base_config(config_name, overrides)
    if cfg is None:
        return True
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(cfg, parent) if parent else cfg
    # Not ``leaf in node``: that is False for a key whose value is still ??? (dataset.root of most
    # datasets), which would blame a valid key for another key's mistake.
    return isinstance(node, DictConfig) and leaf in node.keys()  # noqa: SIM118


def _unknown_key_message(config_name: str, key: str, overrides: list[str]) -> str:
    cfg = _base_config(config_name, overrides)
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(cfg, parent) if (cfg is not None and parent) else cfg
    if not isinstance(node, DictConfig):
        top = ", ".join(k for k in (cfg or {}) if k != "hydra")
        return f"unknown config key '{key}'; top-level keys are: {top}"
    keys = [str(k) for k in node]
    close = difflib.get_close_matches(leaf, keys, n=1)
    hint = f" (did you mean '{parent + '.' if parent else ''}{close[0]}'?)" if close else ""
    return f"unknown config key '{key}'{hint}; valid keys{' under ' + parent if parent else ''}: {', '.join(keys)}"


def run_app(
    config_name: str,
    prog: str,
    task: Callable[[DictConfig], Any],
    check: Callable[[DictConfig], str | None] | None = None,
) -> None:
    """The body of every Hydra console script: validate the command line (one clear line for a
    mistake, before any heavy import: the composition, then ``check(cfg)``, which may also answer
    "nothing to do" at once), then run ``task`` as a Hydra application, its user errors reported
    by :func:`guard`. ``--cfg`` prints the resolved config unless ``--resolve`` is left to the user."""
    import hydra

    register_resolvers()
    argv = sys.argv[1:]
    if any(a in ("--cfg", "-c") or a.startswith("--cfg=") for a in argv) and "--resolve" not in argv:
        sys.argv.append("--resolve")
    try:
        cfg = precheck(config_name, argv)
        done = check(cfg) if cfg is not None and check is not None and _runs(argv) else None
    except UserError as e:
        fail(prog, str(e))
    if done:
        print(f"[{datetime.datetime.now():%H:%M:%S}] {done}", file=sys.stderr)
        sys.exit(0)
    app = hydra.main(config_path=str(CONFIG_DIR), config_name=config_name, version_base="1.3")
    app(guard(prog)(task))()


# ----------------------------------------------------------------------------- a run's folder
def claim_run_dir(run_dir: Path, cfg: DictConfig) -> Any:
    """Make ``run_dir`` this run's, once its command is accepted (nothing is written there before):
    the lock that keeps a second live run out, a check that it is writable, Hydra's config snapshot
    in ``.hydra/`` and the log file (with the lines logged so far). Rank 0 only; returns the lock."""
    from hydra.core.hydra_config import HydraConfig

    from ..files import RunLock, atomic_write, check_writable
    from ..monitor import attach_log_file

    check_writable(run_dir, "run_dir")
    lock = RunLock(run_dir).acquire("run_dir")
    check_writable(run_dir / "checkpoints", "run_dir")
    hydra_cfg = HydraConfig.get()
    snapshot = run_dir / ".hydra"
    snapshot.mkdir(exist_ok=True)
    for name, node in (
        ("config.yaml", cfg),
        ("hydra.yaml", OmegaConf.create({"hydra": hydra_cfg})),
        ("overrides.yaml", hydra_cfg.overrides.task),
    ):
        text = OmegaConf.to_yaml(node)
        atomic_write(snapshot / name, lambda f, t=text: f.write(t.encode()))
    attach_log_file(run_dir)
    return lock
