"""``i2e-viz``: look at I2E event streams — a PNG overview or a GIF of the timesteps.

    i2e-viz photo.jpg --out photo_events.png            # original, V channel, 8 timesteps
    i2e-viz photo.jpg --out photo_events.gif --size 128 --ratio 0.07
    i2e-viz --dataset digits --index 5 --out digit.png  # a sample of any registered dataset
    i2e-viz --parquet out/validation-00000-of-00001.parquet --row 3 --out row3.gif
    i2e-viz --events sample.npz --out sample.png        # older npz files, or a DVS sample saved as .npy

ON events (the intensity rises from the pair's "from" to its "to" position) are drawn red, OFF
events (it falls) blue, on white. Each timestep's title names its displacement pair (positions
1..9 of the 3x3 neighbourhood, row-major) and its kind (alpha: 1 px, beta: diagonal, gamma:
knight move); the small inset draws the pair as an arrow.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import UserError
from ..events.render import OFF_RGB, ON_RGB, event_frames_rgb
from . import cli

if TYPE_CHECKING:  # numpy/torch are imported where used: `i2e-viz --help` answers at once
    import numpy as np
    from torch import Tensor

PROG = "i2e-viz"
GROUP_KIND = ("α", "α", "β", "β", "γ", "γ", "γ", "γ")  # docs/conversion.md, the table of groups
DEFAULT_RATIO = 0.12  # the paper's ratio for 224x224 photographs
DEFAULT_SIZE = 224


@dataclass
class EventSample:
    """What a picture shows: events ``[T, 2, H, W]`` (counts or {0, 1}) and where they came from."""

    events_TCHW: Tensor
    image_CHW: Tensor | None = None  # uint8 source image, when there is one
    pairs: list[tuple[int, int]] | None = None  # (from, to) of each timestep, when known
    groups: list[int] | None = None
    title: str = ""
    details: list[str] = field(default_factory=list)


def sample_from_image(
    image_CHW: Tensor,
    ratio: float,
    order: str | Sequence[int],
    title: str = "",
    size: int | None = None,
    sensor: tuple[str, Any] | None = None,
) -> EventSample:
    """Resize (bicubic, as ``i2e-convert``) and convert one uint8 image with the fixed pairs; with a
    ``sensor`` (its name and :class:`i2e_train.sensor.SensorModel`), as that sensor would see it."""
    import torch

    from ..events.export import prepare_image
    from ..events.i2e import fixed_pairs, i2e_convert, resolve_order

    try:
        groups = list(resolve_order(order))
        image = prepare_image(image_CHW, size)
        if sensor is None:
            events = i2e_convert(image[None], ratio, order, dtype=torch.bool)[:, 0]
        else:
            events = sensor[1].convert(image[None], ratio, order, dtype=torch.bool)[:, 0]
    except ValueError as e:
        raise UserError(str(e)) from None
    order_name = order if isinstance(order, str) else str(groups)
    h, w = image.shape[1:]
    return EventSample(
        events,
        image,
        pairs=list(fixed_pairs(groups)),
        groups=groups,
        title=title,
        details=[f"ratio {ratio:g}", f"order {order_name}", f"{w}×{h}"]
        + ([f"sensor {sensor[0]}"] if sensor is not None else []),
    )


# ----------------------------------------------------------------------------- drawing
def _pair_glyph(ax: Any, pair: tuple[int, int]) -> None:
    """A 3x3 grid of dots with an arrow from the pair's ``from`` to its ``to`` position, drawn
    below the panel (not over it: it would hide the events in that corner)."""
    import numpy as np

    inset = ax.inset_axes([0.4, -0.25, 0.2, 0.2])
    inset.set_xlim(-0.6, 2.6)
    inset.set_ylim(2.6, -0.6)
    inset.set_xticks([])
    inset.set_yticks([])
    inset.set_facecolor((1, 1, 1, 0.85))
    for spine in inset.spines.values():
        spine.set_edgecolor("0.5")
    rows, cols = np.divmod(np.arange(9), 3)
    inset.scatter(cols, rows, s=4, c="0.4")
    (fr, fc), (tr, tc) = divmod(pair[0] - 1, 3), divmod(pair[1] - 1, 3)
    inset.annotate("", xy=(tc, tr), xytext=(fc, fr), arrowprops={"arrowstyle": "->", "lw": 1.2, "color": "k"})


def _step_title(sample: EventSample, t: int) -> str:
    rate = float((sample.events_TCHW[t] > 0).float().mean())
    head = f"t{t + 1}"
    if sample.pairs is not None:
        a, b = sample.pairs[t]
        kind = f" {GROUP_KIND[sample.groups[t]]}" if sample.groups is not None else ""
        head += f": {a}→{b}{kind}"
    return f"{head} · {100 * rate:.1f}%"


def _legend(fig: Any) -> None:
    import numpy as np
    from matplotlib.patches import Patch

    handles = [
        Patch(color=np.array(ON_RGB) / 255, label="ON (intensity rises)"),
        Patch(color=np.array(OFF_RGB) / 255, label="OFF (intensity falls)"),
    ]
    fig.legend(handles=handles, loc="outside lower center", ncol=2, frameon=False)


def _suptitle(sample: EventSample) -> str:
    rate = float((sample.events_TCHW > 0).float().mean())
    parts = [p for p in (sample.title, *sample.details) if p]
    return "I2E events — " + ", ".join(
        [*parts, f"{sample.events_TCHW.shape[0]} timesteps", f"event rate {100 * rate:.1f}%"]
    )


def render_png(sample: EventSample, path: Path | None = None, dpi: int = 110) -> Any:
    """Original, V channel and every timestep in one figure; saved to ``path`` when given."""
    from matplotlib.figure import Figure

    frames = event_frames_rgb(sample.events_TCHW)
    steps = frames.shape[0]
    panels: list[tuple[str, Any, dict[str, Any]]] = []
    if sample.image_CHW is not None:
        image = sample.image_CHW.permute(1, 2, 0).numpy()
        panels.append(("original", image, {}))
        panels.append(("V = max(R, G, B)", image.max(axis=2), {"cmap": "gray", "vmin": 0, "vmax": 255}))
    else:
        # Without a source image, show where events happened over the whole stream.
        total = (sample.events_TCHW > 0).sum(dim=(0, 1)).numpy()
        panels.append(("all timesteps (events per pixel)", total, {"cmap": "magma"}))
    panels += [(_step_title(sample, t), frames[t], {"interpolation": "nearest"}) for t in range(steps)]
    cols = 5 if len(panels) <= 10 else 6
    rows = -(-len(panels) // cols)
    fig = Figure(
        figsize=(2.6 * cols, 3.4 * rows + 0.9), dpi=dpi, layout="constrained"
    )  # room for the pair glyphs
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for i, ax in enumerate(axes):
        ax.set_axis_off()
        if i >= len(panels):
            continue
        title, data, kw = panels[i]
        ax.imshow(data, **kw)
        ax.set_title(title, fontsize=9)
        t = i - (len(panels) - steps)
        if t >= 0 and sample.pairs is not None:
            _pair_glyph(ax, sample.pairs[t])
    fig.suptitle(_suptitle(sample), fontsize=10)
    _legend(fig)
    if path is not None:
        fig.savefig(path)
    return fig


def gif_frames(sample: EventSample, dpi: int = 100) -> list[np.ndarray]:
    """One RGB picture per timestep: the source image (if any) beside that timestep's events."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    frames = event_frames_rgb(sample.events_TCHW)
    has_image = sample.image_CHW is not None
    pictures = []
    for t in range(frames.shape[0]):
        fig = Figure(figsize=(6.4 if has_image else 3.4, 3.9), dpi=dpi, layout="constrained")
        FigureCanvasAgg(fig)
        axes = fig.subplots(1, 2 if has_image else 1, squeeze=False).ravel()
        if has_image:
            axes[0].imshow(sample.image_CHW.permute(1, 2, 0).numpy())
            axes[0].set_title("original", fontsize=9)
        axes[-1].imshow(frames[t], interpolation="nearest")
        axes[-1].set_title(f"{_step_title(sample, t)}  ({t + 1}/{frames.shape[0]})", fontsize=9)
        if sample.pairs is not None:
            _pair_glyph(axes[-1], sample.pairs[t])
        for ax in axes:
            ax.set_axis_off()
        fig.suptitle(", ".join(p for p in (sample.title, *sample.details) if p) or "I2E events", fontsize=9)
        _legend(fig)
        fig.canvas.draw()
        pictures.append(np.asarray(fig.canvas.buffer_rgba())[:, :, :3].copy())
    return pictures


