"""CIFAR-10/100 and MNIST/Fashion-MNIST in torchvision's on-disk formats.

- ``cifar10``: ``root/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}`` (the python
  pickles of the official ``cifar-10-python.tar.gz``); ``cifar100``: ``root/cifar-100-python/{train,
  test, meta}``. torchvision checks each file's md5 against the official release;
  ``verify_md5=false`` accepts other files (e.g. a re-pickled subset): it sets the md5 entries of
  torchvision's public class attributes ``train_list``/``test_list``/``meta`` to ``None``, which
  torchvision's ``check_integrity`` treats as "the file must exist".
- ``mnist`` / ``fashion_mnist``: the raw IDX files ``root/MNIST/raw/{train,t10k}-{images-idx3,
  labels-idx1}-ubyte`` (``root/FashionMNIST/raw/...``), uncompressed as torchvision expects.

With ``download=true`` missing files are fetched when the host answers; otherwise the error says
where to put which files.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
from torchvision import datasets as tvd
from torchvision.datasets.utils import check_integrity

from .corrupt import describe
from .fetch import download_or_explain, is_local_leader, missing_files, wait_for
from .registry import DataBundle, register
from .transforms import eval_transform, train_transform


class _CIFAR10Unverified(tvd.CIFAR10):
    train_list = [[name, None] for name, _ in tvd.CIFAR10.train_list]
    test_list = [[name, None] for name, _ in tvd.CIFAR10.test_list]
    meta = {**tvd.CIFAR10.meta, "md5": None}


class _CIFAR100Unverified(tvd.CIFAR100):
    train_list = [[name, None] for name, _ in tvd.CIFAR100.train_list]
    test_list = [[name, None] for name, _ in tvd.CIFAR100.test_list]
    meta = {**tvd.CIFAR100.meta, "md5": None}


def _require_root(root: str | None, dataset: str, hint: str) -> Path:
    if not root:
        raise ValueError(f"dataset.root is not set; point it at the folder holding {hint} for {dataset}")
    return Path(root).expanduser()


def _cifar_file_problem(cls: type[tvd.CIFAR10], path: Path) -> str | None:
    """What makes ``path`` (one file of the python version) unusable, or None. torchvision only
    unpickles the files: a truncated file ends in a traceback, and a foreign one (e.g. CIFAR-100's
    ``train`` in place of ``data_batch_1``) may even load, with labels that mean nothing."""
    release = cls.filename
    classes = 100 if issubclass(cls, tvd.CIFAR100) else 10
    try:
        with open(path, "rb") as f:
            entry: Any = pickle.load(f, encoding="latin1")
    except Exception as e:  # noqa: BLE001 - unpickling raises many types for broken files
        return f"'{path}' cannot be unpickled ({describe(e)}): it is truncated or not a file of {release}"
    what = f"'{path}' is not a file of {release}"
    if not isinstance(entry, dict):
        return f"{what}: it holds a {type(entry).__name__}, not a dict"
    if path.name == cls.meta["filename"]:
        names = entry.get(cls.meta["key"])
        if not isinstance(names, list | tuple) or len(names) != classes:
            return f"{what}: '{cls.meta['key']}' should list the {classes} class names"
        return None
    label_key = "fine_labels" if classes == 100 else "labels"
    missing = [k for k in ("data", label_key) if k not in entry]
    if missing:
        return f"{what}: it has no '{missing[0]}' entry (it has: {', '.join(map(str, list(entry)[:6]))})"
    data, labels = np.asarray(entry["data"]), np.asarray(entry[label_key])
    if data.dtype != np.uint8 or data.size != len(labels) * 3 * 32 * 32:
        return (
            f"{what}: 'data' should hold {len(labels)} images of 3x32x32 bytes (one per label), "
            f"it holds {data.dtype} {tuple(data.shape)}"
        )
    if labels.size and (
        not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0 or labels.max() >= classes
    ):
        return f"{what}: its labels run from {labels.min()} to {labels.max()}, outside 0..{classes - 1}"
    return None


def _cifar(
    cls: type[tvd.CIFAR10],
    unverified: type[tvd.CIFAR10],
    dataset: str,
    root: str | None,
    download: bool,
    verify_md5: bool,
) -> tuple[tvd.CIFAR10, tvd.CIFAR10]:
    files = [name for name, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
    base = _require_root(root, dataset, f"{cls.base_folder}/")
    folder = base / cls.base_folder
    where = (
        f"put {', '.join(files)} (the python version, {cls.filename}, extracted) into {folder}/ "
        f"(download it from {cls.url} on a machine with access)"
    )
    missing = missing_files(folder, files)
    if missing:
        if not download:
            raise FileNotFoundError(f"{dataset}: {folder}/{missing[0]} does not exist; {where}")
        if is_local_leader():
            download_or_explain(
                f"{dataset} ({folder}/{missing[0]})",
                [cls.url],
                lambda: cls(str(base), train=True, download=True),
                where,
            )
        else:
            wait_for(lambda: not missing_files(folder, files), str(folder))
    if verify_md5:
        sums = cls.train_list + cls.test_list + [[cls.meta["filename"], cls.meta["md5"]]]
        bad = [name for name, md5 in sums if not check_integrity(str(folder / name), md5)]
        if bad:
            raise ValueError(
                f"{dataset}: {folder}/{bad[0]} does not match the official file's checksum (corrupt or "
                f"incomplete download; {len(bad)} file(s) differ); replace it with the file from "
                f"{cls.filename}, or set dataset.verify_md5=false to use your own files"
            )
    else:
        # The checksums were the integrity check; without them, look at the files themselves.
        for name in files:
            if problem := _cifar_file_problem(cls, folder / name):
                raise ValueError(f"{dataset}: {problem}; replace it with the file from {cls.filename}")
    chosen = cls if verify_md5 else unverified
    try:
        return chosen(str(base), train=True), chosen(str(base), train=False)
    except Exception as e:  # noqa: BLE001 - whatever the checks above did not foresee, in one line
        raise ValueError(
            f"{dataset}: the files in {folder} cannot be read ({describe(e)}); replace them with those "
            f"of {cls.filename}"
        ) from None


def _image_bundle(
    train, val, classes: list[str], image_size: int, augment: str, interpolation: str, native: int, **kw
) -> DataBundle:
    return DataBundle(
        train=train,
        val=val,
        num_classes=len(classes),
        train_transform=train_transform(
            augment, image_size, style="small", interpolation=interpolation, native_size=native, **kw
        ),
        val_transform=eval_transform(image_size, style="small", interpolation=interpolation),
        class_names=list(classes),
    )


@register("cifar10")
def build_cifar10(
    root: str | None = None,
    image_size: int = 128,
    num_classes: int | None = 10,
    augment: str = "baseline2",
    interpolation: str = "bilinear",
    crop_padding: int = 4,
    hflip: bool = True,
    download: bool = True,
    verify_md5: bool = True,
) -> DataBundle:
    del num_classes  # checked against the data by the caller
    train, val = _cifar(tvd.CIFAR10, _CIFAR10Unverified, "cifar10", root, download, verify_md5)
    return _image_bundle(
        train,
        val,
        train.classes,
        image_size,
        augment,
        interpolation,
        32,
        crop_padding=crop_padding,
        hflip=hflip,
    )


@register("cifar100")
def build_cifar100(
    root: str | None = None,
    image_size: int = 128,
    num_classes: int | None = 100,
    augment: str = "baseline2",
    interpolation: str = "bilinear",
    crop_padding: int = 4,
    hflip: bool = True,
    download: bool = True,
    verify_md5: bool = True,
) -> DataBundle:
    del num_classes
    train, val = _cifar(tvd.CIFAR100, _CIFAR100Unverified, "cifar100", root, download, verify_md5)
    return _image_bundle(
        train,
        val,
        train.classes,
        image_size,
        augment,
        interpolation,
        32,
        crop_padding=crop_padding,
        hflip=hflip,
    )


def _mnist(
    cls: type[tvd.MNIST], dataset: str, root: str | None, download: bool
) -> tuple[tvd.MNIST, tvd.MNIST]:
    files = [Path(name).stem for name, _ in cls.resources]  # the .gz archives' extracted names
    base = _require_root(root, dataset, f"{cls.__name__}/raw/")
    folder = base / cls.__name__ / "raw"
    where = (
        f"put {', '.join(files)} (gunzipped) into {folder}/ "
        f"(download the .gz files from {cls.mirrors[0]} on a machine with access)"
    )
    if missing_files(folder, files):
        if not download:
            raise FileNotFoundError(
                f"{dataset}: {folder}/{missing_files(folder, files)[0]} does not exist; {where}"
            )
        if is_local_leader():
            download_or_explain(
                f"{dataset} ({folder})",
                [m + cls.resources[0][0] for m in cls.mirrors],
                lambda: cls(str(base), train=True, download=True),
                where,
            )
        else:
            wait_for(lambda: not missing_files(folder, files), str(folder))
    try:
        return cls(str(base), train=True), cls(str(base), train=False)
    except (AssertionError, ValueError, RuntimeError, IndexError) as e:
        raise ValueError(
            f"{dataset}: the IDX files in {folder} cannot be read ({e}); replace them with the official files"
        ) from None


def _build_mnist(
    cls: type[tvd.MNIST],
    dataset: str,
    root: str | None,
    image_size: int,
    augment: str,
    interpolation: str,
    crop_padding: int,
    hflip: bool,
    download: bool,
) -> DataBundle:
    train, val = _mnist(cls, dataset, root, download)
    return _image_bundle(
        train,
        val,
        list(cls.classes),
        image_size,
        augment,
        interpolation,
        28,
        crop_padding=crop_padding,
        hflip=hflip,
    )


@register("mnist")
def build_mnist(
    root: str | None = None,
    image_size: int = 32,
    num_classes: int | None = 10,
    augment: str = "baseline2",
    interpolation: str = "bilinear",
    crop_padding: int = 4,
    hflip: bool = False,
    download: bool = True,
) -> DataBundle:
    del num_classes
    return _build_mnist(
        tvd.MNIST, "mnist", root, image_size, augment, interpolation, crop_padding, hflip, download
    )


@register("fashion_mnist")
def build_fashion_mnist(
    root: str | None = None,
    image_size: int = 32,
    num_classes: int | None = 10,
    augment: str = "baseline2",
    interpolation: str = "bilinear",
    crop_padding: int = 4,
    hflip: bool = True,
    download: bool = True,
) -> DataBundle:
    del num_classes
    return _build_mnist(
        tvd.FashionMNIST,
        "fashion_mnist",
        root,
        image_size,
        augment,
        interpolation,
        crop_padding,
        hflip,
        download,
    )
