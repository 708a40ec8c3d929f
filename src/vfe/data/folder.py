"""Image folders with one sub-folder per class (the flower_photos layout), read like Keras'
image_dataset_from_directory.

    root/daisy/*.jpg, root/roses/*.jpg, ...       one split; hold some out with validation_split + subset
    root/train/daisy/*.jpg, root/test/daisy/...   split folders, chosen with split='train', 'test', ...

Classes are the sorted sub-folder names; images are found recursively inside each (suffixes in
IMAGE_SUFFIXES, case-insensitive; other files and hidden files or folders are ignored). With split
folders the classes are the union over all splits, so a label means the same class in each.

Every image is resized to one `image_size`: by default the images' own size when they all share
one, else 256 x 256 (Keras' default). A folder whose decoded images would take more than
LAZY_ABOVE_BYTES is returned as LazyImages (decoded batch by batch when used). The folder is
only read, never written.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from vfe.data.images import (
    IMAGE_SUFFIXES,
    LazyImages,
    Size,
    UnreadableImageError,
    decode_into,
    file_digest,
    parallel_map,
    probe_image,
)
from vfe.data.split import split_tag, validation_split_index
from vfe.data.types import ImageSet

SPLIT_DIRS = frozenset({"train", "test", "val", "validation", "valid"})
DEFAULT_SIZE: Size = (256, 256)
LAZY_ABOVE_BYTES = 1 << 30
_PROGRESS_FROM = 500  # files; smaller folders load without progress bars


def load_image_folder(path: str | os.PathLike, split: str = "train", image_size: int | Size | None = None,
                      validation_split: float | None = None, subset: str | None = None, seed: int = 0,
                      skip_bad: bool = False, lazy: bool | None = None) -> ImageSet:
    """The images of a class-per-folder tree as an ImageSet (see the module docstring for the rules).

    `skip_bad` leaves out files that cannot be decoded (with a warning; their paths are listed in
    `meta["skipped"]`) instead of raising. With lazy=True only files whose header is unreadable can
    be skipped; a file that fails later, when decoded, raises naming it.
    """
    root = Path(path).resolve()
    if not root.is_dir():
        raise NotADirectoryError(f"{root}: not a folder")
    base, class_names, split_layout = _split_folder(root, split)
    paths, labels = _index(base, class_names)
    source = f"folder:{root}" + (f":{split}" if split_layout else "")
    if validation_split is not None or subset is not None:
        keep = validation_split_index(len(paths), validation_split, subset, seed)
        paths, labels = [paths[i] for i in keep], labels[keep]
        source += f"[{split_tag(validation_split, subset, seed)}]"
    progress = len(paths) >= _PROGRESS_FROM
    skipped: list[Path] = []

    probed = parallel_map(_probe, paths, progress, desc=f"index {root.name}")
    bad = {i: r for i, r in enumerate(probed) if isinstance(r, UnreadableImageError)}
    paths, labels, sizes = _drop(bad, paths, labels, probed, skip_bad, skipped)
    size, size_rule = _choose_size(image_size, sizes)
    if lazy is None:
        lazy = len(paths) * size[0] * size[1] * 3 > LAZY_ABOVE_BYTES
    if lazy:
        images = LazyImages(paths, size, parallel_map(file_digest, paths, progress, desc=f"hash {root.name}"))
    else:
        images = np.empty((len(paths), *size, 3), np.uint8)
        bad = decode_into(paths, size, images, progress, desc=f"decode {root.name}")
        if bad:
            paths, labels, _ = _drop(bad, paths, labels, sizes, skip_bad, skipped)
            images = images[np.setdiff1d(np.arange(len(images)), list(bad))]
    if skipped:
        warnings.warn(f"{root}: skipped {len(skipped)} unreadable image file(s), e.g. {skipped[0]}",
                      RuntimeWarning, stacklevel=2)
    if not paths:
        raise ValueError(f"{root}: no readable images")
    meta = {"format": "folder", "root": str(root), "split": split if split_layout else None,
            "image_size": list(size), "image_size_rule": size_rule, "lazy": lazy,
            "n_skipped": len(skipped), "skipped": [str(p.relative_to(root)) for p in skipped]}
    return ImageSet(images, labels, class_names, source=source, meta=meta)


def _split_folder(root: Path, split: str) -> tuple[Path, list[str], bool]:
    """(folder whose sub-folders are the classes, class names, whether root has split folders)."""
    subdirs = _visible_dirs(root)
    if not subdirs:
        raise FileNotFoundError(f"{root}: no class sub-folders (expected one folder of images per class, "
                                f"e.g. {root / 'CLASS' / 'image.jpg'})")
    if not all(d.name.lower() in SPLIT_DIRS for d in subdirs):
        if split != "train":
            raise ValueError(f"{root}: one folder per class and no split folders, so there is no {split!r} "
                             "split; hold images out with validation_split=0.2, subset='validation' (and "
                             "subset='training', same seed, for the rest)")
        return root, [d.name for d in subdirs], False
    split_dir = next((d for d in subdirs if d.name == split), None)
    if split_dir is None:
        names = ", ".join(d.name for d in subdirs)
        raise FileNotFoundError(f"{root}: split folders {names}; none is {split!r}")
    if not _visible_dirs(split_dir):
        raise FileNotFoundError(f"{split_dir}: no class sub-folders")
    return split_dir, sorted({c.name for d in subdirs for c in _visible_dirs(d)}), True


def _visible_dirs(folder: Path) -> list[Path]:
    visible = (p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    return sorted(visible, key=lambda p: p.name)


def _index(base: Path, class_names: list[str]) -> tuple[list[Path], np.ndarray]:
    """Image paths and labels, class by class, files in Keras' order (folders sorted, files sorted)."""
    paths: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(class_names):
        folder = base / name
        if not folder.is_dir():
            continue  # a class that this split lacks (split folders only)
        files = _image_files(folder)
        if not files:
            raise FileNotFoundError(f"{folder}: class folder holds no images ({', '.join(IMAGE_SUFFIXES)})")
        paths += files
        labels += [label] * len(files)
    return paths, np.asarray(labels, dtype=np.int64)


