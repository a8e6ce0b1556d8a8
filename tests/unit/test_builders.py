"""Config sections to objects: the paper's optimiser and schedule, typed option checks."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import compose

from i2e_train import config
from i2e_train.config import OptimOptions, SchedOptions, TrainerOptions
from i2e_train.errors import UserError
from i2e_train.models import build_model
from i2e_train.training import builders


def test_optimizer_is_nesterov_sgd_without_decay_on_1d_parameters():
    cfg = compose("optim.lr=0.2", "optim.weight_decay=1e-5")
    model = build_model("ms_resnet18", 10)
    opt = builders.build_optimizer(config.read(OptimOptions, cfg, "optim"), model)
    assert isinstance(opt, torch.optim.SGD)
    groups = {g["weight_decay"]: g for g in opt.param_groups}
    assert set(groups) == {0.0, 1e-5}
    assert all(g["nesterov"] and g["momentum"] == 0.9 and g["lr"] == 0.2 for g in opt.param_groups)
    no_decay = {id(p) for p in groups[0.0]["params"]}
    for name, p in model.named_parameters():
        assert (id(p) in no_decay) == (p.ndim <= 1), name  # biases and BN affine are not decayed


def _lrs(cfg, epochs: int, steps_per_epoch: int = 1) -> list[float]:
    opt = builders.build_optimizer(config.read(OptimOptions, cfg, "optim"), build_model("ms_resnet18", 10))
    sched = builders.build_scheduler(config.read(SchedOptions, cfg, "sched"), opt, epochs, steps_per_epoch)
    lrs = []
    for epoch in range(epochs):
        sched.step(epoch)
        for step in range(steps_per_epoch):
            sched.step_update(epoch * steps_per_epoch + step)
            lrs.append(opt.param_groups[0]["lr"])
    return lrs


def test_cosine_schedule_per_epoch_from_lr_to_lr_min():
    lrs = _lrs(compose("optim.lr=0.1", "sched.lr_min=5e-5"), epochs=4)
    expected = [5e-5 + 0.5 * (0.1 - 5e-5) * (1 + math.cos(math.pi * e / 4)) for e in range(4)]
    assert lrs == pytest.approx(expected)


def test_warmup_then_cosine_per_epoch_and_per_step():
    cfg = compose("optim.lr=0.1", "sched.lr_min=0", "sched.warmup_epochs=2", "sched.warmup_lr=0.01")
    lrs = _lrs(cfg, epochs=6)
    # timm: linear from warmup_lr towards lr over 2 epochs, then the 6-epoch cosine from epoch 2 on.
    assert lrs[:2] == pytest.approx([0.01, 0.01 + (0.1 - 0.01) / 2])
    assert lrs[2:] == pytest.approx([0.5 * 0.1 * (1 + math.cos(math.pi * e / 6)) for e in range(2, 6)])
    per_step = _lrs(
        compose("optim.lr=0.1", "sched.lr_min=0", "sched.per_step=true"), epochs=2, steps_per_epoch=3
    )
    assert per_step == pytest.approx([0.5 * 0.1 * (1 + math.cos(math.pi * s / 6)) for s in range(6)])


def test_unknown_optimizer_and_scheduler_are_user_errors():
    model = build_model("ms_resnet18", 10)
    with pytest.raises(UserError, match="optim.name 'sgdd' is not a timm optimizer"):
        builders.build_optimizer(config.read(OptimOptions, compose("optim.name=sgdd"), "optim"), model)
    with pytest.raises(UserError, match="sched.name must be one of cosine"):
        config.read(SchedOptions, compose("sched.name=step"), "sched")


def test_options_validate_types_keys_and_completeness():
    defaults = config.section(compose(), "trainer")
    opts = config.options(TrainerOptions, {**defaults, "epochs": 3, "limit_val_batches": None}, "trainer")
    assert opts.epochs == 3 and opts.limit_val_batches is None
    with pytest.raises(UserError, match="trainer.epochs must be an integer, got '3'"):
        config.options(TrainerOptions, {**defaults, "epochs": "3"}, "trainer")
    with pytest.raises(UserError, match="trainer.progress must be true or false"):
        config.options(TrainerOptions, {**defaults, "progress": 1}, "trainer")
    with pytest.raises(UserError, match="unknown config key 'trainer.speed'"):
        config.options(TrainerOptions, {**defaults, "speed": 1}, "trainer")
    del defaults["epochs"]
    with pytest.raises(UserError, match="missing config key 'trainer.epochs'"):
        config.options(TrainerOptions, defaults, "trainer")


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("optim.lr=0", "optim.lr must be a number > 0, got 0.0"),
        ("optim.lr=-0.1", "optim.lr must be a number > 0, got -0.1"),
        ("trainer.batch_size=0", "trainer.batch_size must be >= 1"),
        (
            "trainer.accumulate_steps=3",
            "trainer.batch_size=64 is not divisible by trainer.accumulate_steps=3",
        ),
        ("trainer.eval_precision=fp8", "trainer.eval_precision must be one of"),
        ("trainer.ema_decay=1.5", "trainer.ema_decay must be null \\(off\\) or between 0 and 1"),
        ("trainer.clip_grad_norm=0", "trainer.clip_grad_norm must be null or a number > 0"),
        ("trainer.num_workers=many", "trainer.num_workers must be auto or an integer"),
        ("extras.mix_until=1.5", "extras.mix_until must be in \\[0, 1\\]"),
        ("extras.t_train=9", "extras.t_train must be null or a number of timesteps in 1..8"),
        ("sched.warmup_epochs=-1", "sched.warmup_epochs must be >= 0"),
    ],
)
def test_every_training_key_is_checked_before_anything_runs(override, needle):
    with pytest.raises(UserError, match=needle):
        config.validate_train(compose(override))


def test_per_rank_batch_is_checked_in_one_place():
    opts = config.read(
        TrainerOptions, compose("trainer.batch_size=64", "trainer.accumulate_steps=2"), "trainer"
    )
    assert opts.per_rank_batch(1) == 32 and opts.per_rank_batch(4) == 8
    with pytest.raises(UserError, match="not divisible by the 3 processes x 2 accumulation steps"):
        opts.per_rank_batch(3)


def test_resolve_amp_and_eval_precision():
    cpu = torch.device("cpu")
    assert builders.resolve_amp("auto", cpu).dtype is None
    training = builders.resolve_amp("bf16", cpu)
    assert training.dtype == torch.bfloat16
    assert builders.resolve_eval_amp("fp32", training).dtype is None  # the paper evaluates in fp32
    assert builders.resolve_eval_amp("auto", training) is training
    with pytest.raises(UserError, match="trainer.precision must be one of"):
        builders.resolve_amp("int8", cpu)


def test_section_resolves_interpolations():
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"seed": 3, "dataset": {"split_seed": "${seed}"}})
    assert config.section(cfg, "dataset") == {"split_seed": 3}
    assert config.section(cfg, "nothing") == {}


def test_the_ratio_has_one_home():
    assert compose("dataset=cifar10", "dataset.root=x").i2e.ratio == 0.07
    assert compose("dataset=imagenet", "dataset.root=x", "i2e.ratio=0.2").i2e.ratio == 0.2
    assert "ratio" not in compose("dataset=cifar10", "dataset.root=x").dataset
