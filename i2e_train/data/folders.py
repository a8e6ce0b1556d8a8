"""Image class folders: ImageNet, Caltech-101/256, Mini-ImageNet and your own (``image_folder``).

Layout: ``root/train/<class>/<image>`` and ``root/val/<class>/<image>`` (torchvision ImageFolder;
any extension PIL reads). Datasets that ship without a split (Caltech) or folders you give as one
``root/<class>/<image>`` tree are split per class with ``val_fraction`` from ``split_seed``.
Every image is decoded to 8-bit RGB by :func:`.images.read_image` (16-bit, transparent and other
modes included) and goes through the photo pipelines of :mod:`.transforms`. Folders are walked by
:func:`class_samples`: links are followed where they lead outside the dataset, never around it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Subset
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension

from .corrupt import CorruptGuard
from .images import read_image
from .registry import DataBundle, register
from .transforms import eval_transform, train_transform

IMAGENET_VAL_HINT = (
    "this is the raw ILSVRC2012 validation download; sort the images into one folder per class "
    "(val/n01440764/ILSVRC2012_val_00000293.JPEG, ...) using the devkit's ground-truth labels, e.g. "
    "with the widely used valprep.sh run inside val/"
)


def _inside(path: str, folder: str) -> bool:
    """``path`` is ``folder`` or lies under it (both real paths)."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def class_samples(
    directory: str | Path, class_to_idx: dict[str, int], extensions: tuple[str, ...], kind: str = "images"
) -> list[tuple[str, int]]:
    """``(path, class index)`` of every file with one of ``extensions`` under each class folder, in
    torchvision's order (directories by path, files by name), counting every file exactly once.

    A class folder may itself be a link (e.g. to another disk), and so may folders and files inside
    it, as long as they lead outside the dataset. torchvision follows every directory link
    (``os.walk(followlinks=True)``), so a link looping back into its own tree multiplies the images
    under the wrong paths, and a link into another class folder relabels them. Such links, class
    folders sharing files, and two links to the same file are refused with a ValueError naming the
    link: which copy the user meant cannot be guessed."""
    directory = os.fspath(directory)
    split_real = os.path.realpath(directory)
    class_dirs = {c: os.path.join(directory, c) for c in sorted(class_to_idx)}
    class_real = {c: os.path.realpath(p) for c, p in class_dirs.items()}
    owner: dict[str, str] = {}  # real path of each class folder -> its class

    def owning_class(real: str) -> str | None:
        """The class whose (real) folder holds ``real``."""
        while True:
            if real in owner:
                return owner[real]
            parent = os.path.dirname(real)
            if parent == real:
                return None
            real = parent

    for c, real in class_real.items():
        if _inside(split_real, real):
            raise ValueError(
                f"class folder '{class_dirs[c]}' is a link to '{real}', which holds the dataset folder itself "
                "(a loop); remove the link"
            )
        if real in owner:
            raise ValueError(
                f"class folders '{class_dirs[owner[real]]}' and '{class_dirs[c]}' are the same folder "
                f"'{real}'; remove one of them"
            )
        owner[real] = c
    for c, real in class_real.items():
        other = owning_class(os.path.dirname(real))
        if other is not None:
            raise ValueError(
                f"class folder '{class_dirs[c]}' leads to '{real}', inside class folder "
                f"'{class_dirs[other]}': its files would be counted twice; remove the link"
            )

    seen: dict[str, str] = {}  # real path of every folder walked -> the path it was walked under
    linked: dict[str, str] = {}  # real path of every linked file -> the link
    samples: list[tuple[str, int]] = []
    empty: list[str] = []
    for c, top in class_dirs.items():
        if not os.path.isdir(top):
            continue
        listing: list[tuple[str, list[str]]] = []
        stack = [(top, class_real[c], (class_real[c],))]
        seen[class_real[c]] = top
        while stack:
            path, real, chain = stack.pop()
            try:
                entries = list(os.scandir(path))
            except OSError as e:
                raise ValueError(
                    f"cannot list the folder '{path}' ({type(e).__name__}: {e.strerror or e})"
                ) from None
            files = []
            for entry in entries:
                if entry.is_dir():  # follows a link
                    sub = os.path.join(path, entry.name)
                    sub_real = os.path.realpath(sub) if entry.is_symlink() else os.path.join(real, entry.name)
                    if sub_real in chain or _inside(real, sub_real):
                        raise ValueError(
                            f"'{sub}' is a link back to '{sub_real}', a folder it is in (a loop that would "
                            "count the same images again and again); remove the link"
                        )
                    if entry.is_symlink():
                        into = owning_class(sub_real)
                        if into is not None or _inside(sub_real, split_real):
                            where = f"class folder '{class_dirs[into]}'" if into else f"'{directory}'"
                            raise ValueError(
                                f"'{sub}' is a link to '{sub_real}', inside {where}: its images would be "
                                "counted twice or under another class; remove the link"
                            )
                    if sub_real in seen:
                        raise ValueError(
                            f"'{sub}' and '{seen[sub_real]}' lead to the same folder '{sub_real}': its "
                            "images would be counted twice; remove the link"
                        )
                    seen[sub_real] = sub
                    stack.append((sub, sub_real, (*chain, sub_real)))
                elif has_file_allowed_extension(entry.name, extensions):
                    files.append(entry.name)
                    if entry.is_symlink():
                        target = os.path.realpath(entry.path)
                        if target in linked:
                            raise ValueError(
                                f"'{linked[target]}' and '{os.path.join(path, entry.name)}' are links to "
                                f"the same file '{target}'; remove one of them"
                            )
                        linked[target] = os.path.join(path, entry.name)
            listing.append((path, sorted(files)))
        count = len(samples)
        for path, files in sorted(listing):
            samples += [(os.path.join(path, f), class_to_idx[c]) for f in files]
        if len(samples) == count:
            empty.append(top)
    for target, link in linked.items():
        # A link to a file that is also counted where it lies.
        if seen.get(os.path.dirname(target)) is not None and has_file_allowed_extension(target, extensions):
            raise ValueError(
                f"'{link}' is a link to '{target}', which is counted where it lies: the same file twice; "
                "remove the link"
            )
    if empty:
        more = f" (and {len(empty) - 1} more)" if len(empty) > 1 else ""
        raise FileNotFoundError(
            f"class folder '{empty[0]}'{more} holds no {kind} (files ending in {', '.join(extensions)}); "
            "add some or remove the folder"
        )
    return samples


