"""The fit loop: epochs, evaluation, checkpoints, metrics, resume and preemption.

The per-step work lives in :mod:`i2e_train.engine`; this module decides when it runs and keeps
everything needed to continue a run exactly where it stopped.
"""

from __future__ import annotations

import atexit
import contextlib
import multiprocessing
import os
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from . import checkpoint, distributed, engine, speed
from .data import DataBundle
from .data.device_transforms import PRESETS, build_device_augment
from .data.sampler import EpochSampler, SeededDataset, mix_seed
from .errors import CheckpointError, UserError
from .monitor import MetricsWriter, log


@dataclass
class TrainerOptions:
    """``trainer.*`` config keys (see configs/trainer/default.yaml for their meaning)."""

    epochs: int = 15
    batch_size: int = 64
    val_batch_size: int | None = None
    device: str = "auto"
    precision: str = "auto"
    num_workers: int = 0
    limit_train_batches: int | None = None
    limit_val_batches: int | None = None
    progress: bool = True
    tensorboard: bool = True
    checkpoint_every_steps: int = 0
    skip_nonfinite: bool = False
    sync_batchnorm: bool = False
    preview_samples: int = 8
    firing_rate_batches: int = 2
    # Speed (i2e_train.speed, docs/benchmarks.md).
    neuron_precision: str = "auto"
    channels_last: bool = False
    cudnn_benchmark: bool = True
    compile: bool = False
    memopt: int = 0
    device_augment: str | None = None
    device_augment_size: int | None = None

    def __post_init__(self) -> None:
        for key in ("epochs", "batch_size"):
            if int(getattr(self, key)) < 1:
                raise UserError(f"trainer.{key} must be >= 1, got {getattr(self, key)}")
        for key in ("limit_train_batches", "limit_val_batches"):
            value = getattr(self, key)
            if value is not None and int(value) < 1:
                raise UserError(f"trainer.{key} must be null or >= 1, got {value}")
        if self.num_workers < 0:
            raise UserError(f"trainer.num_workers must be >= 0, got {self.num_workers}")
        for key in ("preview_samples", "firing_rate_batches"):
            if getattr(self, key) < 0:
                raise UserError(f"trainer.{key} must be >= 0, got {getattr(self, key)}")
        speed.resolve_neuron_precision(self.neuron_precision, torch.device("cpu"), None)
        if self.memopt not in speed.MEMOPT_LEVELS:
            raise UserError(f"trainer.memopt must be 0 (off) or 1 (checkpointing), got {self.memopt}")
        if self.device_augment is not None and self.device_augment not in PRESETS:
            raise UserError(
                f"trainer.device_augment must be null or one of {', '.join(PRESETS)}, got '{self.device_augment}'"
            )
        if self.device_augment_size is not None and self.device_augment_size < 1:
            raise UserError(
                f"trainer.device_augment_size must be null or >= 1, got {self.device_augment_size}"
            )


class StopRequested:
    """Turns SIGTERM/SIGUSR1 (scheduler preemption, Slurm's warning) into a flag polled between steps."""

    SIGNALS = tuple(s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGUSR1", None)) if s)

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequested:
        for sig in self.SIGNALS:
            # Outside the main thread signal() raises ValueError: leave signals alone there.
            with contextlib.suppress(ValueError):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, _frame: object) -> None:
        self.signal_name = signal.Signals(signum).name

    def __bool__(self) -> bool:
        return self.signal_name is not None


class Callback:
    """Hooks for things that watch a run without changing it (previews, extra logging).
    Called on every rank; use ``trainer.dist.is_main`` to write only once."""

    def on_fit_start(self, trainer: Trainer) -> None:
        """After restore, before the first epoch."""

    def on_epoch_end(self, trainer: Trainer, row: dict[str, Any]) -> None:
        """After validation, before the metrics row is written: add keys to ``row`` to extend it."""


