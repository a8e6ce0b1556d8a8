"""i2e-viz: PNG overviews and GIF animations of real photographs, dataset samples and stored events."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import convert_options
from PIL import Image
from reference import ref_convert, ref_fixed_pairs
from skimage import data as skdata

from i2e_train.commands.viz import (
    OFF_RGB,
    ON_RGB,
    event_frames_rgb,
    gif_frames,
    render_png,
    sample_from_image,
)
from i2e_train.data import build_datasets
from i2e_train.errors import UserError
from i2e_train.events.export import convert


def _has_colour(pixels: np.ndarray, rgb: tuple[int, int, int], tol: int = 12, at_least: int = 50) -> bool:
    close = (np.abs(pixels[..., :3].astype(int) - np.array(rgb)) <= tol).all(-1)
    return int(close.sum()) >= at_least


@pytest.fixture
def photo(tmp_path):
    path = tmp_path / "chelsea.jpg"
    Image.fromarray(skdata.chelsea()).save(path, quality=92)
    return path


def test_event_frames_colour_on_and_off():
    events = torch.zeros(2, 2, 3, 3, dtype=torch.bool)
    events[0, 0, 0, 0] = events[1, 1, 2, 2] = True
    frames = event_frames_rgb(events)
    assert frames.shape == (2, 3, 3, 3) and frames.dtype == np.uint8
    assert tuple(frames[0, 0, 0]) == ON_RGB and tuple(frames[1, 2, 2]) == OFF_RGB
    assert tuple(frames[0, 1, 1]) == (255, 255, 255)


def test_png_panels_show_the_exact_events_of_each_timestep():
    image = torch.from_numpy(skdata.astronaut()[::4, ::4].copy()).permute(2, 0, 1)  # 128x128
    sample = sample_from_image(image, 0.12, "gamma_alpha_beta", size=0)
    fig = render_png(sample)
    panels = [ax for ax in fig.axes if ax.images and ax.get_title()]
    titles = [ax.get_title() for ax in panels]
    assert titles[:2] == ["original", "V = max(R, G, B)"] and len(panels) == 10
    pairs = ref_fixed_pairs("gamma_alpha_beta")
    expected = ref_convert(image.numpy()[None], 0.12, pairs)[:, 0]
    shown = []
    for t, ax in enumerate(panels[2:]):
        a, b = pairs[t]
        assert ax.get_title().startswith(f"t{t + 1}: {a}→{b}"), ax.get_title()
        rgb = np.asarray(ax.images[0].get_array())
        np.testing.assert_array_equal((rgb == ON_RGB).all(-1), expected[t, 0])
        np.testing.assert_array_equal((rgb == OFF_RGB).all(-1), expected[t, 1])
        shown.append(rgb)
    assert all(not np.array_equal(shown[i], shown[j]) for i in range(8) for j in range(i + 1, 8))


@pytest.mark.slow
def test_cli_png_and_gif_of_a_photograph(cli, tmp_path, photo):
    res = cli("viz", str(photo), "--out", "pic.png", "--size", "96")
    assert res.returncode == 0, res.output
    png = np.asarray(Image.open(tmp_path / "pic.png").convert("RGB"))
    assert png.shape[0] > 400 and png.shape[1] > 800
    assert _has_colour(png, ON_RGB) and _has_colour(png, OFF_RGB)

    res = cli("viz", str(photo), "--out", "anim.gif", "--ratio", "0.07", "--size", "64")
    assert res.returncode == 0, res.output
    assert "8 frames" in res.stderr
    gif = Image.open(tmp_path / "anim.gif")
    assert gif.n_frames == 8
    frames = []
    for i in range(8):
        gif.seek(i)
        frames.append(np.asarray(gif.convert("RGB")))
    for f in frames:
        assert _has_colour(f, ON_RGB, tol=20) and _has_colour(f, OFF_RGB, tol=20)
    assert all(not np.array_equal(frames[i], frames[i + 1]) for i in range(7))


def test_gif_frames_of_a_dataset_sample_and_of_stored_events(tmp_path):
    """The same digit drawn from the dataset and from a parquet row converted by i2e-convert."""
    import argparse

    from i2e_train.commands.viz import load_sample

    out = tmp_path / "conv"
    convert(
        build_datasets("digits"),
        options=convert_options(output=str(out), split="validation", num_workers=0, progress=False),
        dataset_name="digits",
        dataset_root=None,
        image_size=16,
        ratio=0.10,
        order="gamma_alpha_beta",
    )
    base = {"image": None, "dataset": None, "parquet": None, "events": None, "root": None, "set": []}
    args = argparse.Namespace(
        **{
            **base,
            "dataset": "digits",
            "split": "val",
            "index": 5,
            "ratio": None,
            "order": "gamma_alpha_beta",
            "size": None,
        }
    )
    from_dataset = load_sample(args)
    args = argparse.Namespace(**{**base, "parquet": str(out / "validation-00000-of-00001.parquet"), "row": 5})
    from_parquet = load_sample(args)
    assert torch.equal(from_dataset.events_TCHW, from_parquet.events_TCHW)
    assert from_parquet.pairs == from_dataset.pairs and "label" in from_parquet.title
    frames = gif_frames(from_parquet)
    assert len(frames) == 8 and frames[0].ndim == 3


def test_cli_events_file(cli, tmp_path):
    events = np.zeros((8, 2, 16, 16), dtype=bool)
    events[:, 0, 4:8, 4:8] = True
    events[:, 1, 10:12, :] = True
    np.savez_compressed(tmp_path / "old.npz", events)
    res = cli("viz", "--events", "old.npz", "--out", "old.png")
    assert res.returncode == 0, res.output
    png = np.asarray(Image.open(tmp_path / "old.png").convert("RGB"))
    assert _has_colour(png, ON_RGB) and _has_colour(png, OFF_RGB)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--out", "x.png"], "give exactly one source"),
        (["a.jpg", "--dataset", "digits", "--out", "x.png"], "give exactly one source"),
        (["a.jpg", "--out", "x.bmp"], "--out must end in .png or .gif"),
        (["missing.jpg", "--out", "x.png"], "image 'missing.jpg' does not exist"),
        (
            ["--dataset", "digits", "--index", "9999", "--out", "x.png"],
            "--index 9999 is outside the val split",
        ),
        (["--dataset", "nope", "--out", "x.png"], "unknown dataset 'nope'"),
        (["--parquet", "none.parquet", "--out", "x.png"], "parquet file 'none.parquet' does not exist"),
    ],
)
def test_user_errors_are_one_line(cli, args, needle):
    res = cli("viz", *args)
    assert res.returncode == 2, res.output
    assert "Traceback" not in res.output
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("i2e-viz: error:") and needle in lines[0], res.stderr


def _one_line(res, *needles: str) -> str:
    assert res.returncode == 2, res.output
    assert "Traceback" not in res.output
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("i2e-viz: error:"), res.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.mark.slow
def test_broken_events_files_and_unwritable_outputs_get_one_line(cli, tmp_path):
    events = np.zeros((8, 2, 16, 16), dtype=bool)
    events[:, 0, 4:8, 4:8] = True
    np.savez_compressed(tmp_path / "whole.npz", events)
    data = (tmp_path / "whole.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    _one_line(
        cli("viz", "--events", "cut.npz", "--out", "x.png"),
        "'cut.npz' is not a valid .npz/.npy events file (a truncated or damaged .npz archive",
    )
    rng = np.random.default_rng(0)
    for name in ("noise.npy", "noise.npz"):
        (tmp_path / name).write_bytes(rng.integers(0, 256, 512, dtype=np.uint8).tobytes())
        line = _one_line(
            cli("viz", "--events", name, "--out", "x.png"),
            f"'{name}' is not a valid .npz/.npy events file (it holds neither .npy nor .npz data)",
        )
        assert "pickle" not in line
    (tmp_path / "a_file").write_text("not a folder")
    _one_line(
        cli("viz", "--events", "whole.npz", "--out", "a_file/x.png"),
        "cannot write --out 'a_file/x.png': 'a_file' is a file, not a folder",
    )
    (tmp_path / "folder.png").mkdir()
    _one_line(cli("viz", "--events", "whole.npz", "--out", "folder.png"), "--out 'folder.png' is a folder")
    assert not (tmp_path / "x.png").exists()


def test_16bit_and_32bit_images(cli, tmp_path):
    import argparse

    from disk_formats import write_png16

    from i2e_train.commands.viz import load_sample

    pixels = skdata.astronaut()[::4, ::4].copy()
    write_png16(tmp_path / "deep.png", pixels.astype(np.uint16) * 257)
    args = argparse.Namespace(
        image=str(tmp_path / "deep.png"),
        dataset=None,
        parquet=None,
        events=None,
        ratio=None,
        order="gamma_alpha_beta",
        size=0,
    )
    sample = load_sample(args)
    assert torch.equal(sample.image_CHW, torch.from_numpy(pixels).permute(2, 0, 1))
    Image.fromarray(pixels[..., 0].astype(np.int32) * 1000).save(tmp_path / "counts.tif")
    _one_line(
        cli("viz", "counts.tif", "--out", "c.png"),
        "cannot read image 'counts.tif': 32-bit integer pixels (PIL mode I) have no defined brightness range",
    )


def test_a_sensor_preset_shows_its_effect_on_the_same_photo():
    from i2e_train.commands.viz import _sensor

    image = torch.from_numpy(skdata.astronaut()).permute(2, 0, 1)
    clean = sample_from_image(image, 0.12, "gamma_alpha_beta", size=64)
    noisy = sample_from_image(image, 0.12, "gamma_alpha_beta", size=64, sensor=_sensor("dvs_realistic"))
    assert "sensor dvs_realistic" in noisy.details and not any("sensor" in d for d in clean.details)
    assert noisy.events_TCHW.shape == clean.events_TCHW.shape
    assert not torch.equal(noisy.events_TCHW, clean.events_TCHW)  # mismatch, noise and hot pixels
    assert _sensor("none") is None
    with pytest.raises(UserError, match="unknown sensor 'noisy'; choose one of: dvs_realistic, none"):
        _sensor("noisy")
