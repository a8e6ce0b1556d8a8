"""MS-ResNet: shapes, parameter counts and names of the paper's released models, LIF settings."""

from __future__ import annotations

import pytest
import torch
from spikingjelly.activation_based import functional, neuron, surrogate

from i2e_train.models import build_model, count_parameters, neuron_input_fp32


@pytest.mark.parametrize(
    ("name", "classes", "expected"),
    [("ms_resnet18", 10, 11_178_506), ("ms_resnet18", 1000, 11_686_376), ("ms_resnet34", 1000, 21_794_536)],
)
def test_parameter_counts_match_paper(name, classes, expected):
    assert count_parameters(build_model(name, classes)) == expected


def test_parameter_names_match_released_checkpoints():
    keys = set(build_model("ms_resnet18", 10).state_dict())
    for key in ["conv1.weight", "bn1.weight", "bn1.running_mean", "fc.weight", "fc.bias"]:
        assert key in keys
    for stage in (1, 2, 3, 4):
        for part in ("conv1.weight", "bn1.bias", "conv2.weight", "bn2.running_var"):
            assert f"layer{stage}.1.{part}" in keys
    for stage in (2, 3, 4):
        assert f"layer{stage}.0.downsample.1.weight" in keys  # conv
        assert f"layer{stage}.0.downsample.2.weight" in keys  # BN
        assert not any(k.startswith(f"layer{stage}.0.downsample.0.") for k in keys)  # index 0: LIF
    assert "layer1.0.downsample.1.weight" not in keys
    assert not any("i2e" in k for k in keys)


def test_forward_shapes_and_time_mean():
    torch.manual_seed(0)
    model = build_model("ms_resnet18", 7).eval()
    events = (torch.rand(8, 3, 2, 32, 32) > 0.8).float()
    with torch.no_grad():
        logits = model(events)
        functional.reset_net(model)
        per_t = model.fc(model.forward_features(events))
        functional.reset_net(model)
    assert logits.shape == (3, 7)
    assert per_t.shape == (8, 3, 7)
    torch.testing.assert_close(logits, per_t.mean(0))


def test_neurons_are_the_papers_lif():
    model = build_model("ms_resnet18", 10)
    lifs = [m for m in model.modules() if isinstance(m, neuron.LIFNode)]
    # 2 per block (8 blocks), 3 downsample, 1 head
    assert len(lifs) == 8 * 2 + 3 + 1
    for m in lifs:
        assert m.tau == 2.0 and m.v_threshold == 1.0 and m.v_reset == 0.0
        assert m.detach_reset is True and m.decay_input is False
        assert isinstance(m.surrogate_function, surrogate.ATan)
        assert m.step_mode == "m"


def test_reset_net_clears_state_between_batches():
    torch.manual_seed(0)
    model = build_model("ms_resnet18", 10).eval()
    events = (torch.rand(8, 2, 2, 32, 32) > 0.7).float()
    with torch.no_grad():
        first = model(events)
        functional.reset_net(model)
        again = model(events)
        functional.reset_net(model)
        stale = model(events)
        stale_again = model(events)  # no reset: the membrane carries over
    torch.testing.assert_close(first, again)
    torch.testing.assert_close(first, stale)
    assert not torch.equal(stale, stale_again)


def test_backward_reaches_every_parameter():
    torch.manual_seed(0)
    model = build_model("ms_resnet18", 10)
    events = (torch.rand(8, 4, 2, 32, 32) > 0.7).float()
    model(events).sum().backward()
    functional.reset_net(model)
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing


def test_neuron_input_fp32_keeps_state_fp32_under_autocast():
    torch.manual_seed(0)
    model = build_model("ms_resnet18", 10)
    neuron_input_fp32(model)
    events = (torch.rand(8, 2, 2, 32, 32) > 0.7).float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(events)
    states = [m.v for m in model.modules() if isinstance(m, neuron.LIFNode)]
    assert all(isinstance(v, torch.Tensor) and v.dtype == torch.float32 for v in states)


def test_unknown_model_and_bad_class_count():
    with pytest.raises(ValueError, match="unknown model 'resnet50'.*ms_resnet18"):
        build_model("resnet50", 10)
    with pytest.raises(ValueError, match="num_classes"):
        build_model("ms_resnet18", 0)


def test_reset_classifier():
    model = build_model("ms_resnet18", 1000)
    model.reset_classifier(10)
    assert model.fc.out_features == 10
    assert count_parameters(model) == 11_178_506


def test_sync_batchnorm_conversion_keeps_names_state_and_outputs():
    from i2e_train.models.sync_bn import SeqSyncBatchNorm, convert_sync_batchnorm

    torch.manual_seed(0)
    model = build_model("ms_resnet18", 10)
    events = (torch.rand(8, 2, 2, 32, 32) > 0.7).float()
    with torch.no_grad():
        model.train()
        ref = model(events)
        functional.reset_net(model)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    converted = convert_sync_batchnorm(build_model("ms_resnet18", 10))
    converted.load_state_dict(state)
    assert sum(isinstance(m, SeqSyncBatchNorm) for m in converted.modules()) == 20
    assert list(converted.state_dict()) == list(state)
    with torch.no_grad():
        out = converted.train()(events)  # single process: same statistics over T*B*H*W
    torch.testing.assert_close(out, ref)


@pytest.mark.parametrize("stride", [1, 2])
def test_conv3x3_on_a_1x1_map_is_its_centre_tap_exactly(stride):
    """The 1x1-map fast path: the same outputs and gradients as the full 3x3 convolution (whose eight
    outer taps only meet zero padding), so training is unchanged."""
    from torch.nn import functional as F

    from i2e_train.models.ms_resnet import conv3x3

    torch.manual_seed(0)
    conv = conv3x3(16, 8, stride)
    x = torch.randn(3, 2, 16, 1, 1, requires_grad=True)  # [T, B, C, 1, 1]
    fast = conv(x)
    full = F.conv2d(x.flatten(0, 1), conv.weight, None, stride, 1).unflatten(0, (3, 2))
    torch.testing.assert_close(fast, full, rtol=1e-6, atol=1e-6)
    (g_fast,) = torch.autograd.grad(fast.square().sum(), conv.weight)
    (g_full,) = torch.autograd.grad(full.square().sum(), conv.weight)
    torch.testing.assert_close(g_fast, g_full, rtol=1e-5, atol=1e-6)
    assert not g_full[:, :, 0, 0].any() and g_fast[:, :, 1, 1].abs().sum() > 0
    larger = torch.randn(1, 2, 16, 5, 5)  # any other size takes the ordinary path
    torch.testing.assert_close(
        conv(larger), F.conv2d(larger.flatten(0, 1), conv.weight, None, stride, 1).unflatten(0, (1, 2))
    )
