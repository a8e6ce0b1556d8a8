"""Model registry: ``build_model(name, num_classes)``."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from .ms_resnet import MSResNet, ms_resnet18, ms_resnet34, neuron_input_fp32

MODELS: dict[str, Callable[[int], MSResNet]] = {
    "ms_resnet18": ms_resnet18,
    "ms_resnet34": ms_resnet34,
}

__all__ = ["MODELS", "MSResNet", "build_model", "count_parameters", "neuron_input_fp32"]


def build_model(name: str, num_classes: int) -> MSResNet:
    """Build a registered model; unknown names raise a ValueError listing the choices."""
    if name not in MODELS:
        raise ValueError(f"unknown model '{name}'; choose one of: {', '.join(MODELS)}")
    if int(num_classes) < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes}")
    return MODELS[name](int(num_classes))


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
