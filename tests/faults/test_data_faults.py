"""Faults and bad input in the data: odd image modes, symlinked folders, damaged CIFAR pickles,
stored events of another shape, and reads that must not count as skipped samples.

Every file is written in its real on-disk format (PIL, NumPy, pickle, pyarrow); the real loaders
read them. User mistakes must end in one line naming the file and what to do."""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest
import torch
from conftest import SMOKE
from disk_formats import (
    digit_events,
    write_cifar10,
    write_cifar100,
    write_i2e_npz,
    write_i2e_parquet,
    write_image_folders,
    write_png16,
)
from PIL import Image
from skimage import data as skdata
from torch.utils.data import DataLoader

from i2e_train.data import build_datasets
from i2e_train.data.corrupt import CorruptGuard, UnreadableSampleError, uncounted
from i2e_train.data.formats import pack_events
from i2e_train.data.images import read_image
from i2e_train.data.sampler import SeededDataset

ASTRONAUT = skdata.astronaut()  # 512 x 512 RGB, uint8


def _one_line(res, prog: str, *needles: str) -> str:
    assert res.returncode == 2, res.output[-3000:]
    assert "Traceback" not in res.output, res.output[-3000:]
    lines = [line for line in res.stderr.splitlines() if line.startswith(f"{prog}: error:")]
    assert len(lines) == 1, res.stderr[-3000:]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


# ----------------------------------------------------------------------------- image modes
def test_16bit_grey_images_are_scaled_not_clipped(tmp_path):
    grey = ASTRONAUT[..., 1]
    noise = np.random.default_rng(0).integers(0, 256, grey.shape, dtype=np.uint16)
    files = {
        "exact.png": grey.astype(np.uint16) * 257,  # the 8-bit levels spread over 0..65535
        "noisy.png": grey.astype(np.uint16) * 256 + noise,  # a sensor's low bits
        "big_endian.tif": (grey.astype(np.uint16) * 257).astype(">u2"),
    }
    for name, pixels in files.items():
        Image.fromarray(pixels).save(tmp_path / name)
        assert Image.open(tmp_path / name).mode in ("I;16", "I;16B"), name
        rgb = np.asarray(read_image(tmp_path / name))
        assert rgb.dtype == np.uint8 and rgb.shape == (512, 512, 3)
        assert np.abs(rgb.astype(int) - grey[..., None]).max() <= 1, name
    assert np.array_equal(np.asarray(read_image(tmp_path / "exact.png")), np.repeat(grey[..., None], 3, 2))
    # What PIL's own convert("RGB") makes of the same file: the clipping this loader avoids.
    clipped = np.asarray(Image.open(tmp_path / "exact.png").convert("RGB"))
    assert (clipped == 255).mean() > 0.8


def test_16bit_rgb_and_rgba_pngs(tmp_path):
    write_png16(tmp_path / "rgb.png", ASTRONAUT.astype(np.uint16) * 257)
    assert np.array_equal(np.asarray(read_image(tmp_path / "rgb.png")), ASTRONAUT)
    alpha = np.full((512, 512, 1), 65535, np.uint16)
    alpha[:, :256] = 0  # the left half transparent: white, whatever colour it hides
    write_png16(tmp_path / "rgba.png", np.concatenate([ASTRONAUT.astype(np.uint16) * 257, alpha], axis=2))
    rgb = np.asarray(read_image(tmp_path / "rgba.png"))
    assert (rgb[:, :256] == 255).all() and np.array_equal(rgb[:, 256:], ASTRONAUT[:, 256:])


