"""What a spiking network does and costs: firing rates, synaptic operations, energy, confusion matrix.

Counting (all numbers per image, averaged over the evaluated images; models run in SpikingJelly's
multi-step layout, every layer input ``[T, B, ...]``):

- **Firing rate** of a spiking layer (each SpikingJelly neuron module): the fraction of its outputs
  that are spikes, over all timesteps, images and neurons.
- **ANN MACs** of a synaptic layer (each ``Conv2d`` and ``Linear``): the multiply-accumulates an ANN
  of the same shape performs for one image in one pass — conv: ``C_out * H_out * W_out *
  (C_in / groups) * k_h * k_w``; linear: ``in_features * out_features``.
- **SNN SOPs** (synaptic operations) of a synaptic layer: ``r_in * MACs * T``, where ``r_in`` is the
  mean of the layer's input — the firing rate of the spikes it receives; for the stem conv, the
  rate of the input events (for recorded DVS frames, whose entries are event counts, the mean count)
  — and ``T`` the number of timesteps. Each input spike costs one accumulate per synapse it reaches.
  The formula (the SNN literature's) spreads spikes evenly, so synapses to the zero padding count
  too; SpikingJelly's exact ``op_counter.SynOpCounter`` gives a few percent less for padded convs
  and the same for linear layers. A synaptic layer whose input is not spikes (values other than
  non-negative integers) is counted as ``MACs * T`` multiply-accumulates in the SNN.
- **Energy**: ANN ``4.6 pJ * MACs``; SNN ``0.9 pJ * SOPs`` (+ ``4.6 pJ`` per MAC of non-spiking
  inputs) — the 45 nm CMOS figures for 32-bit float multiply-accumulate and accumulate (Horowitz,
  ISSCC 2014) used throughout the SNN literature. Only synaptic operations are counted, in both:
  batch norm (foldable into the convs at inference), pooling, residual additions, membrane updates
  and memory traffic are not.
"""

from __future__ import annotations

import csv
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from spikingjelly.activation_based import monitor, neuron
from torch import Tensor, nn

from . import distributed

PJ_PER_MAC = 4.6
PJ_PER_AC = 0.9
ENERGY_SOURCE = (
    "45 nm CMOS, 32-bit float: 4.6 pJ per multiply-accumulate (MAC), 0.9 pJ per accumulate (AC) "
    "(Horowitz, ISSCC 2014), as used in the SNN literature; synaptic operations only"
)
NEURON_TYPES: tuple[type[nn.Module], ...] = tuple(
    t for t in (getattr(neuron, "BaseNode", None), getattr(neuron, "SimpleBaseNode", None)) if t is not None
)
SYNAPSE_TYPES = (nn.Conv2d, nn.Linear)


def _spike_stats(x: Tensor) -> tuple[Tensor, int]:
    """(ones, entries) of a neuron output; the sum stays on the device (no host sync per batch)."""
    return x.detach().sum(dtype=torch.float64), x.numel()


def _input_stats(x: Tensor) -> tuple[Tensor, Tensor, int, int, int]:
    """(sum, non-spike entries, entries, T * B, B) of a synaptic layer's input ``[T, B, ...]``."""
    x = x.detach()
    non_spike = ((x != x.trunc()) | (x < 0)).sum(dtype=torch.float64)
    return x.sum(dtype=torch.float64), non_spike, x.numel(), x.shape[0] * x.shape[1], x.shape[1]


def _output_entries(y: Tensor) -> int:
    return y.numel()


@dataclass
class SynapseLayer:
    name: str
    kind: str  # conv | linear
    input_rate: float  # mean input value: the firing rate of binary spikes
    spiking_input: bool
    ann_macs: float  # per image, one pass
    snn_sops: float  # per image, all timesteps (accumulates)
    snn_macs: float  # per image, all timesteps (only for non-spiking inputs)

    @property
    def ann_energy_pj(self) -> float:
        return PJ_PER_MAC * self.ann_macs

    @property
    def snn_energy_pj(self) -> float:
        return PJ_PER_AC * self.snn_sops + PJ_PER_MAC * self.snn_macs


