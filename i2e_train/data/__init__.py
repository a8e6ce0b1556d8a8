"""Datasets: a registry of builders keyed by ``dataset.name``.

A builder takes the dataset config's keys as plain keyword arguments and returns a
:class:`DataBundle`: train/val datasets yielding ``(sample, label)`` where a sample is a PIL image
or uint8 tensor before ``train_transform``/``val_transform`` and a uint8 ``[3, H, W]`` tensor of
the configured size after them — or, for datasets that already are events (``events=True``), a
``[T, 2, H, W]`` tensor that skips I2E.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from ..errors import UserError
from .registry import DATASETS, NON_BUILDER_KEYS, DataBundle, register

__all__ = ["DATASETS", "DataBundle", "build_datasets", "register"]


def build_datasets(name: str, **kwargs: Any) -> DataBundle:
    """Build dataset ``name`` from its config keys; unknown names/keys are UserErrors, a file given
    as ``root`` a ValueError."""
    _load_builtin()
    if name not in DATASETS:
        raise UserError(f"unknown dataset '{name}'; choose one of: {', '.join(sorted(DATASETS))}")
    builder = DATASETS[name]
    kwargs = {k: v for k, v in kwargs.items() if k not in NON_BUILDER_KEYS}
    params = inspect.signature(builder).parameters
    unknown = [k for k in kwargs if k not in params]
    if unknown:
        raise UserError(
            f"dataset '{name}' has no setting '{unknown[0]}'; its settings are: "
            f"{', '.join(p for p in params)}"
        )
    size = kwargs.get("image_size")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
        raise UserError(f"dataset.image_size must be a number of pixels >= 1, got {size!r}")
    root = kwargs.get("root")
    if root and Path(str(root)).expanduser().is_file():
        # Caught here for every dataset: each builder would only say that its folders do not exist.
        archive = str(root).lower().endswith((".zip", ".tar", ".tar.gz", ".tgz", ".gz"))
        raise ValueError(
            f"dataset.root '{root}' is a file, not a folder; "
            + (
                "extract the archive and point dataset.root at the folder it gives"
                if archive
                else f"point dataset.root at the folder that holds the {name} data"
            )
        )
    return builder(**kwargs)


def _load_builtin() -> None:
    # Importing the modules registers their builders.
    from . import digits, dvs, folders, preconverted, torchvision_sets  # noqa: F401
