"""From a composed config to the objects of a run. ``build_run`` is the one assembly of a training
run, used by ``i2e-train``, ``i2e-bench`` and the tests; the entry points and this module are the
only readers of a DictConfig (through :mod:`config`'s typed options) — everything built here takes
plain typed arguments."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from .. import config
from ..config import (
    EventAugmentOptions,
    ExtrasOptions,
    I2EOptions,
    OptimOptions,
    SchedOptions,
    SensorOptions,
    TrainerOptions,
)
from ..data import DataBundle, build_datasets
from ..errors import UserError
from ..events.i2e import I2E
from ..models import build_model
from . import distributed, engine, speed


def resolve_amp(precision: str, device: torch.device) -> engine.AmpSettings:
    """``auto``: fp16 with loss scaling on CUDA (on an H200 1,870 training images/s against 1,447 in
    bf16, docs/benchmarks.md; every CUDA GPU has fp16), fp32 on CPU."""
    config._choice("trainer.precision", precision, config.PRECISIONS)
    if precision == "auto":
        if device.type != "cuda":
            return engine.AmpSettings(device.type, None)
        precision = "fp16"
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    return engine.AmpSettings(device.type, dtype)


def resolve_eval_amp(eval_precision: str, training: engine.AmpSettings) -> engine.AmpSettings:
    """``fp32`` (the paper: no autocast in validation), ``auto`` (as training) or a given precision."""
    if eval_precision == "auto":
        return training
    return resolve_amp(eval_precision, torch.device(training.device_type))


def build_data(cfg: DictConfig, device_augment: bool = False) -> DataBundle:
    values = config.section(cfg, "dataset")
    name = values.pop("name", None)
    if not name:
        raise UserError("dataset.name is not set; choose a dataset with dataset=<name>")
    if device_augment and "augment" in values:
        # The batch is augmented on the device: the loader ships the stored images unaugmented.
        values["augment"] = "device"
    try:
        bundle = build_datasets(name, **values)
    except (ValueError, FileNotFoundError) as e:
        raise UserError(str(e)) from None
    if device_augment and bundle.events:
        raise UserError(
            f"trainer.device_augment augments images, but '{name}' already holds events; "
            "set trainer.device_augment=null"
        )
    declared = values.get("num_classes")
    if declared is not None and int(declared) != bundle.num_classes:
        raise UserError(
            f"dataset.num_classes={declared} but dataset '{name}' has {bundle.num_classes} classes; "
            f"set dataset.num_classes={bundle.num_classes}"
        )
    return bundle


def build_network(name: str, num_classes: int) -> nn.Module:
    try:
        return build_model(name, num_classes)
    except ValueError as e:
        raise UserError(str(e)) from None


def build_converter(
    options: I2EOptions,
    bundle: DataBundle,
    seed: int,
    dtype: torch.dtype,
    sensor: SensorOptions | None = None,
) -> nn.Module | None:
    """I2E on the training device (seen through the sensor model when one is configured), or None
    for datasets that already are events."""
    model = build_sensor(sensor, seed)
    if bundle.events:
        if model is not None:
            raise UserError(
                "the sensor model acts on the I2E conversion of images, but this dataset already holds "
                "events; set sensor=none (event_augment=... augments recorded events)"
            )
        return None
    if options.ratio is None:
        raise UserError("i2e.ratio is not set; give the I2E threshold ratio, e.g. i2e.ratio=0.12")
    try:
        converter: nn.Module = I2E(
            ratio=options.ratio,
            order=options.order,
            random_vectors=options.random_vectors,
            per_sample=options.per_sample,
            seed=seed,
            dtype=dtype,
            backend=options.backend,
        )
    except (ValueError, TypeError) as e:
        raise UserError(f"invalid i2e settings: {e}") from None
    if model is not None:
        from ..events.sensor import SensorI2E

        converter = SensorI2E(converter, model, sensor.eval)
    return converter


def build_sensor(options: SensorOptions | None, seed: int) -> Any:
    """The sensor model of ``sensor.*`` (:class:`i2e_train.sensor.SensorModel`), or None when every
    effect is off (the default: exactly I2E's events)."""
    if options is None:
        return None
    from ..events.sensor import SensorModel

    try:
        sensor = SensorModel(**options.model_arguments(), seed=seed)
    except (ValueError, TypeError) as e:
        raise UserError(f"invalid sensor settings: {e}") from None
    return sensor if sensor.enabled else None


def read_sensor(cfg: DictConfig) -> SensorOptions | None:
    """``sensor.*``, or None where the config has no sensor section (a checkpoint stored before it existed)."""
    return config.read(SensorOptions, cfg, "sensor") if OmegaConf.select(cfg, "sensor") is not None else None


def build_batch_transform(
    trainer: TrainerOptions, extras: ExtrasOptions, bundle: DataBundle, image_size: int | None, seed: int
) -> Any:
    """What runs on the device batch before I2E: ``trainer.device_augment`` (pad/crop/resize/flip,
    to ``trainer.device_augment_size`` or else ``dataset.image_size``), then mixup/CutMix
    (``extras.*``, during the first ``extras.mix_until`` of the epochs); None when all are off."""
    from ..data.device_transforms import build_device_augment
    from ..data.transforms import ChainBatch, MixBatch

    mix = None
    if extras.mixing:
        mix = MixBatch(
            bundle.num_classes,
            mixup_alpha=extras.mixup_alpha,
            cutmix_alpha=extras.cutmix_alpha,
            prob=extras.mix_prob,
            switch_prob=extras.switch_prob,
            until_epoch=round(extras.mix_until * trainer.epochs),
        )
    augment = None
    if trainer.device_augment is not None:
        augment = build_device_augment(
            trainer.device_augment, trainer.device_augment_size or image_size, seed
        )
    parts = [t for t in (augment, mix) if t is not None]
    if len(parts) < 2:
        return parts[0] if parts else None
    return ChainBatch(*parts)


def build_events_transform(extras: ExtrasOptions, augment: EventAugmentOptions | None, seed: int) -> Any:
    """What runs on the events in training: event-domain augmentation (``event_augment.*``), then a
    random temporal subset (``extras.t_train``); None when both are off (the default)."""
    from ..data.transforms import ChainEvents, TemporalSubset

    parts: list[Any] = []
    if augment is not None:
        from ..events.augment import EventAugment

        try:
            event_augment = EventAugment(**dataclasses.asdict(augment), seed=seed)
        except (ValueError, TypeError) as e:
            raise UserError(f"invalid event_augment settings: {e}") from None
        if event_augment.enabled:
            parts.append(event_augment)
    if extras.t_train is not None:
        parts.append(TemporalSubset(extras.t_train, contiguous=extras.t_train_contiguous))
    if len(parts) < 2:
        return parts[0] if parts else None
    return ChainEvents(*parts)


def build_optimizer(
    options: OptimOptions, model: nn.Module, loss_scaling: bool = False
) -> torch.optim.Optimizer:
    """timm's optimizer factory: ``sgd`` is Nesterov SGD without weight decay on 1-D parameters.

    With ``loss_scaling`` (fp16) an optimizer that has a fused implementation (torch's SGD, Adam,
    AdamW) is built with ``fused=True``: GradScaler then hands it the inf check as a device tensor
    and the step skips itself on the device, instead of GradScaler reading ``found_inf`` back to the
    host (a second sync per step besides the step's own). timm passes ``fused`` through to torch."""
    import inspect

    from timm.optim import create_optimizer_v2, get_optimizer_class, list_optimizers

    if options.name not in list_optimizers():
        raise UserError(f"optim.name '{options.name}' is not a timm optimizer (e.g. sgd, momentum, adamw)")
    extra: dict[str, Any] = {}
    if loss_scaling:
        if "fused" in inspect.signature(get_optimizer_class(options.name, bind_defaults=False)).parameters:
            extra["fused"] = True
        else:
            from ..monitor import log

            log.info(
                "optim.name=%s has no fused implementation: under fp16 GradScaler reads its inf check "
                "on the host every step (one extra sync)",
                options.name,
            )
    return create_optimizer_v2(
        model,
        opt=options.name,
        lr=options.lr,
        weight_decay=options.weight_decay,
        momentum=options.momentum,
        **extra,
    )


def build_scheduler(
    options: SchedOptions, optimizer: torch.optim.Optimizer, epochs: int, steps_per_epoch: int = 1
) -> Any:
    """Cosine from ``optim.lr`` to ``sched.lr_min`` over all epochs (timm), stepped once per epoch or,
    with ``sched.per_step``, every optimiser step; optional linear warm-up from ``sched.warmup_lr``
    (timm's: the warm-up replaces the first epochs of the cosine, which still ends at the last epoch)."""
    from timm.scheduler import CosineLRScheduler

    unit = steps_per_epoch if options.per_step else 1
    return CosineLRScheduler(
        optimizer,
        t_initial=epochs * unit,
        lr_min=options.lr_min,
        warmup_t=options.warmup_epochs * unit,
        warmup_lr_init=options.warmup_lr,
        t_in_epochs=not options.per_step,
    )


def build_run(cfg: DictConfig, run_dir: Path, dist: distributed.DistInfo | None = None) -> Any:
    """Every object of a training run, assembled in one place: the :class:`~i2e_train.trainer.Trainer`."""
    from ..data.loading import train_batches, val_loader
    from .callbacks import default_callbacks
    from .trainer import Trainer

    run = config.run_options(cfg)
    opts = config.read(TrainerOptions, cfg, "trainer")
    extras = config.read(ExtrasOptions, cfg, "extras")
    if dist is None:
        try:
            dist = distributed.init_distributed(opts.device)
        except ValueError as e:
            raise UserError(str(e)) from None
    speed.set_threads(opts.threads, dist.device)
    amp = resolve_amp(opts.precision, dist.device)
    torch.manual_seed(run.seed)
    data = build_data(cfg, device_augment=opts.device_augment is not None)
    model = build_network(str(OmegaConf.select(cfg, "model.name")), data.num_classes)
    converter = build_converter(
        config.read(I2EOptions, cfg, "i2e"), data, run.seed, amp.dtype or torch.float32, read_sensor(cfg)
    )
    workers = config.resolve_workers(opts.num_workers)
    batches = train_batches(
        data,
        micro_batch=opts.per_rank_batch(dist.world_size),
        accumulate=opts.accumulate_steps,
        seed=run.seed,
        rank=dist.rank,
        world_size=dist.world_size,
        workers=workers,
        device=dist.device,
        drop_last=opts.drop_last,
        limit_steps=opts.limit_train_batches,
    )
    if opts.batch_size > len(data.train):
        raise UserError(
            f"trainer.batch_size={opts.batch_size} is larger than the training set ({len(data.train)} samples): "
            "every step would repeat samples; lower trainer.batch_size"
        )
    if not batches.steps_per_epoch():
        raise UserError(
            f"the training set has {len(data.train)} samples, too few for one step of {dist.world_size} "
            f"process(es) with trainer.drop_last=true; lower trainer.batch_size or set trainer.drop_last=false"
        )
    batch_transform = build_batch_transform(
        opts, extras, data, OmegaConf.select(cfg, "dataset.image_size"), run.seed
    )
    if converter is not None:
        converter.to(dist.device)
    prepared = speed.prepare_for_training(
        model,
        opts,
        dist,
        amp.dtype,
        example=lambda: example_events(
            data, batches.micro_batch, dist.device, converter, batch_transform, amp
        ),
        autocast=amp.autocast,
    )
    optimizer = build_optimizer(
        config.read(OptimOptions, cfg, "optim"), model, loss_scaling=amp.dtype == torch.float16
    )
    scheduler = build_scheduler(
        config.read(SchedOptions, cfg, "sched"), optimizer, opts.epochs, batches.steps_per_epoch()
    )
    loss = config.read(config.LossOptions, cfg, "loss")
    parts = engine.StepParts(
        model=prepared.train_model,
        plain=model,
        optimizer=optimizer,
        criterion=nn.CrossEntropyLoss(label_smoothing=loss.label_smoothing),
        amp=amp,
        device=dist.device,
        converter=converter,
        scaler=torch.amp.GradScaler(dist.device.type) if amp.dtype == torch.float16 else None,
        batch_transform=batch_transform,
        events_transform=build_events_transform(
            extras, config.read(EventAugmentOptions, cfg, "event_augment"), run.seed
        ),
        clip_grad_norm=opts.clip_grad_norm,
        ema=engine.ModelEma(model, opts.ema_decay, opts.ema_warmup) if opts.ema_decay is not None else None,
    )
    return Trainer(
        parts=parts,
        scheduler=scheduler,
        batches=batches,
        val_loader=val_loader(
            data,
            batch_size=opts.val_batch(dist.world_size),
            rank=dist.rank,
            world_size=dist.world_size,
            workers=workers,
            device=dist.device,
        ),
        data=data,
        options=opts,
        dist=dist,
        run_dir=run_dir,
        seed=run.seed,
        eval_amp=resolve_eval_amp(opts.eval_precision, amp),
        config=OmegaConf.to_container(cfg, resolve=True),
        callbacks=default_callbacks(opts.preview_samples, opts.firing_rate_batches, data),
        tracker=build_tracker(cfg) if dist.is_main else None,
    )


def build_tracker(cfg: DictConfig) -> Any:
    """The experiment tracker of ``logger=...`` (None for TensorBoard alone, or without the section)."""
    from ..tracking import tracker_from_config

    return tracker_from_config(OmegaConf.select(cfg, "logger"))


def example_events(
    data: DataBundle,
    batch: int,
    device: torch.device,
    converter: nn.Module | None,
    batch_transform: Any,
    amp: engine.AmpSettings,
) -> torch.Tensor:
    """A training batch's worth of events built from the first training sample (to probe a model)."""
    from ..data.sampler import SeededDataset

    sample, _ = SeededDataset(data.train, data.train_transform)[(0, 0)]
    images = torch.as_tensor(sample)[None].expand(batch, *sample.shape).to(device)
    if batch_transform is not None:
        images, _ = batch_transform(images, torch.zeros(batch, dtype=torch.long, device=device))
    with torch.no_grad(), amp.autocast():
        return engine.to_events(images, converter, amp.dtype or torch.float32)
