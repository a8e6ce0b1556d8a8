"""Training callbacks: things that watch a run without changing it — a TensorBoard preview of the
converted training samples at the start, per-layer firing rates and the count of skipped unreadable
samples after every epoch."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..data.corrupt import CorruptGuard, uncounted
from ..monitor import log
from . import distributed
from .trainer import Callback

if TYPE_CHECKING:
    from .trainer import Trainer


def preview_grid(
    images_BCHW: torch.Tensor | None, events_BTCHW: torch.Tensor, pad: int = 2, min_tile: int = 64
) -> np.ndarray:
    """uint8 ``[3, H', W']``: one row per sample — the augmented image (when there is one), then its
    timesteps with ON red and OFF blue on white (the colours of ``i2e-viz``). Small samples are
    enlarged (nearest neighbour) to at least ``min_tile`` pixels so that single events stay visible."""
    from torchvision.utils import make_grid

    from ..events.render import event_frames_rgb

    tiles = []
    for b in range(events_BTCHW.shape[0]):
        if images_BCHW is not None:
            tiles.append(images_BCHW[b].cpu())
        frames = torch.from_numpy(event_frames_rgb(events_BTCHW[b])).permute(0, 3, 1, 2)
        tiles.extend(frames)
    per_row = events_BTCHW.shape[1] + (images_BCHW is not None)
    tiles_NCHW = torch.stack(tiles)
    scale = max(1, -(-min_tile // max(tiles_NCHW.shape[-2:])))
    tiles_NCHW = tiles_NCHW.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)
    grid = make_grid(tiles_NCHW, nrow=per_row, padding=pad, pad_value=128)
    return grid.numpy()


class EventPreview(Callback):
    """At the start of training: a grid of the first training samples as the network sees them
    (augmented, then converted with the fixed pairs), written to TensorBoard as ``preview/train_events``."""

    def __init__(self, num_samples: int = 8) -> None:
        self.num_samples = num_samples

    def on_fit_start(self, trainer: Trainer) -> None:
        tb = trainer.metrics.tb
        if tb is None or not trainer.dist.is_main or self.num_samples < 1:
            return
        from ..events.i2e import i2e_convert
        from ..seeding import mix_seed

        dataset = trainer.batches.loader.dataset  # SeededDataset: the training transform under a seed
        count = min(self.num_samples, len(dataset))
        with uncounted(dataset):  # a look at the data, not a pass of the epoch: skips are not counted
            samples = [dataset[(i, mix_seed(trainer.seed, trainer.progress.epoch, i))] for i in range(count)]
        inputs = torch.stack([torch.as_tensor(np.asarray(s[0])) for s in samples])
        converter = trainer.converter
        if converter is None:  # stored event datasets: samples are [T, C, H, W] already
            images, events = None, inputs
        else:
            # Fixed pairs and the converter's settings; its random-vector generator is left untouched.
            images = inputs
            events = i2e_convert(inputs, converter.ratio, converter.order, dtype=torch.bool).transpose(0, 1)
        grid = preview_grid(images, events)
        tb.add_image("preview/train_events", grid, global_step=trainer.progress.epoch, dataformats="CHW")
        rate = float((events > 0).float().mean())
        tb.add_text(
            "preview/about",
            f"{count} training samples after augmentation; each row: image, then timesteps 1..{events.shape[1]} "
            f"(ON red, OFF blue); event rate {100 * rate:.2f}%",
            global_step=trainer.progress.epoch,
        )
        tb.flush()


class FiringRates(Callback):
    """After each epoch: per-layer firing rates on the first validation batches, measured with
    SpikingJelly's monitors (:mod:`i2e_train.report`). TensorBoard gets ``firing_rate/<layer>``;
    the metrics row gets ``val_firing_rate`` (mean over layers) and ``firing_rates`` (per layer)."""

    def __init__(self, num_batches: int = 2) -> None:
        self.num_batches = num_batches

    def on_epoch_end(self, trainer: Trainer, row: dict[str, Any]) -> None:
        if self.num_batches < 1:
            return
        from .activity import SpikeActivity

        # The DataLoader draws a base seed from the global RNG: keep the run's RNG stream unchanged.
        with (
            torch.random.fork_rng(devices=[]),
            SpikeActivity(trainer.model) as activity,
            uncounted(trainer.val_loader.dataset),  # a second look at some batches: not counted again
        ):
            trainer.validate(self.num_batches)
        report = activity.report()  # a collective: every rank gets here
        if not report.firing_rates:
            return
        row["val_firing_rate"] = report.mean_firing_rate
        row["firing_rates"] = report.firing_rates
        epoch = int(row["epoch"])
        for name, rate in report.firing_rates.items():
            trainer.metrics.scalar(f"firing_rate/{name}", rate, epoch)


class SkippedSamplesReport(Callback):
    """Adds ``skipped_samples`` (all ranks, train + val, this epoch) to the metrics row and warns."""

    def __init__(self, guards: list[CorruptGuard]) -> None:
        self.guards = guards

    def on_epoch_end(self, trainer: Trainer, row: dict[str, Any]) -> None:
        count = torch.tensor([float(sum(g.take_new_count() for g in self.guards))], device=trainer.device)
        distributed.all_reduce_sum(count)
        skipped = int(count.item())
        row["skipped_samples"] = skipped
        if skipped:
            log.warning(
                "epoch %d: %d unreadable samples were replaced by their next readable neighbour "
                "(dataset.skip_corrupt=true); the files are named in the warnings above",
                row.get("epoch", 0),
                skipped,
            )


def default_callbacks(preview_samples: int, firing_rate_batches: int, data: Any) -> list[Callback]:
    """The callbacks every ``i2e-train`` run gets (``trainer.preview_samples``,
    ``trainer.firing_rate_batches``, and the skipped-sample count where ``dataset.skip_corrupt`` is on)."""
    callbacks: list[Callback] = [EventPreview(preview_samples), FiringRates(firing_rate_batches)]
    guards = [d for d in (data.train, data.val) if isinstance(d, CorruptGuard) and d.skip]
    if guards:
        callbacks.append(SkippedSamplesReport(guards))
    return callbacks