def test_transparency_is_composited_on_white(tmp_path):
    rgba = np.concatenate([ASTRONAUT, np.full((512, 512, 1), 255, np.uint8)], axis=2)
    rgba[:100, :, 3] = 0  # transparent, black underneath
    rgba[:100, :, :3] = 0
    rgba[100:200, :, 3] = 128  # half transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    rgb = np.asarray(read_image(tmp_path / "rgba.png")).astype(int)
    assert (rgb[:100] == 255).all()
    expected = (ASTRONAUT[100:200].astype(int) * 128 + 255 * 127) / 255
    assert np.abs(rgb[100:200] - expected).max() <= 1
    assert np.array_equal(rgb[200:], ASTRONAUT[200:])
    # grey + alpha, and a palette with a transparent entry
    la = np.stack(
        [ASTRONAUT[..., 0], np.where(np.arange(512) < 256, 0, 255).astype(np.uint8)[None].repeat(512, 0)], 2
    )
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    rgb = np.asarray(read_image(tmp_path / "la.png"))
    assert (rgb[:, :256] == 255).all() and np.array_equal(rgb[:, 256:, 0], ASTRONAUT[:, 256:, 0])
    palette = Image.fromarray(ASTRONAUT).quantize(16)
    index = np.asarray(palette)
    palette.save(tmp_path / "p.png", transparency=int(index[0, 0]))
    rgb = np.asarray(read_image(tmp_path / "p.png"))
    assert (rgb[index == index[0, 0]] == 255).all()
    opaque = index != index[0, 0]
    assert np.array_equal(rgb[opaque], np.asarray(palette.convert("RGB"))[opaque])


def test_1bit_cmyk_and_float_images(tmp_path):
    grey = ASTRONAUT[..., 0]
    Image.fromarray(grey > 128).save(tmp_path / "bits.png")
    assert Image.open(tmp_path / "bits.png").mode == "1"
    assert np.array_equal(np.asarray(read_image(tmp_path / "bits.png"))[..., 0], np.where(grey > 128, 255, 0))
    Image.fromarray(ASTRONAUT).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    rgb = np.asarray(read_image(tmp_path / "cmyk.jpg"))
    assert np.array_equal(rgb, np.asarray(Image.open(tmp_path / "cmyk.jpg").convert("RGB")))
    assert np.abs(rgb.astype(int) - ASTRONAUT).mean() < 6
    Image.fromarray(grey.astype(np.float32) / 255).save(tmp_path / "unit.tif")
    assert Image.open(tmp_path / "unit.tif").mode == "F"
    assert np.array_equal(np.asarray(read_image(tmp_path / "unit.tif"))[..., 0], grey)


@pytest.mark.parametrize(
    ("name", "pixels", "needle"),
    [
        ("counts.tif", ASTRONAUT[..., 0].astype(np.int32) * 1000, "32-bit integer pixels (PIL mode I)"),
        ("hdr.tif", ASTRONAUT[..., 0].astype(np.float32) + 1, "32-bit float pixels from 1 to 256"),
    ],
)
def test_images_without_a_brightness_range_are_refused_naming_the_file(tmp_path, name, pixels, needle):
    Image.fromarray(pixels).save(tmp_path / name)
    with pytest.raises(UnreadableSampleError) as e:
        read_image(tmp_path / name)
    assert str(e.value).startswith(f"cannot read image '{tmp_path / name}': ") and needle in str(e.value)
    assert "\n" not in str(e.value)


def test_image_folder_reads_16bit_pngs(tmp_path):
    written = write_image_folders(tmp_path, classes=2, per_class=(2, 1))
    path = written["train"][0]
    original = np.asarray(Image.open(path).convert("RGB"))
    path.unlink()
    write_png16(path.with_suffix(".png"), original.astype(np.uint16) * 257)
    b = build_datasets("image_folder", root=str(tmp_path), image_size=32)
    index = [p for p, _ in b.train.samples].index(str(path.with_suffix(".png")))
    assert np.array_equal(np.asarray(b.train[index][0]), original)


# ----------------------------------------------------------------------------- symlinks
def _refused(dataset: str, root, *needles: str) -> None:
    with pytest.raises(ValueError) as e:
        build_datasets(dataset, root=str(root))
    assert "\n" not in str(e.value)
    for needle in needles:
        assert needle in str(e.value), str(e.value)


def _folders(root):
    write_image_folders(root, classes=3, per_class=(4, 2))
    return root / "train"


