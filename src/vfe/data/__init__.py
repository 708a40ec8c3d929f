"""Data sets in, ImageSet out: a built-in name, or the path of IDX files, a CIFAR archive or folder,
or an image folder with one sub-folder per class.

    load_dataset("fashion-mnist", split="test")     Debian's dataset-fashion-mnist, or ~/.cache/vfe
    load_dataset("digits")                          always available (scikit-learn)
    load_dataset("~/data/flower_photos", validation_split=0.2, subset="training", seed=0)

Built-in names win over folders of the same name in the working directory: write ./mnist for those.
Image files, wherever vfe reads them, are the suffixes in IMAGE_SUFFIXES, read by `read_image`.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from vfe.data.arrays import from_arrays
from vfe.data.cifar import CIFAR_VARIANTS, find_cifar, load_cifar, load_cifar_dataset
from vfe.data.digits import load_digits_split
from vfe.data.errors import MissingDataError, MissingSplitError
from vfe.data.folder import load_image_folder
from vfe.data.idx import (
    FASHION_MNIST,
    IDX_DATASETS,
    available,
    is_idx_folder,
    load_idx_dataset,
    load_idx_folder,
)
from vfe.data.images import IMAGE_SUFFIXES, LazyImages, UnreadableImageError, read_image
from vfe.data.split import check_validation_split, split_tag, validation_split_index, warn_missing_classes
from vfe.data.types import ImageSet
from vfe.errors import DataError, SettingsError

__all__ = ["BUILTIN", "IMAGE_SUFFIXES", "ImageSet", "LazyImages", "UnreadableImageError",
           "available_fashion_mnist", "from_arrays", "load_dataset", "load_train_test", "read_image"]

BUILTIN = ("fashion-mnist", "mnist", "digits", "cifar10", "cifar100")
_BUILTIN_KEYS = {re.sub(r"[-_]", "", name): name for name in BUILTIN}


def load_dataset(name_or_path: str | os.PathLike, split: str = "train",
                 data_dir: str | os.PathLike | None = None, skip_bad: bool = False,
                 validation_split: float | None = None, subset: str | None = None, seed: int = 0, *,
                 image_size: int | tuple[int, int] | None = None, lazy: bool | None = None,
                 download: bool = False) -> ImageSet:
    """One split of a data set as an ImageSet.

    name_or_path: a built-in name (BUILTIN; case, '-' and '_' do not matter) or a path.
    split: 'train' or 'test' (an image folder: the name of one of its split folders).
    data_dir: where named data sets are looked for first (vfe.data.locate gives the full order).
    validation_split, subset, seed: hold out the last `validation_split` of a seeded shuffle of the
        split, as Keras does; subset 'training' or 'validation' says which part to return.
    skip_bad, image_size, lazy: image folders only (see vfe.data.folder.load_image_folder).
    download: fetch a named data set into ~/.cache/vfe/<name> if it is not on this machine.
    """
    check_validation_split(validation_split, subset)
    builtin = _builtin_name(name_or_path)
    path = Path(name_or_path).expanduser()
    if builtin is None and not path.exists():
        raise MissingDataError(f"data set {os.fspath(name_or_path)!r}: no such file or folder, and not a "
                               f"built-in name ({', '.join(BUILTIN)})")
    if builtin is None and path.is_dir() and not is_idx_folder(path) and find_cifar(path) is None:
        return load_image_folder(path, split, image_size, validation_split, subset, seed, skip_bad, lazy)
    if image_size is not None or lazy is not None:
        raise SettingsError(f"{name_or_path}: image_size and lazy apply to image folders only")
    if builtin is not None:
        data = _load_builtin(builtin, split, data_dir, download)
    elif path.is_dir() and is_idx_folder(path):
        data = load_idx_folder(path, split)
    elif find_cifar(path) is not None:
        data = load_cifar(path, split)
    else:
        raise DataError(f"{path}: not a data set vfe reads; give a CIFAR python-version archive, or a "
                        "folder of IDX files, of CIFAR batches, or of class sub-folders")
    if validation_split is None:
        return data
    index = validation_split_index(len(data), validation_split, subset, seed)
    part = data.subset(index, tag=split_tag(validation_split, subset, seed))
    warn_missing_classes(data.labels, part.labels, data.class_names, f"{name_or_path} ({split} split)",
                         validation_split, subset, seed)
    return part


def available_fashion_mnist(data_dir: str | os.PathLike | None = None) -> Path | None:
    """The folder holding Fashion-MNIST's four IDX files on this machine, or None (never downloads)."""
    return available(FASHION_MNIST, data_dir)


def _builtin_name(name_or_path: str | os.PathLike) -> str | None:
    if not isinstance(name_or_path, str) or "/" in name_or_path or os.sep in name_or_path:
        return None
    return _BUILTIN_KEYS.get(re.sub(r"[-_]", "", name_or_path.lower()))


def _load_builtin(name: str, split: str, data_dir, download: bool) -> ImageSet:
    if name == "digits":
        return load_digits_split(split)
    if name in IDX_DATASETS:
        return load_idx_dataset(IDX_DATASETS[name], split, data_dir, download)
    return load_cifar_dataset(CIFAR_VARIANTS[name], split, data_dir, download)


def load_train_test(name_or_path: str | os.PathLike, data_dir: str | os.PathLike | None = None,
                    test_fraction: float = 0.2, seed: int = 0, **options) -> tuple[ImageSet, ImageSet]:
    """Train and test splits. A data set without a test split (an image folder with one sub-folder per
    class) gives `test_fraction` of its files, chosen with `seed` as Keras does, as the test split; a
    class too small to appear in both parts is warned about."""
    try:
        test = load_dataset(name_or_path, split="test", data_dir=data_dir, **options)
    except MissingSplitError:
        if _builtin_name(name_or_path) is not None or not Path(name_or_path).expanduser().is_dir():
            raise
        return tuple(load_dataset(name_or_path, split="train", data_dir=data_dir,
                                  validation_split=test_fraction, subset=part, seed=seed, **options)
                     for part in ("training", "validation"))
    return load_dataset(name_or_path, split="train", data_dir=data_dir, **options), test
