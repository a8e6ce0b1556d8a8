"""The step and the fit loop in process, on runs assembled by ``builders.build_run`` exactly as
``i2e-train`` assembles them: non-finite losses, callbacks, resume rules, checkpoints, accumulation,
clipping, EMA, the mix schedule, the sampler, exact event counts."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import build_test_run, compose
from torch import nn

from i2e_train.data.sampler import EpochSampler
from i2e_train.errors import UserError
from i2e_train.training import checkpoint, distributed, engine
from i2e_train.training.builders import build_run
from i2e_train.training.trainer import Callback

RUN = (
    "trainer.epochs=2",
    "trainer.limit_train_batches=3",
    "dataset.image_size=16",
    "trainer.preview_samples=0",
)


class NaNOn(nn.Module):
    """Wraps the run's model: its output turns NaN on chosen training calls (a diverging run)."""

    def __init__(self, net: nn.Module, bad_calls: set[int]) -> None:
        super().__init__()
        self.net, self.bad_calls, self.calls = net, bad_calls, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        self.calls += 1
        return out * float("nan") if self.calls in self.bad_calls else out


def rows(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_nonfinite_loss_stops_naming_epoch_and_step_and_keeps_last_checkpoint(tmp_path):
    trainer = build_test_run(tmp_path, *RUN)
    trainer.parts.model = NaNOn(trainer.parts.model, {5})  # 3 steps per epoch: call 5 = epoch 2, step 2
    with pytest.raises(UserError, match=r"non-finite loss \(nan\) at epoch 2, step 2.*last\.pt is intact"):
        trainer.fit()
    ckpt = checkpoint.load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert ckpt["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())


@pytest.mark.slow
def test_skip_nonfinite_skips_and_counts(tmp_path):
    trainer = build_test_run(tmp_path, *RUN, "trainer.skip_nonfinite=true")
    trainer.parts.model = NaNOn(trainer.parts.model, {2, 5})
    trainer.fit()
    assert [r["skipped_steps"] for r in rows(tmp_path)] == [1, 1]
    assert [r["train_samples"] for r in rows(tmp_path)] == [16, 16]  # the skipped batches are not counted
    assert all(math.isfinite(r["train_loss"]) for r in rows(tmp_path))
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


@pytest.mark.slow
def test_callbacks_see_every_epoch_and_extend_the_row(tmp_path):
    seen = []

    class Probe(Callback):
        def on_fit_start(self, trainer):
            seen.append(("start", trainer.progress.epoch))

        def on_epoch_end(self, trainer, row):
            seen.append(("end", row["epoch"]))
            row["probe"] = row["epoch"] * 10

    trainer = build_test_run(tmp_path, *RUN)
    trainer.callbacks.append(Probe())
    trainer.fit()
    assert seen == [("start", 0), ("end", 1), ("end", 2)]
    assert [r["probe"] for r in rows(tmp_path)] == [10, 20]


@pytest.mark.slow
def test_resume_with_more_epochs_uses_the_new_schedule(tmp_path):
    build_test_run(tmp_path, *RUN, "trainer.epochs=1", "optim.lr=0.05", "sched.lr_min=1e-4").fit()
    longer = build_test_run(tmp_path, *RUN, "trainer.epochs=3", "optim.lr=0.05", "sched.lr_min=1e-4")
    longer.restore("auto", None)
    assert longer.progress.epoch == 1 and longer.scheduler.t_initial == 3
    longer.fit()
    assert [r["epoch"] for r in rows(tmp_path)] == [1, 2, 3]
    expected_lr2 = 1e-4 + 0.5 * (0.05 - 1e-4) * (1 + math.cos(math.pi * 1 / 3))
    assert rows(tmp_path)[1]["lr"] == pytest.approx(expected_lr2)


def test_finished_run_has_nothing_to_do(tmp_path):
    build_test_run(tmp_path, *RUN, "trainer.epochs=1").fit()
    again = build_test_run(tmp_path, *RUN, "trainer.epochs=1")
    again.restore("auto", None)
    assert again.fit() == {}


def test_global_batch_must_split_evenly_over_processes_and_accumulation(tmp_path):
    three = distributed.DistInfo(rank=0, world_size=3)
    with pytest.raises(UserError, match="not divisible by the 3 processes x 1 accumulation steps"):
        build_run(compose(*RUN, "trainer.batch_size=8", "trainer.device=cpu"), tmp_path, three)


@pytest.mark.slow
def test_best_is_a_link_to_the_best_last_and_history_keeps_k(tmp_path):
    trainer = build_test_run(tmp_path, *RUN, "trainer.epochs=3", "trainer.keep_checkpoints=2")
    written = []
    save = checkpoint.save_checkpoint
    checkpoint.save_checkpoint = lambda state, path: written.append(path.name) or save(state, path)
    try:
        trainer.fit()
    finally:
        checkpoint.save_checkpoint = save
    assert written == ["last.pt"] * 3  # serialised once per epoch, whatever else is kept
    folder = tmp_path / "checkpoints"
    assert [p.name for p in trainer.checkpoints.history()] == ["epoch_0002.pt", "epoch_0003.pt"]
    assert (folder / "epoch_0003.pt").stat().st_ino == (folder / "last.pt").stat().st_ino
    best_epoch = max(rows(tmp_path), key=lambda r: r["val_top1"])["epoch"]  # first of equals wins
    assert checkpoint.load_checkpoint(folder / "best.pt")["epoch"] == best_epoch


def _one_step_weights(tmp_path, accumulate: int) -> dict[str, torch.Tensor]:
    trainer = build_test_run(
        tmp_path / f"acc{accumulate}",
        "trainer.batch_size=16",
        f"trainer.accumulate_steps={accumulate}",
        "i2e.random_vectors=false",
        "dataset.image_size=16",
    )
    # BatchNorm in eval mode: its statistics make per-sample losses depend on the batch otherwise.
    trainer.parts.plain.train()
    for m in trainer.parts.plain.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eval()
    micro = next(trainer.batches.epoch(0))
    assert len(micro) == accumulate and sum(len(b[1]) for b in micro) == 16
    out = engine.train_step(trainer.parts, micro, seed=0)
    assert out.samples == 16
    return {k: v.clone() for k, v in trainer.parts.plain.state_dict().items()}


def test_two_accumulated_micro_batches_make_the_update_of_one_batch(tmp_path):
    one, two = _one_step_weights(tmp_path, 1), _one_step_weights(tmp_path, 2)
    moved = [k for k in one if one[k].is_floating_point() and not torch.equal(one[k], two[k])]
    for k in one:
        torch.testing.assert_close(one[k], two[k], rtol=1e-5, atol=1e-6, msg=k)
    assert moved  # same update up to summation order, not by not training


@pytest.mark.slow
def test_clipping_acts_on_unscaled_gradients_under_fp16_loss_scaling(tmp_path):
    trainer = build_test_run(tmp_path, *RUN, "trainer.precision=fp16", "trainer.clip_grad_norm=0.05")
    assert trainer.parts.scaler is not None and trainer.parts.scaler.get_scale() > 1
    seen = []
    step = trainer.parts.optimizer.step

    def checked_step(*args, **kwargs):
        grads = [
            p.grad for g in trainer.parts.optimizer.param_groups for p in g["params"] if p.grad is not None
        ]
        seen.append(
            float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))
        )
        return step(*args, **kwargs)

    trainer.parts.optimizer.step = checked_step
    trainer.parts.plain.train()
    out = engine.train_step(trainer.parts, next(trainer.batches.epoch(0)), seed=0)
    assert out.grad_norm is not None and out.grad_norm > 0.05  # the true norm, before clipping
    assert seen and seen[0] <= 0.05 * (1 + 1e-3)  # what the optimiser got: unscaled, then clipped