def render_gif(sample: EventSample, path: Path, frame_ms: int = 400) -> int:
    """Animate the timesteps (looping); returns the number of frames written."""
    from PIL import Image

    pictures = [Image.fromarray(p) for p in gif_frames(sample)]
    pictures[0].save(
        path, save_all=True, append_images=pictures[1:], duration=frame_ms, loop=0, optimize=False
    )
    return len(pictures)


# ----------------------------------------------------------------------------- sources
def _read_image(path: Path) -> Tensor:
    import numpy as np
    import torch

    from ..data.images import read_image

    if path.is_dir():
        raise UserError(
            f"image '{path}' is a folder; give an image file (or --dataset image_folder --root ...)"
        )
    if not path.is_file():
        raise UserError(f"image '{path}' does not exist")
    rgb_HWC = np.asarray(read_image(path)).copy()  # its errors name the file in one line
    return torch.from_numpy(rgb_HWC).permute(2, 0, 1)


def _dataset_sample(args: argparse.Namespace) -> EventSample:
    import numpy as np
    import torch

    from ..training import builders

    cli.register_resolvers()
    overrides = [f"dataset={args.dataset}"] + ([f"dataset.root={args.root}"] if args.root else []) + args.set
    cfg = cli.precheck("train", overrides)
    assert cfg is not None
    bundle = builders.build_data(cfg)
    dataset = bundle.val if args.split == "val" else bundle.train
    if not 0 <= args.index < len(dataset):
        raise UserError(f"--index {args.index} is outside the {args.split} split (0..{len(dataset) - 1})")
    sample, label = dataset[args.index]
    names = bundle.class_names
    name = names[int(label)] if names and 0 <= int(label) < len(names) else str(int(label))
    title = f"{args.dataset} {args.split}[{args.index}] label {name}"
    if bundle.events:
        events = torch.as_tensor(np.asarray(sample))
        return EventSample(events, title=title, details=["recorded events"])
    ratio = args.ratio if args.ratio is not None else float(cfg.i2e.ratio)
    size = args.size if args.size is not None else int(cfg.dataset.image_size)
    return sample_from_image(
        sample, ratio, args.order, title=title, size=size, sensor=_sensor(getattr(args, "sensor", None))
    )