class Trainer:
    def __init__(
        self,
        *,
        model: nn.Module,
        converter: nn.Module | None,
        data: DataBundle,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        criterion: nn.Module,
        options: TrainerOptions,
        dist: distributed.DistInfo,
        amp: engine.AmpSettings,
        run_dir: Path,
        seed: int = 0,
        config: dict[str, Any] | None = None,
        batch_transform: engine.BatchTransform | None = None,
        events_transform: engine.EventsTransform | None = None,
        callbacks: list[Callback] | None = None,
    ) -> None:
        if options.batch_size % dist.world_size:
            raise UserError(
                f"trainer.batch_size={options.batch_size} (global) is not divisible by the "
                f"{dist.world_size} processes; choose a multiple of {dist.world_size}"
            )
        self.model = model
        if batch_transform is None and options.device_augment is not None:
            batch_transform = build_device_augment(options.device_augment, options.device_augment_size, seed)
        self.batch_transform = batch_transform
        self.events_transform = events_transform
        self.callbacks = list(callbacks or [])
        self.converter = converter
        self.data = data
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.criterion = criterion
        self.opt = options
        self.dist = dist
        self.amp = amp
        self.run_dir = run_dir
        self.seed = seed
        self.config = config or {}
        self.device = dist.device
        self.scaler = torch.amp.GradScaler(self.device.type) if amp.dtype == torch.float16 else None
        speed.configure_backends(self.device, options.cudnn_benchmark)
        self._first_step_logged = False
        self.ckpt_dir = run_dir / "checkpoints"
        self.metrics = MetricsWriter(run_dir, enabled=dist.is_main, tensorboard=options.tensorboard)
        self.start_epoch = 0  # completed epochs
        self.start_step = 0  # completed steps of the epoch in progress (mid-epoch resume)
        self.partial: engine.EpochStats | None = None
        self.best_acc1 = 0.0
        self.global_step = 0
        self.stop = StopRequested()

        self.per_rank_batch = options.batch_size // dist.world_size
        self.train_sampler = EpochSampler(
            len(data.train), shuffle=True, seed=seed, rank=dist.rank, world_size=dist.world_size
        )
        self.val_sampler = EpochSampler(
            len(data.val), shuffle=False, rank=dist.rank, world_size=dist.world_size, pad=False
        )
        self.train_loader = self._loader(
            data.train, data.train_transform, self.train_sampler, self.per_rank_batch
        )
        val_batch = options.val_batch_size or self.per_rank_batch
        self.val_loader = self._loader(data.val, data.val_transform, self.val_sampler, val_batch)
        if options.memopt:
            self._apply_memopt(options.memopt)
        self.train_model = distributed.wrap_model(model, dist)
        if options.compile:
            self.train_model = speed.compile_model(self.train_model)

    def _apply_memopt(self, level: int) -> None:
        """SpikingJelly memopt, probed with a batch of the first training sample (on every rank)."""
        from .models.ms_resnet import MSBasicBlock

        sample, _ = SeededDataset(self.data.train, self.data.train_transform)[(0, 0)]
        batch = torch.as_tensor(sample)[None].expand(self.per_rank_batch, *sample.shape).to(self.device)
        if self.batch_transform is not None:
            batch, _ = self.batch_transform(batch, torch.zeros(batch.shape[0], dtype=torch.long))
        with torch.no_grad(), self.amp.autocast():
            events = engine.to_events(batch, self.converter, self.amp.dtype or torch.float32)
        wrapped = speed.apply_memopt(self.model, events, level, (MSBasicBlock,), self.amp.autocast)
        log.info("memopt level %d: %d residual blocks checkpointed", level, wrapped)

    def _loader(self, dataset: Any, transform: Any, sampler: EpochSampler, batch_size: int) -> DataLoader:
        workers = self.opt.num_workers
        if workers > 0:
            atexit.unregister(_kill_leftover_workers)  # once, however many loaders
            atexit.register(_kill_leftover_workers)
        return DataLoader(
            SeededDataset(dataset, transform),
            batch_size=batch_size,
            sampler=sampler,
            num_workers=workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
            prefetch_factor=4 if workers > 0 else None,
            worker_init_fn=_ignore_stop_signals if workers > 0 else None,
        )

    # ------------------------------------------------------------------ state
    def state_dict(
        self, epoch: int, step: int = 0, partial: engine.EpochStats | None = None
    ) -> dict[str, Any]:
        return {
            "format": checkpoint.FORMAT,
            "version": checkpoint.VERSION,
            "state_dict": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "epoch": epoch,
            "step": step,
            "global_step": self.global_step,
            "partial_epoch": asdict(partial) if partial is not None else None,
            "best_acc1": self.best_acc1,
            "rng": checkpoint.capture_rng_state(),
            "world_size": self.dist.world_size,
            "config": self.config,
        }

    def load_state_dict(self, ckpt: dict[str, Any], path: Path) -> None:
        checkpoint.extract_state_dict(ckpt, path)  # not a model checkpoint at all: say so first
        if ckpt.get("format") != checkpoint.FORMAT or "optimizer" not in ckpt:
            raise CheckpointError(
                f"'{path}' is not an i2e-train training checkpoint (no optimizer state); "
                "use init_from= to start from its weights"
            )
        checkpoint.load_weights(self.model, path)
        configured = self.scheduler.state_dict()
        try:
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.scheduler.load_state_dict(ckpt["scheduler"])
        except (ValueError, KeyError) as e:
            raise CheckpointError(
                f"'{path}' was written for a different optimizer/model setup ({e}); "
                "resume needs the same model and optim settings"
            ) from None
        changed = sorted(k for k, v in configured.items() if ckpt["scheduler"].get(k) != v)
        if changed:
            # The schedule is a function of the config (epochs, lr, lr_min): the config wins.
            log.warning(
                "the schedule settings changed since the checkpoint (%s); continuing with the new ones",
                ", ".join(changed),
            )
            self.scheduler.load_state_dict(configured)
        if self.scaler is not None and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.start_epoch = int(ckpt["epoch"])
        self.start_step = int(ckpt.get("step") or 0)
        self.global_step = int(ckpt.get("global_step") or 0)
        self.partial = (
            engine.EpochStats(**ckpt["partial_epoch"])
            if ckpt.get("partial_epoch") and self.dist.is_main
            else None
        )
        self.best_acc1 = float(ckpt.get("best_acc1") or 0.0)
        if ckpt.get("world_size", self.dist.world_size) != self.dist.world_size and self.start_step:
            raise CheckpointError(
                f"'{path}' stopped mid-epoch with {ckpt['world_size']} processes; resume it with the same "
                "number of processes (or from an end-of-epoch checkpoint)"
            )
        if ckpt.get("rng"):
            checkpoint.restore_rng_state(ckpt["rng"])

    def restore(self, resume: str | None, init_from: str | None) -> None:
        """Apply ``resume`` (auto|PATH) or ``init_from`` (weights only, head replaced if needed)."""
        if not resume and int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0:
            # torchrun --max-restarts relaunched us after a failure: continue, don't start over.
            log.info(
                "torchrun restart %s: resuming from the last checkpoint",
                os.environ["TORCHELASTIC_RESTART_COUNT"],
            )
            resume = "auto"
        if resume:
            path = self.ckpt_dir / "last.pt" if resume == "auto" else Path(resume)
            if resume == "auto" and not path.exists():
                log.info("resume=auto: no checkpoint in %s, starting a new run", self.ckpt_dir)
            else:
                self.load_state_dict(checkpoint.load_checkpoint(path), path)
                where = f"epoch {self.start_epoch}" + (f", step {self.start_step}" if self.start_step else "")
                log.info("resumed from %s (%s completed)", path, where)
                self.metrics.truncate_after(self.start_epoch)
                return
        if init_from:
            info = checkpoint.load_weights(self.model, init_from, replace_head=True)
            head = " (classifier replaced: class counts differ)" if info["skipped"] else ""
            log.info("initialised weights from %s%s", init_from, head)

    def save(
        self, epoch: int, step: int = 0, partial: engine.EpochStats | None = None, best: bool = False
    ) -> None:
        if partial is not None:
            # Mid-epoch: store the totals of all ranks (collective, so every rank calls save);
            # on resume rank 0 carries them and the other ranks start from zero.
            partial = partial.reduce(self.device)
        if not self.dist.is_main:
            return
        state = self.state_dict(epoch, step, partial)
        checkpoint.save_checkpoint(state, self.ckpt_dir / "last.pt")
        if best:
            checkpoint.save_checkpoint(state, self.ckpt_dir / "best.pt")

    # ------------------------------------------------------------------ loop
    def fit(self) -> dict[str, Any]:
        opt = self.opt
        if self.start_epoch >= opt.epochs:
            log.info("nothing to do: the run already completed %d of %d epochs", self.start_epoch, opt.epochs)
            return {}
        self.scheduler.step(self.start_epoch)
        self._log_speed_settings()
        for cb in self.callbacks:
            cb.on_fit_start(self)
        last_row: dict[str, Any] = {}
        with self.stop:
            for epoch in range(self.start_epoch, opt.epochs):
                row = self._run_epoch(epoch)
                if row is None:  # preempted mid-epoch, checkpoint written
                    return {"stopped": self.stop.signal_name}
                last_row = row
        self.metrics.close()
        log.info(
            "done: %d epochs, best val top-1 %.2f%%, checkpoints in %s",
            opt.epochs,
            self.best_acc1,
            self.ckpt_dir,
        )
        return last_row

    def _stop_now(self) -> bool:
        """Whether any rank received a stop signal; every rank gets the same answer."""
        flag = bool(self.stop)
        if self.dist.distributed:
            flag = distributed.any_rank(flag, self.device)
        if flag and not self.stop:
            self.stop.signal_name = "a stop signal (on another rank)"
        return flag

    def _steps_per_epoch(self) -> int:
        steps = len(self.train_loader) + self.train_sampler.start // self.per_rank_batch
        limit = self.opt.limit_train_batches
        return steps if limit is None else min(steps, limit)

    def _step_fn(self, epoch: int) -> Callable[[torch.Tensor, torch.Tensor, int], engine.StepResult]:
        """The step of one epoch. I2E's random pairs are reseeded from (seed, epoch, step, rank), so a
        resumed run draws the same pairs without storing generator state."""
        step = partial(
            engine.train_step,
            self.train_model,
            converter=self.converter,
            criterion=self.criterion,
            optimizer=self.optimizer,
            amp=self.amp,
            scaler=self.scaler,
            batch_transform=self.batch_transform,
            events_transform=self.events_transform,
        )
        reseed = getattr(self.converter, "manual_seed", None)
        reseed_aug = getattr(self.batch_transform, "manual_seed", None)
        # Random temporal subsets (extras.t_train) are reseeded the same way.
        reseed_events = getattr(self.events_transform, "manual_seed", None)

        def run(inputs: torch.Tensor, labels: torch.Tensor, index: int) -> engine.StepResult:
            if reseed is not None:
                reseed(mix_seed(self.seed, epoch, index, self.dist.rank, 0x12E))
            if reseed_aug is not None:
                reseed_aug(mix_seed(self.seed, epoch, index, self.dist.rank, 0xA06))
            if reseed_events is not None:
                reseed_events(mix_seed(self.seed, epoch, index, self.dist.rank, 0xE7E5))
            if not self._first_step_logged:
                # SpikingJelly picks its LIF kernel on the first CUDA call: log its own account.
                self._first_step_logged = True
                with speed.spikingjelly_log(_log_selection):
                    return step(inputs, labels)
            return step(inputs, labels)

        return run

    def _run_epoch(self, epoch: int) -> dict[str, Any] | None:
        """Train and validate one epoch; None when a stop signal ended it (checkpoint written)."""
        opt = self.opt
        resuming = epoch == self.start_epoch
        start_step = self.start_step if resuming else 0
        stats = replace(self.partial) if resuming and self.partial else engine.EpochStats()
        stats.steps = start_step
        done_before = stats.samples
        self.train_sampler.set_epoch(epoch, start=start_step * self.per_rank_batch)
        total = self._steps_per_epoch()
        lr = self.optimizer.param_groups[0]["lr"]
        bar = tqdm(
            _take(self.train_loader, total - start_step),
            total=total,
            initial=start_step,
            desc=f"epoch {epoch + 1}/{opt.epochs}",
            disable=not (opt.progress and self.dist.is_main),
            dynamic_ncols=True,
            leave=False,
        )
        t0 = time.perf_counter()

        def on_step(step: int, result: engine.StepResult) -> None:
            self.global_step += 1
            seen = (stats.samples - done_before) * self.dist.world_size
            rate = seen / max(time.perf_counter() - t0, 1e-9)
            bar.set_postfix(loss=f"{result.loss:.3f}", img_s=f"{rate:.0f}", refresh=False)
            every = opt.checkpoint_every_steps
            if every and step % every == 0 and step < total:
                self.save(epoch, step, stats)

        try:
            engine.train_one_epoch(
                self.train_model,
                bar,
                epoch=epoch + 1,
                device=self.device,
                step_fn=self._step_fn(epoch),
                converter=self.converter,
                stats=stats,
                on_step=on_step,
                should_stop=self._stop_now,
                skip_nonfinite=opt.skip_nonfinite,
            )
        except engine.NonFiniteLossError as e:
            last = self.ckpt_dir / "last.pt"
            kept = f"; the last good checkpoint {last} is intact" if last.exists() else ""
            raise UserError(
                f"training stopped: {e}{kept}; lower optim.lr or set trainer.skip_nonfinite=true"
            ) from None
        finally:
            bar.close()
        if stats.steps < total and self._stop_now():
            self.save(epoch, stats.steps, stats)
            self._log_stop(f"epoch {epoch + 1} step {stats.steps}")
            return None
        train_seconds = time.perf_counter() - t0
        train = stats.reduce(self.device)
        val = self.validate(opt.limit_val_batches)
        self.scheduler.step(epoch + 1)
        is_best = val.top1 > self.best_acc1 or not (self.ckpt_dir / "best.pt").exists()
        self.best_acc1 = max(self.best_acc1, val.top1)
        row = {
            "epoch": epoch + 1,
            "lr": lr,
            "train_loss": train.loss,
            "train_top1": train.top1,
            "train_samples": train.samples,
            "skipped_steps": train.skipped_steps,
            "val_loss": val.loss,
            "val_top1": val.top1,
            "val_top5": val.top5,
            "val_samples": val.samples,
            "best_val_top1": self.best_acc1,
            "epoch_seconds": time.perf_counter() - t0,
            "train_images_per_second": (train.samples - done_before * self.dist.world_size)
            / max(train_seconds, 1e-9),
            "world_size": self.dist.world_size,
        }
        for cb in self.callbacks:
            cb.on_epoch_end(self, row)
        self.metrics.write(row)
        self.save(epoch + 1, best=is_best)
        log.info(
            "epoch %d/%d  lr %.4g  train loss %.4f top1 %.2f%%  val loss %.4f top1 %.2f%% "
            "top5 %.2f%% (%d samples)  %.1fs",
            epoch + 1,
            opt.epochs,
            lr,
            train.loss,
            train.top1,
            val.loss,
            val.top1,
            val.top5,
            val.samples,
            row["epoch_seconds"],
        )
        if self._stop_now():
            self._log_stop(f"the end of epoch {epoch + 1}")
            return None
        return row

    def _log_speed_settings(self) -> None:
        opt = self.opt
        kernel = speed.lif_kernel(self.model, self.device, self.amp.dtype, compiled=opt.compile)
        log.info(
            "LIF kernel: %s | channels_last %s, compile %s, cudnn.benchmark %s, memopt %d, "
            "device augment %s, I2E backend %s",
            kernel,
            opt.channels_last,
            opt.compile,
            opt.cudnn_benchmark and self.device.type == "cuda",
            opt.memopt,
            self.batch_transform if self.batch_transform is not None else "none",
            getattr(self.converter, "resolved_backend", lambda d: "n/a")(self.device),
        )

    def validate(self, limit_batches: int | None = None) -> engine.EvalResult:
        """Evaluate the plain model on this rank's share of the validation set (summed over ranks)."""
        # Ranks evaluate unequal shares: no DDP collectives inside evaluation, and every rank uses
        # rank 0's BatchNorm statistics (the ones the checkpoint stores).
        distributed.broadcast_buffers(self.model)
        return engine.evaluate(
            self.model,
            self.val_loader,
            num_classes=self.data.num_classes,
            device=self.device,
            converter=self.converter,
            amp=self.amp,
            limit_batches=limit_batches,
        )

    def _log_stop(self, where: str) -> None:
        log.info(
            "received %s: stopped at %s, checkpoint written to %s; continue with resume=auto",
            self.stop.signal_name,
            where,
            self.ckpt_dir / "last.pt",
        )


def _kill_leftover_workers() -> None:
    # Workers ignore SIGTERM (below). multiprocessing's exit handler stops daemonic children with
    # SIGTERM and then joins them, so a run ending in an exception while workers are alive (an
    # unreadable file, a crash) would wait forever. atexit runs this first (it is registered later).
    children = [c for c in multiprocessing.active_children() if c.daemon]
    if children and hasattr(signal, "SIGCHLD"):
        # The DataLoader's SIGCHLD handler would report these deliberate kills as worker failures.
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for child in children:
        child.kill()


def _ignore_stop_signals(_worker_id: int) -> None:
    # SIGTERM/SIGUSR1 go to the whole process group; the main process finishes the step and
    # checkpoints, so workers must not die first (that would be a DataLoader error, not a stop).
    for sig in StopRequested.SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def _log_selection(line: str) -> None:
    if "selection" in line:
        log.info("spikingjelly: %s", line)


def _take(iterable: Any, n: int) -> Any:
    for i, item in enumerate(iterable):
        if i >= n:
            return
        yield item
