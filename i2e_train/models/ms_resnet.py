"""MS-ResNet (membrane-shortcut spiking ResNet) with SpikingJelly multi-step LIF neurons.

Layout and parameter names follow the I2E paper's released checkpoints, so their
``state_dict`` loads without renaming (see ``i2e_train.checkpoint.load_weights``).
Every layer runs in SpikingJelly's multi-step mode on time-major tensors ``[T, B, C, H, W]``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from spikingjelly.activation_based import layer, neuron, surrogate
from torch import Tensor, nn

__all__ = ["MSResNet", "MSBasicBlock", "lif", "ms_resnet18", "ms_resnet34"]


def lif() -> neuron.LIFNode:
    """The paper's neuron. SpikingJelly requires Python floats for tau/threshold/reset."""
    return neuron.LIFNode(
        tau=2.0,
        v_threshold=1.0,
        v_reset=0.0,
        detach_reset=True,
        decay_input=False,
        surrogate_function=surrogate.ATan(),
        step_mode="m",
    )


class Conv3x3(layer.Conv2d):
    """SpikingJelly's multi-step 3x3 convolution (padding 1), computed as the 1x1 convolution of its
    centre tap on 1x1 feature maps (the last stages of 32x32 inputs: digits, MNIST).

    There only the centre tap meets a pixel; the other eight multiply the zero padding, so the
    result and the gradients are the same (the other taps' gradient is exactly 0). It matters on
    CPUs: oneDNN runs a 3x3 convolution of a 1x1 map ~30x slower than the equivalent 1x1 one (its
    backward was 80% of a digits training step). Parameter names and shapes are unchanged."""

    def _conv_forward(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        if x.shape[-2:] == (1, 1) and self.padding_mode == "zeros":
            return F.conv2d(x, weight[:, :, 1:2, 1:2], bias, 1, 0, 1, self.groups)
        return super()._conv_forward(x, weight, bias)


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> layer.Conv2d:
    return Conv3x3(in_planes, out_planes, 3, stride=stride, padding=1, bias=False, step_mode="m")


def batch_norm(planes: int) -> layer.BatchNorm2d:
    return layer.BatchNorm2d(planes, step_mode="m")


class MSBasicBlock(nn.Module):
    """``BN(Conv(LIF(BN(Conv(LIF(x)))))) + shortcut(x)``: the shortcut adds membrane inputs, not spikes."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.sn1 = lif()
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn1 = batch_norm(planes)
        self.sn2 = lif()
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = batch_norm(planes)
        self.downsample: nn.Sequential | None = None
        if stride != 1 or in_planes != planes:
            # Index 0 is the neuron so that the conv/BN names match the released checkpoints.
            self.downsample = nn.Sequential(
                lif(),
                layer.Conv2d(in_planes, planes, 1, stride=stride, bias=False, step_mode="m"),
                batch_norm(planes),
            )

    def forward(self, x_TBCHW: Tensor) -> Tensor:
        out = self.bn1(self.conv1(self.sn1(x_TBCHW)))
        out = self.bn2(self.conv2(self.sn2(out)))
        shortcut = x_TBCHW if self.downsample is None else self.downsample(x_TBCHW)
        return out + shortcut


class MSResNet(nn.Module):
    """Input events ``[T, B, 2, H, W]`` (ON/OFF); output logits ``[B, num_classes]`` (mean over T)."""

    def __init__(self, blocks: list[int], num_classes: int = 1000, in_channels: int = 2) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.in_planes = 64
        # No neuron before the stem: the input already is spikes.
        self.conv1 = layer.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False, step_mode="m")
        self.bn1 = batch_norm(64)
        self.maxpool = layer.MaxPool2d(3, stride=2, padding=1, step_mode="m")
        self.layer1 = self._make_layer(64, blocks[0], stride=1)
        self.layer2 = self._make_layer(128, blocks[1], stride=2)
        self.layer3 = self._make_layer(256, blocks[2], stride=2)
        self.layer4 = self._make_layer(512, blocks[3], stride=2)
        self.avgpool = layer.AdaptiveAvgPool2d((1, 1), step_mode="m")
        self.sn = lif()
        self.fc = nn.Linear(512 * MSBasicBlock.expansion, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _make_layer(self, planes: int, num_blocks: int, stride: int) -> nn.Sequential:
        layers = [MSBasicBlock(self.in_planes, planes, stride)]
        self.in_planes = planes * MSBasicBlock.expansion
        layers += [MSBasicBlock(self.in_planes, planes) for _ in range(1, num_blocks)]
        return nn.Sequential(*layers)

    def forward_features(self, events_TBCHW: Tensor) -> Tensor:
        """Spikes of the last neuron layer, ``[T, B, 512]``."""
        if events_TBCHW.dim() != 5:
            raise ValueError(f"expected events [T, B, C, H, W], got shape {tuple(events_TBCHW.shape)}")
        x = self.maxpool(self.bn1(self.conv1(events_TBCHW)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.sn(self.avgpool(x)).flatten(2)

    def forward(self, events_TBCHW: Tensor) -> Tensor:
        return self.fc(self.forward_features(events_TBCHW)).mean(0)

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier (transfer to a dataset with another class count)."""
        self.fc = nn.Linear(self.fc.in_features, num_classes).to(self.fc.weight.device)
        self.num_classes = num_classes


def ms_resnet18(num_classes: int = 1000) -> MSResNet:
    return MSResNet([2, 2, 2, 2], num_classes)


def ms_resnet34(num_classes: int = 1000) -> MSResNet:
    return MSResNet([3, 4, 6, 3], num_classes)


def neuron_input_fp32(model: nn.Module) -> list[torch.utils.hooks.RemovableHandle]:
    """Feed every LIF float32 input so its state stays fp32 under autocast.

    SpikingJelly keeps the membrane in the input's dtype; a bf16/fp16 state makes it fall
    back to a slow per-timestep Python loop instead of its fused kernel.
    """

    def to_fp32(_module: nn.Module, args: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        return tuple(a.float() if a.is_floating_point() else a for a in args)

    return [m.register_forward_pre_hook(to_fp32) for m in model.modules() if isinstance(m, neuron.LIFNode)]
