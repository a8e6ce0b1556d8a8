"""The training step, the epoch loops and evaluation. No checkpointing or logging here.

A step is: move -> augment -> convert -> forward -> loss -> backward -> step -> reset.
Images arrive as uint8 ``[B, 3, H, W]`` (converted to events on the device, after the CPU
augmentation) or, for datasets that already are events, as ``[B, T, 2, H, W]``.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import torch
from spikingjelly.activation_based import functional
from torch import Tensor, nn

from . import distributed

Converter = Callable[[Tensor], Tensor]


class NonFiniteLossError(RuntimeError):
    """The loss became NaN/Inf; carries where it happened."""

    def __init__(self, epoch: int, step: int, value: float) -> None:
        where = f"{value}" if not math.isfinite(value) else "on another process"
        super().__init__(f"non-finite loss ({where}) at epoch {epoch}, step {step}")
        self.epoch, self.step, self.value = epoch, step, value


@dataclass
class StepResult:
    loss: float
    correct1: int
    samples: int
    finite: bool = True


@dataclass
class AmpSettings:
    """Autocast for one device type; ``dtype=None`` means full fp32."""

    device_type: str = "cpu"
    dtype: torch.dtype | None = None

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)


def to_events(inputs: Tensor, converter: Converter | None, dtype: torch.dtype) -> Tensor:
    """Time-major float events ``[T, B, C, H, W]`` from a batch of images or of stored events."""
    if converter is not None:
        return converter(inputs)
    # Stored event samples are [B, T, C, H, W]; SpikingJelly's multi-step layout is time-major.
    return inputs.transpose(0, 1).to(dtype).contiguous()


def move(batch: tuple[Tensor, Tensor], device: torch.device) -> tuple[Tensor, Tensor]:
    inputs, labels = batch
    non_blocking = device.type == "cuda"
    return inputs.to(device, non_blocking=non_blocking), labels.to(device, non_blocking=non_blocking)


BatchTransform = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]
EventsTransform = Callable[[Tensor], Tensor]


def train_step(
    model: nn.Module,
    inputs: Tensor,
    labels: Tensor,
    *,
    converter: Converter | None,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    amp: AmpSettings,
    scaler: torch.amp.GradScaler | None = None,
    batch_transform: BatchTransform | None = None,
    events_transform: EventsTransform | None = None,
) -> StepResult:
    """One optimisation step on a batch already on the device.

    ``batch_transform(inputs, labels) -> (inputs, targets)`` runs on the device before conversion
    (batched augmentation; mixing augmentations return soft targets); ``events_transform`` runs on
    the events (e.g. a random temporal subset). Top-1 is counted against the hard ``labels``.
    """
    try:
        targets = labels
        if batch_transform is not None:
            inputs, targets = batch_transform(inputs, labels)
        with amp.autocast():
            events = to_events(inputs, converter, amp.dtype or torch.float32)
            if events_transform is not None:
                events = events_transform(events)
            logits = model(events)
        loss = criterion(logits.float(), targets)
        loss_value = loss.item()
        # Every rank must take the same branch, or DDP's gradient all-reduce would hang.
        if not distributed.all_ranks_true(math.isfinite(loss_value), logits.device):
            # Gradients of a NaN/Inf loss would poison the weights: never step on it.
            optimizer.zero_grad(set_to_none=True)
            return StepResult(loss_value, 0, labels.shape[0], finite=False)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        correct1 = int((logits.detach().argmax(1) == labels).sum().item())
        return StepResult(loss_value, correct1, labels.shape[0])
    finally:
        functional.reset_net(model)


@dataclass
class EpochStats:
    loss_sum: float = 0.0
    correct1: int = 0
    samples: int = 0
    steps: int = 0
    skipped_steps: int = 0
    seconds: float = 0.0

    @property
    def loss(self) -> float:
        return self.loss_sum / max(self.samples, 1)

    @property
    def top1(self) -> float:
        return 100.0 * self.correct1 / max(self.samples, 1)

    def add(self, r: StepResult) -> None:
        self.steps += 1
        if not r.finite:
            self.skipped_steps += 1
            return
        self.loss_sum += r.loss * r.samples
        self.correct1 += r.correct1
        self.samples += r.samples

    def reduce(self, device: torch.device) -> EpochStats:
        """Totals over all ranks."""
        t = torch.tensor(
            [self.loss_sum, self.correct1, self.samples, self.skipped_steps],
            dtype=torch.float64,
            device=device,
        )
        distributed.all_reduce_sum(t)
        loss_sum, c1, n, skipped = t.tolist()
        return EpochStats(loss_sum, int(c1), int(n), self.steps, int(skipped), self.seconds)


def train_one_epoch(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    *,
    epoch: int,
    device: torch.device,
    step_fn: Callable[[Tensor, Tensor, int], StepResult],
    converter: Converter | None = None,
    stats: EpochStats | None = None,
    on_step: Callable[[int, StepResult], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    skip_nonfinite: bool = False,
) -> EpochStats:
    """Run ``step_fn(inputs, labels, step_index)`` over the batches, accumulating into ``stats``
    (which may hold the first part of an interrupted epoch). ``on_step`` sees every completed
    step (progress, step checkpoints); ``should_stop`` is polled after each step (preemption)."""
    model.train()
    if isinstance(converter, nn.Module):
        converter.train()
    stats = stats if stats is not None else EpochStats()
    start = time.perf_counter()
    for batch in batches:
        inputs, labels = move(batch, device)
        result = step_fn(inputs, labels, stats.steps)
        if not result.finite and not skip_nonfinite:
            raise NonFiniteLossError(epoch, stats.steps + 1, result.loss)
        stats.add(result)
        if on_step is not None:
            on_step(stats.steps, result)
        if should_stop is not None and should_stop():
            break
    stats.seconds += time.perf_counter() - start
    return stats


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
    batches: Iterable[tuple[Tensor, Tensor]],
    *,
    num_classes: int,
    device: torch.device,
    converter: Converter | None,
    amp: AmpSettings,
    limit_batches: int | None = None,
) -> EvalResult:
    """Top-1/top-5, mean cross-entropy and the confusion matrix, summed over all ranks.

    Each rank must see a disjoint share of the validation set (see ``data.sampler``), so every
    sample is counted exactly once.
    """
    model.eval()
    if isinstance(converter, nn.Module):
        # Evaluation uses the fixed displacement pairs; the converter is not part of the model.
        converter.eval()
    criterion = nn.CrossEntropyLoss(reduction="sum")
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.float64, device=device)
    totals = torch.zeros(4, dtype=torch.float64, device=device)  # loss, top1, top5, samples
    k = min(5, num_classes)
    for batch in _limit(batches, limit_batches):
        inputs, labels = move(batch, device)
        with amp.autocast():
            logits = model(to_events(inputs, converter, amp.dtype or torch.float32)).float()
        functional.reset_net(model)
        topk = logits.topk(k, dim=1).indices
        hit = topk == labels[:, None]
        totals += torch.stack(
            [
                criterion(logits, labels).double(),
                hit[:, 0].sum().double(),
                hit.any(1).sum().double(),
                torch.tensor(labels.shape[0], dtype=torch.float64, device=device),
            ]
        )
        confusion.index_put_(
            (labels, topk[:, 0]), torch.ones_like(labels, dtype=torch.float64), accumulate=True
        )
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
