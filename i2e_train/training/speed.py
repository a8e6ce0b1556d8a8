"""Speed settings of the training step: neuron state precision, memory layout, cuDNN autotuning,
``torch.compile`` and SpikingJelly's memory optimiser — and a report of which LIF kernel runs.

Why the neuron state matters: SpikingJelly keeps a LIF membrane in the dtype of its input. Under
bf16/fp16 autocast that input is half precision, and a half-precision state sends every LIF layer
to a per-timestep Python loop (the "torch-reference" fallback) instead of a fused kernel. Two ways
keep the state float32:

* ``spikingjelly``: SpikingJelly's precision API (``prepare_model_for_precision`` with
  ``neuron_storage="fp32"``): half-precision input and spikes, float32 state, its Triton kernel.
  CUDA only.
* ``cast``: a pre-hook feeds each LIF a float32 copy of its input (``neuron_input_fp32``); the
  native CUDA (or Triton) fp32 kernel runs and the next convolution casts the spikes back.

``auto`` takes ``spikingjelly`` on CUDA when Triton is installed and ``cast`` otherwise. Which one
is faster on a given GPU is what ``i2e-bench --part train`` measures (docs/benchmarks.md).
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from spikingjelly.activation_based import functional, neuron
from torch import Tensor, nn

from ..config import MEMOPT_LEVELS, NEURON_PRECISION, TrainerOptions
from ..errors import UserError
from ..models import neuron_input_fp32
from ..monitor import log
from . import distributed

_HALF = (torch.float16, torch.bfloat16)


def _lif_nodes(model: nn.Module) -> list[neuron.LIFNode]:
    return [m for m in model.modules() if isinstance(m, neuron.LIFNode)]


def resolve_neuron_precision(mode: str, device: torch.device, amp_dtype: torch.dtype | None) -> str:
    """``none`` (fp32 training: nothing to do), ``spikingjelly`` or ``cast``."""
    if mode not in NEURON_PRECISION:
        raise UserError(
            f"trainer.neuron_precision must be one of {', '.join(NEURON_PRECISION)}, got '{mode}'"
        )
    if amp_dtype is None:
        return "none"
    if mode == "auto":
        triton_ok = importlib.util.find_spec("triton") is not None
        return "spikingjelly" if device.type == "cuda" and triton_ok else "cast"
    if mode == "spikingjelly" and device.type != "cuda":
        raise UserError(
            f"trainer.neuron_precision=spikingjelly needs a CUDA device (SpikingJelly's Triton "
            f"kernels), not {device.type}; use trainer.neuron_precision=cast or auto"
        )
    return mode


def keep_neuron_state_fp32(
    model: nn.Module, device: torch.device, amp_dtype: torch.dtype | None, mode: str = "auto"
) -> str:
    """Make every LIF keep a float32 state under autocast; returns the method used (see module doc)."""
    method = resolve_neuron_precision(mode, device, amp_dtype)
    if method == "spikingjelly":
        from spikingjelly.activation_based.precision import PrecisionConfig, prepare_model_for_precision

        try:
            # mode="fp32": only the LIF nodes are configured (float32 state and arithmetic, spikes in
            # the input dtype); autocast itself stays with the engine.
            prepare_model_for_precision(model, device, PrecisionConfig(mode="fp32", neuron_storage="fp32"))
        except (RuntimeError, ValueError, ImportError) as e:
            if mode != "auto":
                raise UserError(
                    f"SpikingJelly's precision API refused this setup ({e}); use trainer.neuron_precision=cast"
                ) from None
            log.warning(
                "SpikingJelly's precision API is unavailable here (%s); casting LIF inputs to fp32", e
            )
            method = "cast"
    if method == "cast":
        neuron_input_fp32(model)
    return method


def prepare_model(
    model: nn.Module,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    *,
    neuron_precision: str = "auto",
    channels_last: bool = False,
) -> str:
    """Neuron state precision and memory layout of a model already on ``device``."""
    method = keep_neuron_state_fp32(model, device, amp_dtype, neuron_precision)
    if channels_last:
        # Conv weights NHWC; SpikingJelly's multi-step layers fold T into the batch, so activations
        # follow the weights' layout and the LIF kernels take the dense NHWC tensors as they are.
        model.to(memory_format=torch.channels_last)
    return method


def resolve_channels_last(value: bool | str, device: torch.device) -> bool:
    """``trainer.channels_last``: ``auto`` is on for CUDA (NHWC convolutions on tensor cores: 2.1x
    the training step on an H200, docs/benchmarks.md) and off elsewhere (no gain measured on CPUs)."""
    if value == "auto":
        return device.type == "cuda"
    return bool(value)


def configure_backends(device: torch.device, cudnn_benchmark: bool) -> None:
    """cuDNN autotuning: input shapes are fixed in training, so the search pays for itself."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = bool(cudnn_benchmark)


