"""Checkpoints: atomic save, validated load, and weight loading that also accepts the paper's files.

Our checkpoint is a dict with the model weights under ``state_dict`` (no ``module.`` or
``_orig_mod.`` prefixes, as in the paper's released files) plus training state: ``optimizer``,
``scheduler``, ``scaler``, ``ema``, ``epoch`` (completed epochs), ``step``, ``best_acc1``, ``rng``
and the resolved ``config``. Everything is stored in ``torch.load(weights_only=True)``-safe types.
A run's folder layout (last / best / kept epochs) is :class:`RunCheckpoints`.
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import CheckpointError
from ..files import atomic_link, atomic_write, existing_checkpoint, remove_stale_temporaries, write_progress

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
    return atomic_write(path, lambda f: torch.save(dict(state), f))


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Load a checkpoint dict, turning every way it can be unreadable into one clear CheckpointError."""
    path = existing_checkpoint(path)
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


def load_weights(
    model: nn.Module, path: str | os.PathLike, replace_head: bool = False, ema: bool = False
) -> dict[str, Any]:
    """Load model weights from our checkpoint or one of the paper's released checkpoints.

    With ``replace_head`` a classifier of a different class count is not loaded (the model
    keeps its freshly initialised head, for transfer learning). Any other mismatch is an error.
    With ``ema`` the checkpoint's averaged weights are loaded (it must have them).
    Returns what happened: ``{"skipped": [...], "epoch": ..., "best_acc1": ...}``.
    """
    ckpt = load_checkpoint(path)
    if ema and not ckpt.get("ema"):
        raise CheckpointError(f"checkpoint '{path}' has no averaged (EMA) weights; set use_ema=false")
    state = extract_state_dict(ckpt["ema"] if ema else ckpt, path)
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


# ----------------------------------------------------------------------------- a run's checkpoints
@dataclass
class Progress:
    """Where a run stands: what a checkpoint must restore besides the tensors."""

    epoch: int = 0  # completed epochs
    step: int = 0  # completed steps of the epoch in progress (mid-epoch checkpoints)
    global_step: int = 0  # optimiser steps so far
    best_acc1: float = 0.0
    partial: dict[str, Any] | None = None  # the interrupted epoch's sums (all ranks), for its metrics row