def test_a_symlink_loop_is_refused_not_multiplied(tmp_path):
    train = _folders(tmp_path / "data")
    loop = train / "n00000000" / "again"
    os.symlink("..", loop)  # torchvision's os.walk(followlinks=True) turns 12 images into hundreds
    _refused(
        "image_folder",
        tmp_path / "data",
        f"'{loop}' is a link back to '{train}'",
        "a loop",
        "remove the link",
    )
    loop.unlink()
    os.symlink(".", loop)
    _refused("image_folder", tmp_path / "data", f"'{loop}' is a link back to '{train / 'n00000000'}'")


def test_links_into_the_dataset_or_twice_to_one_place_are_refused(tmp_path):
    train = _folders(tmp_path / "data")
    into = train / "n00000000" / "more"
    os.symlink(train / "n00000001", into)  # the same images, labelled twice
    _refused(
        "image_folder",
        tmp_path / "data",
        f"'{into}' is a link to",
        f"inside class folder '{train / 'n00000001'}'",
    )
    into.unlink()
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    Image.fromarray(ASTRONAUT[:64, :64]).save(outside / "x.png")
    os.symlink(outside, train / "n00000000" / "a")
    os.symlink(outside, train / "n00000002" / "b")
    _refused("image_folder", tmp_path / "data", f"lead to the same folder '{outside}'", "counted twice")
    (train / "n00000002" / "b").unlink()
    one = sorted((train / "n00000000").glob("*.JPEG"))[0]
    os.symlink(one, train / "n00000001" / "copy.JPEG")
    _refused(
        "image_folder",
        tmp_path / "data",
        f"'{train / 'n00000001' / 'copy.JPEG'}' is a link to '{one}'",
        "twice",
    )


def test_links_that_lead_outside_the_dataset_are_followed_once(tmp_path):
    train = _folders(tmp_path / "data")
    disk2 = tmp_path / "disk2"
    # A class folder kept on another disk, and a folder of extra images linked into a class.
    (train / "n00000002").rename(disk2)
    os.symlink(disk2, train / "n00000002")
    extra = tmp_path / "extra"
    extra.mkdir()
    for i in range(3):
        Image.fromarray(ASTRONAUT[i * 50 : i * 50 + 64, :64]).save(extra / f"e{i}.png")
    os.symlink(extra, train / "n00000000" / "extra")
    b = build_datasets("image_folder", root=str(tmp_path / "data"), image_size=32)
    paths = [p for p, _ in b.train.samples]
    assert len(paths) == 12 + 3 and len({os.path.realpath(p) for p in paths}) == 15
    assert b.train.targets.count(0) == 4 + 3 and b.train.targets.count(2) == 4
    assert all(p.startswith(str(train / "n00000002")) for p, y in b.train.samples if y == 2)
    assert sum(p.startswith(str(train / "n00000000" / "extra")) for p in paths) == 3


def test_an_empty_class_folder_is_named(tmp_path):
    train = _folders(tmp_path / "data")
    (train / "n00000003").mkdir()
    (train / "n00000003" / "notes.txt").write_text("no images here")
    with pytest.raises(FileNotFoundError) as e:
        build_datasets("image_folder", root=str(tmp_path / "data"))
    assert f"class folder '{train / 'n00000003'}' holds no images" in str(e.value)


def test_npz_folders_refuse_loops_too(tmp_path):
    events, labels = digit_events(12)
    write_i2e_npz(tmp_path, events, labels, val=2)
    os.symlink("..", tmp_path / "train" / str(int(labels[0])) / "up")
    _refused(
        "i2e_npz", tmp_path, f"'{tmp_path / 'train' / str(int(labels[0])) / 'up'}' is a link back", "a loop"
    )


@pytest.mark.slow
def test_cli_names_the_loop_and_the_empty_class_folder(cli, tmp_path):
    train = _folders(tmp_path / "data")
    os.symlink("..", train / "n00000001" / "up")
    args = ("train", "dataset=image_folder", f"dataset.root={tmp_path / 'data'}", *SMOKE)
    _one_line(cli(*args), "i2e-train", f"'{train / 'n00000001' / 'up'}' is a link back", "remove the link")
    (train / "n00000001" / "up").unlink()
    (train / "n00000009").mkdir()
    _one_line(cli(*args), "i2e-train", f"class folder '{train / 'n00000009'}' holds no images")