class ClassFolder(ImageFolder):
    """torchvision ImageFolder with our image reader, optional excluded class folders, and a walk
    that counts every file once (:func:`class_samples`)."""

    def __init__(self, root: str | Path, exclude: tuple[str, ...] = ()) -> None:
        self.exclude = set(exclude)
        super().__init__(str(root), loader=read_image)

    def find_classes(self, directory: str | Path) -> tuple[list[str], dict[str, int]]:
        classes = sorted(e.name for e in os.scandir(directory) if e.is_dir() and e.name not in self.exclude)
        if not classes:
            raise FileNotFoundError(
                f"no class folders in '{directory}' (expected {directory}/<class>/<image>)"
            )
        return classes, {c: i for i, c in enumerate(classes)}

    @staticmethod
    def make_dataset(
        directory: str | Path,
        class_to_idx: dict[str, int],
        extensions: tuple[str, ...] | None = None,
        is_valid_file: Any = None,
        allow_empty: bool = False,
    ) -> list[tuple[str, int]]:
        del extensions, is_valid_file, allow_empty  # ImageFolder's: image extensions, no empty class
        return class_samples(directory, class_to_idx, IMG_EXTENSIONS)


def check_class_layout(folder: Path, dataset: str, hint: str = "") -> None:
    """A folder of images without class sub-folders is a layout mistake, not a 1-class dataset."""
    if not folder.is_dir():
        raise FileNotFoundError(f"{dataset}: '{folder}' does not exist; expected {folder}/<class>/<image>")
    has_dirs, images = False, 0
    with os.scandir(folder) as entries:
        for e in entries:
            if e.is_dir():
                has_dirs = True
                break
            if e.name.lower().endswith(IMG_EXTENSIONS):
                images += 1
    if not has_dirs:
        found = f"holds {images} images directly but" if images else "has no class folders;"
        raise ValueError(
            f"{dataset}: '{folder}' {found} class folders {folder}/<class>/<image> are expected"
            + (f"; {hint}" if hint and images else "")
        )


