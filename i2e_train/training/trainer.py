"""The fit loop: epochs of :func:`engine.train_step`, validation, the metrics row, checkpoints.

Everything a step needs is in :class:`engine.StepParts`; the checkpoint layout and resume rules are
in :mod:`checkpoint`; loaders in :mod:`data.loading`. This module decides only *when* things run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from ..config import TrainerOptions
from ..data import DataBundle
from ..data.loading import TrainBatches
from ..errors import UserError
from ..monitor import MetricsWriter, epoch_line, log
from ..seeding import mix_seed
from ..signals import StopRequested
from . import checkpoint, distributed, engine, selfcheck, speed


class Callback:
    """Hooks called on every rank; use ``trainer.dist.is_main`` to write only once."""

    def on_fit_start(self, trainer: Trainer) -> None:
        """After restore, before the first epoch."""

    def on_epoch_end(self, trainer: Trainer, row: dict[str, Any]) -> None:
        """After validation, before the metrics row is written: add keys to ``row`` to extend it."""


class Trainer:
    def __init__(
        self,
        *,
        parts: engine.StepParts,
        scheduler: Any,
        batches: TrainBatches,
        val_loader: torch.utils.data.DataLoader,
        data: DataBundle,
        options: TrainerOptions,
        dist: distributed.DistInfo,
        run_dir: Path,
        seed: int = 0,
        eval_amp: engine.AmpSettings | None = None,
        config: dict[str, Any] | None = None,
        callbacks: list[Callback] | None = None,
        tracker: Any = None,
    ) -> None:
        self.parts, self.model, self.converter = parts, parts.plain, parts.converter
        self.scheduler, self.batches, self.val_loader, self.data = scheduler, batches, val_loader, data
        self.opt, self.dist, self.device = options, dist, dist.device
        self.run_dir, self.seed, self.config = run_dir, seed, config or {}
        self.eval_amp = eval_amp or engine.AmpSettings(dist.device.type)
        self.callbacks = list(callbacks or [])
        self.checkpoints = checkpoint.RunCheckpoints(run_dir / "checkpoints", options.keep_checkpoints)
        self.objects = checkpoint.TrainingObjects(
            parts.plain, parts.optimizer, scheduler, parts.scaler, parts.ema
        )
        self.metrics = MetricsWriter(
            run_dir, enabled=dist.is_main, tensorboard=options.tensorboard, tracker=tracker
        )
        self.progress = checkpoint.Progress()
        self.resumed = False
        self.stop = StopRequested()
        self._first_step_done = False
        self.self_checks: list[selfcheck.CheckResult] = []

    # ------------------------------------------------------------------ state
    def restore(self, resume: str | None, init_from: str | None) -> None:
        """Apply ``resume`` (auto|PATH) or ``init_from`` (weights only, head replaced if needed)."""
        if not resume and int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0:
            # torchrun --max-restarts relaunched us after a failure: continue, don't start over.
            log.info(
                "torchrun restart %s: resuming from the last checkpoint",
                os.environ["TORCHELASTIC_RESTART_COUNT"],
            )
            resume = "auto"
        path = self.checkpoints.resume_path(resume) if resume else None
        if resume == "auto" and path is None:
            log.info("resume=auto: no checkpoint in %s, starting a new run", self.checkpoints.folder)
        if path is not None:
            ckpt = checkpoint.load_checkpoint(path)
            self.progress, changed = checkpoint.restore_training_state(
                ckpt, path, self.objects, self.dist.world_size
            )
            if changed:
                log.warning(
                    "the schedule settings changed since the checkpoint (%s); continuing with the new ones",
                    ", ".join(changed),
                )
            if not self.dist.is_main:
                self.progress.partial = None  # rank 0 carries the interrupted epoch's sums
            self.resumed = True
            step = f", step {self.progress.step}" if self.progress.step else ""
            log.info("resumed from %s (epoch %d%s completed)", path, self.progress.epoch, step)
        elif init_from:
            info = checkpoint.load_weights(self.model, init_from, replace_head=True)
            if self.parts.ema is not None:
                self.parts.ema.module.load_state_dict(self.model.state_dict())
            head = " (classifier replaced: class counts differ)" if info["skipped"] else ""
            log.info("initialised weights from %s%s", init_from, head)

    def save(self, *, step: int = 0, partial: engine.EpochStats | None = None, best: bool = False) -> None:
        """Write last.pt (every rank calls this: a mid-epoch save reduces the epoch's sums)."""
        self.progress.step = step
        self.progress.partial = (
            dataclasses.asdict(partial.reduce(self.device)) if partial is not None else None
        )
        if self.dist.is_main:
            state = checkpoint.training_state(self.objects, self.progress, self.dist.world_size, self.config)
            self.checkpoints.save(state, best=best)

    # ------------------------------------------------------------------ loop
    def fit(self) -> dict[str, Any]:
        """Train the remaining epochs; returns the last metrics row ({} if nothing was left to do,
        ``{"stopped": signal}`` after a preemption signal, with a checkpoint written)."""
        if self.progress.epoch >= self.opt.epochs:
            log.info(
                "nothing to do: the run already completed %d of %d epochs",
                self.progress.epoch,
                self.opt.epochs,
            )
            return {}
        if self.dist.is_main and (removed := self.checkpoints.remove_stale_temporaries()):
            log.info("removed %d partial checkpoint file(s) of a run killed while saving", removed)
        self.metrics.truncate_after(self.progress.epoch)  # a resumed run rewrites the later rows
        self.scheduler.step(self.progress.epoch)
        self.scheduler.step_update(self.progress.global_step)
        speed.log_settings(self.parts, self.opt, self.device)
        self.metrics.start(self.config, self.resumed)
        for cb in self.callbacks:
            cb.on_fit_start(self)
        row: dict[str, Any] = {}
        status = "failed"
        try:
            with self.stop:
                for epoch in range(self.progress.epoch, self.opt.epochs):
                    row = self._epoch(epoch)
                    if "stopped" in row:
                        status = "killed"
                        return row
            status = "finished"
        finally:
            self.metrics.close(status)
        log.info(
            "done: %d epochs, best val top-1 %.2f%%, checkpoints in %s",
            self.opt.epochs,
            self.progress.best_acc1,
            self.checkpoints.folder,
        )
        return row

    def _epoch(self, epoch: int) -> dict[str, Any]:
        """Train and validate one epoch: its metrics row, or ``{"stopped": ...}`` after a stop signal."""
        resuming = epoch == self.progress.epoch and self.progress.step > 0
        start = self.progress.step if resuming else 0
        stats = (
            engine.EpochStats.from_dict(self.progress.partial)
            if resuming and self.progress.partial
            else engine.EpochStats()
        )
        stats.steps, samples_before = start, stats.samples
        lr = self.parts.optimizer.param_groups[0]["lr"]
        t0 = time.perf_counter()
        if not self._train(epoch, start, stats):
            self.save(step=stats.steps, partial=stats)
            return self._stopped(f"epoch {epoch + 1} step {stats.steps}")
        seconds = time.perf_counter() - t0
        train = stats.reduce(self.device)
        val = self.validate(self.opt.limit_val_batches)
        self.scheduler.step(epoch + 1)
        is_best = val.top1 > self.progress.best_acc1 or not self.checkpoints.best.exists()
        self.progress.best_acc1 = max(self.progress.best_acc1, val.top1)
        row = {
            "epoch": epoch + 1,
            "lr": lr,
            "train_loss": train.loss,
            "train_top1": train.top1,
            "train_samples": int(train.samples),
            "skipped_steps": train.skipped_steps,
            "val_loss": val.loss,
            "val_top1": val.top1,
            "val_top5": val.top5,
            "val_samples": val.samples,
            "best_val_top1": self.progress.best_acc1,
            "epoch_seconds": seconds,
            "train_images_per_second": (train.samples - samples_before) / max(seconds, 1e-9),
            "world_size": self.dist.world_size,
        }
        if self.opt.clip_grad_norm is not None:
            row["train_grad_norm"] = train.grad_norm_sum / max(train.steps - start - train.skipped_steps, 1)
        if self.self_checks:  # recorded once, in the row of the epoch they ran in
            row["self_check"] = {r.name: r.as_dict() for r in self.self_checks}
            self.self_checks = []
        if self.parts.ema is not None:
            ema = self.validate(self.opt.limit_val_batches, self.parts.ema.module)
            row.update(val_loss_ema=ema.loss, val_top1_ema=ema.top1, val_top5_ema=ema.top5)
        for cb in self.callbacks:
            cb.on_epoch_end(self, row)
        self.metrics.write(row)
        self.progress.epoch = epoch + 1
        self.save(best=is_best)
        log.info("%s", epoch_line(row, self.opt.epochs))
        if distributed.any_rank(bool(self.stop), self.device):
            return self._stopped(f"the end of epoch {epoch + 1}")
        return row

    def _train(self, epoch: int, start: int, stats: engine.EpochStats) -> bool:
        """The training steps of ``epoch`` from step ``start`` on, summed into ``stats``; False when a
        stop signal ended the epoch early."""
        total = self.batches.steps_per_epoch()
        self.model.train()
        if self.converter is not None:
            self.converter.train()
        self.parts.set_epoch(epoch)
        show = self.opt.progress and self.dist.is_main and sys.stderr.isatty()  # no bar in log files
        desc = f"epoch {epoch + 1}/{self.opt.epochs}"
        with tqdm(
            total=total, initial=start, desc=desc, leave=False, disable=not show, dynamic_ncols=True
        ) as bar:
            for step, micro_batches in enumerate(self.batches.epoch(epoch, start), start=start):
                seed = mix_seed(self.seed, epoch, step, self.dist.rank)
                with self._first_step(micro_batches):
                    out = engine.train_step(self.parts, micro_batches, seed=seed, stop=bool(self.stop))
                if out.nonfinite and not self.opt.skip_nonfinite:
                    self._nonfinite(epoch, step, out)
                stats.add(out)
                self.progress.global_step += 1
                self.scheduler.step_update(self.progress.global_step)
                bar.update()
                bar.set_postfix(loss=f"{out.loss_sum / max(out.samples, 1):.3f}", refresh=False)
                if out.stop and step + 1 < total:
                    return False
                every = self.opt.checkpoint_every_steps
                if every and (step + 1) % every == 0 and step + 1 < total:
                    self.save(step=step + 1, partial=stats)
        return True

    def validate(self, limit_batches: int | None = None, model: nn.Module | None = None) -> engine.EvalResult:
        """Evaluate ``model`` (the trained one by default) on this rank's share of the validation set,
        summed over ranks, in the evaluation precision."""
        model = model if model is not None else self.model
        # Ranks evaluate unequal shares: no DDP collectives inside evaluation, and every rank uses
        # rank 0's BatchNorm statistics (the ones the checkpoint stores).
        distributed.broadcast_buffers(model)
        return engine.evaluate(
            model,
            self.val_loader,
            num_classes=self.data.num_classes,
            device=self.device,
            converter=self.converter,
            amp=self.eval_amp,
            limit_batches=limit_batches,
        )

    # ------------------------------------------------------------------ reporting
    def _nonfinite(self, epoch: int, step: int, out: engine.StepOutput) -> None:
        error = engine.NonFiniteLossError(epoch + 1, step + 1, out.loss_sum)
        last = self.checkpoints.last
        kept = f"; the last good checkpoint {last} is intact" if last.exists() else ""
        raise UserError(f"training stopped: {error}{kept}; lower optim.lr or set trainer.skip_nonfinite=true")

    def _stopped(self, where: str) -> dict[str, Any]:
        name = self.stop.signal_name or "a stop signal (on another rank)"
        last = self.checkpoints.last
        log.info(
            "received %s: stopped at %s, checkpoint written to %s; continue with resume=auto",
            name,
            where,
            last,
        )
        return {"stopped": name}

    def _first_step(self, micro_batches: list[Any]) -> contextlib.AbstractContextManager:
        """Before the run's first step: the self-checks of the fast paths (``trainer.self_check``),
        and SpikingJelly's own account of the LIF kernel it selects (it picks it on the first call)."""
        if self._first_step_done:
            return contextlib.nullcontext()
        self._first_step_done = True
        if selfcheck.should_run(self.opt.self_check, self.device):
            images = micro_batches[0][0].to(self.device)
            self.self_checks = selfcheck.run_checks(
                self.model, self.converter, images, self.parts.amp.dtype, self.parts.events_transform
            )
        return speed.spikingjelly_log(speed.log_selection)