@dataclass
class Prepared:
    """A model made ready to train, and how."""

    train_model: nn.Module  # what runs the forward: the model, or its DDP / compiled wrapper
    neuron_state: str  # how the LIF state stays fp32: none | spikingjelly | cast
    memopt_blocks: int  # residual blocks under SpikingJelly's memory optimiser


def prepare_for_training(
    model: nn.Module,
    options: TrainerOptions,
    info: distributed.DistInfo,
    amp_dtype: torch.dtype | None,
    example: Callable[[], Tensor] | None = None,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> Prepared:
    """The one place a model is made ready for training, in the order that works: SyncBatchNorm
    (replaces modules: before the optimizer is built) -> device -> fp32 neuron state ->
    channels_last -> memopt (probed with ``example()`` events under ``autocast``) -> DDP -> compile.
    The optimizer is built on ``model``'s parameters afterwards (none of the later steps replaces them)."""
    if options.sync_batchnorm and info.distributed:
        if info.device.type != "cuda":
            raise UserError(
                "trainer.sync_batchnorm needs CUDA devices (PyTorch's SyncBatchNorm is GPU-only); set it false"
            )
        distributed.convert_sync_batchnorm(model)
    model.to(info.device)
    configure_backends(info.device, options.cudnn_benchmark)
    method = prepare_model(
        model,
        info.device,
        amp_dtype,
        neuron_precision=options.neuron_precision,
        channels_last=resolve_channels_last(options.channels_last, info.device),
    )
    blocks = 0
    if options.memopt:
        from ..models.ms_resnet import MSBasicBlock

        if example is None:
            raise ValueError("trainer.memopt needs an example batch to probe the model")
        blocks = apply_memopt(model, example(), options.memopt, (MSBasicBlock,), autocast)
        log.info("memopt level %d: %d residual blocks checkpointed", options.memopt, blocks)
    train_model = distributed.wrap_model(model, info)
    if options.compile:
        train_model = compile_model(train_model)
    return Prepared(train_model, method, blocks)


def compile_model(model: nn.Module, backend: str = "inductor") -> nn.Module:
    """``torch.compile`` the model; SpikingJelly's reset cache must forget the uncompiled modules."""
    compiled = torch.compile(model, backend=backend)
    functional.invalidate_reset_cache(model)
    functional.invalidate_reset_cache(compiled)
    return compiled


def apply_memopt(
    model: nn.Module,
    example_TBCHW: Tensor,
    level: int,
    block_types: tuple[type, ...],
    context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> int:
    """SpikingJelly's memory optimiser, level 1: gradient checkpointing of residual blocks with
    spike compression (parameter names and ``state_dict`` keys are kept). ``context`` wraps the
    probing forward pass (the training autocast). Returns the number of blocks wrapped."""
    if level not in MEMOPT_LEVELS:
        raise UserError(
            f"trainer.memopt must be one of {MEMOPT_LEVELS} (0: off, 1: checkpointing), got {level}"
        )
    if level == 0:
        return 0
    from spikingjelly.activation_based.memopt import optimize_memory

    def example_forward(m: nn.Module) -> Tensor:
        try:
            with context():
                return m(example_TBCHW)
        finally:
            functional.reset_net(m)

    optimize_memory(model, block_types, example_forward, level=level)
    functional.invalidate_reset_cache(model)
    return sum(1 for m in model.modules() if hasattr(m, "_checkpoint_wrapped_module"))


# --------------------------------------------------------------------------------------------
# Which LIF kernel runs
# --------------------------------------------------------------------------------------------


@dataclass
class LIFObservation:
    """What the first LIF layer saw in one forward pass."""

    input_dtype: torch.dtype | None = None
    state_dtype: torch.dtype | None = None
    explicit_precision: bool = False
    device: torch.device | None = None


@contextlib.contextmanager
def observe_lif(model: nn.Module) -> Iterator[LIFObservation]:
    """Record the input and state dtype of the model's first LIF layer during the block (eager)."""
    seen = LIFObservation()
    nodes = _lif_nodes(model)

    def hook(module: nn.Module, args: tuple[Any, ...], _out: Any) -> None:
        if seen.input_dtype is None and args and isinstance(args[0], Tensor):
            seen.input_dtype = args[0].dtype
            seen.device = args[0].device
            v = getattr(module, "v", None)
            seen.state_dtype = v.dtype if isinstance(v, Tensor) else None
            seen.explicit_precision = getattr(module, "_neuron_precision", None) is not None

    handles = [nodes[0].register_forward_hook(hook)] if nodes else []
    try:
        yield seen
    finally:
        for h in handles:
            h.remove()


def lif_kernel(model: nn.Module, device: torch.device, amp_dtype: torch.dtype | None, compiled: bool) -> str:
    """The SpikingJelly LIF implementation this model uses, decided as ``lif_multi_step`` does.

    ``triton`` / ``cuda`` (native) / ``torch-reference``; a half-precision state is named as the
    slow fallback it is.
    """
    nodes = _lif_nodes(model)
    if not nodes:
        return "none (no LIF layers)"
    if getattr(nodes[0], "_neuron_precision", None) is not None:
        return "triton (SpikingJelly precision API, fp32 state)"
    hooked = any(nodes[0]._forward_pre_hooks.values())
    state_half = amp_dtype in _HALF and not hooked
    if device.type != "cuda":
        return "torch-reference (CPU" + (", half-precision state" if state_half else "") + ")"
    if state_half:
        return f"torch-reference fallback (state in {amp_dtype}: per-step Python loop, slow)"
    from spikingjelly.activation_based.functional import neuron_implementation

    impl = neuron_implementation("lif", device, execution="compile" if compiled else "eager")
    name = str(impl["implementation"])
    return {"cuda": "cuda (native fp32 kernel)", "triton": "triton (fp32 kernel)"}.get(name, name)


@contextlib.contextmanager
def spikingjelly_log(sink: Callable[[str], None]) -> Iterator[None]:
    """Send SpikingJelly's own log lines (loguru; e.g. its "ops selection ... implementation=..."
    kernel choice) to ``sink`` while the block runs. Loguru's other sinks see them too."""
    from loguru import logger

    handler = logger.add(lambda message: sink(message.record["message"]), filter="spikingjelly", level="INFO")
    logger.enable("spikingjelly")
    try:
        yield
    finally:
        logger.disable("spikingjelly")
        logger.remove(handler)


@dataclass
class KernelReport:
    """Collected SpikingJelly selection lines (the kernel that actually ran)."""

    lines: list[str] = field(default_factory=list)

    def add(self, line: str) -> None:
        if "selection" in line or "Preparation" in line or "memopt" in line:
            self.lines.append(line)

    @property
    def selected(self) -> str | None:
        """The ``implementation=...`` of SpikingJelly's LIF selection line, if one was logged."""
        for line in self.lines:
            if "sj_lif" in line and "implementation=" in line:
                return line.split("implementation=", 1)[1].split()[0]
        return None


def set_threads(threads: int | str | None, device: torch.device) -> int:
    """``trainer.threads``: torch's intra-op CPU threads (null: torch's choice; auto: the cores this
    process may run on). Returns the number in use."""
    from ..config import usable_cpus

    if threads is not None:
        torch.set_num_threads(usable_cpus() if threads == "auto" else int(threads))
    return torch.get_num_threads()


def log_selection(line: str) -> None:
    """A SpikingJelly log line worth keeping: its kernel selection."""
    if "selection" in line:
        log.info("spikingjelly: %s", line)


def log_settings(parts: Any, options: TrainerOptions, device: torch.device) -> None:
    """One line saying how the step runs: the LIF kernel and every speed setting in effect."""
    kernel = lif_kernel(parts.plain, device, parts.amp.dtype, compiled=options.compile)
    backend = getattr(parts.converter, "resolved_backend", lambda d: "n/a")(device)
    log.info(
        "LIF kernel: %s | channels_last %s, compile %s, cudnn.benchmark %s, memopt %d, device augment %s, "
        "I2E backend %s, threads %d",
        kernel,
        resolve_channels_last(options.channels_last, device),
        options.compile,
        options.cudnn_benchmark and device.type == "cuda",
        options.memopt,
        parts.batch_transform if parts.batch_transform is not None else "none",
        backend,
        torch.get_num_threads(),
    )
