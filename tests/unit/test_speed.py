"""Speed options: neuron state precision, channels_last, compile, memopt, and the kernel report."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import compose
from spikingjelly.activation_based import functional, neuron

from i2e_train import config
from i2e_train.config import TrainerOptions
from i2e_train.errors import UserError
from i2e_train.events.i2e import I2E
from i2e_train.models import build_model
from i2e_train.models.ms_resnet import MSBasicBlock
from i2e_train.training import engine, speed

CPU = torch.device("cpu")


def events(batch: int = 2, size: int = 16) -> torch.Tensor:
    torch.manual_seed(1)
    return (torch.rand(8, batch, 2, size, size) > 0.8).float()


def lif_states(model: torch.nn.Module) -> list[torch.Tensor]:
    return [m.v for m in model.modules() if isinstance(m, neuron.LIFNode)]


def one_step(model: torch.nn.Module, amp_dtype: torch.dtype | None, size: int = 16) -> engine.StepOutput:
    """A real training step (I2E + forward + backward + SGD) on photographs-free synthetic images."""
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (2, 3, size, size), dtype=torch.uint8, generator=gen)
    parts = engine.StepParts(
        model=model,
        plain=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.01),
        criterion=torch.nn.CrossEntropyLoss(),
        amp=engine.AmpSettings("cpu", amp_dtype),
        device=CPU,
        converter=I2E(0.1, dtype=amp_dtype or torch.float32),
    )
    return engine.train_step(parts, [(images, torch.tensor([1, 3]))], seed=0)


def test_neuron_precision_resolution() -> None:
    assert speed.resolve_neuron_precision("auto", CPU, None) == "none"
    assert speed.resolve_neuron_precision("auto", CPU, torch.bfloat16) == "cast"
    assert speed.resolve_neuron_precision("cast", CPU, torch.float16) == "cast"
    with pytest.raises(UserError, match="needs a CUDA device.*neuron_precision=cast"):
        speed.resolve_neuron_precision("spikingjelly", CPU, torch.bfloat16)
    with pytest.raises(UserError, match="trainer.neuron_precision must be one of"):
        speed.resolve_neuron_precision("fp8", CPU, torch.bfloat16)


def test_precision_api_refusal_falls_back_under_auto_only(monkeypatch: pytest.MonkeyPatch) -> None:
    # SpikingJelly's precision API needs CUDA; pretend 'auto' chose it on this CPU.
    monkeypatch.setattr(speed, "resolve_neuron_precision", lambda mode, device, dtype: "spikingjelly")
    model = build_model("ms_resnet18", 10)
    assert speed.keep_neuron_state_fp32(model, CPU, torch.bfloat16, "auto") == "cast"
    with speed.observe_lif(model) as seen, torch.autocast("cpu", dtype=torch.bfloat16):
        model(events())
    assert seen.state_dtype == torch.float32
    with pytest.raises(UserError, match="requires a CUDA device.*neuron_precision=cast"):
        speed.keep_neuron_state_fp32(build_model("ms_resnet18", 10), CPU, torch.bfloat16, "spikingjelly")


@pytest.mark.parametrize("channels_last", [False, True])
def test_bf16_cast_keeps_state_fp32_and_composes_with_channels_last(channels_last: bool) -> None:
    torch.manual_seed(0)
    model = build_model("ms_resnet18", 10)
    method = speed.prepare_model(
        model, CPU, torch.bfloat16, neuron_precision="auto", channels_last=channels_last
    )
    assert method == "cast"
    assert model.conv1.weight.is_contiguous(memory_format=torch.channels_last) == channels_last
    with speed.observe_lif(model) as seen:
        result = one_step(model, torch.bfloat16)
    assert not result.nonfinite
    assert seen.input_dtype == torch.float32 and seen.state_dtype == torch.float32
    assert speed.lif_kernel(model, CPU, torch.bfloat16, compiled=False) == "torch-reference (CPU)"


def test_without_a_state_fix_the_state_follows_bf16_and_is_reported_as_such() -> None:
    model = build_model("ms_resnet18", 10)
    with speed.observe_lif(model) as seen, torch.autocast("cpu", dtype=torch.bfloat16):
        model(events())
    assert seen.input_dtype == torch.bfloat16 and seen.state_dtype == torch.bfloat16
    assert "half-precision state" in speed.lif_kernel(model, CPU, torch.bfloat16, compiled=False)


def test_channels_last_fp32_gives_the_same_logits() -> None:
    torch.manual_seed(0)
    model = build_model("ms_resnet18", 10).eval()
    twin = copy.deepcopy(model)
    speed.prepare_model(twin, CPU, None, channels_last=True)
    x = events()
    with torch.no_grad():
        a = model(x)
        functional.reset_net(model)
        b = twin(x)
    # Same maths in another memory layout: only float summation order can differ.
    assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_compile_then_reset_and_step() -> None:
    torch.manual_seed(0)
    model = build_model("ms_resnet18", 10)
    reference = copy.deepcopy(model)
    x = events(size=16)
    expected = reference(x)
    functional.reset_net(reference)
    compiled = speed.compile_model(model, backend="eager")  # dynamo tracing without a C++ build
    for _ in range(2):  # the second call would see stale membranes if reset missed a module
        out = compiled(x)
        functional.reset_net(compiled)
        assert torch.equal(out, expected)
    assert all(isinstance(v, float) for v in lif_states(model))


def test_memopt_keeps_names_and_gradients() -> None:
    torch.manual_seed(0)
    model = build_model("ms_resnet18", 10)
    twin = copy.deepcopy(model)
    x = events()
    wrapped = speed.apply_memopt(twin, x, 1, (MSBasicBlock,))
    assert wrapped == 8  # every residual block of ms_resnet18
    assert list(twin.state_dict()) == list(model.state_dict())
    for m in (model, twin):
        m(x).square().sum().backward()
        functional.reset_net(m)
    for (name, p), q in zip(model.named_parameters(), twin.parameters(), strict=True):
        assert torch.allclose(p.grad, q.grad, atol=1e-6), name
    assert speed.apply_memopt(build_model("ms_resnet18", 10), x, 0, (MSBasicBlock,)) == 0
    with pytest.raises(UserError, match="trainer.memopt"):
        speed.apply_memopt(model, x, 3, (MSBasicBlock,))


def test_spikingjelly_log_is_captured() -> None:
    from spikingjelly.activation_based.precision import prepare_model_for_precision

    report = speed.KernelReport()
    with speed.spikingjelly_log(report.add):
        prepare_model_for_precision(build_model("ms_resnet18", 10), CPU, "fp32")
    assert any("Preparation completed" in line for line in report.lines)
    lines = []
    with speed.spikingjelly_log(lines.append):
        pass
    prepare_model_for_precision(build_model("ms_resnet18", 10), CPU, "fp32")  # logging is off again
    assert lines == []
    report.add(
        "ops selection operator=sj_lif device=cuda:0 (H100) execution=eager implementation=cuda forward=x"
    )
    assert report.selected == "cuda"


@pytest.mark.parametrize(
    ("key", "value", "needle"),
    [
        ("memopt", 2, "trainer.memopt must be 0"),
        ("neuron_precision", "fp8", "trainer.neuron_precision must be one of"),
        ("device_augment", "autoaugment", "trainer.device_augment must be null or one of"),
        ("device_augment_size", 0, "trainer.device_augment_size must be null or >= 1"),
        ("compile", "yes", "trainer.compile must be true or false"),
    ],
)
def test_trainer_speed_keys_are_validated(key: str, value: object, needle: str) -> None:
    defaults = config.section(compose(), "trainer")
    with pytest.raises(UserError, match=needle):
        config.options(TrainerOptions, {**defaults, key: value}, "trainer")


def test_trainer_defaults_are_the_measured_ones() -> None:
    opts = config.read(TrainerOptions, compose(), "trainer")
    assert (opts.precision, opts.neuron_precision, opts.channels_last) == ("auto", "auto", "auto")
    assert (opts.compile, opts.memopt, opts.cudnn_benchmark, opts.device_augment) == (False, 0, True, None)


CUDA = torch.device("cuda", 0)  # a device object only: resolving a default touches no GPU


def test_auto_defaults_resolve_per_device() -> None:
    """On CUDA: fp16 with loss scaling, channels_last, SpikingJelly's fp32 LIF state (the fastest
    safe row measured on an H200, docs/benchmarks.md); on the CPU fp32 and NCHW, as before."""
    from i2e_train.training.builders import resolve_amp

    assert resolve_amp("auto", CUDA).dtype == torch.float16
    assert resolve_amp("auto", CPU).dtype is None
    assert resolve_amp("bf16", CUDA).dtype == torch.bfloat16 and resolve_amp("fp32", CUDA).dtype is None
    assert speed.resolve_channels_last("auto", CUDA) is True
    assert speed.resolve_channels_last("auto", CPU) is False
    assert (
        speed.resolve_channels_last(False, CUDA) is False and speed.resolve_channels_last(True, CPU) is True
    )
    triton = speed.importlib.util.find_spec("triton") is not None
    assert speed.resolve_neuron_precision("auto", CUDA, torch.float16) == (
        "spikingjelly" if triton else "cast"
    )
    assert speed.resolve_neuron_precision("auto", CPU, None) == "none"


def test_the_documented_defaults_match_the_yaml() -> None:
    """docs/benchmarks.md's "defaults these measurements decide" names every default as the YAML sets it."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "benchmarks.md").read_text()
    section = text.split("### Defaults these measurements decide", 1)[1].split("\n## ", 1)[0]
    opts = config.section(compose(), "trainer")
    for key in ("precision", "neuron_precision", "channels_last", "compile", "cudnn_benchmark", "memopt"):
        value = str(opts[key]).lower() if isinstance(opts[key], bool) else opts[key]
        assert f"| `trainer.{key}` | `{value}`" in section, key
    assert "| `i2e.backend` | `auto`" in section and config.section(compose(), "i2e")["backend"] == "auto"


def test_channels_last_values_are_checked() -> None:
    defaults = config.section(compose(), "trainer")
    for good in (True, False, "auto"):
        assert config.options(TrainerOptions, {**defaults, "channels_last": good}, "trainer")
    with pytest.raises(UserError, match="trainer.channels_last must be auto, true or false, got 'on'"):
        config.options(TrainerOptions, {**defaults, "channels_last": "on"}, "trainer")


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["spikingjelly", "cast"])
def test_cuda_bf16_runs_a_fused_lif_kernel(mode: str) -> None:
    device = torch.device("cuda")
    model = build_model("ms_resnet18", 10).to(device)
    speed.prepare_model(model, device, torch.bfloat16, neuron_precision=mode, channels_last=True)
    report = speed.KernelReport()
    with (
        speed.observe_lif(model) as seen,
        speed.spikingjelly_log(report.add),
        torch.autocast("cuda", torch.bfloat16),
    ):
        model(events().to(device)).float().sum().backward()
    assert seen.state_dtype == torch.float32
    kernel = speed.lif_kernel(model, device, torch.bfloat16, compiled=False)
    assert "fallback" not in kernel and "torch-reference" not in kernel, (kernel, report.lines)
