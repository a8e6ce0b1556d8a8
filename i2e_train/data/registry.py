"""The dataset registry: :class:`DataBundle` and the ``@register(name)`` decorator of the builders."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch.utils.data import Dataset


@dataclass
class DataBundle:
    train: Dataset
    val: Dataset
    num_classes: int
    train_transform: Callable[[Any], Any] | None = None
    val_transform: Callable[[Any], Any] | None = None
    events: bool = False
    class_names: list[str] = field(default_factory=list)


Builder = Callable[..., DataBundle]
DATASETS: dict[str, Builder] = {}
# Dataset config keys that are not builder arguments.
NON_BUILDER_KEYS = ("name",)


def register(name: str) -> Callable[[Builder], Builder]:
    def deco(fn: Builder) -> Builder:
        DATASETS[name] = fn
        return fn

    return deco
