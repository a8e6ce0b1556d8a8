"""The fit loop in process: non-finite losses, callbacks, the schedule on resume."""

from __future__ import annotations

import json
import math

import pytest
import torch
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler
from torch import nn

from i2e_train import checkpoint, distributed, engine
from i2e_train.data import build_datasets
from i2e_train.errors import UserError
from i2e_train.i2e import I2E
from i2e_train.models import build_model
from i2e_train.trainer import Callback, Trainer, TrainerOptions


class NaNAfter(nn.Module):
    """A real MS-ResNet whose output turns NaN on chosen training calls (a diverging run)."""

    def __init__(self, bad_calls: set[int]) -> None:
        super().__init__()
        self.net = build_model("ms_resnet18", 10)
        self.bad_calls = bad_calls
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        if self.training:
            self.calls += 1
            if self.calls in self.bad_calls:
                return out * float("nan")
        return out


def _trainer(tmp_path, model: nn.Module, epochs: int = 2, **opts) -> Trainer:
    torch.manual_seed(0)
    data = build_datasets("digits", image_size=16)
    optimizer = create_optimizer_v2(model, opt="sgd", lr=0.05, weight_decay=1e-4, momentum=0.9)
    options = TrainerOptions(
        epochs=epochs,
        batch_size=8,
        limit_train_batches=3,
        limit_val_batches=2,
        progress=False,
        tensorboard=False,
        device="cpu",
        **opts,
    )
    return Trainer(
        model=model,
        converter=I2E(0.1),
        data=data,
        optimizer=optimizer,
        scheduler=CosineLRScheduler(optimizer, t_initial=epochs, lr_min=1e-4),
        criterion=nn.CrossEntropyLoss(label_smoothing=0.1),
        options=options,
        dist=distributed.DistInfo(),
        amp=engine.AmpSettings(),
        run_dir=tmp_path,
    )


def test_nonfinite_loss_stops_naming_epoch_and_step_and_keeps_last_checkpoint(tmp_path):
    trainer = _trainer(tmp_path, NaNAfter({5}))  # 3 steps per epoch: call 5 = epoch 2, step 2
    with pytest.raises(UserError, match=r"non-finite loss \(nan\) at epoch 2, step 2.*last\.pt is intact"):
        trainer.fit()
    ckpt = checkpoint.load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert ckpt["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())


def test_skip_nonfinite_skips_and_counts(tmp_path):
    model = NaNAfter({2, 5})
    trainer = _trainer(tmp_path, model, skip_nonfinite=True)
    trainer.fit()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped_steps"] for r in rows] == [1, 1]
    assert [r["train_samples"] for r in rows] == [16, 16]  # the skipped batches are not counted
    assert all(math.isfinite(r["train_loss"]) for r in rows)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_callbacks_see_every_epoch_and_extend_the_row(tmp_path):
    seen = []

    class Probe(Callback):
        def on_fit_start(self, trainer):
            seen.append(("start", trainer.start_epoch))

        def on_epoch_end(self, trainer, row):
            seen.append(("end", row["epoch"]))
            row["probe"] = row["epoch"] * 10

    trainer = _trainer(tmp_path, build_model("ms_resnet18", 10))
    trainer.callbacks.append(Probe())
    trainer.fit()
    assert seen == [("start", 0), ("end", 1), ("end", 2)]
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["probe"] for r in rows] == [10, 20]


def test_resume_with_more_epochs_uses_the_new_schedule(tmp_path):
    first = _trainer(tmp_path, build_model("ms_resnet18", 10), epochs=1)
    first.fit()
    longer = _trainer(tmp_path, build_model("ms_resnet18", 10), epochs=3)
    longer.restore("auto", None)
    assert longer.start_epoch == 1 and longer.scheduler.t_initial == 3
    longer.fit()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    expected_lr2 = 1e-4 + 0.5 * (0.05 - 1e-4) * (1 + math.cos(math.pi * 1 / 3))
    assert rows[1]["lr"] == pytest.approx(expected_lr2)


def test_finished_run_has_nothing_to_do(tmp_path):
    _trainer(tmp_path, build_model("ms_resnet18", 10), epochs=1).fit()
    again = _trainer(tmp_path, build_model("ms_resnet18", 10), epochs=1)
    again.restore("auto", None)
    assert again.fit() == {}


def test_global_batch_must_split_evenly(tmp_path):
    with pytest.raises(UserError, match="not divisible by the 3 processes"):
        Trainer(
            model=build_model("ms_resnet18", 10),
            converter=None,
            data=build_datasets("digits", image_size=16),
            optimizer=torch.optim.SGD(build_model("ms_resnet18", 10).parameters(), lr=0.1),
            scheduler=None,
            criterion=nn.CrossEntropyLoss(),
            options=TrainerOptions(batch_size=8, device="cpu"),
            dist=distributed.DistInfo(rank=0, world_size=3),
            amp=engine.AmpSettings(),
            run_dir=tmp_path,
        )
