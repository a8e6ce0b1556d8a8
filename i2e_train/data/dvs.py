"""CIFAR10-DVS through SpikingJelly 2.0: real event-camera recordings, already events (I2E skipped).

Expected under ``dataset.root``: ``download/`` holding the ten official archives
(``airplane.zip`` ... ``truck.zip`` from figshare). On first use they are extracted to ``extract/``
and converted by SpikingJelly's own AEDAT reader (``CIFAR10DVS.create_raw_from_extracted``) into
``events_np/``; SpikingJelly then integrates each recording into ``frames_number`` frames split by
event count (``frames_number_8_split_by_number/``). A sample is float32 ``[T, 2, 128, 128]``
(event counts per frame and polarity).

This module does the archive checks and the extract/convert step itself rather than through
``CIFAR10DVS(...)``'s automatic preparation because SpikingJelly deletes an archive whose md5 does
not match and then downloads from figshare, which many machines cannot reach: here a missing or
damaged archive is reported by name and nothing the user put there is deleted.

Splits: ``paper`` = ``spikingjelly.datasets.split_to_train_test_set(0.9, dataset, 10)`` (the first
90% of each class in file order train, the rest validation), as the I2E paper; ``tebn`` = the TEBN
split (recordings 0-99 of each class validation, 100-999 train), identical in membership to
SpikingJelly's ``CIFAR10DVSTEBNSplit`` without its symlink folders.
"""

from __future__ import annotations

import re
import shutil
import sys
import traceback
import types
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Subset

from .corrupt import CorruptGuard, UnreadableSampleError, describe
from .fetch import download_or_explain, is_local_leader, wait_for
from .registry import DataBundle, register

SPLITS = ("paper", "tebn")


def spikingjelly_datasets() -> types.ModuleType:
    """``spikingjelly.datasets``, also where torchaudio cannot be imported.

    The package imports every dataset module, including speech commands, which imports torchaudio;
    a torchaudio built for another CUDA version than torch refuses to import (it checks at import
    time), which would make CIFAR10-DVS unusable for no reason. Only then the speech-commands
    module, which this project never uses, is replaced by an empty one.
    """
    try:
        import spikingjelly.datasets as sjd
    except (ImportError, RuntimeError, OSError) as e:
        frames = traceback.extract_tb(e.__traceback__)
        if not any("torchaudio" in f.filename or "speechcommands" in f.filename for f in frames):
            raise
        name = "spikingjelly.datasets.speechcommands"
        sys.modules[name] = types.ModuleType(name, "not available: torchaudio cannot be imported")
        import spikingjelly.datasets as sjd
    return sjd


def _archives() -> list[tuple[str, str, str]]:
    return list(spikingjelly_datasets().CIFAR10DVS.resource_url_md5())


def _stale_marker_message(marker: Path, partial: list[Path], kept: str) -> str:
    return (
        f"cifar10_dvs: found '{marker}', left by a dataset preparation that did not finish (an interrupted "
        f"run, or another run preparing the same folder right now). If no other run uses this folder, delete "
        f"{' and '.join(str(p) for p in partial)} and the marker, then run again ({kept})"
    )


def prepare_events(root: Path, verify_md5: bool, download_missing: bool) -> None:
    """Make ``root/events_np`` from the ten archives in ``root/download`` (local rank 0 only)."""
    raw, marker = root / "events_np", root / "events_np.building"
    if marker.exists():
        raise ValueError(
            _stale_marker_message(
                marker, [root / "events_np", root / "extract"], "the archives in download/ are kept"
            )
        )
    if raw.is_dir():
        return
    download = root / "download"
    archives = _archives()
    missing = [name for name, _, _ in archives if not (download / name).is_file()]
    if missing:
        names = ", ".join(name for name, _, _ in archives)
        where = (
            f"put the ten CIFAR10-DVS archives {names} into {download}/ (they are on figshare: "
            f"{archives[0][1]} is {archives[0][0]}, and so on), or an already converted events_np/ folder into {root}/"
        )
        if not download_missing:
            raise FileNotFoundError(f"cifar10_dvs: {len(missing)} of the 10 archives are missing; {where}")
        from torchvision.datasets.utils import download_url

        def fetch() -> None:
            download.mkdir(exist_ok=True)
            for name, url, md5 in archives:
                if name in missing:
                    download_url(url, str(download), filename=name, md5=md5)

        download_or_explain(
            f"cifar10_dvs ({len(missing)} of the 10 archives in {download})", [archives[0][1]], fetch, where
        )
    if verify_md5:
        from torchvision.datasets.utils import check_integrity

        bad = [name for name, _, md5 in archives if not check_integrity(str(download / name), md5)]
        if bad:
            raise ValueError(
                f"cifar10_dvs: {download / bad[0]} does not match the official archive's checksum (incomplete or "
                f"damaged download; {len(bad)} differ); download it again, or set dataset.verify_md5=false"
            )
    from torchvision.datasets.utils import extract_archive

    CIFAR10DVS = spikingjelly_datasets().CIFAR10DVS

    marker.touch()
    extract = root / "extract"
    made_extract = not extract.is_dir()
    try:
        if made_extract:
            extract.mkdir()
            for name, _, _ in archives:
                extract_archive(str(download / name), str(extract))
        raw.mkdir()
        CIFAR10DVS.create_raw_from_extracted(extract, raw)
    except Exception as e:
        # Remove only what this call created; the archives stay. (An interrupt leaves the marker.)
        shutil.rmtree(raw, ignore_errors=True)
        if made_extract:
            shutil.rmtree(extract, ignore_errors=True)
        marker.unlink(missing_ok=True)
        raise ValueError(
            f"cifar10_dvs: converting the archives in {download} failed ({describe(e)})"
        ) from None
    marker.unlink()


