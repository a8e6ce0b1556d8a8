"""Firing rates, synaptic operations and energy (i2e_train.report), the eval report files, and what a
training run writes to TensorBoard."""

from __future__ import annotations

import csv
import json

import pytest
import torch
import torch.nn.functional as F
from conftest import SMOKE
from skimage import data as skdata
from spikingjelly.activation_based import functional, neuron
from spikingjelly.activation_based.op_counter import DispatchCounterMode, SynOpCounter
from torch.utils.flop_counter import FlopCounterMode

from i2e_train.events.i2e import i2e_convert
from i2e_train.models import build_model
from i2e_train.training.activity import PJ_PER_AC, PJ_PER_MAC, SpikeActivity, summary_lines


def _photo_events(size: int = 64) -> torch.Tensor:
    """Events [8, 3, 2, S, S] of three real photographs."""
    images = [
        F.interpolate(torch.from_numpy(p).permute(2, 0, 1)[None].float(), size=(size, size), mode="area")
        for p in (skdata.astronaut(), skdata.chelsea(), skdata.coffee())
    ]
    return i2e_convert(torch.cat(images).round().to(torch.uint8), 0.12)


@pytest.fixture(scope="module")
def measured():
    torch.manual_seed(0)
    model = build_model("ms_resnet18", 10).eval()
    events = _photo_events()
    spikes = {}

    def keep(name):
        def hook(_m, _i, out):
            spikes.setdefault(name, []).append(out.detach())

        return hook

    # An independent record of every neuron's output, with plain hooks.
    handles = [
        m.register_forward_hook(keep(n)) for n, m in model.named_modules() if isinstance(m, neuron.LIFNode)
    ]
    with SpikeActivity(model) as activity, torch.no_grad():
        model(events[:, :2])  # batches of different sizes
        functional.reset_net(model)
        model(events[:, 2:])
        functional.reset_net(model)
    for h in handles:
        h.remove()
    return model, events, activity.report(), spikes


def test_firing_rates_are_the_spike_fractions(measured):
    model, _, report, spikes = measured
    assert report.images == 3 and report.timesteps == 8
    assert len(report.firing_rates) == 20  # 2 per block x 8, 3 downsample neurons, the head neuron
    for name, rate in report.firing_rates.items():
        outs = spikes[name]
        expected = sum(o.double().sum() for o in outs) / sum(o.numel() for o in outs)
        assert 0.0 <= rate <= 1.0 and rate == pytest.approx(expected.item(), rel=1e-12), name
    assert max(report.firing_rates.values()) > 0.01


def test_synaptic_inputs_are_the_spikes_feeding_them(measured):
    _, events, report, _ = measured
    layers = {s.name: s for s in report.synapses}
    assert layers["conv1"].input_rate == pytest.approx(events.double().mean().item(), rel=1e-12)
    # a block's first conv receives exactly its first neuron's spikes
    assert layers["layer1.0.conv1"].input_rate == pytest.approx(
        report.firing_rates["layer1.0.sn1"], rel=1e-12
    )
    assert layers["layer3.1.conv2"].input_rate == pytest.approx(
        report.firing_rates["layer3.1.sn2"], rel=1e-12
    )
    assert layers["fc"].input_rate == pytest.approx(report.firing_rates["sn"], rel=1e-12)
    assert all(s.spiking_input for s in report.synapses)


def test_macs_match_torch_flop_counter_and_sops_follow_the_formula(measured):
    model, events, report, _ = measured
    with torch.no_grad(), FlopCounterMode(display=False) as flops:
        model(events[:1, :1])  # one timestep of one image: an ANN pass
    functional.reset_net(model)
    per_module = flops.get_flop_counts()
    for s in report.synapses:
        assert s.ann_macs == sum(per_module[f"MSResNet.{s.name}"].values()) / 2, s.name
        assert s.snn_sops == pytest.approx(s.input_rate * s.ann_macs * 8, rel=1e-12) and s.snn_macs == 0
    totals = report.totals()
    assert totals["ann_macs_per_image"] == flops.get_total_flops() / 2
    assert totals["snn_energy_uj_per_image"] == pytest.approx(PJ_PER_AC * totals["snn_sops_per_image"] * 1e-6)
    assert totals["ann_energy_uj_per_image"] == pytest.approx(
        PJ_PER_MAC * totals["ann_macs_per_image"] * 1e-6
    )
    assert 0 < totals["snn_energy_uj_per_image"] < totals["ann_energy_uj_per_image"]
    text = "\n".join(summary_lines(report))
    assert "0.9 pJ/AC" in text and "4.6 pJ/MAC" in text and "45 nm" in text