# ----------------------------------------------------------------------------- CIFAR pickles
@pytest.mark.parametrize(
    ("damage", "needle"),
    [
        ("truncate", "data_batch_2' cannot be unpickled"),
        ("foreign_dict", "data_batch_2' is not a file of cifar-10-python.tar.gz: it has no 'data' entry"),
        ("list", "data_batch_2' is not a file of cifar-10-python.tar.gz: it holds a list"),
        ("cifar100", "data_batch_2' is not a file of cifar-10-python.tar.gz: it has no 'labels' entry"),
        ("labels", "its labels run from 10 to 13, outside 0..9"),
        ("short_data", "'data' should hold 4 images of 3x32x32 bytes"),
        ("meta", "batches.meta' is not a file of cifar-10-python.tar.gz: 'label_names' should list the 10"),
    ],
)
def test_damaged_cifar10_pickles_are_named(tmp_path, damage, needle):
    write_cifar10(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    batch = folder / "data_batch_2"
    entry = pickle.loads(batch.read_bytes(), encoding="latin1")
    if damage == "truncate":
        batch.write_bytes(batch.read_bytes()[:1000])
    elif damage == "foreign_dict":
        batch.write_bytes(pickle.dumps({"hello": "world"}))
    elif damage == "list":
        batch.write_bytes(pickle.dumps([1, 2, 3]))
    elif damage == "cifar100":
        write_cifar100(tmp_path / "c100")
        batch.write_bytes((tmp_path / "c100" / "cifar-100-python" / "train").read_bytes())
    elif damage == "labels":
        batch.write_bytes(pickle.dumps({**entry, "labels": [10 + i for i in range(4)]}, protocol=2))
    elif damage == "short_data":
        batch.write_bytes(pickle.dumps({**entry, "data": entry["data"][:, :1000]}, protocol=2))
    else:
        (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": ["a", "b", "c"]}))
    with pytest.raises(ValueError) as e:
        build_datasets("cifar10", root=str(tmp_path), verify_md5=False, download=False)
    message = str(e.value)
    assert needle in message and "\n" not in message and "replace it with the file from" in message


@pytest.mark.slow
def test_cli_truncated_cifar100_pickle(cli, tmp_path):
    write_cifar100(tmp_path / "c100")
    test = tmp_path / "c100" / "cifar-100-python" / "test"
    test.write_bytes(test.read_bytes()[:-500])
    res = cli(
        "train",
        "dataset=cifar100",
        f"dataset.root={tmp_path / 'c100'}",
        "dataset.verify_md5=false",
        "dataset.download=false",
        *SMOKE,
    )
    _one_line(res, "i2e-train", f"'{test}' cannot be unpickled", "truncated", "cifar-100-python.tar.gz")


# ----------------------------------------------------------------------------- stored events of another shape
@pytest.fixture(scope="module")
def digits40():
    return digit_events(40)


def _reshaped_record(events: torch.Tensor, shape: tuple[int, ...]) -> bytes:
    """A record whose header claims ``shape``: the same number of events, so the bytes still fit."""
    return pack_events(events.reshape(shape))


def _damage_parquet(path, row: int, shape: tuple[int, ...], events: torch.Tensor) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    data = table.column("data").to_pylist()
    data[row] = _reshaped_record(events, shape)
    index = table.schema.get_field_index("data")
    pq.write_table(table.set_column(index, "data", pa.array(data, pa.binary())), path, row_group_size=8)


@pytest.mark.parametrize("shape", [(8, 2, 16, 64), (16, 2, 32, 16)])
def test_parquet_record_of_another_shape_is_unreadable(tmp_path, digits40, shape):
    events, labels = digits40
    write_i2e_parquet(tmp_path, events, labels, shards=1, row_group_size=8, val=10)
    shard = tmp_path / "validation-00000-of-00001.parquet"
    _damage_parquet(shard, 2, shape, events[32])
    strict = build_datasets("i2e_parquet", root=str(tmp_path))
    with pytest.raises(UnreadableSampleError) as e:
        next(iter(DataLoader(SeededDataset(strict.val), batch_size=5)))
    assert str(e.value).startswith(
        f"sample 2 of row group 0 in '{shard}' holds events of shape {shape}, the dataset's are (8, 2, 32, 32)"
    )
    assert "dataset.skip_corrupt=true" in str(e.value) and "\n" not in str(e.value)
    lenient = build_datasets("i2e_parquet", root=str(tmp_path), skip_corrupt=True)
    batches = [x for x, _ in DataLoader(SeededDataset(lenient.val), batch_size=5)]
    assert [tuple(x.shape) for x in batches] == [(5, 8, 2, 32, 32)] * 2
    assert torch.equal(batches[0][2], events[33])  # replaced by its neighbour, as any unreadable sample
    assert lenient.val.take_new_count() == 1


def test_npz_file_of_another_shape_is_unreadable(tmp_path, digits40):
    events, labels = digits40
    write_i2e_npz(tmp_path, events[:12], labels[:12], val=2)
    victim = tmp_path / "train" / str(int(labels[5])) / "5.npz"
    np.savez_compressed(victim, events[5].reshape(8, 2, 64, 16).numpy())
    strict = build_datasets("i2e_npz", root=str(tmp_path))
    index = [p for p, _ in strict.train.samples].index(str(victim))
    with pytest.raises(UnreadableSampleError) as e:
        strict.train[index]
    assert f"events '{victim}' have shape (8, 2, 64, 16), the dataset's are (8, 2, 32, 32)" in str(e.value)
    lenient = build_datasets("i2e_npz", root=str(tmp_path), skip_corrupt=True)
    assert lenient.train[index][0].shape == (8, 2, 32, 32) and lenient.train.take_new_count() == 1


@pytest.mark.slow
def test_cli_parquet_record_of_another_shape(cli, tmp_path, digits40):
    events, labels = digits40
    write_i2e_parquet(tmp_path / "pq", events, labels, shards=1, row_group_size=8, val=10)
    shard = tmp_path / "pq" / "validation-00000-of-00001.parquet"
    _damage_parquet(shard, 4, (8, 2, 16, 64), events[34])
    args = ["dataset=i2e_parquet", f"dataset.root={tmp_path / 'pq'}", "trainer.firing_rate_batches=0", *SMOKE]
    _one_line(
        cli("train", "run_dir=strict", *args),
        "i2e-train",
        f"sample 4 of row group 0 in '{shard}' holds events of shape (8, 2, 16, 64), the dataset's are (8, 2, 32, 32)",
    )
    res = cli("train", "run_dir=lenient", "dataset.skip_corrupt=true", *args)
    assert res.returncode == 0, res.output[-3000:]
    row = json.loads((tmp_path / "lenient" / "metrics.jsonl").read_text().splitlines()[0])
    assert row["skipped_samples"] == 1 and row["val_samples"] == 10


# ----------------------------------------------------------------------------- reads that are not counted
def test_reads_outside_the_epoch_are_not_counted(tmp_path):
    written = write_image_folders(tmp_path, classes=2, per_class=(4, 2))
    written["train"][0].write_bytes(b"\x00" * 64)
    b = build_datasets("image_folder", root=str(tmp_path), image_size=32, skip_corrupt=True)
    seeded = SeededDataset(b.train, b.train_transform)  # what the trainer's loader holds
    index = [p for p, _ in b.train.samples].index(str(written["train"][0]))
    with uncounted(seeded):  # e.g. the TensorBoard preview of the first samples
        preview = [seeded[(i, 0)] for i in range(len(seeded))]
        # DataLoader workers started inside the block do not count either
        list(DataLoader(seeded, batch_size=4, num_workers=1, sampler=[(i, 0) for i in range(8)]))
    assert len(preview) == 8 and b.train.take_new_count() == 0
    seeded[(index, 0)]  # the epoch's own read
    assert b.train.take_new_count() == 1
    with b.train.uncounted():
        b.train[index]
    assert b.train.take_new_count() == 0 and isinstance(b.train, CorruptGuard)
    with uncounted([1, 2]):  # no guard inside: nothing to switch off
        pass
