"""Checkpoints: atomic save, validated load, and weight loading that also accepts the paper's files.

Our checkpoint is a dict with the model weights under ``state_dict`` (no ``module.`` or
``_orig_mod.`` prefixes, as in the paper's released files) plus training state: ``optimizer``,
``scheduler``, ``scaler``, ``epoch`` (completed epochs), ``step``, ``best_acc1``, ``rng`` and the
resolved ``config``. Everything is stored in ``torch.load(weights_only=True)``-safe types.
"""

from __future__ import annotations

import os
import random
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .errors import CheckpointError

FORMAT = "i2e-train"
VERSION = 1
# Prefixes that wrappers add to parameter names: DDP, torch.compile.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
# Entries of the paper's checkpoints that are not model weights (its conv-based converter's kernel).
_FOREIGN_KEYS = ("i2e.weight",)


def save_checkpoint(state: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Write ``state`` to ``path`` atomically: a crash mid-write leaves the previous file intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(dict(state), f)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates 0600; give the file the permissions a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_name, 0o666 & ~umask)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Load a checkpoint dict, turning every way it can be unreadable into one clear CheckpointError."""
    path = Path(path)
    if path.is_dir():
        # A run folder or its checkpoints/ folder: point at the files a run writes there.
        inside = [
            p
            for folder in (path, path / "checkpoints")
            for p in (folder / "last.pt", folder / "best.pt")
            if p.is_file()
        ] or sorted(path.glob("*.pt"))[:2] + sorted(path.glob("*.pth"))[:2]
        hint = " or ".join(f"'{p}'" for p in inside[:2]) if inside else "the checkpoint file inside it"
        raise CheckpointError(f"checkpoint '{path}' is a folder, not a checkpoint file; give {hint}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}' does not exist (check the path)")
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure to unpickle means an unusable file
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"checkpoint '{path}' cannot be read: it is truncated, corrupt or not a PyTorch "
            f"checkpoint ({reason[:160]})"
        ) from None
    if not isinstance(obj, dict):
        raise CheckpointError(
            f"checkpoint '{path}' holds a {type(obj).__name__}, not a checkpoint dict with 'state_dict'"
        )
    return obj


def _numpy_safe_globals() -> list[Any]:
    # The paper's files may store metrics as NumPy scalars; allow exactly those types.
    allowed: list[Any] = [np.dtype, np.ndarray]
    try:
        allowed.append(np._core.multiarray.scalar)  # NumPy >= 2
    except AttributeError:  # pragma: no cover - NumPy 1.x
        allowed.append(np.core.multiarray.scalar)
    allowed += [type(np.dtype(t)) for t in ("float32", "float64", "int64", "int32")]
    return allowed


def extract_state_dict(ckpt: Mapping[str, Any], path: str | os.PathLike = "") -> dict[str, torch.Tensor]:
    """Model weights from our or the paper's checkpoint, wrapper prefixes and foreign entries removed."""
    if "state_dict" in ckpt and isinstance(ckpt["state_dict"], Mapping):
        raw = ckpt["state_dict"]
    elif ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        raw = ckpt  # a bare state_dict
    else:
        keys = ", ".join(list(ckpt)[:8])
        raise CheckpointError(
            f"checkpoint '{path}' has no 'state_dict' entry (found keys: {keys}); "
            "expected an i2e-train or I2E paper checkpoint"
        )
    state: dict[str, torch.Tensor] = {}
    for key, value in raw.items():
        for prefix in _WRAPPER_PREFIXES:
            while key.startswith(prefix):
                key = key[len(prefix) :]
        if key in _FOREIGN_KEYS:
            continue
        state[key] = value
    return state


def load_weights(model: nn.Module, path: str | os.PathLike, replace_head: bool = False) -> dict[str, Any]:
    """Load model weights from our checkpoint or one of the paper's released checkpoints.

    With ``replace_head`` a classifier of a different class count is not loaded (the model
    keeps its freshly initialised head, for transfer learning). Any other mismatch is an error.
    Returns what happened: ``{"skipped": [...], "epoch": ..., "best_acc1": ...}``.
    """
    ckpt = load_checkpoint(path)
    state = extract_state_dict(ckpt, path)
    own = model.state_dict()
    skipped = []
    head_keys = [k for k in ("fc.weight", "fc.bias") if k in state and k in own]
    if any(state[k].shape != own[k].shape for k in head_keys):
        if not replace_head:
            raise CheckpointError(
                f"checkpoint '{path}' has a classifier for {state['fc.weight'].shape[0]} classes but "
                f"the model has {own['fc.weight'].shape[0]}; set dataset.num_classes to match "
                "(or use init_from=, which replaces the classifier)"
            )
        for k in head_keys:
            state[k] = own[k]
        skipped = head_keys
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong_shape = [k for k in state if k in own and state[k].shape != own[k].shape]
    if missing or unexpected or wrong_shape:
        details = []
        if missing:
            details.append(f"missing {len(missing)} (e.g. {missing[0]})")
        if unexpected:
            details.append(f"unexpected {len(unexpected)} (e.g. {unexpected[0]})")
        if wrong_shape:
            k = wrong_shape[0]
            details.append(f"shape mismatch at {k}: {tuple(state[k].shape)} vs model {tuple(own[k].shape)}")
        raise CheckpointError(
            f"checkpoint '{path}' does not fit model {type(model).__name__}: {'; '.join(details)}; "
            "check model.name"
        )
    model.load_state_dict(state)
    return {"skipped": skipped, "epoch": ckpt.get("epoch"), "best_acc1": ckpt.get("best_acc1")}


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain model inside DDP / torch.compile wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def capture_rng_state() -> dict[str, Any]:
    """Global RNG states of Python, NumPy and torch (CPU and every CUDA device)."""
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    random.setstate(_as_tuple(state["python"]))
    np_state = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"][: torch.cuda.device_count()])


def _as_tuple(value: Any) -> Any:
    # random.setstate needs tuples; a serialisation round trip may give lists.
    if isinstance(value, list | tuple):
        return tuple(_as_tuple(v) for v in value)
    return value
