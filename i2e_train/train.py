"""``i2e-train``: compose the config, build the objects, run the trainer.

Single process: ``i2e-train experiment=cifar10_baseline2 dataset.root=/data/cifar10``.
Many GPUs: ``torchrun --nproc_per_node=8 -m i2e_train.train experiment=imagenet_baseline2 ...``.
"""

from __future__ import annotations

from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from . import cli
from .errors import UserError

PROG = "i2e-train"


def run(cfg: DictConfig) -> None:
    _check_init_from(cfg)
    # Heavy imports here, so that a mistyped command line is answered at once.
    import torch
    from torch import nn

    from . import builders, distributed
    from .callbacks import default_callbacks
    from .monitor import log, setup_logging
    from .trainer import Trainer, TrainerOptions

    seed = int(cfg.seed)
    opts = builders.options(TrainerOptions, builders.section(cfg, "trainer"), "trainer")
    try:
        dist = distributed.init_distributed(opts.device)
    except ValueError as e:
        raise UserError(str(e)) from None
    if opts.sync_batchnorm and dist.distributed and dist.device.type != "cuda":
        raise UserError(
            "trainer.sync_batchnorm needs CUDA devices (PyTorch's SyncBatchNorm is GPU-only); set it false"
        )
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    setup_logging(run_dir, dist.rank)
    try:
        torch.manual_seed(seed)
        amp = builders.resolve_amp(opts.precision, dist.device)
        data = builders.build_data(cfg)
        model = builders.build_network(
            cfg, data.num_classes, dist.device, amp, sync_batchnorm=opts.sync_batchnorm and dist.distributed
        )
        converter = builders.build_converter(cfg, data, seed, amp)
        optimizer = builders.build_optimizer(cfg, model)
        scheduler = builders.build_scheduler(cfg, optimizer, opts.epochs)
        trainer = Trainer(
            model=model,
            converter=converter,
            data=data,
            optimizer=optimizer,
            scheduler=scheduler,
            criterion=nn.CrossEntropyLoss(label_smoothing=float(cfg.loss.label_smoothing)),
            options=opts,
            dist=dist,
            amp=amp,
            run_dir=run_dir,
            seed=seed,
            config=OmegaConf.to_container(cfg, resolve=True),
            batch_transform=builders.build_batch_transform(cfg, data),
            events_transform=builders.build_events_transform(cfg),
            callbacks=default_callbacks(opts.preview_samples, opts.firing_rate_batches)
            + builders.build_callbacks(data),
        )
        trainer.restore(cfg.resume, cfg.init_from)
        log.info(
            "run %s: %s on %s (%d train / %d val, %d classes), %s, device %s%s, precision %s",
            run_dir,
            cfg.model.name,
            cfg.dataset.name,
            len(data.train),
            len(data.val),
            data.num_classes,
            "stored events" if converter is None else f"I2E ratio {converter.ratio}",
            dist.device,
            f" x{dist.world_size}" if dist.distributed else "",
            amp.dtype or "fp32",
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
