"""First-batch self-checks of the fast paths, on the user's own GPU.

The fused I2E kernel and SpikingJelly's neuron-precision kernels are exact (or near) by
construction and tested on CPUs, but a user's first run on their GPU (another compiler, driver or
architecture) is where a wrong kernel would show. So on the first training batch on CUDA:

* ``i2e_kernel``: the fused Triton kernel's events for this batch are compared with the torch
  reference path (exact equality, fixed and drawn pairs);
* ``neuron_precision``: the LIF configured by SpikingJelly's precision API (half-precision input,
  float32 state) is compared with the plain float32 LIF on the same input: the spikes must agree
  on all but :data:`LIF_TOLERANCE` of the entries (fused kernels may round a membrane potential
  that sits exactly at the threshold differently);
* ``event_augment``: event-domain augmentation (``event_augment.*``) of a few samples of this batch
  on the device against the same parameters on the CPU: the flips, shifts, polarity swaps and time
  reversals must be equal; the drop (whose random numbers differ between devices) may only remove
  whole events of what the permutation kept.

On an exception or a mismatch the run warns once, names what failed, switches to the safe path
(the torch converter; the fp32 input cast of the LIF; event augmentation on the CPU) and records it
in ``metrics.jsonl``. The cost is one extra conversion of the batch, one extra LIF pass on a small
tensor and the augmentation of a few samples twice, once per run.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from typing import Any

import torch
from spikingjelly.activation_based import neuron
from torch import Tensor, nn

from ..monitor import log

LIF_TOLERANCE = 1e-3  # largest fraction of differing spikes between the precision API's LIF and fp32
SAMPLES = 4  # samples of the first batch whose event augmentation is compared with the CPU


@dataclass
class CheckResult:
    name: str  # i2e_kernel | neuron_precision
    status: str  # passed | mismatch | error
    detail: str
    fallback: str | None = None  # the safe path switched to

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def should_run(mode: str, device: torch.device) -> bool:
    """``trainer.self_check``: auto runs on CUDA only (where the fast paths run), on always, off never."""
    return mode == "on" or (mode == "auto" and device.type == "cuda")


def run_checks(
    model: nn.Module,
    converter: nn.Module | None,
    images: Tensor,
    amp_dtype: torch.dtype | None,
    events_transform: Any = None,
) -> list[CheckResult]:
    """Check the fast paths this run uses on its first batch ``images`` (on the training device);
    switch a failing one to its safe path. Returns what was checked. (Draws consumed here do not
    change the run: the step reseeds every random part.)"""
    results = []
    i2e = getattr(converter, "i2e", converter)  # a sensor-wrapped converter checks its I2E
    if i2e is not None and images.dtype in (torch.uint8,) + _FLOATS:
        result = check_i2e_kernel(i2e, images)
        if result is not None:
            results.append(result)
    result = check_neuron_precision(model, amp_dtype)
    if result is not None:
        results.append(result)
    augment = find_event_augment(events_transform)
    if augment is not None:
        from .engine import to_events

        with torch.no_grad():
            events = to_events(images[:SAMPLES], converter, amp_dtype or torch.float32)
        results.append(check_event_augment(augment, events))
    for r in results:
        if r.status != "passed":
            log.warning(
                "self-check %s failed (%s); switched to %s for this run", r.name, r.detail, r.fallback
            )
        else:
            log.info("self-check %s passed (%s)", r.name, r.detail)
    return results


_FLOATS = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def check_i2e_kernel(i2e: nn.Module, images: Tensor) -> CheckResult | None:
    """The converter's fast backend against the torch path on ``images`` (None: no fast backend here)."""
    from ..events.i2e import i2e_convert

    fast = _fast_backend(i2e, images.device)
    if fast is None:
        return None
    pairs = i2e.sample_pairs(images.shape[0]) if i2e.random_vectors else None
    try:
        mismatches = 0
        for use in (None, pairs):
            kw = {"ratio": i2e.ratio, "order": i2e.order, "pairs": use, "dtype": i2e.dtype}
            got = i2e_convert(images, backend=fast, **kw)
            want = i2e_convert(images, backend="torch", **kw)
            mismatches += int((got != want).sum())
    except Exception as e:  # noqa: BLE001 - any failure of the fast path sends us to the safe one
        i2e.backend = "torch"
        return CheckResult(
            "i2e_kernel", "error", f"the {fast} kernel raised {type(e).__name__}: {e}", "torch"
        )
    size = f"{images.shape[0]} images of {images.shape[-2]}x{images.shape[-1]}"
    if mismatches:
        i2e.backend = "torch"
        return CheckResult(
            "i2e_kernel", "mismatch", f"{mismatches} events differ from the torch path on {size}", "torch"
        )
    return CheckResult("i2e_kernel", "passed", f"{fast} kernel equals the torch path on {size}")


