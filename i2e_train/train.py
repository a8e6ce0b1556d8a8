"""``i2e-train``: compose the config, build the objects, run the trainer.

Single process: ``i2e-train experiment=cifar10_baseline2 dataset.root=/data/cifar10``.
Many GPUs: ``torchrun --nproc_per_node=8 -m i2e_train.train experiment=imagenet_baseline2 ...``.
"""

from __future__ import annotations

from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from . import cli, config
from .errors import UserError

PROG = "i2e-train"


def run(cfg: DictConfig) -> None:
    _check_init_from(cfg)
    # Heavy imports here, so that a mistyped command line is answered at once.
    from . import builders, distributed
    from .monitor import log, setup_logging

    opts = config.read(config.TrainerOptions, cfg, "trainer")
    try:
        dist = distributed.init_distributed(opts.device)
    except ValueError as e:
        raise UserError(str(e)) from None
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    setup_logging(run_dir, dist.rank)
    try:
        trainer = builders.build_run(cfg, run_dir, dist)
        trainer.restore(cfg.resume, cfg.init_from)
        data, converter = trainer.data, trainer.converter
        log.info(
            "run %s: %s on %s (%d train / %d val, %d classes), %s, device %s%s, precision %s (evaluation %s)",
            run_dir,
            cfg.model.name,
            cfg.dataset.name,
            len(data.train),
            len(data.val),
            data.num_classes,
            "stored events" if converter is None else f"I2E ratio {converter.ratio}",
            dist.device,
            f" x{dist.world_size}" if dist.distributed else "",
            trainer.parts.amp.dtype or "fp32",
            trainer.eval_amp.dtype or "fp32",
        )
        trainer.fit()
    finally:
        distributed.cleanup()


def _check_init_from(cfg: DictConfig) -> None:
    """Transfer presets set ``requires_init_from`` (what to start from): a run needs ``init_from``
    unless it resumes an existing checkpoint."""
    needed = cfg.get("requires_init_from")
    if not needed or cfg.get("init_from"):
        return
    resume = cfg.get("resume")
    if resume and (resume != "auto" or (Path(cfg.run_dir) / "checkpoints" / "last.pt").exists()):
        return
    raise UserError(f"this preset fine-tunes a pretrained network: give init_from=PATH, {needed}")


def main() -> None:
    cli.run_app("train", PROG, run)


if __name__ == "__main__":
    main()
