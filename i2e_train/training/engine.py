"""The training step and evaluation. No checkpointing, logging or scheduling here.

A step reads top to bottom: reseed -> move -> augment on the device -> convert -> forward -> loss
-> backward -> (clip) -> optimiser step -> EMA, with the neuron state reset after every micro-batch.
Images arrive as uint8 ``[B, 3, H, W]`` (converted to events on the device, after augmentation) or,
for datasets that already are events, as ``[B, T, 2, H, W]``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from spikingjelly.activation_based import functional
from torch import Tensor, nn

from ..seeding import mix_seed
from . import distributed

Batch = tuple[Tensor, Tensor]
BatchTransform = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]
EventsTransform = Callable[[Tensor], Tensor]


class NonFiniteLossError(RuntimeError):
    """The loss became NaN/Inf; carries where it happened."""

    def __init__(self, epoch: int, step: int, value: float) -> None:
        where = f"{value}" if not math.isfinite(value) else "on another process"
        super().__init__(f"non-finite loss ({where}) at epoch {epoch}, step {step}")
        self.epoch, self.step, self.value = epoch, step, value


@dataclass
class AmpSettings:
    """Autocast for one device type; ``dtype=None`` means full fp32."""

    device_type: str = "cpu"
    dtype: torch.dtype | None = None

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)


def to_events(inputs: Tensor, converter: Callable[[Tensor], Tensor] | None, dtype: torch.dtype) -> Tensor:
    """Time-major events ``[T, B, C, H, W]`` from a batch of images or of stored events.

    Stored binary events become ``dtype``; stored event *counts* (CIFAR10-DVS frames, float) stay
    float32, which holds them exactly (bf16 would round counts above 256 on the way in).
    """
    if converter is not None:
        return converter(inputs)
    target = torch.float32 if inputs.is_floating_point() else dtype
    # Stored event samples are [B, T, C, H, W]; SpikingJelly's multi-step layout is time-major.
    return inputs.transpose(0, 1).to(target).contiguous()


def move(batch: Batch, device: torch.device) -> Batch:
    inputs, labels = batch
    non_blocking = device.type == "cuda"
    return inputs.to(device, non_blocking=non_blocking), labels.to(device, non_blocking=non_blocking)


class ModelEma:
    """An exponential moving average of the weights and buffers (timm's ``ModelEmaV3``), with the
    number of updates it has seen (its warm-up depends on it), saved and restored exactly."""

    def __init__(self, model: nn.Module, decay: float, warmup: bool) -> None:
        from timm.utils import ModelEmaV3

        self.ema = ModelEmaV3(model, decay=decay, use_warmup=warmup)
        self.updates = 0

    @property
    def module(self) -> nn.Module:
        return self.ema.module

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        self.ema.update(model, step=self.updates)

    def state_dict(self) -> dict[str, Any]:
        return {"state_dict": self.ema.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.ema.module.load_state_dict(state["state_dict"])
        self.updates = int(state["updates"])


@dataclass
class StepParts:
    """Everything one training step touches, built once per run (``builders.build_run``)."""

    model: nn.Module  # runs the forward: the DDP / compiled wrapper of ``plain``
    plain: nn.Module  # the model itself (its weights are checkpointed and averaged by the EMA)
    optimizer: torch.optim.Optimizer
    criterion: nn.Module
    amp: AmpSettings
    device: torch.device
    converter: nn.Module | None = None  # I2E; None for datasets that already are events
    scaler: torch.amp.GradScaler | None = None  # fp16 loss scaling
    batch_transform: BatchTransform | None = None  # on the device, before I2E (augmentation, mixing)
    events_transform: EventsTransform | None = None  # on the events (e.g. a random temporal subset)
    clip_grad_norm: float | None = None
    ema: ModelEma | None = None

    def reseed(self, seed: int) -> None:
        """Every random part draws from its own generator, reseeded per step: a resumed run replays
        the same I2E pairs, augmentation and subsets without storing generator states."""
        for salt, part in enumerate((self.converter, self.batch_transform, self.events_transform)):
            if hasattr(part, "manual_seed"):
                part.manual_seed(mix_seed(seed, salt))

    def set_epoch(self, epoch: int) -> None:
        """Parts whose behaviour follows the epoch (the mixup/CutMix schedule)."""
        for part in (self.batch_transform, self.events_transform):
            if hasattr(part, "set_epoch"):
                part.set_epoch(epoch)


@dataclass
class StepOutput:
    """This rank's sums of one step and the flags all ranks agreed on (read in the step's one sync)."""

    loss_sum: float
    correct1: float
    samples: float
    nonfinite: bool  # on any rank: the step was not taken
    stop: bool  # a stop signal reached any rank
    grad_norm: float | None = None  # before clipping, when clipping is on


def train_step(
    parts: StepParts, micro_batches: Sequence[Batch], *, seed: int, stop: bool = False
) -> StepOutput:
    """One optimiser step over one or more micro-batches (gradient accumulation).

    The only host sync is one read of the step's flags and sums; under DDP the non-finite check
    and the stop signal share one collective. A NaN/Inf loss on any rank skips the update on all
    ranks (never poisoning the weights); the caller decides whether to stop.
    """
    parts.reseed(seed)
    sums = torch.zeros(2, dtype=torch.float64, device=parts.device)  # loss sum, top-1 hits
    samples = 0
    for i, batch in enumerate(micro_batches):
        images, labels = move(batch, parts.device)
        inputs, targets = (
            (images, labels) if parts.batch_transform is None else parts.batch_transform(images, labels)
        )
        with parts.amp.autocast():
            events = to_events(inputs, parts.converter, parts.amp.dtype or torch.float32)
            if parts.events_transform is not None:
                events = parts.events_transform(events)
            logits = parts.model(events)
        loss = parts.criterion(logits.float(), targets)
        # DDP all-reduces the gradients once, with the last micro-batch.
        last = i == len(micro_batches) - 1
        with contextlib.nullcontext() if last else distributed.no_sync(parts.model):
            scaled = loss / len(micro_batches)
            (parts.scaler.scale(scaled) if parts.scaler is not None else scaled).backward()
        functional.reset_net(parts.model)
        samples += labels.shape[0]
        hits = (logits.detach().argmax(1) == labels).sum()
        sums += torch.stack([loss.detach().double() * labels.shape[0], hits.double()])
    grad_norm = _unscale_and_clip(parts)
    nonfinite, stop, (loss_sum, correct, norm) = distributed.step_flags(
        ~torch.isfinite(sums[0]), stop, sums, grad_norm
    )
    if not nonfinite:
        if parts.scaler is not None:
            parts.scaler.step(parts.optimizer)
            parts.scaler.update()
        else:
            parts.optimizer.step()
        if parts.ema is not None:
            parts.ema.update(parts.plain)
    elif parts.scaler is not None and grad_norm is not None:
        parts.scaler.update()  # unscale_ recorded this step's inf checks; the scaler expects an update
    parts.optimizer.zero_grad(set_to_none=True)
    return StepOutput(loss_sum, correct, samples, nonfinite, stop, None if grad_norm is None else norm)


def _unscale_and_clip(parts: StepParts) -> Tensor | None:
    """Gradient clipping (its norm before clipping), on true gradients: loss scaling undone first."""
    if parts.clip_grad_norm is None:
        return None
    if parts.scaler is not None:
        parts.scaler.unscale_(parts.optimizer)
    params = [p for group in parts.optimizer.param_groups for p in group["params"] if p.grad is not None]
    return torch.nn.utils.clip_grad_norm_(params, parts.clip_grad_norm)


@dataclass
class EpochStats:
    """Sums of an epoch (this rank's until :meth:`reduce`)."""

    loss_sum: float = 0.0
    correct1: float = 0.0
    samples: float = 0.0
    steps: int = 0
    skipped_steps: int = 0
    grad_norm_sum: float = 0.0

    @property
    def loss(self) -> float:
        return self.loss_sum / max(self.samples, 1)

    @property
    def top1(self) -> float:
        return 100.0 * self.correct1 / max(self.samples, 1)

    def add(self, out: StepOutput) -> None:
        self.steps += 1
        if out.nonfinite:
            self.skipped_steps += 1
            return
        self.loss_sum += out.loss_sum
        self.correct1 += out.correct1
        self.samples += out.samples
        self.grad_norm_sum += out.grad_norm or 0.0

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> EpochStats:
        """The sums a checkpoint stored (keys of other versions are ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})

    def reduce(self, device: torch.device) -> EpochStats:
        """Totals over all ranks (a collective)."""
        t = torch.tensor([self.loss_sum, self.correct1, self.samples], dtype=torch.float64, device=device)
        distributed.all_reduce_sum(t)
        loss_sum, c1, n = t.tolist()
        # Steps and skip decisions are the same on every rank (the step's flags are agreed).
        return EpochStats(loss_sum, c1, n, self.steps, self.skipped_steps, self.grad_norm_sum)


@dataclass
class EvalResult:
    loss: float
    top1: float
    top5: float
    samples: int
    per_class_correct: list[int] = field(default_factory=list)
    per_class_total: list[int] = field(default_factory=list)
    confusion: list[list[int]] = field(default_factory=list)

    @property
    def per_class_accuracy(self) -> list[float | None]:
        return [
            100.0 * c / t if t else None
            for c, t in zip(self.per_class_correct, self.per_class_total, strict=True)
        ]


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: Iterable[Batch],
    *,
    num_classes: int,
    device: torch.device,
    converter: nn.Module | None,
    amp: AmpSettings,
    limit_batches: int | None = None,
) -> EvalResult:
    """Top-1/top-5, mean cross-entropy and the confusion matrix, summed over all ranks.

    Each rank must see a disjoint share of the validation set (see ``data.sampler``), so every
    sample is counted exactly once. ``amp`` is the evaluation precision (fp32 by default).
    """
    model.eval()
    if isinstance(converter, nn.Module):
        # Evaluation uses the fixed displacement pairs; the converter is not part of the model.
        converter.eval()
    criterion = nn.CrossEntropyLoss(reduction="sum")
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.float64, device=device)
    totals = torch.zeros(4, dtype=torch.float64, device=device)  # loss, top1, top5, samples
    samples = 0
    k = min(5, num_classes)
    for index, batch in enumerate(_limit(batches, limit_batches)):
        if hasattr(converter, "manual_seed"):
            # Fixed pairs make plain I2E deterministic; a sensor model evaluated too (sensor.eval)
            # draws noise: seeded per batch, every evaluation of a checkpoint sees the same events.
            converter.manual_seed(mix_seed(0xE7A1, index))
        inputs, labels = move(batch, device)
        events = to_events(inputs, converter, amp.dtype or torch.float32)
        if amp.dtype is None and events.dtype != torch.float32:
            # A converter built for half-precision training emits half events (0/1: exact in
            # either); evaluation in fp32 runs without autocast, so the model needs fp32 input.
            events = events.float()
        with amp.autocast():
            logits = model(events).float()
        functional.reset_net(model)
        topk = logits.topk(k, dim=1).indices
        hit = topk == labels[:, None]
        totals[:3] += torch.stack(
            [criterion(logits, labels).double(), hit[:, 0].sum().double(), hit.any(1).sum().double()]
        )
        samples += labels.shape[0]
        confusion.index_put_(
            (labels, topk[:, 0]), torch.ones_like(labels, dtype=torch.float64), accumulate=True
        )
    totals[3] = samples
    distributed.all_reduce_sum(totals)
    distributed.all_reduce_sum(confusion)
    loss_sum, c1, c5, n = totals.tolist()
    n = int(n)
    conf = confusion.long().cpu()
    return EvalResult(
        loss=loss_sum / max(n, 1),
        top1=100.0 * c1 / max(n, 1),
        top5=100.0 * c5 / max(n, 1),
        samples=n,
        per_class_correct=conf.diagonal().tolist(),
        per_class_total=conf.sum(1).tolist(),
        confusion=conf.tolist(),
    )


def _limit(batches: Iterable, limit: int | None) -> Iterator:
    for i, batch in enumerate(batches):
        if limit is not None and i >= limit:
            return
        yield batch