def _sensor(name: str | None) -> tuple[str, Any] | None:
    """A sensor preset of configs/sensor/ (``--sensor dvs_realistic``), or None (plain I2E)."""
    if not name or name == "none":
        return None
    from omegaconf import OmegaConf

    from .. import config
    from ..training import builders

    choices = cli.group_options("sensor")
    if name not in choices:
        raise UserError(f"unknown sensor '{name}'; choose one of: {', '.join(choices)}")
    options = config.options(
        config.SensorOptions,
        OmegaConf.to_container(OmegaConf.load(cli.CONFIG_DIR / "sensor" / f"{name}.yaml")),
        "sensor",
    )
    model = builders.build_sensor(options, seed=0)
    return (name, model) if model is not None else None


def _parquet_sample(path: Path, row: int) -> EventSample:
    import pyarrow.parquet as pq

    from ..data.formats import unpack_events

    if not path.is_file():
        raise UserError(f"parquet file '{path}' does not exist")
    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # noqa: BLE001 - any unreadable file is reported the same way
        raise UserError(f"cannot read '{path}' as parquet: {e}") from None
    total = pf.metadata.num_rows
    if not 0 <= row < total:
        raise UserError(f"--row {row} is outside '{path}' (0..{total - 1})")
    columns = [c for c in ("file_path", "label", "data") if c in pf.schema_arrow.names]
    if "data" not in columns:
        raise UserError(f"'{path}' has no 'data' column (columns: {', '.join(pf.schema_arrow.names)})")
    start = 0
    for g in range(pf.num_row_groups):
        n = pf.metadata.row_group(g).num_rows
        if row < start + n:
            record = pf.read_row_group(g, columns=columns).slice(row - start, 1).to_pylist()[0]
            break
        start += n
    try:
        events = unpack_events(record["data"])
    except ValueError as e:
        raise UserError(f"'{path}' row {row}: {e}") from None
    label = record.get("label")
    sample = EventSample(
        events, title=f"{path.name}[{row}]" + (f" label {label}" if label is not None else "")
    )
    if record.get("file_path"):
        sample.details.append(str(record["file_path"]))
    meta_path = path.parent / "metadata.json"
    if meta_path.is_file():  # written by i2e-convert: name the pairs that produced the events
        try:
            meta = json.loads(meta_path.read_text())
            sample.pairs = [tuple(p) for p in meta["i2e"]["pairs"]]
            sample.groups = list(meta["i2e"]["groups"])
            sample.details.append(f"ratio {meta['i2e']['ratio']:g}")
            names = meta.get("source", {}).get("class_names") or []
            if label is not None and 0 <= int(label) < len(names):
                sample.title += f" ({names[int(label)]})"
        except (OSError, ValueError, KeyError, TypeError):
            pass
    return sample