@dataclass
class TrainingObjects:
    """The objects whose state a training checkpoint holds."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: Any = None  # torch.amp.GradScaler under fp16
    ema: Any = None  # engine.ModelEma when the weights are averaged


def training_state(
    objects: TrainingObjects, progress: Progress, world_size: int, config: dict[str, Any]
) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "version": VERSION,
        "state_dict": objects.model.state_dict(),
        "optimizer": objects.optimizer.state_dict(),
        "scheduler": objects.scheduler.state_dict(),
        "scaler": objects.scaler.state_dict() if objects.scaler is not None else None,
        "ema": objects.ema.state_dict() if objects.ema is not None else None,
        "epoch": progress.epoch,
        "step": progress.step,
        "global_step": progress.global_step,
        "partial_epoch": progress.partial,
        "best_acc1": progress.best_acc1,
        "rng": capture_rng_state(),
        "world_size": world_size,
        "config": config,
    }


# How an optimizer computes (its implementation), not what it has learnt: a resumed run keeps the
# choice it was built with (e.g. fused under fp16 loss scaling; a checkpoint of a CPU fp32 run holds
# foreach/fused settings that do not fit a CUDA fp16 run, whose GradScaler relies on fused).
_IMPLEMENTATION_KEYS = ("fused", "foreach", "capturable", "differentiable")


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """``optimizer.load_state_dict(state)`` that keeps the optimizer's own implementation flags."""
    flags = [{k: g[k] for k in _IMPLEMENTATION_KEYS if k in g} for g in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, kept in zip(optimizer.param_groups, flags, strict=True):
        group.update(kept)


def restore_training_state(
    ckpt: dict[str, Any], path: Path, objects: TrainingObjects, world_size: int
) -> tuple[Progress, list[str]]:
    """Load a training checkpoint into ``objects``; returns the progress and the schedule settings
    that changed since (the config wins for those: the schedule is a function of it)."""
    extract_state_dict(ckpt, path)  # not a model checkpoint at all: say so first
    if ckpt.get("format") != FORMAT or "optimizer" not in ckpt:
        raise CheckpointError(
            f"'{path}' is not an i2e-train training checkpoint (no optimizer state); "
            "use init_from= to start from its weights"
        )
    if ckpt.get("world_size", world_size) != world_size and ckpt.get("step"):
        raise CheckpointError(
            f"'{path}' stopped mid-epoch with {ckpt['world_size']} processes; resume it with the same "
            "number of processes (or from an end-of-epoch checkpoint)"
        )
    load_weights(objects.model, path)
    configured = objects.scheduler.state_dict()
    try:
        load_optimizer_state(objects.optimizer, ckpt["optimizer"])
        objects.scheduler.load_state_dict(ckpt["scheduler"])
    except (ValueError, KeyError) as e:
        raise CheckpointError(
            f"'{path}' was written for a different optimizer/model setup ({e}); "
            "resume needs the same model and optim settings"
        ) from None
    changed = sorted(k for k, v in configured.items() if ckpt["scheduler"].get(k) != v)
    if changed:
        objects.scheduler.load_state_dict(configured)
    if objects.scaler is not None and ckpt.get("scaler"):
        objects.scaler.load_state_dict(ckpt["scaler"])
    if objects.ema is not None:
        if ckpt.get("ema"):
            objects.ema.load_state_dict(ckpt["ema"])
        else:  # EMA switched on for a run that did not have it: start averaging from here
            objects.ema.module.load_state_dict(objects.model.state_dict())
    if ckpt.get("rng"):
        restore_rng_state(ckpt["rng"])
    progress = Progress(
        epoch=int(ckpt["epoch"]),
        step=int(ckpt.get("step") or 0),
        global_step=int(ckpt.get("global_step") or 0),
        best_acc1=float(ckpt.get("best_acc1") or 0.0),
        partial=ckpt.get("partial_epoch") or None,
    )
    return progress, changed


def _os_error(e: BaseException | None) -> OSError | None:
    """``e`` or the OSError it arose from (its ``__cause__`` / ``__context__`` chain)."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, OSError):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


class RunCheckpoints:
    """A run's ``checkpoints/`` folder: ``last.pt`` (written once per save, atomically), ``best.pt``
    (a hard link to the ``last.pt`` that scored best, never serialised twice) and, with ``keep > 0``,
    the last ``keep`` end-of-epoch checkpoints as ``epoch_NNNN.pt`` (links as well)."""

    def __init__(self, folder: Path, keep: int = 0) -> None:
        self.folder = folder
        self.keep = keep

    def remove_stale_temporaries(self) -> int:
        """Partial files of a writer killed mid-save (a live writer's are kept)."""
        return remove_stale_temporaries(self.folder) if self.folder.is_dir() else 0

    @property
    def last(self) -> Path:
        return self.folder / "last.pt"

    @property
    def best(self) -> Path:
        return self.folder / "best.pt"

    def epoch_file(self, epoch: int) -> Path:
        return self.folder / f"epoch_{epoch:04d}.pt"

    def save(self, state: dict[str, Any], *, best: bool = False) -> Path:
        """Write ``state`` as last.pt; link it as best.pt and, at an epoch end, as epoch_NNNN.pt.
        A full disk or a folder turned read-only ends the run with one line; the previous last.pt
        stays intact and the partial file is removed."""
        try:
            self._save(state, best)
        except (OSError, RuntimeError) as e:
            cause = _os_error(e)  # torch.save reports a failed write as a RuntimeError around it
            if cause is None:
                raise
            kept = (
                f"the previous checkpoint '{self.last}' is intact"
                if self.last.exists()
                else "no checkpoint was kept"
            )
            raise CheckpointError(
                f"cannot write checkpoint '{self.last}' ({cause.strerror or type(cause).__name__}); {kept}; "
                "free some space (or write elsewhere with run_dir=PATH), then continue with resume=auto"
            ) from None
        return self.last

    def _save(self, state: dict[str, Any], best: bool) -> None:
        save_checkpoint(state, self.last)
        write_progress(self.folder, int(state["epoch"]), int(state.get("step") or 0))
        if best:
            atomic_link(self.last, self.best)
        if self.keep and not state.get("step"):
            atomic_link(self.last, self.epoch_file(int(state["epoch"])))
            for old in self.history()[: -self.keep]:
                old.unlink(missing_ok=True)

    def history(self) -> list[Path]:
        """The kept end-of-epoch checkpoints, oldest first."""
        return sorted(self.folder.glob("epoch_[0-9][0-9][0-9][0-9].pt"))

    def resume_path(self, resume: str) -> Path | None:
        """``auto``: last.pt if the run has one (else None: a new run); any other value is a path."""
        if resume == "auto":
            return self.last if self.last.exists() else None
        return Path(resume)
