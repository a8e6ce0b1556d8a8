"""Turn config sections into objects. The only place that reads a DictConfig besides the entry points;
everything built here takes plain typed arguments."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from . import speed
from .data import DataBundle, build_datasets
from .distributed import convert_sync_batchnorm
from .engine import AmpSettings
from .errors import UserError
from .i2e import I2E
from .models import build_model

T = typing.TypeVar("T")


def section(cfg: DictConfig, key: str) -> dict[str, Any]:
    node = OmegaConf.select(cfg, key)
    if node is None:
        return {}
    return typing.cast(dict[str, Any], OmegaConf.to_container(node, resolve=True))


def options(cls: type[T], values: dict[str, Any], prefix: str) -> T:
    """A dataclass from a config section, with one-line errors for unknown keys and wrong types."""
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in values.items():
        name = f"{prefix}.{key}" if prefix else key  # an empty prefix: top-level keys
        if key not in fields:
            raise UserError(f"unknown config key '{name}'; valid keys: {', '.join(fields)}")
        kwargs[key] = _coerce(value, hints[key], name)
    return cls(**kwargs)


def _coerce(value: Any, hint: Any, name: str) -> Any:
    allowed = (
        typing.get_args(hint)
        if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union
        else (hint,)
    )
    if value is None:
        if type(None) in allowed:
            return None
        raise UserError(f"{name} must be set (got null)")
    for t in allowed:
        if t is bool and isinstance(value, bool):
            return value
        if t is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if t is float and isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if t is str and isinstance(value, str):
            return value
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string", type(None): "null"}
    kinds = " or ".join(names.get(t, getattr(t, "__name__", str(t))) for t in allowed)
    raise UserError(f"{name} must be {kinds}, got {value!r}")


def resolve_amp(precision: str, device: torch.device) -> AmpSettings:
    """``auto``: bf16 on GPUs that have it (fp16 otherwise), fp32 on CPU."""
    choices = ("auto", "fp32", "bf16", "fp16")
    if precision not in choices:
        raise UserError(f"trainer.precision must be one of {', '.join(choices)}, got '{precision}'")
    if precision == "auto":
        if device.type != "cuda":
            return AmpSettings(device.type, None)
        precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    return AmpSettings(device.type, dtype)


def build_data(cfg: DictConfig) -> DataBundle:
    values = section(cfg, "dataset")
    name = values.pop("name", None)
    if not name:
        raise UserError("dataset.name is not set; choose a dataset with dataset=<name>")
    device_augment = OmegaConf.select(cfg, "trainer.device_augment") is not None
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


def build_network(
    cfg: DictConfig, num_classes: int, device: torch.device, amp: AmpSettings, sync_batchnorm: bool = False
) -> nn.Module:
    name = OmegaConf.select(cfg, "model.name")
    try:
        model = build_model(str(name), num_classes)
    except ValueError as e:
        raise UserError(str(e)) from None
    if sync_batchnorm:
        model = convert_sync_batchnorm(model)
    model.to(device)
    # trainer.neuron_precision / trainer.channels_last are validated with TrainerOptions.
    speed.prepare_model(
        model,
        device,
        amp.dtype,
        neuron_precision=str(OmegaConf.select(cfg, "trainer.neuron_precision", default="auto")),
        channels_last=bool(OmegaConf.select(cfg, "trainer.channels_last", default=False)),
    )
    return model


def build_converter(cfg: DictConfig, bundle: DataBundle, seed: int, amp: AmpSettings) -> nn.Module | None:
    """I2E on the training device, or None for datasets that already are events."""
    if bundle.events:
        return None
    values = section(cfg, "i2e")
    order = values.get("order", "gamma_alpha_beta")
    try:
        return I2E(
            ratio=float(values["ratio"]),
            order=order,
            random_vectors=bool(values.get("random_vectors", True)),
            per_sample=bool(values.get("per_sample", False)),
            seed=seed,
            dtype=amp.dtype or torch.float32,
            backend=str(values.get("backend", "auto")),
        )
    except (ValueError, TypeError, KeyError) as e:
        raise UserError(f"invalid i2e settings: {e}") from None


def build_batch_transform(cfg: DictConfig, bundle: DataBundle) -> Any:
    """What runs on the device batch before I2E: ``trainer.device_augment`` (pad/crop/resize/flip,
    to ``trainer.device_augment_size`` or else ``dataset.image_size``), then mixup/CutMix
    (``extras.*``); None when all are off (the default)."""
    from .data.device_transforms import build_device_augment
    from .data.transforms import ChainBatch, MixBatch

    values = section(cfg, "extras")
    mixup, cutmix = float(values.get("mixup_alpha") or 0.0), float(values.get("cutmix_alpha") or 0.0)
    mix = None
    if mixup > 0 or cutmix > 0:
        try:
            mix = MixBatch(
                bundle.num_classes,
                mixup_alpha=mixup,
                cutmix_alpha=cutmix,
                prob=float(values.get("mix_prob", 1.0)),
                switch_prob=float(values.get("switch_prob", 0.5)),
            )
        except ValueError as e:
            raise UserError(str(e)) from None
    preset = OmegaConf.select(cfg, "trainer.device_augment")
    size = OmegaConf.select(cfg, "trainer.device_augment_size") or OmegaConf.select(cfg, "dataset.image_size")
    augment = build_device_augment(preset, size, int(cfg.get("seed", 0))) if preset is not None else None
    parts = [t for t in (augment, mix) if t is not None]
    if len(parts) < 2:
        return parts[0] if parts else None
    return ChainBatch(*parts)


def build_events_transform(cfg: DictConfig) -> Any:
    """Random temporal subsets in training (``extras.t_train``), or None (the default: all timesteps)."""
    from .data.transforms import TemporalSubset

    values = section(cfg, "extras")
    t_train = values.get("t_train")
    if t_train is None:
        return None
    if not isinstance(t_train, int) or isinstance(t_train, bool) or t_train < 1:
        raise UserError(f"extras.t_train must be null or a number of timesteps >= 1, got {t_train!r}")
    return TemporalSubset(t_train, contiguous=bool(values.get("t_train_contiguous", False)))


def build_callbacks(bundle: DataBundle) -> list[Any]:
    """Callbacks the data needs: the end-of-epoch report of skipped unreadable samples."""
    from .data.corrupt import CorruptGuard, SkippedSamplesReport

    guards = [d for d in (bundle.train, bundle.val) if isinstance(d, CorruptGuard) and d.skip]
    return [SkippedSamplesReport(guards)] if guards else []


def build_optimizer(cfg: DictConfig, model: nn.Module) -> torch.optim.Optimizer:
    """timm's optimizer factory: ``sgd`` is Nesterov SGD without weight decay on 1-D parameters."""
    from timm.optim import create_optimizer_v2, list_optimizers

    values = section(cfg, "optim")
    name = str(values.get("name", "sgd"))
    if name not in list_optimizers():
        raise UserError(f"optim.name '{name}' is not a timm optimizer (e.g. sgd, momentum, adamw)")
    return create_optimizer_v2(
        model,
        opt=name,
        lr=float(values["lr"]),
        weight_decay=float(values.get("weight_decay", 0.0)),
        momentum=float(values.get("momentum", 0.9)),
    )


def build_scheduler(cfg: DictConfig, optimizer: torch.optim.Optimizer, epochs: int) -> Any:
    """Cosine from ``optim.lr`` to ``sched.lr_min`` over all epochs, stepped once per epoch (timm)."""
    from timm.scheduler import CosineLRScheduler

    values = section(cfg, "sched")
    if values.get("name", "cosine") != "cosine":
        raise UserError(f"sched.name must be cosine (the paper's schedule), got '{values.get('name')}'")
    lr_min = float(values.get("lr_min", 0.0))
    return CosineLRScheduler(
        optimizer,
        t_initial=epochs,
        lr_min=lr_min,
        warmup_t=int(values.get("warmup_epochs", 0)),
        warmup_lr_init=lr_min,
        t_in_epochs=True,
    )
