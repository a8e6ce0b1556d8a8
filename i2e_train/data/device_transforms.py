"""Batched augmentation on the training device, for small-image datasets (CIFAR, MNIST).

Why: at 128x128 a GPU trains far more images per second than a few CPU workers can pad, crop,
resize and flip one PIL image at a time. Here the loader ships the *stored* uint8 images (e.g.
CIFAR's 32x32) and the whole batch is augmented on the GPU in three ops: one gather (edge padding
+ random crop, as clamped indices), one antialiased bilinear resize (torchvision's kernel), one
masked flip.

Interface (what a dataset integration needs):

* The dataset's ``train_transform`` yields uint8 ``[3, h, w]`` at the stored size, with no random
  augmentation (it happens here instead); ``val_transform`` stays as it is (e.g. resize to 128).
* Build the augmentation with :func:`build_device_augment` (``trainer.device_augment`` /
  ``trainer.device_augment_size``) and pass it as the trainer's ``batch_transform``: it is called
  as ``augment(images_BCHW, labels) -> (images_BCHW, labels)`` on the device, before I2E.
* Randomness comes from the augmenter's own CPU ``torch.Generator``; the trainer reseeds it every
  step from ``(seed, epoch, step, rank)`` (``manual_seed``), so runs resume exactly and the draws
  are the same on CPU and GPU.

Presets (the paper's CPU pipelines, docs/recipes.md):

* ``baseline2``: pad 4 (edge) -> random crop back to the stored size -> resize -> horizontal flip.
* ``baseline1``: resize -> horizontal flip.

Equivalence (tests/unit/test_device_transforms.py): with the same crop offsets and flip decisions the
output equals torchvision's ``pad(padding_mode="edge")``, ``crop``, ``resize(antialias=True)``
and ``hflip`` applied image by image to uint8 tensors on the same device — exactly. Against
torchvision on PIL images (the usual CPU pipeline) the resize differs by at most 1 grey level,
because PIL's and torch's antialiased bilinear kernels round differently; crop and flip are
exact. A JPEG helper, :func:`decode_jpeg_batch`, decodes and resizes a batch with
``torchvision.io.decode_jpeg`` on the GPU.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms.v2 import functional as TF

from ..errors import UserError

PRESETS = ("baseline1", "baseline2")


class DeviceAugment:
    """Pad (edge) / random crop / resize / horizontal flip of a uint8 batch ``[B, 3, h, w]``."""

    def __init__(
        self,
        size: int | None = None,
        padding: int = 0,
        crop: bool = False,
        flip: bool = True,
        seed: int = 0,
    ) -> None:
        if size is not None and size < 1:
            raise ValueError(f"device augmentation size must be >= 1, got {size}")
        if padding < 0:
            raise ValueError(f"device augmentation padding must be >= 0, got {padding}")
        self.size = size
        self.padding = int(padding)
        self.crop = bool(crop)
        self.flip = bool(flip)
        self.generator = torch.Generator(device="cpu")
        self.generator.manual_seed(int(seed))

    def manual_seed(self, seed: int) -> None:
        self.generator.manual_seed(int(seed))

    def sample(self, batch: int) -> tuple[Tensor, Tensor, Tensor]:
        """Per-image crop offsets into the padded image (top, left) and flip flags, on the CPU."""
        span = 2 * self.padding + 1 if self.crop else 1
        top = torch.randint(0, span, (batch,), generator=self.generator)
        left = torch.randint(0, span, (batch,), generator=self.generator)
        if not self.crop:
            top.fill_(self.padding)
            left.fill_(self.padding)
        flips = (
            torch.rand(batch, generator=self.generator) < 0.5
            if self.flip
            else torch.zeros(batch, dtype=torch.bool)
        )
        return top, left, flips

    def apply(self, images_BCHW: Tensor, top: Tensor, left: Tensor, flips: Tensor) -> Tensor:
        """The augmentation with given draws (deterministic: what the tests compare)."""
        if images_BCHW.ndim != 4 or images_BCHW.dtype != torch.uint8:
            raise ValueError(
                f"device augmentation expects uint8 images [B, C, H, W], got {images_BCHW.dtype} "
                f"{list(images_BCHW.shape)}"
            )
        batch, _, height, width = images_BCHW.shape
        device = images_BCHW.device
        if self.crop:
            top, left = _to(top, device), _to(left, device)
            # Edge padding then a crop back to (height, width) reads pixel clamp(i + top - padding):
            # one gather, without materialising the padded batch.
            rows = (torch.arange(height, device=device) + top[:, None] - self.padding).clamp_(0, height - 1)
            cols = (torch.arange(width, device=device) + left[:, None] - self.padding).clamp_(0, width - 1)
            b = torch.arange(batch, device=device)[:, None, None]
            images_BCHW = images_BCHW[b, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
        if self.size is not None and (height, width) != (self.size, self.size):
            images_BCHW = TF.resize(
                images_BCHW.contiguous(), [self.size, self.size], antialias=True
            )  # bilinear, as the paper's torchvision pipeline
        if self.flip:
            flips = _to(flips, device).view(-1, 1, 1, 1)
            images_BCHW = torch.where(flips, images_BCHW.flip(-1), images_BCHW)
        return images_BCHW.contiguous()

    def augment(self, images_BCHW: Tensor) -> Tensor:
        return self.apply(images_BCHW, *self.sample(images_BCHW.shape[0]))

    def __call__(self, images_BCHW: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """The trainer's ``batch_transform`` hook."""
        return self.augment(images_BCHW), labels

    def __repr__(self) -> str:
        return f"DeviceAugment(size={self.size}, padding={self.padding}, crop={self.crop}, flip={self.flip})"


def _to(t: Tensor, device: torch.device) -> Tensor:
    if device.type == "cuda" and t.device.type == "cpu":
        # Pinned + non_blocking: the few bytes of draws do not stall the step with a host sync.
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def build_device_augment(preset: str | None, size: int | None, seed: int = 0) -> DeviceAugment | None:
    """``trainer.device_augment`` -> an augmenter (None for ``null``)."""
    if preset is None:
        return None
    if preset == "baseline2":
        return DeviceAugment(size=size, padding=4, crop=True, flip=True, seed=seed)
    if preset == "baseline1":
        return DeviceAugment(size=size, flip=True, seed=seed)
    raise UserError(f"trainer.device_augment must be null or one of {', '.join(PRESETS)}, got '{preset}'")


def decode_jpeg_batch(data: Sequence[Tensor], size: int, device: torch.device | str = "cuda") -> Tensor:
    """Decode JPEG files (1-D uint8 tensors of their bytes) on ``device`` (nvJPEG on CUDA) and
    resize each to ``size x size`` (bilinear, antialiased): uint8 ``[B, 3, size, size]``."""
    images = decode_jpeg(list(data), mode=ImageReadMode.RGB, device=device)
    return torch.stack([TF.resize(im, [size, size], antialias=True) for im in images])
