"""Typed options: every config section as a dataclass, every key checked here and only here.

The YAML files under ``configs/`` are the single source of values: the dataclasses have no defaults
of their own, so a key missing from the composed config is an error, never a silent fallback.
Nothing here imports torch: a wrong value is refused before any heavy import (within a second).

``read(cls, cfg, "trainer")`` turns a config section into an instance, with one-line errors for
unknown keys, wrong types and out-of-range values; modules then take the plain typed values.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from dataclasses import dataclass
from typing import Any

from .errors import UserError

T = typing.TypeVar("T")

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
EVAL_PRECISIONS = ("fp32", "auto", "bf16", "fp16")
NEURON_PRECISION = ("auto", "spikingjelly", "cast")
MEMOPT_LEVELS = (0, 1)
DEVICE_AUGMENTS = ("baseline1", "baseline2")
SELF_CHECKS = ("auto", "on", "off")
I2E_BACKENDS = ("auto", "torch", "triton")


# ----------------------------------------------------------------------------- reading
def section(cfg: Any, key: str) -> dict[str, Any]:
    """A config section as a plain dict with interpolations resolved (``{}`` when absent)."""
    from omegaconf import OmegaConf

    node = OmegaConf.select(cfg, key) if key else cfg
    if node is None:
        return {}
    return typing.cast(dict[str, Any], OmegaConf.to_container(node, resolve=True))


def read(cls: type[T], cfg: Any, key: str) -> T:
    """``cls`` from the config section ``key`` (see :func:`options`)."""
    return options(cls, section(cfg, key), key)


def options(cls: type[T], values: dict[str, Any], prefix: str) -> T:
    """A dataclass from a config section, with one-line errors for unknown, missing and mistyped keys."""
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in values.items():
        name = f"{prefix}.{key}" if prefix else key  # an empty prefix: top-level keys
        if key not in fields:
            raise UserError(f"unknown config key '{name}'; valid keys: {', '.join(fields)}")
        kwargs[key] = _coerce(value, hints[key], name)
    missing = [k for k, f in fields.items() if k not in kwargs and _required(f)]
    if missing:
        name = f"{prefix}.{missing[0]}" if prefix else missing[0]
        raise UserError(f"missing config key '{name}' (every key of a config section must be set)")
    return cls(**kwargs)


def _required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


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
        if typing.get_origin(t) is list and isinstance(value, list):
            return value
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string", type(None): "null"}
    kinds = " or ".join(names.get(t, "a list" if typing.get_origin(t) is list else str(t)) for t in allowed)
    raise UserError(f"{name} must be {kinds}, got {value!r}")


def _choice(name: str, value: Any, choices: tuple[Any, ...]) -> None:
    if value not in choices:
        raise UserError(f"{name} must be one of {', '.join(map(str, choices))}, got {value!r}")


def _at_least(name: str, value: float | None, low: float, *, nullable: bool = False) -> None:
    if value is None and nullable:
        return
    if value is None or not math.isfinite(value) or value < low:
        null = "null or " if nullable else ""
        raise UserError(f"{name} must be {null}>= {low:g}, got {value!r}")


def _positive(name: str, value: float | None, *, nullable: bool = False) -> None:
    if value is None and nullable:
        return
    if value is None or not math.isfinite(value) or value <= 0:
        null = "null or " if nullable else ""
        raise UserError(f"{name} must be {null}a number > 0, got {value!r}")


def usable_cpus() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. a Slurm or container share)."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return max(os.cpu_count() or 1, 1)


def resolve_workers(value: int | str) -> int:
    """``auto``: DataLoader workers that fit the machine (at most 4, one core left for the main
    process), so small machines get no oversubscription warning from PyTorch."""
    if value == "auto":
        return min(4, usable_cpus() - 1)
    return int(value)


# ----------------------------------------------------------------------------- sections
@dataclass
class TrainerOptions:
    """``trainer.*`` (configs/trainer/default.yaml documents every key)."""

    epochs: int
    batch_size: int
    val_batch_size: int | None
    accumulate_steps: int
    drop_last: bool
    device: str
    precision: str
    eval_precision: str
    num_workers: int | str
    threads: int | str | None
    limit_train_batches: int | None
    limit_val_batches: int | None
    progress: bool
    tensorboard: bool
    checkpoint_every_steps: int
    keep_checkpoints: int
    skip_nonfinite: bool
    clip_grad_norm: float | None
    ema_decay: float | None
    ema_warmup: bool
    sync_batchnorm: bool
    preview_samples: int
    firing_rate_batches: int
    self_check: str
    neuron_precision: str
    channels_last: bool | str
    cudnn_benchmark: bool
    compile: bool
    memopt: int
    device_augment: str | None
    device_augment_size: int | None

    def __post_init__(self) -> None:
        p = "trainer."
        for key in ("epochs", "batch_size", "accumulate_steps"):
            _at_least(p + key, getattr(self, key), 1)
        for key in ("val_batch_size", "limit_train_batches", "limit_val_batches", "device_augment_size"):
            _at_least(p + key, getattr(self, key), 1, nullable=True)
        for key in ("checkpoint_every_steps", "keep_checkpoints", "preview_samples", "firing_rate_batches"):
            _at_least(p + key, getattr(self, key), 0)
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise UserError(f"trainer.device must be auto, cpu, cuda or cuda:N, got '{self.device}'")
        _choice(p + "precision", self.precision, PRECISIONS)
        _choice(p + "eval_precision", self.eval_precision, EVAL_PRECISIONS)
        _choice(p + "neuron_precision", self.neuron_precision, NEURON_PRECISION)
        _choice(p + "self_check", self.self_check, SELF_CHECKS)
        if self.channels_last not in (True, False, "auto"):
            raise UserError(f"trainer.channels_last must be auto, true or false, got {self.channels_last!r}")
        if self.memopt not in MEMOPT_LEVELS:
            raise UserError(f"trainer.memopt must be 0 (off) or 1 (checkpointing), got {self.memopt}")
        if self.device_augment is not None and self.device_augment not in DEVICE_AUGMENTS:
            raise UserError(
                f"trainer.device_augment must be null or one of {', '.join(DEVICE_AUGMENTS)}, "
                f"got {self.device_augment!r}"
            )
        if self.num_workers != "auto":
            if not isinstance(self.num_workers, int):
                raise UserError(
                    f"trainer.num_workers must be auto or an integer >= 0, got {self.num_workers!r}"
                )
            _at_least(p + "num_workers", self.num_workers, 0)
        if self.threads not in (None, "auto"):
            if not isinstance(self.threads, int):
                raise UserError(
                    f"trainer.threads must be null, auto or an integer >= 1, got {self.threads!r}"
                )
            _at_least(p + "threads", self.threads, 1)
        _positive(p + "clip_grad_norm", self.clip_grad_norm, nullable=True)
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise UserError(f"trainer.ema_decay must be null (off) or between 0 and 1, got {self.ema_decay}")
        if self.batch_size % self.accumulate_steps:
            raise UserError(
                f"trainer.batch_size={self.batch_size} is not divisible by trainer.accumulate_steps="
                f"{self.accumulate_steps}; the micro-batch is batch_size / accumulate_steps"
            )

    def per_rank_batch(self, world_size: int) -> int:
        """The micro-batch each process loads: the global batch split over processes and
        accumulation steps (the one place this division is checked)."""
        share = world_size * self.accumulate_steps
        if self.batch_size % share:
            raise UserError(
                f"trainer.batch_size={self.batch_size} (global) is not divisible by the {world_size} "
                f"processes x {self.accumulate_steps} accumulation steps; choose a multiple of {share}"
            )
        return self.batch_size // share

    def val_batch(self, world_size: int) -> int:
        return self.val_batch_size or max(self.batch_size // world_size, 1)


@dataclass
class I2EOptions:
    """``i2e.*``: the conversion (configs/i2e/default.yaml; the ratio is set by the dataset's file)."""

    ratio: float | None
    order: str | list[int]
    random_vectors: bool
    per_sample: bool
    backend: str

    def __post_init__(self) -> None:
        from .pairs import resolve_order

        if self.ratio is not None:
            _at_least("i2e.ratio", self.ratio, 0.0)
        _choice("i2e.backend", self.backend, I2E_BACKENDS)
        try:
            resolve_order(self.order)
        except ValueError as e:
            raise UserError(f"i2e.order: {e}") from None


@dataclass
class OptimOptions:
    """``optim.*``: timm's optimizer factory (configs/optim/sgd.yaml)."""

    name: str
    lr: float
    momentum: float
    weight_decay: float

    def __post_init__(self) -> None:
        _positive("optim.lr", self.lr)
        _at_least("optim.weight_decay", self.weight_decay, 0.0)
        _at_least("optim.momentum", self.momentum, 0.0)


@dataclass
class SchedOptions:
    """``sched.*``: timm's cosine schedule (configs/sched/cosine.yaml)."""

    name: str
    lr_min: float
    warmup_epochs: int
    warmup_lr: float
    per_step: bool

    def __post_init__(self) -> None:
        _choice("sched.name", self.name, ("cosine",))
        _at_least("sched.lr_min", self.lr_min, 0.0)
        _at_least("sched.warmup_epochs", self.warmup_epochs, 0)
        _at_least("sched.warmup_lr", self.warmup_lr, 0.0)


@dataclass
class LossOptions:
    """``loss.*``."""

    label_smoothing: float

    def __post_init__(self) -> None:
        if not 0.0 <= self.label_smoothing < 1.0:
            raise UserError(f"loss.label_smoothing must be in [0, 1), got {self.label_smoothing}")


@dataclass
class ExtrasOptions:
    """``extras.*``: the paper's optional training extras (configs/train.yaml)."""

    mixup_alpha: float
    cutmix_alpha: float
    mix_prob: float
    switch_prob: float
    mix_until: float
    t_train: int | None
    t_train_contiguous: bool

    def __post_init__(self) -> None:
        _at_least("extras.mixup_alpha", self.mixup_alpha, 0.0)
        _at_least("extras.cutmix_alpha", self.cutmix_alpha, 0.0)
        for key in ("mix_prob", "switch_prob", "mix_until"):
            value = getattr(self, key)
            if not 0.0 <= value <= 1.0:
                raise UserError(f"extras.{key} must be in [0, 1], got {value}")
        if self.t_train is not None and not 1 <= self.t_train <= 8:
            raise UserError(
                f"extras.t_train must be null or a number of timesteps in 1..8, got {self.t_train}"
            )

    @property
    def mixing(self) -> bool:
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0


@dataclass
class SensorOptions:
    """``sensor.*``: the DVS sensor model applied to I2E's events (configs/sensor/; values are
    checked by :class:`i2e_train.sensor.SensorModel`)."""

    threshold_sigma: float
    threshold_sigma_off: float | None
    fixed_pattern: bool
    pattern_seed: int
    shot_noise_rate: float
    shot_noise_on_fraction: float
    refractory_steps: int
    hot_pixel_fraction: float
    drop_rate: float
    eval: bool

    def model_arguments(self) -> dict[str, Any]:
        """The keyword arguments of ``SensorModel`` (all keys but ``eval``)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "eval"}


@dataclass
class EventAugmentOptions:
    """``event_augment.*``: event-domain augmentation in training (configs/event_augment/; values
    are checked by :class:`i2e_train.event_augment.EventAugment`)."""

    flip_prob: float
    translate: int
    translate_mode: str
    polarity_swap_prob: float
    time_reverse_prob: float
    drop_rate: float


@dataclass
class RunOptions:
    """Top-level keys of configs/train.yaml."""

    run_dir: str
    seed: int
    resume: str | None
    init_from: str | None
    requires_init_from: str | None

    def __post_init__(self) -> None:
        _at_least("seed", self.seed, 0)


# Published split name -> folder name of the older npz layout.
SPLIT_DIRS = {"train": "train", "validation": "val"}


@dataclass
class ConvertOptions:
    """Top-level keys of configs/convert.yaml (``i2e-convert``; the file documents them)."""

    output: str
    format: str
    split: str
    shard_size: int
    batch_size: int
    device: str
    num_workers: int | str
    max_shards: int | None
    progress: bool

    def __post_init__(self) -> None:
        _choice("format", self.format, ("parquet", "npz"))
        _choice("split", self.split, ("all", *SPLIT_DIRS))
        for key in ("shard_size", "batch_size"):
            _at_least(key, getattr(self, key), 1)
        _at_least("max_shards", self.max_shards, 1, nullable=True)
        if self.num_workers != "auto" and (not isinstance(self.num_workers, int) or self.num_workers < 0):
            raise UserError(f"num_workers must be auto or an integer >= 0, got {self.num_workers!r}")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise UserError(f"device must be auto, cpu, cuda or cuda:N, got '{self.device}'")

    @property
    def splits(self) -> list[str]:
        return list(SPLIT_DIRS) if self.split == "all" else [self.split]


TRAIN_SECTIONS: dict[str, type] = {
    "trainer": TrainerOptions,
    "i2e": I2EOptions,
    "optim": OptimOptions,
    "sched": SchedOptions,
    "loss": LossOptions,
    "extras": ExtrasOptions,
    "sensor": SensorOptions,
    "event_augment": EventAugmentOptions,
}


def run_options(cfg: Any) -> RunOptions:
    values = {f.name: cfg.get(f.name) for f in dataclasses.fields(RunOptions)}
    return options(RunOptions, values, "")


def validate_train(cfg: Any) -> None:
    """Check every typed section of a training config (the command line is refused before any
    heavy import). Dataset keys are checked by the dataset builders."""
    run_options(cfg)
    for key, cls in TRAIN_SECTIONS.items():
        read(cls, cfg, key)
