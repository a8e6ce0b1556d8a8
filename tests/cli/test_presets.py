"""Experiment presets carry the paper's values (docs/recipes.md); augmentation presets do what it says."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import yaml
from omegaconf import OmegaConf
from torchvision.transforms.v2 import functional as TF

from i2e_train.commands.cli import group_options, precheck, register_resolvers
from i2e_train.data.transforms import MixBatch, TemporalSubset, eval_transform, train_transform

ROOT = Path(__file__).resolve().parents[2]

# docs/recipes.md, one row per preset:
# (dataset, image size, ratio, model, epochs, batch, lr, lr_min, wd, augment, paper top-1, needs init_from)
CIFAR = (256, 128, 0.1, 5e-5, 2e-4)
IMNET = (128, 128, 0.1, 5e-5, 1e-5)
DVS = (128, 32, 5e-4, 0.0, 0.0)
PAPER = {
    "cifar10_baseline1": ("cifar10", 128, 0.07, "ms_resnet18", *CIFAR, "baseline1", 85.07, False),
    "cifar10_baseline2": ("cifar10", 128, 0.07, "ms_resnet18", *CIFAR, "baseline2", 89.23, False),
    "cifar10_transfer1": ("cifar10", 128, 0.07, "ms_resnet18", *CIFAR, "baseline2", 90.86, True),
    "cifar100_baseline1": ("cifar100", 128, 0.07, "ms_resnet18", *CIFAR, "baseline1", 51.32, False),
    "cifar100_baseline2": ("cifar100", 128, 0.07, "ms_resnet18", *CIFAR, "baseline2", 60.68, False),
    "cifar100_transfer1": ("cifar100", 128, 0.07, "ms_resnet18", *CIFAR, "baseline2", 64.53, True),
    "imagenet_baseline1": ("imagenet", 224, 0.12, "ms_resnet18", *IMNET, "baseline1", 48.30, False),
    "imagenet_baseline2": ("imagenet", 224, 0.12, "ms_resnet18", *IMNET, "baseline2", 57.97, False),
    "imagenet_baseline2_r34": ("imagenet", 224, 0.12, "ms_resnet34", *IMNET, "baseline2", 60.50, False),
    "imagenet_transfer1": ("imagenet", 224, 0.12, "ms_resnet18", *IMNET, "baseline2", 59.28, True),
    "cifar10dvs_baseline": ("cifar10_dvs", 128, None, "ms_resnet18", *DVS, None, 65.6, False),
    "cifar10dvs_transfer1": ("cifar10_dvs", 128, None, "ms_resnet18", *DVS, None, 83.1, True),
    "cifar10dvs_transfer2": ("cifar10_dvs", 128, None, "ms_resnet18", *DVS, None, 92.5, True),
    "cifar10dvs_baseline_aug": ("cifar10_dvs", 128, None, "ms_resnet18", *DVS, None, None, False),
    "mnist_baseline2": ("mnist", 32, 0.10, "ms_resnet18", *CIFAR, "baseline2", None, False),
    "fashion_mnist_baseline2": ("fashion_mnist", 32, 0.15, "ms_resnet18", *CIFAR, "baseline2", None, False),
    "i2e_cifar10": ("i2e_parquet", 128, None, "ms_resnet18", *CIFAR, None, None, False),
    "i2e_cifar100": ("i2e_parquet", 128, None, "ms_resnet18", *CIFAR, None, None, False),
    "i2e_imagenet": ("i2e_parquet", 224, None, "ms_resnet18", *IMNET, None, None, False),
}


def test_every_preset_file_is_listed():
    assert set(group_options("experiment")) == set(PAPER)


@pytest.mark.parametrize("name", sorted(PAPER))
def test_preset_composes_with_the_papers_values(name):
    register_resolvers()
    cfg = precheck("train", [f"experiment={name}", "dataset.root=/data/x", "--cfg", "job"])
    ds, size, ratio, model, epochs, batch, lr, lr_min, wd, augment, top1, transfer = PAPER[name]
    assert cfg.dataset.name == ds and cfg.dataset.image_size == size and cfg.model.name == model
    assert (cfg.trainer.epochs, cfg.trainer.batch_size) == (epochs, batch)
    assert cfg.optim.lr == pytest.approx(lr) and cfg.optim.weight_decay == pytest.approx(wd)
    assert cfg.sched.lr_min == pytest.approx(lr_min) and cfg.sched.warmup_epochs == 0
    assert cfg.optim.name == "sgd" and cfg.optim.momentum == 0.9 and cfg.loss.label_smoothing == 0.1
    if ratio is not None:
        assert cfg.i2e.ratio == pytest.approx(ratio)
    if augment is not None:
        assert cfg.dataset.augment == augment and cfg.dataset.interpolation == "bilinear"
    if ds == "imagenet":
        assert cfg.dataset.eval_resize == 256
    if ds == "cifar10_dvs":
        assert (cfg.dataset.frames_number, cfg.dataset.split_by, cfg.dataset.split) == (8, "number", "paper")
    assert cfg.paper.top1 == top1
    assert bool(cfg.requires_init_from) == transfer and cfg.init_from is None
    # the extras stay off in every paper preset; switched on, mixing stops after 2/3 of the epochs
    assert cfg.extras.mixup_alpha == 0 and cfg.extras.cutmix_alpha == 0 and cfg.extras.t_train is None
    assert cfg.extras.mix_until == pytest.approx(2 / 3)
    # the paper's code: fp16 training with loss scaling, fp32 evaluation, DistributedSampler(drop_last=True)
    assert cfg.trainer.precision == "fp16" and cfg.trainer.eval_precision == "fp32" and cfg.trainer.drop_last
    augmented = name == "cifar10dvs_baseline_aug"
    assert (cfg.event_augment.flip_prob, cfg.event_augment.translate) == ((0.5, 5) if augmented else (0.0, 0))
    assert cfg.sensor.threshold_sigma == 0 and cfg.sensor.shot_noise_rate == 0


@pytest.mark.parametrize("name", sorted(PAPER))
def test_preset_files_comment_every_key_and_state_the_row(name):
    path = ROOT / "configs" / "experiment" / f"{name}.yaml"
    lines = path.read_text().splitlines()
    assert lines[0] == "# @package _global_"
    header = " ".join(line for line in lines if line.startswith("#"))
    top1 = PAPER[name][10]
    if top1 is None:
        assert "Paper top-1: not in the paper's table" in header
    else:
        assert f"Paper top-1: {top1}%" in header or f"Paper top-1: {top1:.2f}%" in header
    for line in lines:
        if re.match(r"^\s*[\w]+:\s*\S", line) and not line.lstrip().startswith("- "):
            assert " # " in line, f"{path.name}: uncommented key: {line}"


def test_every_config_file_comments_every_key():
    for path in sorted((ROOT / "configs").rglob("*.yaml")):
        if path.parent.name == "help":
            continue  # --help texts, not keys
        for line in path.read_text().splitlines():
            if re.match(r"^\s*\w+:\s*\S", line) and not line.lstrip().startswith("- "):
                assert " # " in line or line.lstrip().startswith("#"), f"{path}: uncommented key: {line}"


def test_dataset_files_name_their_builder_and_set_the_i2e_ratio():
    for path in sorted((ROOT / "configs" / "dataset").glob("*.yaml")):
        content = yaml.safe_load(path.read_text())
        assert content["dataset"]["name"] == path.stem
        assert set(content) == {"dataset", "i2e"} and set(content["i2e"]) == {"ratio"}


def test_readme_table_lists_every_preset_with_the_papers_top1():
    readme = (ROOT / "README.md").read_text()
    for name, row in PAPER.items():
        line = next(
            (ln for ln in readme.splitlines() if f"experiment={name} " in ln and ln.startswith("|")), None
        )
        assert line is not None, f"README has no table row for {name}"
        if row[10] is not None:
            assert f"{row[10]:.2f}".rstrip("0").rstrip(".") in line.replace("%", ""), line


@pytest.mark.slow
def test_cfg_job_prints_every_preset(cli):
    for name in sorted(PAPER):
        res = cli("train", f"experiment={name}", "--cfg", "job")
        assert res.returncode == 0, res.output
        printed = OmegaConf.create(res.stdout)
        assert printed.dataset.name == PAPER[name][0] and printed.trainer.epochs == PAPER[name][4]


def test_transfer_preset_without_init_from_is_one_line(cli):
    res = cli("train", "experiment=cifar10dvs_transfer1", "dataset.root=nowhere", "trainer.device=cpu")
    assert res.returncode == 2 and "Traceback" not in res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "give init_from=PATH" in lines[0] and "I2E-ImageNet" in lines[0], res.stderr


# ----------------------------------------------------------------------------- augmentation
def _photo(size: int = 32) -> torch.Tensor:
    import skimage.data

    img = torch.from_numpy(skimage.data.chelsea()).permute(2, 0, 1)
    return TF.resize(img, [size, size], antialias=True)


def _seeded(transform, image, seed):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return transform(image)


def test_baseline1_is_resize_and_flip():
    img = _photo(32)
    tf = train_transform("baseline1", 128, style="small")
    resized = TF.resize(img, [128, 128], antialias=True)
    outs = [_seeded(tf, img, s) for s in range(12)]
    assert all(torch.equal(o, resized) or torch.equal(o, TF.horizontal_flip(resized)) for o in outs)
    assert any(torch.equal(o, resized) for o in outs) and any(not torch.equal(o, resized) for o in outs)


def test_baseline2_cifar_is_edge_pad_crop_resize_flip():
    img = _photo(32)
    tf = train_transform("baseline2", 128, style="small", native_size=32, crop_padding=4)
    padded = TF.pad(img, [4], padding_mode="edge")
    candidates = {}
    for dy in range(9):
        for dx in range(9):
            r = TF.resize(padded[:, dy : dy + 32, dx : dx + 32], [128, 128], antialias=True)
            candidates[(dy, dx, False)] = r
            candidates[(dy, dx, True)] = TF.horizontal_flip(r)
    found = set()
    for s in range(20):
        out = _seeded(tf, img, s)
        assert out.shape == (3, 128, 128) and out.dtype == torch.uint8
        match = [k for k, v in candidates.items() if torch.equal(out, v)]
        assert match, f"seed {s}: output is not a pad-crop-resize(-flip) of the input"
        found.add(match[0])
    assert len(found) > 10  # offsets and flips really vary


def test_baseline2_photo_is_a_random_resized_crop_and_eval_is_resize_centre_crop():
    img = _photo(300)
    tf = train_transform("baseline2", 224, style="photo")
    a, b = _seeded(tf, img, 1), _seeded(tf, img, 2)
    assert a.shape == b.shape == (3, 224, 224) and a.dtype == torch.uint8 and not torch.equal(a, b)
    assert torch.equal(_seeded(tf, img, 1), a)
    ev = eval_transform(224, style="photo")
    assert torch.equal(ev(img), TF.center_crop(TF.resize(img, 256, antialias=True), [224, 224]))
    from PIL import Image

    pil = Image.fromarray(img.permute(1, 2, 0).numpy())
    assert torch.equal(ev(pil), ev(img))  # PIL and tensor inputs give the same uint8 output


def test_mixbatch_is_seeded_per_step_and_leaves_the_global_rng_alone():
    images = torch.stack([_photo(32), _photo(32).flip(-1), torch.zeros(3, 32, 32, dtype=torch.uint8)])
    labels = torch.tensor([0, 3, 5])
    mix = MixBatch(10, mixup_alpha=0.8, cutmix_alpha=1.0)
    state = torch.get_rng_state()
    mix.manual_seed(7)
    x1, y1 = mix(images, labels)
    mix.manual_seed(7)
    x2, y2 = mix(images, labels)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert x1.dtype == torch.float32 and x1.min() >= 0 and x1.max() <= 1
    assert y1.shape == (3, 10) and torch.allclose(y1.sum(1), torch.ones(3))
    outs = set()
    for s in range(8):
        mix.manual_seed(s)
        outs.add(round(float(mix(images, labels)[1][0, 0]), 6))
    assert len(outs) > 1
    off = MixBatch(10, mixup_alpha=0.2, prob=0.0)
    assert off(images, labels)[0] is images


def test_mixbatch_converts_uint8_as_todtype():
    # Mixed batches hold, pixel by pixel, ToDtype(float32, scale=True) values (x * float32(1/255),
    # the values I2E gives uint8 x): CutMix pastes whole pixels of the rolled batch, so every output
    # pixel equals one of its two sources exactly (x / 255 differs for 126 of the 256 levels).
    images = torch.stack([_photo(32), _photo(32).flip(-1), _photo(32).flip(-2)])
    mix = MixBatch(10, cutmix_alpha=1.0)
    mix.manual_seed(3)
    x, _ = mix(images, torch.tensor([0, 1, 2]))
    f = TF.to_dtype(images, torch.float32, scale=True)
    same = (x == f).all(1)
    pasted = (x == f.roll(1, 0)).all(1)
    assert (same | pasted).all() and pasted.any() and same.any()
    assert not torch.equal(f, images.float() / 255)  # the comparison can tell the two apart


def test_temporal_subset_keeps_order_and_is_seeded():
    events = torch.arange(8).view(8, 1, 1, 1, 1).expand(8, 2, 2, 3, 3).float()
    sub = TemporalSubset(3)
    sub.manual_seed(11)
    a = sub(events)
    sub.manual_seed(11)
    assert torch.equal(sub(events), a) and a.shape == (3, 2, 2, 3, 3)
    steps = a[:, 0, 0, 0, 0].tolist()
    assert steps == sorted(steps) and len(set(steps)) == 3
    window = TemporalSubset(4, contiguous=True)
    for s in range(5):
        window.manual_seed(s)
        idx = window.indices(8).tolist()
        assert idx == list(range(idx[0], idx[0] + 4))
    with pytest.raises(ValueError, match="exceeds the 8 timesteps"):
        TemporalSubset(9).indices(8)