class FramesDataset:
    """SpikingJelly's frames as float32 tensors; unreadable ``.npz`` files name themselves."""

    def __init__(self, folder: Any) -> None:
        self.folder = folder  # spikingjelly CIFAR10DVS (a torchvision DatasetFolder)
        self.samples = folder.samples
        self.targets = folder.targets
        self.classes = folder.classes

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        try:
            frames = self.folder.loader(path)
        except Exception as e:  # noqa: BLE001 - np.load raises many types for broken files
            raise UnreadableSampleError(f"cannot read CIFAR10-DVS frames '{path}' ({describe(e)})") from None
        return torch.from_numpy(np.ascontiguousarray(frames, dtype=np.float32)), int(label)


def split_indices(
    targets: list[int], paths: list[str], split: str, num_classes: int
) -> tuple[list[int], list[int]]:
    if split == "paper":
        split_to_train_test_set = spikingjelly_datasets().split_to_train_test_set
        # Only the labels decide the split: pass (None, label) pairs so no recording is loaded.
        train, val = split_to_train_test_set(0.9, [(None, t) for t in targets], num_classes)
        return list(train.indices), list(val.indices)
    if split == "tebn":
        number = re.compile(r"_(\d+)\.npz$")
        train, val = [], []
        for i, p in enumerate(paths):
            m = number.search(p)
            if m is None:
                raise ValueError(
                    f"cifar10_dvs: split=tebn needs files named <class>_<index>.npz, found '{p}'"
                )
            (val if int(m.group(1)) < 100 else train).append(i)
        return train, val
    raise ValueError(f"dataset.split must be one of {', '.join(SPLITS)}, got '{split}'")


@register("cifar10_dvs")
def build_cifar10_dvs(
    root: str | None = None,
    image_size: int = 128,
    num_classes: int | None = 10,
    frames_number: int = 8,
    split_by: str = "number",
    split: str = "paper",
    download: bool = True,
    verify_md5: bool = True,
    skip_corrupt: bool = False,
) -> DataBundle:
    del num_classes
    if image_size != 128:
        raise ValueError(
            f"cifar10_dvs recordings are 128x128; dataset.image_size must be 128, got {image_size}"
        )
    if split not in SPLITS:
        raise ValueError(f"dataset.split must be one of {', '.join(SPLITS)}, got '{split}'")
    if split_by not in ("number", "time"):
        raise ValueError(f"dataset.split_by must be number or time, got '{split_by}'")
    if not root:
        raise ValueError("dataset.root is not set; point it at the CIFAR10-DVS folder (holding download/)")
    base = Path(root).expanduser()
    if not base.is_dir():
        raise FileNotFoundError(f"cifar10_dvs: dataset.root '{base}' does not exist")
    frames_dir = base / f"frames_number_{frames_number}_split_by_{split_by}"
    frames_marker = frames_dir.with_name(frames_dir.name + ".building")
    if is_local_leader():
        prepare_events(base, verify_md5, download)
        if frames_marker.exists():
            raise ValueError(_stale_marker_message(frames_marker, [frames_dir], "events_np/ is kept"))
    else:
        wait_for(
            lambda: (
                frames_dir.is_dir()
                and not frames_marker.exists()
                and not (base / "events_np.building").exists()
            ),
            str(frames_dir),
        )
    CIFAR10DVS = spikingjelly_datasets().CIFAR10DVS
    try:
        folder = CIFAR10DVS(str(base), data_type="frame", frames_number=frames_number, split_by=split_by)
    except RuntimeError as e:
        raise ValueError(f"cifar10_dvs: {e}") from None
    except Exception:
        # A crash during framing leaves SpikingJelly's marker: remove our half-built output so the
        # next run starts the (deterministic) framing again instead of reporting a stale marker.
        if is_local_leader() and frames_marker.exists():
            shutil.rmtree(frames_dir, ignore_errors=True)
            frames_marker.unlink(missing_ok=True)
        raise
    data = FramesDataset(folder)
    if not len(data):
        raise FileNotFoundError(f"cifar10_dvs: no recordings found under {frames_dir}")
    train_idx, val_idx = split_indices(data.targets, [p for p, _ in data.samples], split, len(data.classes))
    return DataBundle(
        train=CorruptGuard(Subset(data, train_idx), skip_corrupt, "train"),
        val=CorruptGuard(Subset(data, val_idx), skip_corrupt, "val"),
        num_classes=len(data.classes),
        events=True,
        class_names=list(data.classes),
    )