@dataclass
class ActivityReport:
    images: int
    timesteps: int
    firing_rates: dict[str, float]
    synapses: list[SynapseLayer]

    @property
    def mean_firing_rate(self) -> float:
        rates = list(self.firing_rates.values())
        return sum(rates) / len(rates) if rates else float("nan")

    def totals(self) -> dict[str, float]:
        ann_macs = sum(s.ann_macs for s in self.synapses)
        sops = sum(s.snn_sops for s in self.synapses)
        snn_macs = sum(s.snn_macs for s in self.synapses)
        ann_pj = sum(s.ann_energy_pj for s in self.synapses)
        snn_pj = sum(s.snn_energy_pj for s in self.synapses)
        return {
            "ann_macs_per_image": ann_macs,
            "snn_sops_per_image": sops,
            "snn_macs_per_image": snn_macs,
            "ann_energy_uj_per_image": ann_pj * 1e-6,
            "snn_energy_uj_per_image": snn_pj * 1e-6,
            "snn_to_ann_energy": snn_pj / ann_pj if ann_pj else float("nan"),
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "images": self.images,
            "timesteps": self.timesteps,
            "mean_firing_rate": self.mean_firing_rate,
            "firing_rates": self.firing_rates,
            "energy": {
                **self.totals(),
                "pj_per_mac": PJ_PER_MAC,
                "pj_per_ac": PJ_PER_AC,
                "assumptions": ENERGY_SOURCE,
                "counting": "SOPs = input firing rate x ANN MACs x T per synaptic layer (see i2e_train/training/activity.py)",
            },
            "synapses": [
                {**asdict(s), "ann_energy_pj": s.ann_energy_pj, "snn_energy_pj": s.snn_energy_pj}
                for s in self.synapses
            ],
        }


