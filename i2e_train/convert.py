"""``i2e-convert``: turn an image dataset into pre-converted I2E events (DESIGN section 5).

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
import math
from typing import Any

from omegaconf import DictConfig, OmegaConf

from . import cli
from .errors import UserError

PROG = "i2e-convert"


def run(cfg: DictConfig) -> dict[str, Any]:
    # Heavy imports here, so that a mistyped command line is answered at once.
    from . import builders
    from .data.export import ConvertOptions, convert
    from .monitor import setup_logging

    setup_logging(None)
    keys = [f.name for f in dataclasses.fields(ConvertOptions)]
    values = {k: OmegaConf.to_container(cfg[k]) if OmegaConf.is_config(cfg[k]) else cfg[k] for k in keys}
    options = builders.options(ConvertOptions, values, "")
    image_size = OmegaConf.select(cfg, "dataset.image_size")
    if not isinstance(image_size, int) or image_size < 1:
        raise UserError(
            f"dataset '{cfg.dataset.name}' has no usable dataset.image_size ({image_size!r}); "
            "set dataset.image_size=<pixels>"
        )
    i2e = builders.section(cfg, "i2e")
    ratio = i2e.get("ratio")
    if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not math.isfinite(ratio) or ratio < 0:
        raise UserError(f"i2e.ratio must be a number >= 0, got {ratio!r}")
    bundle = builders.build_data(cfg)
    return convert(
        bundle,
        options=options,
        dataset_name=str(cfg.dataset.name),
        dataset_root=OmegaConf.select(cfg, "dataset.root"),
        image_size=image_size,
        ratio=float(ratio),
        order=i2e.get("order", "gamma_alpha_beta"),
    )


def main() -> None:
    cli.run_app("convert", PROG, run)


if __name__ == "__main__":
    main()
