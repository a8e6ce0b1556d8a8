"""Every dataset builder on small files written in its real on-disk format (see disk_formats.py).

The real readers run: torchvision's CIFAR/MNIST/ImageFolder, SpikingJelly's AEDAT reader and frame
integration, pyarrow. Nothing is mocked; no test touches the network.
"""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch
from disk_formats import (
    CIFAR10_CLASSES,
    digit_events,
    write_cifar10,
    write_cifar10_dvs,
    write_cifar100,
    write_i2e_npz,
    write_i2e_parquet,
    write_image_folders,
    write_mnist,
)
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from i2e_train.data import build_datasets
from i2e_train.data.corrupt import CorruptGuard, UnreadableSampleError
from i2e_train.data.fetch import download_or_explain
from i2e_train.data.sampler import SeededDataset
from i2e_train.errors import UserError


def _chw(images_NHWC: np.ndarray, i: int) -> torch.Tensor:
    return torch.from_numpy(images_NHWC[i]).permute(2, 0, 1).contiguous()


# ----------------------------------------------------------------------------- CIFAR
def test_cifar10_reads_the_python_pickles_exactly(tmp_path):
    written = write_cifar10(tmp_path)
    # Our files are not the official release, so their md5 differ: verify_md5=false sets the md5
    # entries of torchvision's public train_list/test_list/meta attributes to None, which its
    # check_integrity reads as "must exist" (see torchvision_sets.py). The checksum path itself is
    # tested below with verify_md5=true.
    b = build_datasets("cifar10", root=str(tmp_path), verify_md5=False, download=False)
    assert (len(b.train), len(b.val), b.num_classes) == (20, 10, 10) and b.class_names == CIFAR10_CLASSES
    assert not b.events
    for i in (0, 7):
        image, label = b.val[i]
        assert label == written["test_labels"][i]
        out = b.val_transform(image)
        expected = TF.resize(_chw(written["test_images"], i), [128, 128], antialias=True)
        assert out.dtype == torch.uint8 and torch.equal(out, expected)  # channel planes decoded in order
    image, label = b.train[13]
    assert label == written["train_labels"][13]
    assert torch.equal(TF.pil_to_tensor(image), _chw(written["train_images"], 13))


def test_cifar10_checksum_and_missing_file_messages(tmp_path):
    write_cifar10(tmp_path)
    with pytest.raises(
        ValueError, match=r"data_batch_1 does not match the official file's checksum.*verify_md5=false"
    ):
        build_datasets("cifar10", root=str(tmp_path), download=False)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError) as e:
        build_datasets("cifar10", root=str(tmp_path), verify_md5=False, download=False)
    msg = str(e.value)
    assert "cifar-10-batches-py/data_batch_3 does not exist" in msg
    assert (
        "data_batch_1, data_batch_2, data_batch_3, data_batch_4, data_batch_5, test_batch, batches.meta"
        in msg
    )
    assert str(tmp_path / "cifar-10-batches-py") in msg


def test_cifar100_fine_labels(tmp_path):
    written = write_cifar100(tmp_path)
    b = build_datasets("cifar100", root=str(tmp_path), verify_md5=False, download=False)
    assert (len(b.train), len(b.val), b.num_classes) == (20, 10, 100)
    assert [b.train[i][1] for i in range(20)] == written["train_labels"].tolist()
    assert b.class_names[7] == "class_07"


def test_a_download_that_cannot_connect_fails_at_once_with_where_to_put_files(monkeypatch):
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    called = []
    # Port 9 on the loopback interface: nothing listens, the connection is refused locally.
    with pytest.raises(
        UserError, match=r"cifar10 is missing and cannot be downloaded \(.*\); put X into /data/y"
    ):
        download_or_explain(
            "cifar10",
            ["http://127.0.0.1:9/cifar-10-python.tar.gz"],
            lambda: called.append(1),
            "put X into /data/y",
        )
    assert called == []


# ----------------------------------------------------------------------------- MNIST
@pytest.mark.parametrize(
    ("name", "kind", "flips"), [("mnist", "MNIST", False), ("fashion_mnist", "FashionMNIST", True)]
)
def test_mnist_idx_files(tmp_path, name, kind, flips):
    written = write_mnist(tmp_path, kind)
    b = build_datasets(name, root=str(tmp_path), download=False)
    assert (len(b.train), len(b.val), b.num_classes) == (24, 12, 10)
    image, label = b.train[5]
    assert label == written["train_labels"][5]
    out = b.val_transform(image)
    grey = torch.from_numpy(written["train_images"][5])[None]
    assert out.shape == (3, 32, 32) and torch.equal(
        out, TF.resize(grey, [32, 32], antialias=True).expand(3, -1, -1)
    )
    assert any("RandomHorizontalFlip" in type(t).__name__ for t in b.train_transform.transforms) == flips