def _events_file_sample(path: Path) -> EventSample:
    import numpy as np
    import torch

    from ..data.formats import read_array, unpack_events

    if not path.is_file():
        raise UserError(f"events file '{path}' does not exist")
    try:
        arr = read_array(path)
    except ValueError as e:
        raise UserError(f"'{path}' is not a valid .npz/.npy events file ({e})") from None
    if arr.ndim == 1 and arr.dtype == np.uint8:  # a published-format record saved as .npy
        try:
            arr = unpack_events(path.read_bytes()).numpy()
        except ValueError as e:
            raise UserError(f"'{path}' is not a valid .npz/.npy events file ({e})") from None
    if arr.ndim != 4 or arr.shape[1] != 2:
        raise UserError(f"'{path}' holds an array of shape {tuple(arr.shape)}; expected events [T, 2, H, W]")
    return EventSample(torch.from_numpy(np.ascontiguousarray(arr)), title=path.name)


def load_sample(args: argparse.Namespace) -> EventSample:
    chosen = [n for n in ("image", "dataset", "parquet", "events") if getattr(args, n)]
    if len(chosen) != 1:
        raise UserError("give exactly one source: an IMAGE path, --dataset, --parquet or --events")
    if args.image:
        path = Path(args.image)
        ratio = args.ratio if args.ratio is not None else DEFAULT_RATIO
        size = DEFAULT_SIZE if args.size is None else args.size
        return sample_from_image(
            _read_image(path),
            ratio,
            args.order,
            title=path.name,
            size=size,
            sensor=_sensor(getattr(args, "sensor", None)),
        )
    if args.dataset:
        return _dataset_sample(args)
    if args.parquet:
        return _parquet_sample(Path(args.parquet), args.row)
    return _events_file_sample(Path(args.events))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "i2e-viz: draw the I2E event stream of an image, a dataset sample, a parquet row or an events\n"
            "file: a PNG overview (the original, V = max(R, G, B), every timestep with its displacement\n"
            "pair; ON red, OFF blue) or a GIF of the timesteps. --sensor shows what a DVS sensor model does."
        ),
        formatter_class=cli.HelpFormatter,
        epilog=cli.epilog(
            PROG,
            [
                "i2e-viz photo.jpg --out events.png",
                "i2e-viz photo.jpg --out events.gif --size 128 --ratio 0.07 --sensor dvs_realistic",
                "i2e-viz --dataset cifar10 --root /data/cifar10 --index 5 --out sample.png",
                "i2e-viz --parquet out/validation-00000-of-00001.parquet --row 3 --out row.gif",
            ],
        ),
    )
    p.add_argument("image", nargs="?", help="an image file (JPEG, PNG, ...)")
    p.add_argument("--out", required=True, help="output file: .png (overview) or .gif (animation)")
    src = p.add_argument_group("other sources")
    src.add_argument("--dataset", help="a registered dataset name (as dataset=... of i2e-train)")
    src.add_argument("--root", help="dataset.root for --dataset")
    src.add_argument("--split", choices=("train", "val"), default="val", help="split of --dataset")
    src.add_argument("--index", type=int, default=0, help="sample index in --split")
    src.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="more dataset settings, e.g. dataset.image_size=64",
    )
    src.add_argument("--parquet", help="a parquet shard written by i2e-convert (or a published I2E dataset)")
    src.add_argument("--row", type=int, default=0, help="row of --parquet")
    src.add_argument("--events", help="a .npz (key arr_0) or .npy file holding events [T, 2, H, W]")
    conv = p.add_argument_group("conversion (images and image datasets)")
    conv.add_argument(
        "--ratio",
        type=float,
        help=f"I2E threshold ratio (default: the dataset's, {DEFAULT_RATIO} for an IMAGE)",
    )
    conv.add_argument("--order", default="gamma_alpha_beta", help="timestep order preset")
    conv.add_argument(
        "--sensor",
        default="none",
        help="a DVS sensor model of configs/sensor/ applied to the events (none | dvs_realistic)",
    )
    conv.add_argument(
        "--size",
        type=int,
        help=f"resize to SIZE x SIZE, bicubic (default: the dataset's, {DEFAULT_SIZE} for an IMAGE; 0 keeps the size)",
    )
    p.add_argument("--frame-ms", type=int, default=400, help="GIF: milliseconds per timestep")
    return p


