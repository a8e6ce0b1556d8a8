"""Batched device augmentation against torchvision applied image by image."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata
from skimage.transform import resize
from torchvision.io import decode_jpeg
from torchvision.transforms.v2 import functional as TF

from i2e_train.data.device_transforms import DeviceAugment, build_device_augment, decode_jpeg_batch
from i2e_train.errors import UserError


def cifar_like(batch: int = 6, size: int = 32) -> torch.Tensor:
    """uint8 [B, 3, size, size] crops of real photographs (CIFAR's stored size)."""
    photos = [skdata.astronaut(), skdata.coffee(), skdata.chelsea(), skdata.rocket()]
    imgs = [
        np.round(resize(photos[i % 4], (size + i, size + i), anti_aliasing=True) * 255) for i in range(batch)
    ]
    return torch.from_numpy(np.stack([im[:size, :size] for im in imgs]).astype(np.uint8)).permute(0, 3, 1, 2)


def torchvision_per_image(x, top, left, flips, size, padding=4, crop=True, pil=False):
    out = []
    for i in range(x.shape[0]):
        im = TF.to_pil_image(x[i]) if pil else x[i]
        if crop:
            im = TF.pad(im, [padding], padding_mode="edge")
            im = TF.crop(im, int(top[i]), int(left[i]), x.shape[2], x.shape[3])
        if size is not None:
            im = TF.resize(im, [size, size], antialias=True)
        if flips[i]:
            im = TF.horizontal_flip(im)
        out.append(TF.pil_to_tensor(im) if pil else im)
    return torch.stack(out)


def test_baseline2_equals_torchvision_tensor_ops_exactly() -> None:
    x = cifar_like()
    aug = build_device_augment("baseline2", 128, seed=3)
    top, left, flips = aug.sample(x.shape[0])
    got = aug.apply(x, top, left, flips)
    assert got.shape == (6, 3, 128, 128) and got.dtype == torch.uint8
    assert torch.equal(got, torchvision_per_image(x, top, left, flips, 128))
    # The draws cover both flips and several offsets (the seed makes this deterministic).
    assert flips.any() and not flips.all() and len(set(top.tolist())) > 1


def test_baseline2_against_the_pil_pipeline() -> None:
    # The usual CPU pipeline resizes PIL images: pad/crop/flip are exact, PIL's antialiased
    # bilinear may round differently from torch's by one grey level.
    x = cifar_like()
    aug = build_device_augment("baseline2", 128, seed=4)
    top, left, flips = aug.sample(x.shape[0])
    got = aug.apply(x, top, left, flips).int()
    pil = torchvision_per_image(x, top, left, flips, 128, pil=True).int()
    assert (got - pil).abs().max() <= 1
    no_resize = DeviceAugment(size=None, padding=4, crop=True)
    exact = torchvision_per_image(x, top, left, flips, None, pil=True)
    assert torch.equal(no_resize.apply(x, top, left, flips), exact)


def test_every_offset_and_padding_edge_cases() -> None:
    x = cifar_like(batch=9, size=8)
    aug = DeviceAugment(size=None, padding=4, crop=True, flip=True)
    top = torch.arange(9)  # offsets 0..8 = all of 2 * padding + 1
    left = torch.arange(9).flip(0)
    flips = torch.arange(9) % 2 == 0
    assert torch.equal(aug.apply(x, top, left, flips), torchvision_per_image(x, top, left, flips, None))


def test_baseline1_is_resize_and_flip() -> None:
    x = cifar_like(batch=4)
    aug = build_device_augment("baseline1", 64, seed=0)
    top, left, flips = aug.sample(4)
    expected = torchvision_per_image(x, top, left, flips, 64, crop=False)
    assert torch.equal(aug.apply(x, top, left, flips), expected)


def test_seeded_draws_are_reproducible_and_the_hook_signature() -> None:
    x = cifar_like()
    labels = torch.arange(6)
    a = build_device_augment("baseline2", 64, seed=1)
    b = build_device_augment("baseline2", 64, seed=1)
    out_a, lab = a(x, labels)
    assert torch.equal(lab, labels)
    assert torch.equal(out_a, b(x, labels)[0])
    assert not torch.equal(a(x, labels)[0], out_a)  # the next draw differs
    a.manual_seed(1)
    assert torch.equal(a(x, labels)[0], out_a)  # reseeding replays (exact resume)
    assert "padding=4" in repr(a)


def test_bad_inputs() -> None:
    aug = build_device_augment("baseline2", 64)
    with pytest.raises(ValueError, match="uint8"):
        aug.augment(torch.rand(2, 3, 8, 8))
    with pytest.raises(UserError, match="trainer.device_augment"):
        build_device_augment("autoaugment", 64)
    assert build_device_augment(None, 64) is None
    with pytest.raises(ValueError, match="size"):
        DeviceAugment(size=0)


def test_decode_jpeg_batch_on_cpu(tmp_path) -> None:
    files = []
    for i, photo in enumerate((skdata.astronaut(), skdata.coffee()[:300, :400])):
        path = tmp_path / f"{i}.jpg"
        Image.fromarray(photo).save(path, quality=90)
        files.append(torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8))
    out = decode_jpeg_batch(files, 48, device="cpu")
    assert out.shape == (2, 3, 48, 48) and out.dtype == torch.uint8
    for i, data in enumerate(files):
        assert torch.equal(out[i], TF.resize(decode_jpeg(data), [48, 48], antialias=True))


@pytest.mark.gpu
def test_cuda_matches_torchvision_on_the_same_device_and_cpu_crops() -> None:
    x = cifar_like(batch=16)
    aug = build_device_augment("baseline2", 128, seed=5)
    top, left, flips = aug.sample(16)
    got = aug.apply(x.cuda(), top, left, flips)
    assert torch.equal(got.cpu(), torchvision_per_image(x.cuda(), top, left, flips, 128).cpu())
    no_resize = DeviceAugment(size=None, padding=4, crop=True)
    assert torch.equal(
        no_resize.apply(x.cuda(), top, left, flips).cpu(), no_resize.apply(x, top, left, flips)
    )
