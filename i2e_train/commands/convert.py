"""``i2e-convert``: turn an image dataset into pre-converted I2E events (docs/formats.md).

    i2e-convert dataset=image_folder dataset.root=/data/pets output=/data/i2e-pets
    i2e-convert dataset=digits output=i2e-digits format=npz
    i2e-convert dataset=image_folder ... output=DIR max_shards=50   # a share of the work; re-run to continue

Same ``dataset=...`` keys as ``i2e-train``; images are resized to ``dataset.image_size`` (bicubic,
unless already that size) and converted with the fixed pairs of ``i2e.order`` at ``i2e.ratio``.
Re-running the same command on a partly written output completes it; on a finished one it does
nothing. See :mod:`i2e_train.data.export` for the format and the guarantees.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from .. import config, files
from ..errors import UserError
from . import cli

PROG = "i2e-convert"


def options(cfg: DictConfig) -> tuple[config.ConvertOptions, config.I2EOptions, int]:
    """The typed settings of a conversion (checked without heavy imports)."""
    values = {k: cfg[k] for k in (f.name for f in dataclasses.fields(config.ConvertOptions))}
    convert_options = config.options(config.ConvertOptions, values, "")
    i2e = config.read(config.I2EOptions, cfg, "i2e")
    if i2e.ratio is None:
        raise UserError(f"dataset '{cfg.dataset.name}' sets no I2E ratio; give one with i2e.ratio=...")
    image_size = OmegaConf.select(cfg, "dataset.image_size")
    if not isinstance(image_size, int) or image_size < 1:
        raise UserError(
            f"dataset '{cfg.dataset.name}' has no usable dataset.image_size ({image_size!r}); "
            "set dataset.image_size=<pixels>"
        )
    return convert_options, i2e, image_size


def check(cfg: DictConfig) -> None:
    """Refuse a bad command before any heavy import: every key, and an output that cannot be written."""
    convert_options, _, _ = options(cfg)
    files.check_writable(Path(convert_options.output).expanduser(), "output")


def run(cfg: DictConfig) -> dict[str, Any]:
    # Heavy imports here, so that a mistyped command line is answered at once.
    from ..events.export import convert
    from ..monitor import setup_logging
    from ..training import builders

    setup_logging(None)
    convert_options, i2e, image_size = options(cfg)
    sensor = builders.build_sensor(builders.read_sensor(cfg), int(cfg.seed))
    bundle = builders.build_data(cfg)
    return convert(
        bundle,
        options=convert_options,
        dataset_name=str(cfg.dataset.name),
        dataset_root=OmegaConf.select(cfg, "dataset.root"),
        image_size=image_size,
        ratio=float(i2e.ratio),
        order=i2e.order,
        sensor=sensor,
        seed=int(cfg.seed),
    )


def main() -> None:
    cli.run_app("convert", PROG, run, check)


if __name__ == "__main__":
    main()
