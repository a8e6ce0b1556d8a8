"""Image folders: ``root/train/<class>/*.jpg`` and ``root/val/<class>/*.jpg`` (torchvision ImageFolder)."""

from __future__ import annotations

from pathlib import Path

import torch
from torchvision.datasets import ImageFolder
from torchvision.transforms import InterpolationMode, v2

from . import DataBundle, register


def _split_dir(root: str | None, split: str, dataset: str) -> Path:
    if not root:
        raise ValueError(f"dataset.root is not set; point it at the folder holding train/ and val/ for {dataset}")
    path = Path(root).expanduser() / split
    if not path.is_dir():
        raise FileNotFoundError(f"{dataset}: '{path}' does not exist; expected {root}/{split}/<class>/<image>")
    return path


def uint8_pipeline(image_size: int, train: bool) -> v2.Compose:
    """PIL image -> uint8 ``[3, S, S]``: resize (bilinear, antialiased), horizontal flip in training."""
    steps: list = [
        v2.PILToTensor(),
        v2.RGB(),
        v2.Resize((image_size, image_size), interpolation=InterpolationMode.BILINEAR, antialias=True),
    ]
    if train:
        steps.append(v2.RandomHorizontalFlip())
    steps.append(v2.ToDtype(torch.uint8))
    return v2.Compose(steps)


@register("image_folder")
def build_image_folder(
    root: str | None = None,
    image_size: int = 224,
    num_classes: int | None = None,
) -> DataBundle:
    train = ImageFolder(str(_split_dir(root, "train", "image_folder")))
    val = ImageFolder(str(_split_dir(root, "val", "image_folder")))
    if train.classes != val.classes:
        raise ValueError(
            f"image_folder: train/ has classes {train.classes[:5]}... but val/ has {val.classes[:5]}...; "
            "both need the same class folders"
        )
    del num_classes  # checked against the data by the caller
    return DataBundle(
        train=train,
        val=val,
        num_classes=len(train.classes),
        train_transform=uint8_pipeline(image_size, train=True),
        val_transform=uint8_pipeline(image_size, train=False),
        class_names=list(train.classes),
    )