def test_ema_is_evaluated_saved_and_restored(tmp_path):
    trainer = build_test_run(tmp_path, *RUN, "trainer.ema_decay=0.9", "trainer.epochs=1")
    trainer.fit()
    row = rows(tmp_path)[0]
    assert {"val_top1_ema", "val_loss_ema"} <= set(row) and row["val_loss_ema"] != row["val_loss"]
    ckpt = checkpoint.load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert ckpt["ema"]["updates"] == 3
    again = build_test_run(tmp_path, *RUN, "trainer.ema_decay=0.9", "trainer.epochs=2")
    again.restore("auto", None)
    assert again.parts.ema.updates == 3
    for k, v in ckpt["ema"]["state_dict"].items():
        assert torch.equal(again.parts.ema.module.state_dict()[k], v)


def test_mixing_stops_after_mix_until(tmp_path):
    trainer = build_test_run(
        tmp_path, *RUN, "extras.mixup_alpha=1.0", "trainer.epochs=3", "extras.mix_until=0.67"
    )
    mix = trainer.parts.batch_transform
    images = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    labels = torch.arange(4)
    assert mix.until_epoch == 2  # round(0.67 * 3): the first two of three epochs
    for epoch, mixes in ((0, True), (1, True), (2, False)):
        trainer.parts.set_epoch(epoch)
        _, targets = mix(images, labels)
        assert (targets.ndim == 2) == mixes, epoch  # soft targets only from a mixed batch