def _image_files(folder: Path) -> list[Path]:
    walked = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        walked.append((dirpath, filenames))
    return [Path(dirpath, f) for dirpath, filenames in sorted(walked) for f in sorted(filenames)
            if f.lower().endswith(IMAGE_SUFFIXES) and not f.startswith(".")]


def _probe(path: Path) -> Size | UnreadableImageError:
    try:
        return probe_image(path)
    except UnreadableImageError as e:
        return e


def _drop(bad: dict, paths: list[Path], labels: np.ndarray, sizes: list, skip_bad: bool,
          skipped: list[Path]) -> tuple[list[Path], np.ndarray, list]:
    """The lists without the rows in `bad` (their paths join `skipped`); the first error unless skip_bad."""
    if not bad:
        return paths, labels, sizes
    if not skip_bad:
        first = bad[min(bad)]
        raise UnreadableImageError(f"{first} (skip_bad=True leaves such files out)") from first
    skipped += [paths[i] for i in sorted(bad)]
    keep = [i for i in range(len(paths)) if i not in bad]
    return [paths[i] for i in keep], labels[keep], [sizes[i] for i in keep]


def _choose_size(image_size: int | Size | None, sizes: list[Size]) -> tuple[Size, str]:
    if image_size is not None:
        h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
        if h < 1 or w < 1:
            raise ValueError(f"image_size must be positive, got {image_size}")
        return (int(h), int(w)), "given"
    distinct = set(sizes)
    if len(distinct) == 1:
        return distinct.pop(), "shared by every image"
    return DEFAULT_SIZE, "default (the images differ in size)"