def test_mnist_missing_files_say_where(tmp_path):
    with pytest.raises(
        FileNotFoundError,
        match=r"MNIST/raw/train-images-idx3-ubyte does not exist; put train-images-idx3-ubyte, ",
    ):
        build_datasets("mnist", root=str(tmp_path), download=False)


# ----------------------------------------------------------------------------- image folders
def test_imagenet_folders_and_pipelines(tmp_path):
    write_image_folders(tmp_path, classes=3)
    b = build_datasets("imagenet", root=str(tmp_path), image_size=64, eval_resize=72)
    assert (len(b.train), len(b.val), b.num_classes) == (12, 6, 3)
    assert b.class_names == ["n00000000", "n00000001", "n00000002"]
    image, label = b.val[3]
    path = b.val.samples[3][0]
    decoded = TF.pil_to_tensor(Image.open(path).convert("RGB"))
    expected = TF.center_crop(TF.resize(decoded, 72, antialias=True), [64, 64])
    assert torch.equal(b.val_transform(image), expected) and label == 1


def test_imagenet_flat_val_folder_is_explained(tmp_path):
    write_image_folders(tmp_path, classes=2)
    for f in list((tmp_path / "val").rglob("*.JPEG")):
        f.rename(tmp_path / "val" / f"ILSVRC2012_val_{f.stem}.JPEG")
    for d in (tmp_path / "val").iterdir():
        if d.is_dir():
            d.rmdir()
    with pytest.raises(
        ValueError, match=r"holds 4 images directly but class folders .* ILSVRC2012 validation download"
    ):
        build_datasets("imagenet", root=str(tmp_path))


def test_class_mismatch_and_unsplit_tree(tmp_path):
    write_image_folders(tmp_path, classes=3)
    (tmp_path / "val" / "n00000002").rename(tmp_path / "val" / "extra")
    with pytest.raises(ValueError, match="'extra' is in only one of them"):
        build_datasets("image_folder", root=str(tmp_path))
    # One class-folder tree (Caltech's official layout), split per class from the seed.
    tree = tmp_path / "caltech" / "101_ObjectCategories"
    (tmp_path / "train").rename(tree.parent.mkdir() or tree)
    (tree / "BACKGROUND_Google").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tree / "BACKGROUND_Google" / "x.jpg")
    b = build_datasets("caltech101", root=str(tmp_path / "caltech"), val_fraction=0.25, split_seed=3)
    assert b.num_classes == 3 and "BACKGROUND_Google" not in b.class_names
    assert (len(b.train), len(b.val)) == (9, 3)  # 1 of each class's 4 images held out
    assert sorted(b.val.base.dataset.targets[i] for i in b.val.base.indices) == [0, 1, 2]
    again = build_datasets("caltech101", root=str(tmp_path / "caltech"), val_fraction=0.25, split_seed=3)
    assert again.val.base.indices == b.val.base.indices


def test_unreadable_image_stops_or_is_replaced(tmp_path):
    written = write_image_folders(tmp_path, classes=2)
    bad = written["train"][1]
    bad.write_bytes(bad.read_bytes()[:300])  # a truncated JPEG
    strict = build_datasets("image_folder", root=str(tmp_path), image_size=32)
    index = strict.train.samples.index((str(bad), 0))
    with pytest.raises(UnreadableSampleError, match=rf"cannot read image '{bad}'.*dataset.skip_corrupt=true"):
        strict.train[index]
    lenient = build_datasets("image_folder", root=str(tmp_path), image_size=32, skip_corrupt=True)
    image, label = lenient.train[index]
    assert torch.equal(TF.pil_to_tensor(image), TF.pil_to_tensor(lenient.train.base[index + 1][0]))
    assert lenient.train.take_new_count() == 1 and lenient.train.take_new_count() == 0


def test_unreadable_sample_error_in_a_worker_stays_one_line(tmp_path):
    written = write_image_folders(tmp_path, classes=2)
    written["val"][0].write_bytes(b"not an image at all")
    b = build_datasets("image_folder", root=str(tmp_path), image_size=32)
    loader = DataLoader(SeededDataset(b.val, b.val_transform), batch_size=2, num_workers=1)
    with pytest.raises(UnreadableSampleError) as e:
        list(loader)
    assert "\n" not in str(e.value) and str(written["val"][0]) in str(e.value)


