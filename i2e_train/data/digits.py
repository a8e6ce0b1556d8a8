"""scikit-learn's handwritten digits: 1,797 real 8x8 images, shipped inside the package.

The embedded default dataset: upscaled to ``image_size`` (bicubic), grey to RGB, with a
stratified train/val split drawn from the seed (20% = 360 validation digits).
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import TensorDataset
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2 import functional as TF

from .registry import DataBundle, register


def load_digits_uint8(image_size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """All digits as uint8 RGB ``[N, 3, S, S]`` and int64 labels ``[N]``."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    # Pixel values are counts 0..16; map them onto the full 8-bit range.
    grey = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)
    images = torch.from_numpy(grey)[:, None]  # [N, 1, 8, 8]
    if image_size != images.shape[-1]:
        images = TF.resize(
            images, [image_size, image_size], interpolation=InterpolationMode.BICUBIC, antialias=True
        )
    return images.expand(-1, 3, -1, -1).contiguous(), torch.from_numpy(digits.target).long()


@register("digits")
def build_digits(
    root: str | None = None,
    image_size: int = 16,
    num_classes: int = 10,
    val_fraction: float = 0.2,
    split_seed: int = 0,
    crop_padding: int = 2,
) -> DataBundle:
    """``root`` is unused (the data ships with scikit-learn). ``crop_padding`` > 0 adds a random
    translation of up to that many pixels (edge padding) in training; flips would change digits."""
    from sklearn.model_selection import train_test_split

    del root
    if num_classes != 10:
        raise ValueError(f"dataset.num_classes must be 10 for digits, got {num_classes}")
    images, labels = load_digits_uint8(image_size)
    train_idx, val_idx = train_test_split(
        np.arange(len(labels)),
        test_size=val_fraction,
        stratify=labels.numpy(),
        random_state=split_seed,
    )
    train_idx, val_idx = np.sort(train_idx), np.sort(val_idx)
    train_tf = None
    if crop_padding > 0:
        train_tf = v2.RandomCrop(image_size, padding=crop_padding, padding_mode="edge")
    return DataBundle(
        train=TensorDataset(images[train_idx], labels[train_idx]),
        val=TensorDataset(images[val_idx], labels[val_idx]),
        num_classes=10,
        train_transform=train_tf,
        class_names=[str(i) for i in range(10)],
    )
