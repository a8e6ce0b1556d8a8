"""The sensor model and event augmentation in real runs: i2e-train (each option), i2e-convert
(recorded in metadata.json), evaluation clean unless asked, stored events refused by the sensor."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
import torch
from conftest import SMOKE, build_test_run

from i2e_train.data.formats import unpack_events
from i2e_train.events.sensor import SensorI2E

RUN = (
    "trainer.epochs=1",
    "trainer.limit_train_batches=2",
    "dataset.image_size=16",
    "trainer.preview_samples=0",
)
# Every option of both groups, a few per run (each in a real run: the options compose).
OPTIONS = [
    "sensor.threshold_sigma=0.1 sensor.fixed_pattern=false sensor.shot_noise_rate=0.02 sensor.refractory_steps=1",
    "sensor.hot_pixel_fraction=0.01 sensor.drop_rate=0.1 sensor.threshold_sigma_off=0.2",
    "event_augment.translate=2 event_augment.translate_mode=zero event_augment.polarity_swap_prob=0.5"
    " event_augment.time_reverse_prob=0.5 event_augment.drop_rate=0.1",
    "sensor=dvs_realistic event_augment=dvs extras.t_train=4",
]


@pytest.mark.parametrize("options", OPTIONS)
def test_two_training_batches_with_each_option(tmp_path, options):
    trainer = build_test_run(tmp_path, *RUN, *options.split())
    if "sensor" in options:
        assert isinstance(trainer.converter, SensorI2E) and trainer.converter.sensor.enabled
    if "event_augment" in options:
        assert trainer.parts.events_transform is not None
    row = trainer.fit()
    assert row["train_samples"] == 16 and row["val_samples"] == 16


def test_everything_off_leaves_the_converter_and_the_events_alone(tmp_path):
    trainer = build_test_run(tmp_path, *RUN)
    assert not isinstance(trainer.converter, SensorI2E) and trainer.parts.events_transform is None


def test_evaluation_stays_clean_unless_asked(tmp_path):
    images = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    clean = build_test_run(tmp_path / "a", *RUN, "sensor=dvs_realistic").converter
    asked = build_test_run(tmp_path / "b", *RUN, "sensor=dvs_realistic", "sensor.eval=true").converter
    plain = clean.i2e.eval()(images)
    assert torch.equal(clean.eval()(images), plain)
    assert not torch.equal(asked.eval()(images), plain)


@pytest.mark.slow
def test_the_sensor_refuses_stored_events_in_one_line(cli, tmp_path):
    from disk_formats import digit_events, write_i2e_npz

    events, labels = digit_events(12)
    write_i2e_npz(tmp_path / "npz", events, labels, val=2)
    res = cli("train", "dataset=i2e_npz", f"dataset.root={tmp_path / 'npz'}", "sensor=dvs_realistic", *SMOKE)
    assert res.returncode == 2 and "Traceback" not in res.output, res.output
    assert "the sensor model acts on the I2E conversion of images" in res.stderr


@pytest.mark.slow
def test_i2e_train_and_i2e_convert_with_the_realistic_sensor(cli, tmp_path):
    res = cli(
        "train", "run_dir=run", *SMOKE, "dataset.image_size=16", "sensor=dvs_realistic", "event_augment=dvs"
    )
    assert res.returncode == 0, res.output
    clean = cli("convert", "output=clean", "split=validation", "dataset.image_size=16", "num_workers=0")
    noisy = cli(
        "convert",
        "output=noisy",
        "split=validation",
        "dataset.image_size=16",
        "num_workers=0",
        "sensor=dvs_realistic",
    )
    assert clean.returncode == 0 and noisy.returncode == 0, clean.output + noisy.output
    meta = json.loads((tmp_path / "noisy" / "metadata.json").read_text())
    assert meta["sensor"]["threshold_sigma"] == 0.15 and meta["sensor"]["shot_noise_rate"] == 0.049
    assert json.loads((tmp_path / "clean" / "metadata.json").read_text())["sensor"] is None
    (shard,) = sorted((tmp_path / "noisy").glob("validation-*.parquet"))
    (plain,) = sorted((tmp_path / "clean").glob("validation-*.parquet"))
    a = [unpack_events(r) for r in pq.read_table(shard).column("data").to_pylist()[:8]]
    b = [unpack_events(r) for r in pq.read_table(plain).column("data").to_pylist()[:8]]
    assert any(not torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert sum(int(x.sum()) for x in a) > sum(int(y.sum()) for y in b)  # shot noise and hot pixels add events
    mixed = cli("convert", "output=noisy", "split=validation", "dataset.image_size=16", "num_workers=0")
    assert mixed.returncode == 2 and "was converted with sensor=" in mixed.stderr, mixed.output