@pytest.mark.slow
def test_skipped_samples_are_counted_across_workers(tmp_path):
    written = write_image_folders(tmp_path, classes=2, per_class=(4, 3))
    for path in written["val"][:2]:
        path.write_bytes(b"\x00" * 64)
    b = build_datasets("image_folder", root=str(tmp_path), image_size=32, skip_corrupt=True)
    loader = DataLoader(SeededDataset(b.val, b.val_transform), batch_size=3, num_workers=2)
    images = torch.cat([x for x, _ in loader])
    assert images.shape == (6, 3, 32, 32)  # replaced, not dropped: batches keep their size
    assert isinstance(b.val, CorruptGuard) and b.val.take_new_count() == 2


# ----------------------------------------------------------------------------- CIFAR10-DVS
@pytest.fixture(scope="module")
def dvs_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar10_dvs")
    events = write_cifar10_dvs(root, per_class=10)
    return root, events


@pytest.mark.slow
def test_cifar10_dvs_through_spikingjelly(dvs_root):
    root, events = dvs_root
    # Our archives are not the official ones: verify_md5=false skips only our checksum comparison
    # (SpikingJelly's own download check is never reached, see dvs.py); the checksum message is
    # tested in test_cifar10_dvs_archive_problems.
    b = build_datasets("cifar10_dvs", root=str(root), verify_md5=False, download=False)
    assert b.events and b.num_classes == 10 and b.class_names == CIFAR10_CLASSES
    assert (len(b.train), len(b.val)) == (90, 10)  # split_to_train_test_set(0.9, ., 10): 9 + 1 per class
    # SpikingJelly's AEDAT reader recovered exactly the events we encoded.
    raw = np.load(root / "events_np" / "cat" / "cifar10_cat_4.npz")
    ev = events[("cat", 4)]
    for key in ("t", "x", "y", "p"):
        assert np.array_equal(raw[key], ev[key]), key
    # Frames: [8, 2, 128, 128] event counts; together they hold every event of the recording.
    subset = b.val.base
    frames, label = subset[3]  # validation sample of class 3 (cat): file order puts _9 last
    path = subset.dataset.samples[subset.indices[3]][0]
    assert path.endswith("cifar10_cat_9.npz") and label == 3
    assert frames.shape == (8, 2, 128, 128) and frames.dtype == torch.float32
    # split by number: frame i counts events [i*N//8, (i+1)*N//8) per polarity and pixel, the last
    # frame up to N (an independent histogram of the events we wrote).
    ev = events[("cat", 9)]
    n, di = len(ev["t"]), len(ev["t"]) // 8
    expected = np.zeros((8, 2, 128, 128), np.float32)
    for i in range(8):
        sl = slice(i * di, n if i == 7 else (i + 1) * di)
        np.add.at(expected[i], (ev["p"][sl], ev["y"][sl], ev["x"][sl]), 1)
    assert np.array_equal(frames.numpy(), expected) and expected.sum() == n > 1000


@pytest.mark.slow
def test_cifar10_dvs_tebn_split(dvs_root):
    root, _ = dvs_root
    b = build_datasets("cifar10_dvs", root=str(root), verify_md5=False, download=False, split="tebn")
    # Recordings 0..99 of each class are validation: all 10 of ours.
    assert (len(b.train), len(b.val)) == (0, 100)