def test_sops_against_spikingjelly_exact_synop_counter(measured):
    """SpikingJelly counts each spike's weight uses exactly: the same for the linear head, less
    for padded convs (the formula counts synapses to the zero padding too)."""
    model, events, report, _ = measured
    counter = SynOpCounter()
    with torch.no_grad(), DispatchCounterMode([counter]):
        model(events[:, :2])
        functional.reset_net(model)
        model(events[:, 2:])
        functional.reset_net(model)
    counts = counter.get_counts()
    for s in report.synapses:
        exact = sum(counts.get(f"MSResNet.{s.name}", {}).values()) / 3
        if s.kind == "linear":
            assert s.snn_sops == pytest.approx(exact, rel=1e-9)
        else:
            assert exact <= s.snn_sops * (1 + 1e-9), s.name
    early = {s.name: s for s in report.synapses}["layer1.0.conv1"]  # 16x16 maps: little padding
    exact = sum(counts["MSResNet.layer1.0.conv1"].values()) / 3
    assert 0.85 * early.snn_sops < exact


def test_non_spike_inputs_count_as_macs():
    torch.manual_seed(0)
    model = build_model("ms_resnet18", 10).eval()
    graded = torch.rand(8, 1, 2, 32, 32)  # not spikes: the stem must multiply
    with SpikeActivity(model) as activity, torch.no_grad():
        model(graded)
    functional.reset_net(model)
    stem = activity.report().synapses[0]
    assert stem.name == "conv1" and not stem.spiking_input
    assert stem.snn_sops == 0 and stem.snn_macs == stem.ann_macs * 8


@pytest.mark.slow
def test_train_then_eval_report(cli, tmp_path):
    """A 2-batch run: TensorBoard preview, firing rates and scalars; then the eval report files."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    smoke = [a for a in SMOKE if not a.startswith("trainer.tensorboard")]
    res = cli("train", "run_dir=run", *smoke, "trainer.tensorboard=true", "trainer.preview_samples=4")
    assert res.returncode == 0, res.output
    run = tmp_path / "run"
    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    tags = acc.Tags()
    assert "preview/train_events" in tags["images"]
    image = acc.Images("preview/train_events")[0]
    assert image.height > 4 * 64 and image.width > 9 * 64  # 4 rows: image + 8 timesteps, enlarged tiles
    assert {"lr", "train/images_per_second", "val/firing_rate"} <= set(tags["scalars"])
    layer_tags = [t for t in tags["scalars"] if t.startswith("firing_rate/")]
    assert len(layer_tags) == 20 and "firing_rate/layer1.0.sn1" in layer_tags
    assert all(0.0 <= acc.Scalars(t)[0].value <= 1.0 for t in layer_tags)
    row = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert row["firing_rates"]["layer1.0.sn1"] == pytest.approx(
        acc.Scalars("firing_rate/layer1.0.sn1")[0].value
    )

    res = cli(
        "evaluate",
        "checkpoint=run/checkpoints/last.pt",
        "trainer.limit_val_batches=3",
        "trainer.batch_size=8",
    )
    assert res.returncode == 0, res.output
    out = run / "eval" / "last"
    report = json.loads((out / "eval.json").read_text())
    assert "per image: SNN" in res.stderr and "pJ/AC" in res.stderr and "firing rate: mean" in res.stderr
    with (out / "confusion_matrix.csv").open() as f:
        rows = list(csv.reader(f))
    assert rows[0][1:] == [str(i) for i in range(10)] and len(rows) == 11
    matrix = [[int(v) for v in r[1:]] for r in rows[1:]]
    assert sum(map(sum, matrix)) == report["samples"] == 24
    correct = sum(matrix[i][i] for i in range(10))
    assert report["top1"] == pytest.approx(100 * correct / 24)
    assert (out / "confusion_matrix.png").stat().st_size > 5000
    with (out / "firing_rates.csv").open() as f:
        rates = {r["layer"]: float(r["firing_rate"]) for r in csv.DictReader(f)}
    assert len(rates) == 20 and all(0 <= v <= 1 for v in rates.values())
    assert rates == pytest.approx(report["firing_rates"], abs=1e-6)
    with (out / "synaptic_ops.csv").open() as f:
        ops = list(csv.DictReader(f))
    assert len(ops) == 21  # 17 convs + 3 downsample convs + fc
    for r in ops:
        assert float(r["snn_sops"]) == pytest.approx(
            float(r["input_rate"]) * float(r["ann_macs"]) * 8, rel=1e-4, abs=0.1
        )
    energy = report["energy"]
    assert energy["snn_energy_uj_per_image"] > 0 and energy["ann_energy_uj_per_image"] > 0
    assert energy["snn_sops_per_image"] == pytest.approx(sum(float(r["snn_sops"]) for r in ops), rel=1e-4)
    assert energy["pj_per_ac"] == 0.9 and energy["pj_per_mac"] == 4.6 and "45 nm" in energy["assumptions"]
    assert report["images"] == 24 and report["timesteps"] == 8