def split_per_class(dataset: ImageFolder, val_fraction: float, seed: int) -> tuple[Subset[Any], Subset[Any]]:
    """Stratified train/val split of one folder tree (each class keeps ``val_fraction`` for validation)."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"dataset.val_fraction must be between 0 and 1, got {val_fraction}")
    targets = np.asarray(dataset.targets)
    rng = np.random.default_rng(seed)
    train_idx, val_idx = [], []
    for c in np.unique(targets):
        idx = np.flatnonzero(targets == c)
        rng.shuffle(idx)
        n_val = int(round(len(idx) * val_fraction)) if len(idx) > 1 else 0
        val_idx += idx[:n_val].tolist()
        train_idx += idx[n_val:].tolist()
    return Subset(dataset, sorted(train_idx)), Subset(dataset, sorted(val_idx))


def load_class_folders(
    root: str | None,
    dataset: str,
    *,
    val_fraction: float | None = None,
    split_seed: int = 0,
    exclude: tuple[str, ...] = (),
    unsplit_dirs: tuple[str, ...] = (),
    val_hint: str = "",
) -> tuple[Any, Any, list[str]]:
    """``root/train`` + ``root/val`` class folders; else (with ``val_fraction``) one class-folder tree
    — the first of ``unsplit_dirs`` under root that exists, or root itself — split per class."""
    if not root:
        raise ValueError(
            f"dataset.root is not set; point it at the folder holding train/ and val/ for {dataset}"
        )
    base = Path(root).expanduser()
    if not base.is_dir():
        raise FileNotFoundError(f"{dataset}: dataset.root '{base}' does not exist")
    if (base / "train").is_dir():
        check_class_layout(base / "train", dataset)
        val_dir = base / "val"
        if not val_dir.is_dir():
            raise FileNotFoundError(
                f"{dataset}: '{val_dir}' does not exist; expected {base}/val/<class>/<image> next to train/"
            )
        check_class_layout(val_dir, dataset, val_hint)
        train, val = ClassFolder(base / "train", exclude), ClassFolder(val_dir, exclude)
        if train.classes != val.classes:
            only = sorted(set(train.classes) ^ set(val.classes))
            raise ValueError(
                f"{dataset}: train/ and val/ need the same class folders; '{only[0]}' is in only one of them "
                f"({len(only)} differ)"
            )
        return train, val, list(train.classes)
    tree = next((base / d for d in unsplit_dirs if (base / d).is_dir()), base)
    if val_fraction is None:
        raise FileNotFoundError(
            f"{dataset}: '{base}' has no train/ folder; give train/<class>/<image> and val/<class>/<image>, "
            "or set dataset.val_fraction to split one class-folder tree"
        )
    check_class_layout(tree, dataset)
    full = ClassFolder(tree, exclude)
    train, val = split_per_class(full, val_fraction, split_seed)
    return train, val, list(full.classes)


def photo_bundle(
    train: Any,
    val: Any,
    classes: list[str],
    *,
    image_size: int,
    augment: str,
    interpolation: str,
    eval_resize: int | None,
    hflip: bool,
    skip_corrupt: bool,
) -> DataBundle:
    kw = {"style": "photo", "interpolation": interpolation, "eval_resize": eval_resize}
    return DataBundle(
        train=CorruptGuard(train, skip_corrupt, "train"),
        val=CorruptGuard(val, skip_corrupt, "val"),
        num_classes=len(classes),
        train_transform=train_transform(augment, image_size, hflip=hflip, **kw),
        val_transform=eval_transform(image_size, **kw),
        class_names=classes,
    )


@register("image_folder")
def build_image_folder(
    root: str | None = None,
    image_size: int = 224,
    num_classes: int | None = None,
    augment: str = "baseline2",
    interpolation: str = "bilinear",
    eval_resize: int | None = None,
    hflip: bool = True,
    val_fraction: float | None = None,
    split_seed: int = 0,
    skip_corrupt: bool = False,
) -> DataBundle:
    del num_classes  # checked against the data by the caller
    train, val, classes = load_class_folders(
        root, "image_folder", val_fraction=val_fraction, split_seed=split_seed
    )
    return photo_bundle(
        train,
        val,
        classes,
        image_size=image_size,
        augment=augment,
        interpolation=interpolation,
        eval_resize=eval_resize,
        hflip=hflip,
        skip_corrupt=skip_corrupt,
    )


@register("imagenet")
def build_imagenet(
    root: str | None = None,
    image_size: int = 224,
    num_classes: int | None = 1000,
    augment: str = "baseline2",
    interpolation: str = "bilinear",
    eval_resize: int | None = 256,
    hflip: bool = True,
    skip_corrupt: bool = False,
) -> DataBundle:
    del num_classes
    if root and not (Path(root).expanduser() / "train").is_dir() and Path(root).expanduser().is_dir():
        raise FileNotFoundError(
            f"imagenet: '{Path(root).expanduser() / 'train'}' does not exist; expected "
            f"{root}/train/<wnid>/*.JPEG and {root}/val/<wnid>/*.JPEG"
        )
    train, val, classes = load_class_folders(root, "imagenet", val_hint=IMAGENET_VAL_HINT)
    return photo_bundle(
        train,
        val,
        classes,
        image_size=image_size,
        augment=augment,
        interpolation=interpolation,
        eval_resize=eval_resize,
        hflip=hflip,
        skip_corrupt=skip_corrupt,
    )


def _catalog_builder(name: str, unsplit_dirs: tuple[str, ...], exclude: tuple[str, ...] = ()) -> None:
    """A dataset of the paper's catalog stored as class folders (224 px, ratio 0.12)."""

    def build(
        root: str | None = None,
        image_size: int = 224,
        num_classes: int | None = None,
        augment: str = "baseline2",
        interpolation: str = "bilinear",
        eval_resize: int | None = None,
        hflip: bool = True,
        val_fraction: float | None = 0.2,
        split_seed: int = 0,
        skip_corrupt: bool = False,
    ) -> DataBundle:
        del num_classes
        train, val, classes = load_class_folders(
            root,
            name,
            val_fraction=val_fraction,
            split_seed=split_seed,
            exclude=exclude,
            unsplit_dirs=unsplit_dirs,
        )
        return photo_bundle(
            train,
            val,
            classes,
            image_size=image_size,
            augment=augment,
            interpolation=interpolation,
            eval_resize=eval_resize,
            hflip=hflip,
            skip_corrupt=skip_corrupt,
        )

    build.__name__ = f"build_{name}"
    register(name)(build)


# Caltech-101: the official archive's 101_ObjectCategories/ (or torchvision's caltech101/ folder);
# BACKGROUND_Google is not an object class (torchvision drops it too): 101 classes.
_catalog_builder(
    "caltech101", ("101_ObjectCategories", "caltech101/101_ObjectCategories"), exclude=("BACKGROUND_Google",)
)
# Caltech-256: 256_ObjectCategories/ with 257 folders (256 objects + 257.clutter), as torchvision.
_catalog_builder("caltech256", ("256_ObjectCategories", "caltech256/256_ObjectCategories"))
# Mini-ImageNet (100 classes): train/ + val/ class folders, or one tree of class folders (images/).
_catalog_builder("mini_imagenet", ("images",))