def test_cifar10_dvs_archive_problems(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        build_datasets("cifar10_dvs", root=str(tmp_path), download=False)
    msg = str(e.value)
    for name in CIFAR10_CLASSES:
        assert f"{name}.zip" in msg
    assert str(tmp_path / "download") in msg and "\n" not in msg
    # Damaged archives are reported, and kept (SpikingJelly itself would delete and re-download them).
    (tmp_path / "download").mkdir()
    for name in CIFAR10_CLASSES:
        (tmp_path / "download" / f"{name}.zip").write_bytes(b"PK\x05\x06" + b"\x00" * 18)
    with pytest.raises(ValueError, match=r"airplane.zip does not match the official archive's checksum"):
        build_datasets("cifar10_dvs", root=str(tmp_path), download=False)
    assert len(list((tmp_path / "download").iterdir())) == 10
    # A stale marker of an interrupted preparation.
    (tmp_path / "events_np.building").touch()
    with pytest.raises(
        ValueError, match=r"events_np.building', left by a dataset preparation that did not finish.*delete"
    ):
        build_datasets("cifar10_dvs", root=str(tmp_path), download=False)


# ----------------------------------------------------------------------------- pre-converted
@pytest.fixture(scope="module")
def digit_event_data():
    return digit_events(40)


def test_i2e_parquet_reads_lazily_and_exactly(tmp_path, digit_event_data):
    events, labels = digit_event_data
    write_i2e_parquet(tmp_path, events, labels, shards=2, row_group_size=8, val=10)
    b = build_datasets("i2e_parquet", root=str(tmp_path), image_size=32, cache_row_groups=2)
    assert b.events and (len(b.train), len(b.val), b.num_classes) == (30, 10, 10)
    assert b.class_names[3] == "digit_3"  # from the Hugging Face ClassLabel metadata
    train = b.train.base
    for i in (0, 7, 8, 14, 15, 29):  # both shards, several row groups, shard boundaries
        x, y = b.train[i]
        assert x.dtype == torch.bool and torch.equal(x, events[i]) and y == labels[i]
    # Only row groups were read, at most cache_row_groups of them kept: never a whole shard.
    assert len(train._cache) == 2 and all(len(col) <= 8 for col in train._cache.values())
    assert torch.equal(b.val[9][0], events[39])


def test_i2e_parquet_with_dataloader_workers(tmp_path, digit_event_data):
    events, labels = digit_event_data
    write_i2e_parquet(tmp_path, events, labels, shards=3, row_group_size=5, val=10)
    b = build_datasets("i2e_parquet", root=str(tmp_path))
    b.train[0]  # the parent opened a file: workers must open their own
    loader = DataLoader(SeededDataset(b.train), batch_size=4, num_workers=2, sampler=list(range(29, -1, -1)))
    got = torch.cat([x for x, _ in loader])
    assert torch.equal(got, events[:30].flip(0))
    assert pickle.loads(pickle.dumps(b.train.base))._files == {}


def test_i2e_parquet_errors(tmp_path, digit_event_data):
    import pyarrow as pa
    import pyarrow.parquet as pq

    events, labels = digit_event_data
    with pytest.raises(FileNotFoundError, match=r"no train-\*.parquet shards .* found no .parquet files"):
        build_datasets("i2e_parquet", root=str(tmp_path))
    write_i2e_parquet(tmp_path, events, labels, shards=1, val=10)
    with pytest.raises(ValueError, match=r"stored events are 32x32 but dataset.image_size=128"):
        build_datasets("i2e_parquet", root=str(tmp_path), image_size=128)
    with pytest.raises(ValueError, match=r"labels run from 0 to 9 but dataset.num_classes=5"):
        build_datasets("i2e_parquet", root=str(tmp_path), num_classes=5)
    # A damaged record names its shard and row group.
    table = pq.read_table(tmp_path / "validation-00000-of-00001.parquet")
    data = table.column("data").to_pylist()
    data[2] = data[2][:-40]
    pq.write_table(
        table.set_column(0, "data", pa.array(data, pa.binary())),
        tmp_path / "validation-00000-of-00001.parquet",
    )
    b = build_datasets("i2e_parquet", root=str(tmp_path))
    with pytest.raises(
        UnreadableSampleError,
        match=r"cannot read sample 2 of row group 0 in '.*validation-00000-of-00001.parquet'",
    ):
        b.val[2]


def test_i2e_npz_folders(tmp_path, digit_event_data):
    events, labels = digit_event_data
    write_i2e_npz(tmp_path, events, labels, val=10)
    b = build_datasets("i2e_npz", root=str(tmp_path), image_size=32)
    assert b.events and (len(b.train), len(b.val), b.num_classes) == (30, 10, 10)
    for split, offset in ((b.train, 0), (b.val, 30)):
        for k in range(len(split)):
            x, y = split[k]
            i = int(os.path.basename(split.samples[k][0])[:-4])
            assert torch.equal(x, events[i]) and y == labels[i] and i >= offset


def test_i2e_npz_numeric_label_folders_keep_their_number(tmp_path):
    ev = torch.zeros(8, 2, 4, 4, dtype=torch.bool)
    for label in (0, 2, 10, 11):
        for split in ("train", "val"):
            (tmp_path / split / str(label)).mkdir(parents=True)
            np.savez_compressed(tmp_path / split / str(label) / "0.npz", ev.numpy())
    b = build_datasets("i2e_npz", root=str(tmp_path))
    assert sorted(y for _, y in (b.train[i] for i in range(4))) == [0, 2, 10, 11] and b.num_classes == 12


def test_bicubic_option_and_unknown_values(tmp_path):
    written = write_cifar10(tmp_path)
    b = build_datasets(
        "cifar10", root=str(tmp_path), verify_md5=False, download=False, interpolation="bicubic"
    )
    expected = TF.resize(
        _chw(written["test_images"], 2), [128, 128], interpolation=InterpolationMode.BICUBIC, antialias=True
    )
    assert torch.equal(b.val_transform(b.val[2][0]), expected)
    with pytest.raises(
        ValueError, match="dataset.interpolation must be one of bilinear, bicubic, got 'nearest'"
    ):
        build_datasets(
            "cifar10", root=str(tmp_path), verify_md5=False, download=False, interpolation="nearest"
        )
    with pytest.raises(ValueError, match="dataset.augment must be one of baseline1, baseline2, none"):
        build_datasets("cifar10", root=str(tmp_path), verify_md5=False, download=False, augment="heavy")


@pytest.mark.parametrize("fmt", ["parquet", "npz"])
def test_i2e_convert_output_trains_as_a_preconverted_dataset(tmp_path, fmt):
    from conftest import convert_options

    from i2e_train.events.export import convert
    from i2e_train.events.i2e import i2e_convert

    digits = build_datasets("digits", image_size=32)
    options = convert_options(output=str(tmp_path), format=fmt, num_workers=0, progress=False, shard_size=500)
    convert(
        digits,
        options=options,
        dataset_name="digits",
        dataset_root=None,
        image_size=32,
        ratio=0.10,
        order="gamma_alpha_beta",
    )
    name = "i2e_parquet" if fmt == "parquet" else "i2e_npz"
    b = build_datasets(name, root=str(tmp_path), image_size=32, num_classes=10)
    assert b.events and (len(b.train), len(b.val)) == (1437, 360)
    for i in (0, 123, 359):
        image, label = digits.val[i]
        # parquet keeps the row order; npz files are named <label>/<row>.npz
        k = i if fmt == "parquet" else [os.path.basename(p) for p, _ in b.val.samples].index(f"{i}.npz")
        events, got_label = b.val[k]
        assert got_label == label
        assert torch.equal(events, i2e_convert(image[None], ratio=0.10, dtype=torch.bool)[:, 0])


def test_device_augment_gets_stored_size_images_and_chains_with_mixup(tmp_path):
    from i2e_train import config
    from i2e_train.commands.cli import precheck, register_resolvers
    from i2e_train.data.transforms import ChainBatch
    from i2e_train.training import builders

    write_cifar10(tmp_path)
    register_resolvers()
    args = [
        "dataset=cifar10",
        f"dataset.root={tmp_path}",
        "dataset.verify_md5=false",
        "dataset.download=false",
        "trainer.device_augment=baseline2",
        "extras.mixup_alpha=0.4",
    ]
    cfg = precheck("train", args)
    b = builders.build_data(cfg, device_augment=True)
    image, _ = b.train[0]
    stored = b.train_transform(image)
    assert stored.shape == (3, 32, 32) and torch.equal(stored, TF.pil_to_tensor(image))  # no CPU augmentation
    assert b.val_transform(b.val[0][0]).shape == (3, 128, 128)
    opts, extras = (
        config.read(config.TrainerOptions, cfg, "trainer"),
        config.read(config.ExtrasOptions, cfg, "extras"),
    )
    chain = builders.build_batch_transform(opts, extras, b, 128, seed=0)
    assert isinstance(chain, ChainBatch) and len(chain.transforms) == 2
    batch = torch.stack([b.train_transform(b.train[i][0]) for i in range(4)])
    labels = torch.tensor([b.train[i][1] for i in range(4)])
    chain.manual_seed(5)
    x1, y1 = chain(batch, labels)
    chain.manual_seed(5)
    x2, y2 = chain(batch, labels)
    assert (
        x1.shape == (4, 3, 128, 128) and torch.equal(x1, x2) and torch.equal(y1, y2) and y1.shape == (4, 10)
    )
    events, labels = digit_events(12)
    write_i2e_npz(tmp_path / "npz", events, labels, val=2)
    args = ["dataset=i2e_npz", f"dataset.root={tmp_path / 'npz'}", "trainer.device_augment=baseline2"]
    with pytest.raises(
        UserError, match="trainer.device_augment augments images, but 'i2e_npz' already holds events"
    ):
        builders.build_data(precheck("train", args), device_augment=True)
