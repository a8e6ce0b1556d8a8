"""i2e-convert: exact events in the published format, resuming, the npz layout, one-line errors.

Real photographs (scikit-image) are written as JPEG/PNG files into an image folder; the stored
events are checked against the independent NumPy reference of tests/test_i2e.py.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from conftest import convert_options
from PIL import Image
from reference import ref_convert, ref_fixed_pairs
from skimage import data as skdata
from skimage import io as skio

from i2e_train.data import DataBundle, build_datasets
from i2e_train.data.formats import unpack_events
from i2e_train.errors import UserError
from i2e_train.events.export import convert, prepare_image, shard_ranges

SIZE = 48
RATIO = 0.12  # dataset/image_folder.yaml
PAIRS = ref_fixed_pairs("gamma_alpha_beta")


def _photos() -> dict[str, np.ndarray]:
    return {
        "astronaut": skdata.astronaut(),
        "chelsea": skdata.chelsea(),
        "coffee": skdata.coffee(),
        "rocket": skdata.rocket(),
    }


@pytest.fixture(scope="module")
def photo_root(tmp_path_factory) -> Path:
    """root/{train,val}/{cat,space}/: crops of real photographs as JPEG and PNG, of several sizes,
    one of them already SIZE x SIZE (must not be resampled)."""
    root = tmp_path_factory.mktemp("photos")
    p = _photos()
    files = {
        "train/cat/a.jpg": p["chelsea"][:200, :260],
        "train/cat/b.png": p["chelsea"][50:130, 100:230],
        "train/cat/exact.png": p["chelsea"][100 : 100 + SIZE, 150 : 150 + SIZE],
        "train/space/a.jpg": p["astronaut"],
        "train/space/b.png": p["rocket"][:300, 200:500],
        "train/space/c.jpg": p["astronaut"][100:300, 50:400],
        "train/space/d.png": p["rocket"][100:160, 300:390],
        "val/cat/a.png": p["coffee"][50:350, 100:500],
        "val/space/a.jpg": p["rocket"][50:400, 100:600],
        "val/space/exact.png": p["astronaut"][200 : 200 + SIZE, 220 : 220 + SIZE],
    }
    for name, pixels in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(path, **({"quality": 90} if name.endswith(".jpg") else {}))
    return root


def _expected_events(path: Path) -> np.ndarray:
    """The published preprocessing written out: PIL bicubic resize unless already SIZE x SIZE, then I2E."""
    if Image.open(path).size == (SIZE, SIZE):
        pixels = skio.imread(path)  # another decoder: the stored events must come from these very pixels
    else:
        pixels = np.asarray(Image.open(path).convert("RGB").resize((SIZE, SIZE), Image.Resampling.BICUBIC))
    return ref_convert(pixels.transpose(2, 0, 1)[None], RATIO, PAIRS)[:, 0]


def _read_split(out: Path, split: str) -> list[dict]:
    rows = []
    for shard in sorted(out.glob(f"{split}-*.parquet")):
        rows += pq.read_table(shard).to_pylist()
    return rows


def _digest(path: Path) -> tuple[int, str]:
    return path.stat().st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest()


def _convert_folder(root: Path, out: Path, skip_corrupt: bool = False, **opts) -> dict:
    bundle = build_datasets("image_folder", root=str(root), image_size=SIZE, skip_corrupt=skip_corrupt)
    options = convert_options(output=str(out), num_workers=0, progress=False, **opts)
    return convert(
        bundle,
        options=options,
        dataset_name="image_folder",
        dataset_root=str(root),
        image_size=SIZE,
        ratio=RATIO,
        order="gamma_alpha_beta",
    )


def test_prepare_image_resizes_bicubic_and_keeps_same_size_pixels():
    photo = skdata.chelsea()
    same = photo[:SIZE, :SIZE]
    assert torch.equal(
        prepare_image(torch.from_numpy(same).permute(2, 0, 1).contiguous(), SIZE).permute(1, 2, 0),
        torch.from_numpy(same),
    )
    assert torch.equal(prepare_image(Image.fromarray(same), SIZE).permute(1, 2, 0), torch.from_numpy(same))
    bicubic = np.array(Image.fromarray(photo).resize((SIZE, SIZE), Image.Resampling.BICUBIC))
    assert torch.equal(
        prepare_image(Image.fromarray(photo), SIZE).permute(1, 2, 0), torch.from_numpy(bicubic)
    )
    grey = torch.from_numpy(skdata.camera()[:SIZE, :SIZE])[None]  # [1, H, W]
    assert torch.equal(prepare_image(grey, SIZE), grey.expand(3, -1, -1))
    with pytest.raises(ValueError, match="uint8"):
        prepare_image(torch.rand(3, 8, 8), SIZE)


def test_shard_ranges_partition_the_rows():
    ranges = shard_ranges(10, 4)
    assert [list(r) for r in ranges] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert shard_ranges(8, 4) == [range(0, 4), range(4, 8)] and shard_ranges(0, 4) == []


@pytest.mark.slow
def test_cli_converts_photos_into_exact_published_events(cli, tmp_path, photo_root):
    res = cli(
        "convert",
        "dataset=image_folder",
        f"dataset.root={photo_root}",
        "dataset.num_classes=2",
        f"dataset.image_size={SIZE}",
        "output=out",
        "shard_size=3",
        "batch_size=2",
        "num_workers=1",
    )
    assert res.returncode == 0, res.output
    out = tmp_path / "out"
    assert sorted(p.name for p in out.glob("*.parquet")) == [
        "train-00000-of-00003.parquet",
        "train-00001-of-00003.parquet",
        "train-00002-of-00003.parquet",
        "validation-00000-of-00001.parquet",
    ]
    assert "img/s" in res.stderr  # the progress bar
    all_events = []
    for split, folder, count in (("train", "train", 7), ("validation", "val", 3)):
        rows = _read_split(out, split)
        assert len(rows) == count
        assert [r["file_path"] for r in rows] == sorted(r["file_path"] for r in rows)  # ImageFolder order
        for row in rows:
            path = photo_root / row["file_path"]
            assert row["file_path"].startswith(f"{folder}/") and path.is_file()
            assert row["label"] == ["cat", "space"].index(path.parent.name)
            events = unpack_events(row["data"])
            assert events.dtype == torch.bool and events.shape == (8, 2, SIZE, SIZE)
            np.testing.assert_array_equal(events.numpy(), _expected_events(path), err_msg=row["file_path"])
            all_events.append(events)
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["complete"] and meta["format_version"] == 1 and meta["image_size"] == SIZE
    assert meta["i2e"]["ratio"] == RATIO and meta["i2e"]["pairs"] == [list(p) for p in PAIRS]
    assert meta["splits"]["train"] == {
        "images": 7,
        "rows": 7,
        "shards": 3,
        "event_rate": pytest.approx(meta["splits"]["train"]["event_rate"]),
        "skipped": 0,
        "skipped_files": [],
    }
    assert meta["source"] == {
        "dataset": "image_folder",
        "root": str(photo_root),
        "num_classes": 2,
        "class_names": ["cat", "space"],
    }
    rate = torch.stack(all_events).double().mean().item()
    assert meta["event_rate"] == pytest.approx(rate, rel=1e-9) and 0.01 < rate < 0.5

    again = cli(
        "convert",
        "dataset=image_folder",
        f"dataset.root={photo_root}",
        "dataset.num_classes=2",
        f"dataset.image_size={SIZE}",
        "output=out",
        "shard_size=3",
    )
    assert again.returncode == 0 and "nothing to do" in again.stderr, again.output


def test_same_size_images_are_not_resampled(tmp_path, photo_root):
    out = tmp_path / "out"
    _convert_folder(photo_root, out, shard_size=100)
    rows = {r["file_path"]: r for r in _read_split(out, "validation")}
    pixels = skio.imread(photo_root / "val/space/exact.png")
    direct = ref_convert(pixels.transpose(2, 0, 1)[None], RATIO, PAIRS)[:, 0]
    np.testing.assert_array_equal(unpack_events(rows["val/space/exact.png"]["data"]).numpy(), direct)
    # a resampled copy of the same pixels would give other events: the check above can fail
    resampled = np.asarray(
        Image.fromarray(pixels)
        .resize((SIZE + 1, SIZE + 1), Image.Resampling.BICUBIC)
        .resize((SIZE, SIZE), Image.Resampling.BICUBIC)
    )
    assert not np.array_equal(ref_convert(resampled.transpose(2, 0, 1)[None], RATIO, PAIRS)[:, 0], direct)


def test_resume_rewrites_only_missing_shards(tmp_path, photo_root, caplog):
    out = tmp_path / "out"
    _convert_folder(photo_root, out, shard_size=2)
    shards = sorted(out.glob("*.parquet"))
    assert len(shards) == 4 + 2
    before = {p.name: _digest(p) for p in shards}
    # an interrupted run: one shard missing, its half-written temporary file left behind
    victim = out / "train-00001-of-00004.parquet"
    victim.unlink()
    (out / f".{victim.name}.tmp-99999").write_bytes(b"PAR1 half a shard")
    time.sleep(0.01)
    with caplog.at_level("INFO", logger="i2e_train"):
        _convert_folder(photo_root, out, shard_size=2)
    assert "removed 1 unfinished temporary file" in caplog.text
    after = {p.name: _digest(p) for p in sorted(out.glob("*.parquet"))}
    assert after.keys() == before.keys() and not list(out.glob(".*tmp*"))
    for name, (mtime, digest) in after.items():
        if name == victim.name:
            assert digest == before[name][1] and mtime != before[name][0]  # rewritten, same bytes
        else:
            assert (mtime, digest) == before[name]  # untouched
    rows = _read_split(out, "train")
    assert len(rows) == 7 and len({r["file_path"] for r in rows}) == 7
    caplog.clear()
    with caplog.at_level("INFO", logger="i2e_train"):
        _convert_folder(photo_root, out, shard_size=2)
    assert "nothing to do" in caplog.text
    assert {p.name: _digest(p) for p in sorted(out.glob("*.parquet"))} == after


def test_max_shards_leaves_a_resumable_partial_output(tmp_path, photo_root, caplog):
    out = tmp_path / "out"
    with caplog.at_level("INFO", logger="i2e_train"):
        meta = _convert_folder(photo_root, out, shard_size=3, max_shards=2)
    assert not meta["complete"] and "still missing" in caplog.text
    first = sorted(out.glob("*.parquet"))
    assert [p.name for p in first] == ["train-00000-of-00003.parquet", "train-00001-of-00003.parquet"]
    assert not json.loads((out / "metadata.json").read_text())["complete"]
    stamps = {p.name: _digest(p) for p in first}
    meta = _convert_folder(photo_root, out, shard_size=3)
    assert meta["complete"] and len(list(out.glob("*.parquet"))) == 4
    assert {p.name: _digest(p) for p in first} == stamps


@pytest.mark.slow
def test_killed_conversion_resumes(cli, tmp_path):
    """SIGKILL a real run after its first shard, then run it again."""
    args = [
        "output=out",
        "split=validation",
        "shard_size=4",
        "batch_size=4",
        "num_workers=0",
        "progress=false",
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "i2e_train.commands.convert", *args], cwd=tmp_path, env=env
    )
    out = tmp_path / "out"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not list(out.glob("validation-*.parquet")):
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    written = {p.name: _digest(p) for p in out.glob("validation-*.parquet")}
    assert written, "the first shard never appeared"
    res = cli("convert", *args)
    assert res.returncode == 0, res.output
    shards = sorted(out.glob("validation-*.parquet"))
    assert len(shards) == 90 and not list(out.glob(".*tmp*"))  # 360 validation digits / 4
    for name, stamp in written.items():
        assert _digest(out / name) == stamp
    rows = _read_split(out, "validation")
    assert [r["file_path"] for r in rows] == [f"digits/validation/{i:08d}" for i in range(360)]
    val = build_datasets("digits", image_size=16).val  # the config's size
    for i in (0, 181, 359):
        image, label = val[i]
        assert rows[i]["label"] == int(label)
        expected = ref_convert(image.numpy()[None], 0.10, PAIRS)[:, 0]
        np.testing.assert_array_equal(unpack_events(rows[i]["data"]).numpy(), expected)


def _convert_digits(out: Path, **opts) -> dict:
    bundle = build_datasets("digits", image_size=32)
    options = convert_options(output=str(out), num_workers=0, progress=False, **opts)
    return convert(
        bundle,
        options=options,
        dataset_name="digits",
        dataset_root=None,
        image_size=32,
        ratio=0.10,
        order="gamma_alpha_beta",
    )


def test_npz_layout(tmp_path, caplog):
    out = tmp_path / "old"
    meta = _convert_digits(out, format="npz", split="validation", shard_size=100)
    files = sorted((out / "val").glob("*/*.npz"))
    assert len(files) == 360 and not (out / "train").exists()
    val = build_datasets("digits", image_size=32).val
    for i in (0, 7, 359):
        image, label = val[i]
        with np.load(out / "val" / str(int(label)) / f"{i}.npz") as npz:
            assert npz.files == ["arr_0"]
            arr = npz["arr_0"]
        assert arr.dtype == np.bool_ and arr.shape == (8, 2, 32, 32)
        np.testing.assert_array_equal(arr, ref_convert(image.numpy()[None], 0.10, PAIRS)[:, 0])
    assert meta["format"] == "i2e-npz" and meta["complete"] and list(meta["splits"]) == ["validation"]
    # resume: a missing file of a finished shard is not noticed (shards are the unit), an unfinished
    # shard (no progress mark) is written again, leaving the other shards' files alone
    stamps = {p: p.stat().st_mtime_ns for p in files}
    (out / ".progress" / "validation-00003-of-00004.json").unlink()
    victim = next(p for p in files if int(p.stem) >= 300)
    victim.unlink()
    _convert_digits(out, format="npz", split="validation", shard_size=100)
    assert victim.is_file()
    for p, mtime in stamps.items():
        assert (p.stat().st_mtime_ns == mtime) == (int(p.stem) < 300), p
    with caplog.at_level("INFO", logger="i2e_train"):
        _convert_digits(out, format="npz", split="validation", shard_size=100)
    assert "nothing to do" in caplog.text


def _one_line_error(res, *needles, during_run=False):
    """The error is one line; a run that failed midway has logged its progress before it."""
    assert res.returncode == 2, res.output
    assert "Traceback" not in res.output
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert during_run or len(lines) == 1, res.stderr
    assert lines[-1].startswith("i2e-convert: error:"), res.stderr
    for needle in needles:
        assert needle in lines[-1], lines[-1]


def test_user_errors_are_one_line(cli, tmp_path):
    _one_line_error(cli("convert"), "missing required setting 'output'")
    _one_line_error(cli("convert", "output=o", "format=zip"), "format must be one of parquet, npz")
    # an unreadable image is named, after the progress logged so far
    broken = tmp_path / "broken"
    for split in ("train", "val"):
        (broken / split / "x").mkdir(parents=True)
        Image.fromarray(skdata.chelsea()[:40, :40]).save(broken / split / "x" / "ok.png")
    (broken / "train" / "x" / "bad.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    _one_line_error(
        cli("convert", "output=b", "dataset=image_folder", f"dataset.root={broken}", "dataset.num_classes=1"),
        "train/x/bad.jpg",
        "UnidentifiedImageError",
        during_run=True,
    )


def test_settings_must_match_the_existing_output(tmp_path):
    out = tmp_path / "o"
    _convert_digits(out, split="validation")
    with pytest.raises(UserError, match="converted with ratio=0.1, this run has ratio=0.2"):
        convert(
            build_datasets("digits", image_size=32),
            options=convert_options(output=str(out), split="validation", progress=False),
            dataset_name="digits",
            dataset_root=None,
            image_size=32,
            ratio=0.2,
            order="gamma_alpha_beta",
        )
    with pytest.raises(UserError, match="shard_size=1000, this run has shard_size=7"):
        _convert_digits(out, split="validation", shard_size=7)
    with pytest.raises(UserError, match="shard_size must be >= 1"):
        convert_options(output="x", shard_size=0)
    (out / "validation-00000-of-00009.parquet").write_bytes(b"")
    (out / "metadata.json").unlink()
    with pytest.raises(UserError, match="different shard layout"):
        _convert_digits(out, split="validation")


def test_event_datasets_are_refused(tmp_path):
    events = DataBundle(train=[], val=[], num_classes=10, events=True)
    with pytest.raises(UserError, match="already consists of events"):
        convert(
            events,
            options=convert_options(output=str(tmp_path / "o")),
            dataset_name="cifar10dvs",
            dataset_root=None,
            image_size=128,
            ratio=0.1,
            order="gamma_alpha_beta",
        )


# ----------------------------------------------------------------------------- faults
def _tree_with_corrupt_images(root: Path) -> dict[str, Path]:
    """Real photographs as JPEG/PNG, one truncated JPEG in train/cat and one in val/dog."""
    p = _photos()
    files = {
        "train/cat/a.jpg": p["chelsea"][:200, :260],
        "train/cat/bad.jpg": p["chelsea"][100:300, 50:300],
        "train/cat/c.png": p["chelsea"][50:130, 100:230],
        "train/dog/d.jpg": p["coffee"][:300, :300],
        "train/dog/e.png": p["rocket"][100:160, 300:390],
        "train/dog/f.jpg": p["astronaut"][100:300, 50:400],
        "val/cat/g.png": p["coffee"][50:350, 100:500],
        "val/dog/bad.jpg": p["rocket"][50:400, 100:600],
        "val/dog/h.jpg": p["astronaut"][:200, :200],
    }
    for name, pixels in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(path, **({"quality": 90} if name.endswith(".jpg") else {}))
    for name in ("train/cat/bad.jpg", "val/dog/bad.jpg"):
        (root / name).write_bytes((root / name).read_bytes()[:400])  # cut off mid-scan
    return {name: root / name for name in files}


@pytest.mark.slow
def test_cli_skip_corrupt_leaves_unreadable_images_out_and_lists_them(cli, tmp_path):
    root = tmp_path / "photos"
    _tree_with_corrupt_images(root)
    args = [
        "dataset=image_folder",  # no dataset.num_classes: the class folders tell
        f"dataset.root={root}",
        f"dataset.image_size={SIZE}",
        "dataset.skip_corrupt=true",
        "output=out",
        "shard_size=2",
        "num_workers=1",
        "progress=false",
    ]
    res = cli("convert", *args)
    assert res.returncode == 0, res.output[-3000:]
    assert (
        f"leaving out unreadable train image (dataset.skip_corrupt=true): cannot read image '{root}"
        in res.stderr
    )
    out = tmp_path / "out"
    meta = json.loads((out / "metadata.json").read_text())
    for split, folder, rows, bad_index in (("train", "train", 5, 1), ("validation", "val", 2, 1)):
        got = _read_split(out, split)
        paths = [r["file_path"] for r in got]
        assert (
            len(got) == rows
            and len(set(paths)) == rows
            and f"{folder}/{'cat' if split == 'train' else 'dog'}/bad.jpg" not in paths
        )
        for row in got:  # every row holds the events of the file it names
            np.testing.assert_array_equal(
                unpack_events(row["data"]).numpy(), _expected_events(root / row["file_path"])
            )
            assert row["label"] == ["cat", "dog"].index(Path(row["file_path"]).parent.name)
        info = meta["splits"][split]
        assert (info["images"], info["rows"], info["skipped"]) == (rows + 1, rows, 1)
        (entry,) = info["skipped_files"]
        assert entry["index"] == bad_index and entry["file_path"].endswith("/bad.jpg")
        assert entry["shard"] == f"{split}-00000-of-{(rows + 2) // 2:05d}.parquet"
        assert entry["reason"].startswith(f"cannot read image '{root / entry['file_path']}'")
    assert meta["complete"] and meta["source"]["num_classes"] == 2
    # The first train shard: a.jpg and (in place of bad.jpg) nothing; the next one starts at c.png.
    first = pq.read_table(out / "train-00000-of-00003.parquet").to_pylist()
    assert [r["file_path"] for r in first] == ["train/cat/a.jpg"]

    # Resuming: a finished output stays as it is; a deleted shard comes back the same.
    again = cli("convert", *args)
    assert (
        again.returncode == 0
        and "nothing to do" in again.stderr
        and "2 unreadable image(s) were left out" in again.stderr
    )
    shard = out / "train-00000-of-00003.parquet"
    before = _digest(shard)[1]
    shard.unlink()
    res = cli("convert", *args)
    assert res.returncode == 0, res.output[-3000:]
    assert _digest(shard)[1] == before
    assert json.loads((out / "metadata.json").read_text())["splits"] == meta["splits"]


def test_npz_skip_corrupt_writes_no_file_for_an_unreadable_image(tmp_path):
    root = tmp_path / "photos"
    _tree_with_corrupt_images(root)
    out = tmp_path / "old"
    meta = _convert_folder(root, out, skip_corrupt=True, format="npz", shard_size=4)
    assert sorted(p.relative_to(out).as_posix() for p in out.glob("train/*/*.npz")) == [
        "train/0/0.npz",
        "train/0/2.npz",
        "train/1/3.npz",
        "train/1/4.npz",
        "train/1/5.npz",
    ]
    assert meta["splits"]["train"]["rows"] == 5 and meta["splits"]["train"]["skipped"] == 1
    assert meta["splits"]["train"]["skipped_files"][0]["file_path"] == "train/cat/bad.jpg"
    assert meta["splits"]["validation"]["skipped_files"][0]["file_path"] == "val/dog/bad.jpg"
    with np.load(out / "train/0/2.npz") as npz:
        np.testing.assert_array_equal(npz["arr_0"], _expected_events(root / "train/cat/c.png"))


def test_a_class_folder_on_another_disk_keeps_its_place_in_file_path(tmp_path, photo_root):
    import shutil

    root = tmp_path / "photos"
    shutil.copytree(photo_root, root)
    (root / "train" / "space").rename(tmp_path / "disk2")
    os.symlink(tmp_path / "disk2", root / "train" / "space")
    _convert_folder(root, tmp_path / "out", shard_size=100)
    paths = [r["file_path"] for r in _read_split(tmp_path / "out", "train")]
    assert paths == ["train/cat/a.jpg", "train/cat/b.png", "train/cat/exact.png"] + [
        f"train/space/{n}" for n in ("a.jpg", "b.png", "c.jpg", "d.png")
    ]


def test_16bit_png_converts_like_its_8bit_original(tmp_path):
    from disk_formats import write_png16

    root = tmp_path / "photos"
    pixels = _photos()["astronaut"][100:300, 50:300]
    for split in ("train", "val"):
        (root / split / "x").mkdir(parents=True)
        Image.fromarray(pixels).save(root / split / "x" / "eight.png")
        write_png16(root / split / "x" / "sixteen.png", pixels.astype(np.uint16) * 257)
    _convert_folder(root, tmp_path / "out", shard_size=10)
    rows = {r["file_path"]: r["data"] for r in _read_split(tmp_path / "out", "train")}
    np.testing.assert_array_equal(
        unpack_events(rows["train/x/sixteen.png"]), unpack_events(rows["train/x/eight.png"])
    )
    assert unpack_events(rows["train/x/eight.png"]).float().mean() > 0.01


_HOLD_LOCK = """
import fcntl, os, sys, time
path = sys.argv[1].replace("PID", str(os.getpid()))
f = open(path, "wb")
fcntl.flock(f.fileno(), fcntl.LOCK_EX)
print(path, flush=True)
time.sleep(120)
"""


def _dead_pid() -> int:
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    return int(done.stdout)


def test_clean_up_removes_only_the_temporary_files_of_dead_writers(tmp_path, photo_root, caplog):
    out = tmp_path / "out"
    _convert_folder(photo_root, out, shard_size=2)
    (out / "train-00001-of-00004.parquet").unlink()
    dead = _dead_pid()
    dead_files = [
        out / f".train-00001-of-00004.parquet.tmp-{dead}",  # a converter killed while saving a shard
        out / f".metadata.json.tmp-{dead}",  # ... or metadata.json
    ]
    for path in dead_files:
        path.write_bytes(b"half written")
    # Live writers: a converter running in another process (it holds its file's lock), this process
    # (no lock, but its pid is alive), and a writer on another machine (a pid that means nothing
    # here, but the lock is held).
    child = subprocess.Popen(
        [sys.executable, "-c", _HOLD_LOCK, str(out / ".train-00002-of-00004.parquet.tmp-PID")],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        running = Path(child.stdout.readline().strip())
        mine = out / f".train-00003-of-00004.parquet.tmp-{os.getpid()}"
        mine.write_bytes(b"being written")
        remote = out / f".validation-00000-of-00002.parquet.tmp-{dead}"
        with open(remote, "wb") as held:
            fcntl.flock(held.fileno(), fcntl.LOCK_EX)
            with caplog.at_level("INFO", logger="i2e_train"):
                _convert_folder(photo_root, out, shard_size=2)
        assert not any(p.exists() for p in dead_files)
        assert running.exists() and mine.exists() and remote.exists()
        assert "removed 2 unfinished temporary file(s)" in caplog.text
        assert "is being written by another process too" in caplog.text
        assert (out / "train-00001-of-00004.parquet").is_file()
    finally:
        child.kill()
        child.wait()
    caplog.clear()
    with caplog.at_level("INFO", logger="i2e_train"):
        _convert_folder(photo_root, out, shard_size=2)
    assert not running.exists() and not remote.exists() and mine.exists()  # this process is still alive
    assert "removed 2 unfinished temporary file(s)" in caplog.text
    mine.unlink()


def test_npz_clean_up_covers_progress_marks_and_sample_files(tmp_path):
    out = tmp_path / "old"
    _convert_digits(out, format="npz", split="validation", shard_size=100)
    (out / ".progress" / "validation-00003-of-00004.json").unlink()
    dead = _dead_pid()
    stale = [
        out / ".progress" / f".validation-00003-of-00004.json.tmp-{dead}",
        next((out / "val").iterdir()) / f".350.npz.tmp-{dead}",
    ]
    for path in stale:
        path.write_bytes(b"half written")
    _convert_digits(out, format="npz", split="validation", shard_size=100)
    assert (
        not any(p.exists() for p in stale)
        and (out / ".progress" / "validation-00003-of-00004.json").is_file()
    )


def test_cli_blames_the_wrong_key_not_the_dataset_root(cli, tmp_path):
    res = cli("convert", "dataset=image_folder", f"dataset.root={tmp_path}", "foo.bar=1", "output=o")
    _one_line_error(res, "unknown config key 'foo.bar'")
    assert "dataset.root" not in res.stderr.split("top-level keys")[0]