def run(argv: list[str]) -> Path:
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    kind = out.suffix.lower()
    if kind not in (".png", ".gif"):
        raise UserError(f"--out must end in .png or .gif, got '{out.name}'")
    if args.size is not None and args.size < 0:
        raise UserError(f"--size must be >= 0, got {args.size}")
    if args.frame_ms < 1:
        raise UserError(f"--frame-ms must be >= 1, got {args.frame_ms}")
    _check_writable(out)  # before the work, not after it
    sample = load_sample(args)
    try:
        if kind == ".png":
            render_png(sample, out)
            print(f"wrote {out}", file=sys.stderr)
        else:
            n = render_gif(sample, out, args.frame_ms)
            print(f"wrote {out} ({n} frames)", file=sys.stderr)
    except OSError as e:
        raise UserError(f"cannot write --out '{out}' ({e.strerror or e}); choose another --out") from None
    return out


def _check_writable(out: Path) -> None:
    """Make ``out``'s folder; one line when it cannot be made or written to."""
    import os

    if out.is_dir():
        raise UserError(f"--out '{out}' is a folder; give a file name ending in .png or .gif")
    blocker = next((p for p in out.parents if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise UserError(
            f"cannot write --out '{out}': '{blocker}' is a file, not a folder; choose another --out"
        )
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(
            f"cannot write --out '{out}': its folder '{out.parent}' cannot be made ({e.strerror or e}); "
            "choose another --out"
        ) from None
    if not os.access(out.parent, os.W_OK) or (out.exists() and not os.access(out, os.W_OK)):
        raise UserError(f"cannot write --out '{out}': permission denied; choose another --out")


def main(argv: list[str] | None = None) -> None:
    cli.guard(PROG)(run)(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    main()
