"""``i2e-train``: compose the config, build the objects, run the trainer.

Single process: ``i2e-train experiment=cifar10_baseline2 dataset.root=/data/cifar10``.
Many GPUs: ``torchrun --nproc_per_node=8 -m i2e_train.train experiment=imagenet_baseline2 ...``.
"""

from __future__ import annotations

import os
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from .. import config, files
from ..errors import UserError
from . import cli

PROG = "i2e-train"


def check(cfg: DictConfig) -> str | None:
    """What can be known from the command line alone, before any heavy import and before anything is
    written: every typed key, the checkpoints named, a transfer preset's init_from. Returns a
    "nothing to do" line for a finished run given ``resume=auto`` (then nothing else runs)."""
    config.validate_train(cfg)
    models = cli.group_options("model")
    if cfg.model.name not in models:
        raise UserError(f"unknown model '{cfg.model.name}'; choose one of: {', '.join(models)}")
    run = config.run_options(cfg)
    for path in (run.init_from, None if run.resume in (None, "auto") else run.resume):
        if path:
            files.existing_checkpoint(path)
    _check_init_from(cfg, Path(run.run_dir))
    files.check_writable(Path(run.run_dir), "run_dir")
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    if run.resume == "auto" or (not run.resume and restart != "0"):
        done = files.finished_run(Path(run.run_dir) / "checkpoints", int(cfg.trainer.epochs))
        return (
            f"torchrun restart {restart}: resuming from the last checkpoint; {done}"
            if done and restart != "0"
            else done
        )
    return None


def run(cfg: DictConfig) -> None:
    # Heavy imports here, so that a mistyped command line is answered at once.
    from ..monitor import log, setup_logging
    from ..training import builders, distributed

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    _check_init_from(cfg, run_dir)  # a sweep's job folder is known only here
    opts = config.read(config.TrainerOptions, cfg, "trainer")
    try:
        dist = distributed.init_distributed(opts.device)
    except ValueError as e:
        raise UserError(str(e)) from None
    setup_logging(None, dist.rank)  # the log file is written once the command is accepted
    lock = None
    try:
        trainer = builders.build_run(cfg, run_dir, dist)
        trainer.restore(cfg.resume, cfg.init_from)
        if dist.is_main:
            lock = cli.claim_run_dir(run_dir, cfg)
        data, converter = trainer.data, trainer.converter
        classes = " (from the class folders)" if OmegaConf.select(cfg, "dataset.num_classes") is None else ""
        log.info(
            "run %s: %s on %s (%d train / %d val, %d classes%s), %s, device %s%s, precision %s (evaluation %s)",
            run_dir,
            cfg.model.name,
            cfg.dataset.name,
            len(data.train),
            len(data.val),
            data.num_classes,
            classes,
            "stored events" if converter is None else f"I2E ratio {converter.ratio}",
            dist.device,
            f" x{dist.world_size} (process group: {distributed.backend()})" if dist.distributed else "",
            trainer.parts.amp.dtype or "fp32",
            trainer.eval_amp.dtype or "fp32",
        )
        trainer.fit()
    finally:
        if lock is not None:
            lock.release()
        distributed.cleanup()


def _check_init_from(cfg: DictConfig, run_dir: Path) -> None:
    """Transfer presets set ``requires_init_from`` (what to start from): a run needs ``init_from``
    unless it resumes an existing checkpoint."""
    needed = cfg.get("requires_init_from")
    if not needed or cfg.get("init_from"):
        return
    resume = cfg.get("resume")
    if resume and (resume != "auto" or (run_dir / "checkpoints" / "last.pt").exists()):
        return
    raise UserError(f"this preset fine-tunes a pretrained network: give init_from=PATH, {needed}")


def main() -> None:
    cli.run_app("train", PROG, run, check)


if __name__ == "__main__":
    main()
