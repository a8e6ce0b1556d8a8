"""Augmentation presets (docs/recipes.md) and the paper's optional training extras.

Per-sample pipelines run in the DataLoader workers under the sample's seed (see ``sampler.py``)
and map a PIL image or uint8 tensor to a uint8 tensor ``[3, S, S]``; I2E then runs on the device.

- ``baseline1``: resize to ``S x S``, random horizontal flip.
- ``baseline2``: for low-resolution datasets (``style="small"``: CIFAR, MNIST) pad 4 px (edge),
  random crop back to the native size, resize to ``S x S``, flip; for photographs
  (``style="photo"``: ImageNet, Caltech, Mini-ImageNet, your folders) random resized crop ``S``, flip.
- ``none``: the evaluation pipeline.
- ``device``: no CPU augmentation; images leave the loader at their stored size (CIFAR: 32x32) for
  ``trainer.device_augment``, which pads, crops, resizes and flips the batch on the GPU
  (``data/device_transforms.py``). Set automatically when ``trainer.device_augment`` is on.
- Evaluation: ``small`` resizes to ``S x S`` (CIFAR: 128); ``photo`` resizes the shorter side to
  ``eval_resize`` (default ``S * 256 / 224``: 256 for 224) and centre-crops ``S``.

Resizing is bilinear with antialiasing, as in the paper's training code; ``interpolation=bicubic``
matches the authors' released pre-converted datasets.

The extras act on device batches inside the training step and are drawn from a seed the trainer
sets per step (``manual_seed``), never from the global RNG state, so a resumed run replays them:
:class:`MixBatch` (mixup / cutmix via torchvision v2, returning soft targets) and
:class:`TemporalSubset` (train on a random subset of the timesteps, ``t_train``).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor
from torchvision.transforms import InterpolationMode, v2

from ..seeding import mix_seed

AUGMENTS = ("baseline1", "baseline2", "none", "device")
INTERPOLATIONS = {"bilinear": InterpolationMode.BILINEAR, "bicubic": InterpolationMode.BICUBIC}
Style = Literal["small", "photo"]


def interpolation_mode(name: str) -> InterpolationMode:
    if name not in INTERPOLATIONS:
        raise ValueError(f"dataset.interpolation must be one of {', '.join(INTERPOLATIONS)}, got '{name}'")
    return INTERPOLATIONS[name]


def _decode() -> list[v2.Transform]:
    # PIL -> uint8 tensor; grey (MNIST) -> 3 channels. Tensors pass PILToTensor unchanged.
    return [v2.PILToTensor(), v2.RGB()]


def _resize_square(size: int, interpolation: str) -> v2.Transform:
    return v2.Resize((size, size), interpolation=interpolation_mode(interpolation), antialias=True)


def eval_transform(
    image_size: int,
    *,
    style: Style,
    interpolation: str = "bilinear",
    eval_resize: int | None = None,
) -> v2.Compose:
    """The evaluation pipeline: uint8 ``[3, S, S]``."""
    steps = _decode()
    if style == "small":
        steps.append(_resize_square(image_size, interpolation))
    else:
        shorter = eval_resize if eval_resize is not None else round(image_size * 256 / 224)
        if shorter < image_size:
            raise ValueError(f"dataset.eval_resize={shorter} is smaller than dataset.image_size={image_size}")
        steps += [
            v2.Resize(shorter, interpolation=interpolation_mode(interpolation), antialias=True),
            v2.CenterCrop(image_size),
        ]
    return v2.Compose([*steps, v2.ToDtype(torch.uint8)])


def train_transform(
    augment: str,
    image_size: int,
    *,
    style: Style,
    interpolation: str = "bilinear",
    native_size: int | None = None,
    crop_padding: int = 4,
    hflip: bool = True,
    eval_resize: int | None = None,
) -> v2.Compose:
    """The training pipeline of preset ``augment`` (see the module docstring): uint8 ``[3, S, S]``."""
    if augment not in AUGMENTS:
        raise ValueError(f"dataset.augment must be one of {', '.join(AUGMENTS)}, got '{augment}'")
    if augment == "none":
        return eval_transform(image_size, style=style, interpolation=interpolation, eval_resize=eval_resize)
    if augment == "device":
        if style != "small":
            raise ValueError(
                "trainer.device_augment needs images of one stored size (CIFAR, MNIST); photographs of "
                "varying sizes are augmented in the loader: set trainer.device_augment=null"
            )
        return v2.Compose([*_decode(), v2.ToDtype(torch.uint8)])
    steps = _decode()
    if augment == "baseline1":
        steps.append(_resize_square(image_size, interpolation))
    elif style == "small":
        if native_size is None:
            raise ValueError("baseline2 for low-resolution datasets needs the native image size")
        if crop_padding < 0:
            raise ValueError(f"dataset.crop_padding must be >= 0, got {crop_padding}")
        steps += [
            v2.Pad(crop_padding, padding_mode="edge"),
            v2.RandomCrop(native_size),
            _resize_square(image_size, interpolation),
        ]
    else:
        steps.append(
            v2.RandomResizedCrop(image_size, interpolation=interpolation_mode(interpolation), antialias=True)
        )
    if hflip:
        steps.append(v2.RandomHorizontalFlip())
    return v2.Compose([*steps, v2.ToDtype(torch.uint8)])


# ----------------------------------------------------------------------------- batch extras
class _StepSeeded:
    """Randomness drawn from a seed set per training step (the trainer calls ``manual_seed``)."""

    def __init__(self) -> None:
        self.seed = 0

    def manual_seed(self, seed: int) -> None:
        self.seed = int(seed)


class MixBatch(_StepSeeded):
    """Mixup and/or CutMix on a device batch (torchvision v2), before I2E.

    With probability ``prob`` a batch is mixed; when both are enabled CutMix is chosen with
    probability ``switch_prob``. Mixed batches become float32 images in [0, 1], uint8 converted by
    torchvision's ``ToDtype(float32, scale=True)`` (``x * float32(1/255)``, exactly the values I2E
    gives uint8 ``x``, so an unmixed image converts to the same events either way), with soft
    one-hot targets; the training loss (cross-entropy with label smoothing) accepts both. Unmixed
    batches pass through unchanged.
    """

    def __init__(
        self,
        num_classes: int,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        prob: float = 1.0,
        switch_prob: float = 0.5,
        until_epoch: int | None = None,
    ) -> None:
        super().__init__()
        if mixup_alpha < 0 or cutmix_alpha < 0:
            raise ValueError("extras.mixup_alpha and extras.cutmix_alpha must be >= 0")
        if not (0.0 <= prob <= 1.0 and 0.0 <= switch_prob <= 1.0):
            raise ValueError("extras.mix_prob and extras.switch_prob must be in [0, 1]")
        self.mixup = v2.MixUp(alpha=mixup_alpha, num_classes=num_classes) if mixup_alpha > 0 else None
        self.cutmix = v2.CutMix(alpha=cutmix_alpha, num_classes=num_classes) if cutmix_alpha > 0 else None
        if self.mixup is None and self.cutmix is None:
            raise ValueError("MixBatch needs extras.mixup_alpha > 0 or extras.cutmix_alpha > 0")
        self.prob = prob
        self.switch_prob = switch_prob
        self.until_epoch = until_epoch
        self.active = True

    def set_epoch(self, epoch: int) -> None:
        """The paper mixes only during the first epochs (``extras.mix_until`` of them)."""
        self.active = self.until_epoch is None or epoch < self.until_epoch

    def __call__(self, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        if not self.active:
            return images, labels
        # torchvision's MixUp/CutMix draw from the CPU generator: seed it for this call only, and
        # move on to a new seed (micro-batches of one step are mixed differently).
        seed, self.seed = self.seed, mix_seed(self.seed, 1)
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            if float(torch.rand(())) >= self.prob:
                return images, labels
            use_cutmix = self.mixup is None or (
                self.cutmix is not None and float(torch.rand(())) < self.switch_prob
            )
            mix = self.cutmix if use_cutmix else self.mixup
            if images.dtype == torch.uint8:
                images_f = v2.functional.to_dtype(images, torch.float32, scale=True)
            else:
                images_f = images.float()
            return mix(images_f, labels)


class TemporalSubset(_StepSeeded):
    """Train on ``t_train`` of the ``T`` timesteps of ``events [T, B, C, H, W]``, drawn per batch.

    ``contiguous=False`` keeps a random subset in temporal order; ``True`` a random window.
    Evaluation always uses all timesteps (the network averages its output over time).
    """

    def __init__(self, t_train: int, contiguous: bool = False) -> None:
        super().__init__()
        if t_train < 1:
            raise ValueError(f"extras.t_train must be >= 1, got {t_train}")
        self.t_train = t_train
        self.contiguous = contiguous

    def indices(self, steps: int) -> Tensor:
        if self.t_train > steps:
            raise ValueError(f"extras.t_train={self.t_train} exceeds the {steps} timesteps of the input")
        g = torch.Generator().manual_seed(self.seed)
        if self.contiguous:
            start = int(torch.randint(steps - self.t_train + 1, (), generator=g))
            return torch.arange(start, start + self.t_train)
        return torch.randperm(steps, generator=g)[: self.t_train].sort().values

    def __call__(self, events_TBCHW: Tensor) -> Tensor:
        return events_TBCHW[self.indices(events_TBCHW.shape[0]).to(events_TBCHW.device)]


class _Chain:
    """Transforms applied in order; each is reseeded from the step's seed with its own salt."""

    def __init__(self, *transforms: object) -> None:
        self.transforms = [t for t in transforms if t is not None]

    def manual_seed(self, seed: int) -> None:
        for i, t in enumerate(self.transforms):
            if hasattr(t, "manual_seed"):
                t.manual_seed(mix_seed(seed, i))

    def set_epoch(self, epoch: int) -> None:
        for t in self.transforms:
            if hasattr(t, "set_epoch"):
                t.set_epoch(epoch)

    def __repr__(self) -> str:
        return " -> ".join(repr(t) for t in self.transforms)


class ChainBatch(_Chain):
    """Batch transforms on the device before I2E (device augmentation, then mixup)."""

    def __call__(self, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        for t in self.transforms:
            images, labels = t(images, labels)
        return images, labels


class ChainEvents(_Chain):
    """Event transforms (event augmentation, then a temporal subset)."""

    def __call__(self, events_TBCHW: Tensor) -> Tensor:
        for t in self.transforms:
            events_TBCHW = t(events_TBCHW)
        return events_TBCHW
