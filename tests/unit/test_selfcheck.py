"""First-batch self-checks of the fast paths: each failure forced on the CPU, with its fallback."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import build_test_run
from spikingjelly.activation_based import neuron

from i2e_train.events import i2e_triton
from i2e_train.models import build_model
from i2e_train.training import selfcheck, speed

RUN = (
    "trainer.epochs=1",
    "trainer.limit_train_batches=1",
    "dataset.image_size=16",
    "trainer.preview_samples=0",
)
pytestmark = pytest.mark.skipif(i2e_triton._triton() is None, reason="needs triton (its interpreter on CPU)")


def first_row(run_dir) -> dict:
    return json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])


def test_auto_runs_on_cuda_only_and_off_never():
    assert selfcheck.should_run("auto", torch.device("cuda")) and not selfcheck.should_run(
        "auto", torch.device("cpu")
    )
    assert selfcheck.should_run("on", torch.device("cpu")) and not selfcheck.should_run(
        "off", torch.device("cuda")
    )


def test_a_correct_kernel_passes_and_is_recorded(tmp_path):
    trainer = build_test_run(tmp_path, *RUN, "trainer.self_check=on")
    trainer.fit()
    check = first_row(tmp_path)["self_check"]["i2e_kernel"]
    assert check["status"] == "passed" and check["fallback"] is None
    assert trainer.converter.backend == "auto"


@pytest.mark.parametrize("failure", ["mismatch", "error"])
def test_a_wrong_or_failing_kernel_falls_back_to_the_torch_path(tmp_path, monkeypatch, caplog, failure):
    real = i2e_triton.convert

    def broken(images, *args, **kwargs):
        if failure == "error":
            raise RuntimeError("illegal memory access")
        events = real(images, *args, **kwargs)
        events.view(-1)[7] = 1 - events.view(-1)[7]  # one event flipped
        return events

    monkeypatch.setattr(i2e_triton, "convert", broken)
    trainer = build_test_run(tmp_path, *RUN, "trainer.self_check=on")
    trainer.fit()
    check = first_row(tmp_path)["self_check"]["i2e_kernel"]
    assert check["status"] == failure and check["fallback"] == "torch"
    assert ("2 events differ" if failure == "mismatch" else "illegal memory access") in check[
        "detail"
    ]  # fixed + drawn pairs
    assert trainer.converter.backend == "torch"  # the rest of the run takes the safe path
    assert "self-check i2e_kernel failed" in caplog.text


def _precision_configured_model() -> torch.nn.Module:
    """A model whose LIF nodes are set up the way SpikingJelly's precision API leaves them."""
    model = build_model("ms_resnet18", 10)
    for m in model.modules():
        if isinstance(m, neuron.LIFNode):
            m._neuron_precision = (torch.bfloat16, "fp32", "fp32")
    return model


def test_a_failing_precision_lif_falls_back_to_the_fp32_cast():
    # On a CPU the precision API's Triton LIF cannot run: the check meets a real exception.
    model = _precision_configured_model()
    result = selfcheck.check_neuron_precision(model, torch.bfloat16)
    assert result is not None and result.status == "error" and result.fallback == "cast"
    assert (
        speed.lif_kernel(model, torch.device("cpu"), torch.bfloat16, compiled=False)
        == "torch-reference (CPU)"
    )
    with speed.observe_lif(model) as seen, torch.autocast("cpu", dtype=torch.bfloat16):
        model((torch.rand(8, 2, 2, 16, 16) > 0.8).float())
    assert seen.state_dtype == torch.float32  # the cast keeps the state fp32


def test_a_precision_lif_that_disagrees_falls_back():
    model = _precision_configured_model()
    first = next(m for m in model.modules() if isinstance(m, neuron.LIFNode))
    first.forward = lambda x: torch.zeros_like(x)  # a kernel that never fires
    result = selfcheck.check_neuron_precision(model, torch.bfloat16)
    assert result.status == "mismatch" and "of spikes differ from the fp32 LIF" in result.detail
    assert all(m._neuron_precision is None for m in model.modules() if isinstance(m, neuron.LIFNode))


def test_nothing_to_check_without_a_fast_path():
    assert selfcheck.check_neuron_precision(build_model("ms_resnet18", 10), torch.bfloat16) is None
    assert selfcheck.check_neuron_precision(_precision_configured_model(), None) is None


EVENT_AUGMENT = ("event_augment=dvs", "event_augment.drop_rate=0.2")


def test_event_augmentation_is_checked_on_the_first_batch(tmp_path):
    trainer = build_test_run(tmp_path, *RUN, *EVENT_AUGMENT, "trainer.self_check=on")
    trainer.fit()
    check = first_row(tmp_path)["self_check"]["event_augment"]
    assert check["status"] == "passed" and "4 samples of 16x16" in check["detail"]
    assert selfcheck.find_event_augment(trainer.parts.events_transform).run_on is None


def test_event_augmentation_that_disagrees_with_the_cpu_runs_on_the_cpu(tmp_path, monkeypatch, caplog):
    """The first call of the permutation is the device's (on this CPU: the check's first), the second
    the CPU reference: a device that moves one entry wrongly is caught, and the run goes on on the CPU."""
    from i2e_train.events.augment import EventAugment

    real, calls = EventAugment._permute, []

    def wrong_on_the_device(self, events, *args):
        calls.append(1)
        out = real(self, events, *args)
        if len(calls) == 1:
            out = out.clone()
            out.view(-1)[3] += 1
        return out

    monkeypatch.setattr(EventAugment, "_permute", wrong_on_the_device)
    trainer = build_test_run(tmp_path, *RUN, *EVENT_AUGMENT, "trainer.self_check=on")
    trainer.fit()
    check = first_row(tmp_path)["self_check"]["event_augment"]
    assert check["status"] == "mismatch" and check["fallback"] == "cpu"
    assert "1 permuted entries differ" in check["detail"]
    assert selfcheck.find_event_augment(trainer.parts.events_transform).run_on == torch.device("cpu")
    assert "self-check event_augment failed" in caplog.text


def _binary_events() -> torch.Tensor:
    return (torch.rand(8, 4, 2, 6, 6, generator=torch.Generator().manual_seed(0)) > 0.7).float()


def test_event_augmentation_that_raises_runs_on_the_cpu():
    from i2e_train.events.augment import EventAugment

    aug = EventAugment(flip_prob=0.5, translate=2, drop_rate=0.1)
    real = aug._apply

    def fails_once(events, params):
        aug._apply = real
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    aug._apply = fails_once
    result = selfcheck.check_event_augment(aug, _binary_events())
    assert result.status == "error" and "illegal memory access" in result.detail
    assert aug.run_on == torch.device("cpu")


def test_a_drop_that_adds_events_is_a_mismatch():
    from i2e_train.events.augment import EventAugment

    aug = EventAugment(flip_prob=0.5, drop_rate=0.3)
    aug._drop = lambda events, seed: events + 1  # not a thinning
    result = selfcheck.check_event_augment(aug, _binary_events())
    assert result.status == "mismatch" and "0 permuted entries differ" in result.detail
    assert aug.run_on == torch.device("cpu")
