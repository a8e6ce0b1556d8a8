"""Config sections to objects: the paper's optimiser and schedule, typed option checks."""

from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf

from i2e_train import builders
from i2e_train.cli import precheck
from i2e_train.errors import UserError
from i2e_train.models import build_model
from i2e_train.trainer import TrainerOptions


def test_optimizer_is_nesterov_sgd_without_decay_on_1d_parameters():
    cfg = precheck("train", ["optim.lr=0.2", "optim.weight_decay=1e-5"])
    model = build_model("ms_resnet18", 10)
    opt = builders.build_optimizer(cfg, model)
    assert isinstance(opt, torch.optim.SGD)
    groups = {g["weight_decay"]: g for g in opt.param_groups}
    assert set(groups) == {0.0, 1e-5}
    assert all(g["nesterov"] and g["momentum"] == 0.9 and g["lr"] == 0.2 for g in opt.param_groups)
    no_decay = {id(p) for p in groups[0.0]["params"]}
    for name, p in model.named_parameters():
        assert (id(p) in no_decay) == (p.ndim <= 1), name  # biases and BN affine are not decayed


def test_cosine_schedule_per_epoch_from_lr_to_lr_min():
    cfg = precheck("train", ["optim.lr=0.1", "sched.lr_min=5e-5"])
    opt = builders.build_optimizer(cfg, build_model("ms_resnet18", 10))
    sched = builders.build_scheduler(cfg, opt, epochs=4)
    lrs = []
    for epoch in range(4):
        sched.step(epoch)
        lrs.append(opt.param_groups[0]["lr"])
    expected = [5e-5 + 0.5 * (0.1 - 5e-5) * (1 + math.cos(math.pi * e / 4)) for e in range(4)]
    assert lrs == pytest.approx(expected)


def test_unknown_optimizer_and_scheduler_are_user_errors():
    model = build_model("ms_resnet18", 10)
    with pytest.raises(UserError, match="optim.name 'sgdd' is not a timm optimizer"):
        builders.build_optimizer(precheck("train", ["optim.name=sgdd"]), model)
    opt = builders.build_optimizer(precheck("train", []), model)
    with pytest.raises(UserError, match="sched.name must be cosine"):
        builders.build_scheduler(precheck("train", ["sched.name=step"]), opt, 3)


def test_options_validate_types_and_keys():
    opts = builders.options(TrainerOptions, {"epochs": 3, "limit_val_batches": None}, "trainer")
    assert opts.epochs == 3 and opts.limit_val_batches is None
    with pytest.raises(UserError, match="trainer.epochs must be an integer, got '3'"):
        builders.options(TrainerOptions, {"epochs": "3"}, "trainer")
    with pytest.raises(UserError, match="trainer.progress must be true or false"):
        builders.options(TrainerOptions, {"progress": 1}, "trainer")
    with pytest.raises(UserError, match="unknown config key 'trainer.speed'"):
        builders.options(TrainerOptions, {"speed": 1}, "trainer")


def test_resolve_amp():
    cpu = torch.device("cpu")
    assert builders.resolve_amp("auto", cpu).dtype is None
    assert builders.resolve_amp("bf16", cpu).dtype == torch.bfloat16
    with pytest.raises(UserError, match="trainer.precision must be one of"):
        builders.resolve_amp("int8", cpu)


def test_section_resolves_interpolations():
    cfg = OmegaConf.create({"dataset": {"ratio": 0.1}, "i2e": {"ratio": "${dataset.ratio}"}})
    assert builders.section(cfg, "i2e") == {"ratio": 0.1}
    assert builders.section(cfg, "nothing") == {}