class SpikeActivity:
    """Counts spikes and synaptic inputs while the model runs, with SpikingJelly's monitors.

    ``with SpikeActivity(model) as activity: <forward passes>`` then ``activity.report()`` (a
    collective under torch.distributed: call it on every rank). The monitors are removed on exit.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.neurons = monitor.OutputMonitor(model, NEURON_TYPES, _spike_stats)
        self.inputs = monitor.InputMonitor(model, SYNAPSE_TYPES, _input_stats)
        self.outputs = monitor.OutputMonitor(model, SYNAPSE_TYPES, _output_entries)
        self.modules = dict(model.named_modules())

    def __enter__(self) -> SpikeActivity:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for m in (self.neurons, self.inputs, self.outputs):
            m.close()

    def report(self) -> ActivityReport:
        """Sums over the recorded forward passes (and over all ranks)."""
        neuron_names = list(self.neurons.monitored_layers)
        synapse_names = list(self.inputs.monitored_layers)
        device = next((p.device for p in self.model.parameters()), torch.device("cpu"))
        zero = torch.zeros((), dtype=torch.float64, device=device)
        sums: list[Tensor] = []  # device-side sums, in layer order
        counts: list[float] = []  # host-side counts, in layer order
        for name in neuron_names:
            recs = self.neurons[name]
            sums.append(sum((r[0].to(device) for r in recs), zero))
            counts.append(float(sum(r[1] for r in recs)))
        for name in synapse_names:
            recs = self.inputs[name]
            sums.append(sum((r[0].to(device) for r in recs), zero))
            sums.append(sum((r[1].to(device) for r in recs), zero))
            # MACs of all (image, timestep) slices: output entries times the weights behind each one.
            macs = sum(self.outputs[name]) * _fan_in(self.modules[name])
            counts += [float(sum(r[k] for r in recs)) for k in (2, 3, 4)] + [float(macs)]
        flat = torch.cat(
            (
                torch.stack(sums) if sums else zero[None][:0],
                torch.tensor(counts, dtype=torch.float64, device=device),
            )
        )
        distributed.all_reduce_sum(flat)
        values = flat.tolist()
        n_sums = len(sums)
        sum_vals, count_vals = values[:n_sums], values[n_sums:]

        firing: dict[str, float] = {}
        for i, name in enumerate(neuron_names):
            if count_vals[i]:
                firing[name] = sum_vals[i] / count_vals[i]
        synapses: list[SynapseLayer] = []
        timesteps, images = 0, 0
        n = len(neuron_names)
        for j, name in enumerate(synapse_names):
            total, non_spike = sum_vals[n + 2 * j : n + 2 * j + 2]
            entries, slices, batch, macs = count_vals[n + 4 * j : n + 4 * j + 4]
            if not entries:
                continue
            # Every call covers T x B (timestep, image) slices; the MACs summed over calls cover them all.
            timesteps, images = round(slices / batch), int(batch)
            per_slice = macs / slices
            rate = total / entries
            spiking = non_spike == 0
            synapses.append(
                SynapseLayer(
                    name=name,
                    kind="linear" if isinstance(self.modules[name], nn.Linear) else "conv",
                    input_rate=rate,
                    spiking_input=spiking,
                    ann_macs=per_slice,
                    snn_sops=rate * per_slice * timesteps if spiking else 0.0,
                    snn_macs=0.0 if spiking else per_slice * timesteps,
                )
            )
        return ActivityReport(images=images, timesteps=timesteps, firing_rates=firing, synapses=synapses)


def _fan_in(module: nn.Module) -> int:
    """Weights behind one output entry: ``C_in / groups * k_h * k_w`` (conv), ``in_features`` (linear)."""
    if isinstance(module, nn.Linear):
        return module.in_features
    assert isinstance(module, nn.Conv2d)
    return module.weight.shape[1] * math.prod(module.kernel_size)


# ----------------------------------------------------------------------------- files
def write_confusion_csv(path: Path, confusion: list[list[int]], class_names: list[str]) -> None:
    """Rows: true class, columns: predicted class."""
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["true \\ predicted", *class_names])
        for name, row in zip(class_names, confusion, strict=True):
            w.writerow([name, *row])


def write_confusion_png(
    path: Path, confusion: list[list[int]], class_names: list[str], title: str = ""
) -> None:
    """Row-normalised (recall) colours; counts written in the cells for up to 20 classes."""
    import numpy as np
    from matplotlib.figure import Figure

    counts = np.asarray(confusion, dtype=np.int64)
    n = counts.shape[0]
    totals = counts.sum(1, keepdims=True)
    recall = np.divide(counts, totals, out=np.zeros(counts.shape, dtype=float), where=totals > 0)
    side = min(max(4.0, 0.45 * n + 2.0), 14.0)
    fig = Figure(figsize=(side + 1.2, side), dpi=110, layout="constrained")
    ax = fig.subplots()
    im = ax.imshow(recall, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, label="fraction of the true class", shrink=0.8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 50:
        ax.set_xticks(range(n), class_names, rotation=90 if n > 10 else 0, fontsize=8)
        ax.set_yticks(range(n), class_names, fontsize=8)
    if n <= 20:
        for i in range(n):
            for j in range(n):
                if counts[i, j]:
                    color = "white" if recall[i, j] > 0.5 else "black"
                    ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=7, color=color)
    ax.set_title(title or f"confusion matrix ({int(counts.sum())} samples)", fontsize=10)
    fig.savefig(path)


def write_activity_csvs(out_dir: Path, activity: ActivityReport) -> None:
    with (out_dir / "firing_rates.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["layer", "firing_rate"])
        for name, rate in activity.firing_rates.items():
            w.writerow([name, f"{rate:.12g}"])
    with (out_dir / "synaptic_ops.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            [
                "layer",
                "kind",
                "input_rate",
                "spiking_input",
                "ann_macs",
                "snn_sops",
                "snn_macs",
                "ann_energy_pj",
                "snn_energy_pj",
            ]
        )
        for s in activity.synapses:
            w.writerow(
                [
                    s.name,
                    s.kind,
                    f"{s.input_rate:.12g}",
                    int(s.spiking_input),
                    f"{s.ann_macs:.0f}",
                    f"{s.snn_sops:.1f}",
                    f"{s.snn_macs:.0f}",
                    f"{s.ann_energy_pj:.1f}",
                    f"{s.snn_energy_pj:.1f}",
                ]
            )


def summary_lines(activity: ActivityReport) -> list[str]:
    """The terminal summary of firing rates and energy."""
    if not activity.firing_rates and not activity.synapses:
        return ["no spiking or synaptic layers were recorded"]
    lines = []
    rates = activity.firing_rates
    if rates:
        lo = min(rates, key=rates.get)
        hi = max(rates, key=rates.get)
        lines.append(
            f"firing rate: mean {100 * activity.mean_firing_rate:.2f}% over {len(rates)} spiking layers "
            f"(lowest {lo} {100 * rates[lo]:.2f}%, highest {hi} {100 * rates[hi]:.2f}%)"
        )
    t = activity.totals()
    lines.append(
        f"per image: SNN {_si(t['snn_sops_per_image'])}SOPs over T={activity.timesteps}"
        + (f" + {_si(t['snn_macs_per_image'])}MACs" if t["snn_macs_per_image"] else "")
        + f", ANN of the same shape {_si(t['ann_macs_per_image'])}MACs"
    )
    lines.append(
        f"energy per image: SNN {t['snn_energy_uj_per_image']:.4g} uJ vs ANN {t['ann_energy_uj_per_image']:.4g} uJ "
        f"({t['snn_to_ann_energy']:.3f}x) at {PJ_PER_AC} pJ/AC, {PJ_PER_MAC} pJ/MAC "
        "(45 nm CMOS, Horowitz 2014; synaptic operations only)"
    )
    return lines


def _si(value: float) -> str:
    for factor, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.3f} {prefix}"
    return f"{value:.0f} "