def _fast_backend(i2e: nn.Module, device: torch.device) -> str | None:
    from ..events import i2e_triton

    resolved = i2e.resolved_backend(device)
    if resolved != "torch":
        return resolved
    # trainer.self_check=on on a CPU: the kernel runs in Triton's interpreter (slow, exact).
    return "triton" if device.type == "cpu" and i2e_triton.is_available(device) else None


def check_neuron_precision(model: nn.Module, amp_dtype: torch.dtype | None) -> CheckResult | None:
    """SpikingJelly's precision-configured LIF against the plain fp32 LIF (None: the API is not in use)."""
    from ..models.ms_resnet import lif

    nodes = [m for m in model.modules() if isinstance(m, neuron.LIFNode)]
    if amp_dtype is None or not nodes or getattr(nodes[0], "_neuron_precision", None) is None:
        return None
    device = next(model.parameters()).device
    gen = torch.Generator(device="cpu").manual_seed(0)
    x = (torch.randn(8, 4, 16, 8, 8, generator=gen) * 0.8 + 0.6).to(device=device, dtype=amp_dtype)
    try:
        candidate = copy.deepcopy(nodes[0])
        with torch.no_grad(), torch.autocast(device.type, dtype=amp_dtype):
            got = candidate(x).float()
        reference = lif().to(device)
        with torch.no_grad():
            want = reference(x.float())
        differ = float((got != want).float().mean())
    except Exception as e:  # noqa: BLE001 - any failure of the fast path sends us to the safe one
        _fall_back_to_cast(model)
        return CheckResult(
            "neuron_precision",
            "error",
            f"SpikingJelly's precision LIF raised {type(e).__name__}: {e}",
            "cast",
        )
    if differ > LIF_TOLERANCE:
        _fall_back_to_cast(model)
        detail = (
            f"{100 * differ:.3f}% of spikes differ from the fp32 LIF (tolerance {100 * LIF_TOLERANCE:.1f}%)"
        )
        return CheckResult("neuron_precision", "mismatch", detail, "cast")
    return CheckResult(
        "neuron_precision", "passed", f"{100 * differ:.4f}% of spikes differ from the fp32 LIF"
    )


def _fall_back_to_cast(model: nn.Module) -> None:
    """Undo the precision API's LIF configuration; feed every LIF a float32 copy of its input."""
    from ..models import neuron_input_fp32

    nodes = [m for m in model.modules() if isinstance(m, neuron.LIFNode)]
    for node in nodes:
        node._neuron_precision = None
    if nodes and not nodes[0]._forward_pre_hooks:
        neuron_input_fp32(model)


def find_event_augment(events_transform: Any) -> Any:
    """The :class:`~i2e_train.event_augment.EventAugment` of the run's events transform (alone or
    in a chain), or None."""
    from ..events.augment import EventAugment

    for part in (events_transform, *getattr(events_transform, "transforms", ())):
        if isinstance(part, EventAugment) and part.enabled:
            return part
    return None


def check_event_augment(augment: Any, events: Tensor) -> CheckResult:
    """Event augmentation of ``events [T, k, 2, H, W]`` on their device against the CPU with the same
    draws; on a failure the augmentation runs on the CPU for the rest of the run."""
    from ..events.augment import EventAugment

    cpu = torch.device("cpu")
    where = f"{events.shape[1]} samples of {events.shape[-2]}x{events.shape[-1]} on {events.device.type}"
    try:
        params = augment.sample(events.shape[1])
        permute = EventAugment(**{**augment.settings(), "drop_rate": 0.0})
        got = permute.apply(events, params).cpu()
        want = permute.apply(events.cpu(), params)
        differ = int((got != want).sum())
        extra = 0
        if augment.drop_rate > 0:
            dropped = augment.apply(events, params).cpu().float()
            kept = want.float()
            extra = int(((dropped > kept) | (dropped < 0) | (dropped != dropped.round())).sum())
    except Exception as e:  # noqa: BLE001 - any failure of the device path sends us to the CPU
        augment.run_on = cpu
        return CheckResult(
            "event_augment", "error", f"the augmentation raised {type(e).__name__}: {e}", "cpu"
        )
    if differ or extra:
        augment.run_on = cpu
        detail = f"{differ} permuted entries differ from the CPU, {extra} drop results are not thinnings, on {where}"
        return CheckResult("event_augment", "mismatch", detail, "cpu")
    return CheckResult("event_augment", "passed", f"equals the CPU on {where} (drop: thinnings only)")