def test_drop_last_drops_the_incomplete_share_and_pad_wraps():
    padded = [len(EpochSampler(10, shuffle=True, rank=r, world_size=3)) for r in range(3)]
    dropped = [len(EpochSampler(10, shuffle=True, rank=r, world_size=3, drop_last=True)) for r in range(3)]
    assert padded == [4, 4, 4] and dropped == [3, 3, 3]
    every = [
        i for r in range(3) for i, _ in EpochSampler(10, shuffle=True, rank=r, world_size=3, drop_last=True)
    ]
    assert len(every) == len(set(every)) == 9  # nothing twice, one sample left out this epoch
    resumed = EpochSampler(10, shuffle=True, rank=1, world_size=3, drop_last=True)
    resumed.set_epoch(0, start=1)
    assert list(resumed) == list(EpochSampler(10, shuffle=True, rank=1, world_size=3, drop_last=True))[1:]


def test_stored_event_counts_reach_the_model_exactly_under_bf16():
    counts = torch.tensor([0.0, 1.0, 255.0, 257.0, 1001.0]).view(1, 1, 1, 1, 5).expand(2, 8, 2, 1, 5)
    events = engine.to_events(counts.contiguous(), None, torch.bfloat16)
    assert events.dtype == torch.float32 and torch.equal(events[0, 0, 0, 0], counts[0, 0, 0, 0])
    binary = engine.to_events(torch.ones(2, 8, 2, 1, 5, dtype=torch.bool), None, torch.bfloat16)
    assert binary.dtype == torch.bfloat16 and binary.shape == (8, 2, 2, 1, 5)


def test_training_in_bf16_evaluates_in_fp32_by_default(tmp_path):
    trainer = build_test_run(
        tmp_path, *RUN, "trainer.precision=bf16", "trainer.epochs=1", "trainer.limit_train_batches=1"
    )
    assert trainer.parts.amp.dtype == torch.bfloat16 and trainer.eval_amp.dtype is None
    assert trainer.converter.dtype == torch.bfloat16  # half events in training, fp32 in evaluation
    assert trainer.fit()["val_samples"] == 16
    same = build_test_run(tmp_path / "b", *RUN, "trainer.precision=bf16", "trainer.eval_precision=auto")
    assert same.eval_amp.dtype == torch.bfloat16


def test_warm_up_learning_rates_reach_metrics_jsonl(tmp_path):
    run = (
        *RUN,
        "trainer.epochs=4",
        "optim.lr=0.1",
        "sched.lr_min=0",
        "sched.warmup_epochs=2",
        "sched.warmup_lr=0.01",
    )
    build_test_run(tmp_path, *run).fit()
    lrs = [r["lr"] for r in rows(tmp_path)]
    assert lrs[:2] == pytest.approx([0.01, 0.055])  # linear from warmup_lr towards optim.lr
    assert lrs[2:] == pytest.approx([0.5 * 0.1 * (1 + math.cos(math.pi * e / 4)) for e in (2, 3)])


@pytest.mark.parametrize("name", ["SIGTERM", "SIGUSR1"])
def test_a_preemption_signal_becomes_a_flag_and_the_handler_is_restored(name):
    import os
    import signal

    from i2e_train.signals import StopRequested

    sig = getattr(signal, name)
    before = signal.getsignal(sig)
    with StopRequested() as stop:
        assert not stop
        os.kill(os.getpid(), sig)  # delivered to the main thread before kill() returns
        assert stop and stop.signal_name == name
    assert signal.getsignal(sig) == before
