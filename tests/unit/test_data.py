"""Sampling, per-sample augmentation seeds and the embedded digits dataset."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.transforms import v2

from i2e_train.data import build_datasets
from i2e_train.data.digits import load_digits_uint8
from i2e_train.data.sampler import EpochSampler, SeededDataset
from i2e_train.errors import UserError
from i2e_train.seeding import mix_seed


@pytest.mark.parametrize(("n", "world"), [(10, 3), (360, 7), (5, 8), (1797, 2)])
def test_eval_shards_cover_every_sample_exactly_once(n, world):
    seen = []
    for rank in range(world):
        sampler = EpochSampler(n, shuffle=False, rank=rank, world_size=world, pad=False)
        items = [i for i, _ in sampler]
        assert len(items) == len(sampler)
        seen += items
    assert sorted(seen) == list(range(n))


@pytest.mark.parametrize(("n", "world"), [(10, 3), (1437, 4)])
def test_train_shards_are_equal_sized_and_reshuffled(n, world):
    per_rank = [list(EpochSampler(n, shuffle=True, seed=1, rank=r, world_size=world)) for r in range(world)]
    assert len({len(p) for p in per_rank}) == 1
    assert set().union(*({i for i, _ in p} for p in per_rank)) == set(range(n))
    s = EpochSampler(n, shuffle=True, seed=1)
    s.set_epoch(0)
    e0 = [i for i, _ in s]
    s.set_epoch(1)
    e1 = [i for i, _ in s]
    assert sorted(e0) == sorted(e1) == list(range(n)) and e0 != e1
    s.set_epoch(0)
    assert [i for i, _ in s] == e0  # a pure function of (seed, epoch)


def test_start_skips_a_prefix_with_identical_seeds():
    s = EpochSampler(50, shuffle=True, seed=3, rank=1, world_size=2)
    s.set_epoch(4)
    full = list(s)
    s.set_epoch(4, start=7)
    assert list(s) == full[7:] and len(s) == len(full) - 7


def test_augmentation_depends_only_on_the_sample_seed():
    base = [(torch.arange(3 * 16 * 16, dtype=torch.uint8).reshape(3, 16, 16), 1)]
    ds = SeededDataset(base, v2.RandomCrop(16, padding=4, padding_mode="edge"))
    torch.manual_seed(0)
    a, _ = ds[(0, 123)]
    torch.rand(100)  # global RNG use elsewhere must not matter
    b, _ = ds[(0, 123)]
    crops = {ds[(0, s)][0].sum().item() for s in range(20)}
    assert torch.equal(a, b) and len(crops) > 1
    state = torch.get_rng_state()
    ds[(0, 5)]
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is left untouched


def test_mix_seed_spreads_and_is_stable():
    seeds = {mix_seed(0, e, p) for e in range(10) for p in range(100)}
    assert len(seeds) == 1000 and all(0 <= s < 2**63 for s in seeds)
    assert mix_seed(1, 2, 3) == mix_seed(1, 2, 3) != mix_seed(1, 3, 2)


def test_digits_default_split_and_format():
    bundle = build_datasets("digits", image_size=32, num_classes=10, split_seed=0)
    assert len(bundle.train) == 1437 and len(bundle.val) == 360 and bundle.num_classes == 10
    img, label = bundle.val[0]
    assert img.dtype == torch.uint8 and img.shape == (3, 32, 32)
    assert torch.equal(img[0], img[1]) and torch.equal(img[1], img[2])  # grey to RGB
    assert img.max() > 200  # ink reaches the top of the 8-bit range
    counts = np.bincount([int(bundle.val[i][1]) for i in range(360)], minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37  # stratified: 36 per class (+-1)
    other = build_datasets("digits", split_seed=1)
    same = build_datasets("digits", image_size=32, split_seed=0)
    assert torch.equal(same.val.tensors[0], bundle.val.tensors[0])
    assert not torch.equal(other.val.tensors[0], bundle.val.tensors[0])


def test_digits_upscaling_is_bicubic_from_the_real_8x8_images():
    from sklearn.datasets import load_digits

    images, labels = load_digits_uint8(8)
    raw = load_digits()
    assert torch.equal(labels, torch.from_numpy(raw.target))
    assert torch.equal(images[:, 0], torch.from_numpy(np.rint(raw.images * 255 / 16).astype(np.uint8)))
    up, _ = load_digits_uint8(32)
    ref = v2.functional.resize(images[:, :1], [32, 32], interpolation=v2.InterpolationMode.BICUBIC)
    assert torch.equal(up[:, :1], ref)


def test_unknown_dataset_and_setting():
    with pytest.raises(UserError, match="unknown dataset 'nope'"):
        build_datasets("nope")
    with pytest.raises(UserError, match="dataset 'digits' has no setting 'colour'"):
        build_datasets("digits", colour=True)
