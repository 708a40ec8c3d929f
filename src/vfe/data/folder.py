"""Image folders with one sub-folder per class (the flower_photos layout), read like Keras'
image_dataset_from_directory.

    root/daisy/*.jpg, root/roses/*.jpg, ...       one split; hold some out with validation_split + subset
    root/train/daisy/*.jpg, root/test/daisy/...   split folders, chosen with split='train', 'test', ...

Classes are the sorted sub-folder names; images are found recursively inside each (suffixes in
IMAGE_SUFFIXES, case-insensitive; other files and hidden files or folders are ignored). With split
folders the classes are the union over all splits, so a label means the same class in each.

Symbolic links are followed only while they stay inside the root and do not loop: a link back to a
folder that contains it (root/all -> root) would turn the whole tree into one more class of
duplicates, and a link out of the root would read files the folder does not hold. Such links are
skipped with a warning and listed in `meta["skipped_links"]`.

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

from vfe.data.errors import MissingDataError, MissingSplitError
from vfe.data.images import (
    IMAGE_SUFFIXES,
    LazyImages,
    Size,
    UnreadableImageError,
    decode_into,
    describe_bad,
    file_digest,
    parallel_map,
    probe_image,
)
from vfe.data.split import split_tag, validation_split_index, warn_missing_classes
from vfe.data.types import ImageSet
from vfe.errors import DataError, SettingsError

SPLIT_DIRS = frozenset({"train", "test", "val", "validation", "valid"})
DEFAULT_SIZE: Size = (256, 256)
LAZY_ABOVE_BYTES = 1 << 30
_PROGRESS_FROM = 500  # files; smaller folders load without progress bars
_NAMED_IN_WARNINGS = 5  # skipped files or links named in a warning; the rest are counted
# how the error about unreadable files ends; a command without --skip-bad (`vfe lab`) replaces it with its own advice
SKIP_BAD_HINT = ", or pass --skip-bad (Python: skip_bad=True) to leave them out"


def load_image_folder(path: str | os.PathLike, split: str = "train", image_size: int | Size | None = None,
                      validation_split: float | None = None, subset: str | None = None, seed: int = 0,
                      skip_bad: bool = False, lazy: bool | None = None) -> ImageSet:
    """The images of a class-per-folder tree as an ImageSet (see the module docstring for the rules).

    Unreadable files stop the load with one error listing all of them; `skip_bad` leaves them out
    instead, with a warning, and `meta["skipped"]` lists each ({"file": path relative to the root,
    "error": why}) so it can be saved beside the results. With lazy=True only files whose header is
    unreadable can be skipped; a file that fails later, when decoded, raises naming it.
    """
    root = Path(path).resolve()
    if not root.is_dir():
        raise DataError(f"{root}: not a folder; give a folder with one sub-folder of images per class")
    links: list[tuple[Path, str]] = []
    base, class_names, split_layout = _split_folder(root, split, links)
    paths, labels = _index(base, class_names, root, links)
    source = f"folder:{root}" + (f":{split}" if split_layout else "")
    listed = labels
    if validation_split is not None or subset is not None:
        keep = validation_split_index(len(paths), validation_split, subset, seed)
        paths, labels = [paths[i] for i in keep], labels[keep]
        source += f"[{split_tag(validation_split, subset, seed)}]"
    progress = len(paths) >= _PROGRESS_FROM

    probed = parallel_map(_probe, paths, progress, desc=f"index {root.name}")
    bad = {i: r for i, r in enumerate(probed) if isinstance(r, UnreadableImageError)}
    if bad and skip_bad:
        paths, labels, probed, skipped = _drop(bad, paths, labels, probed)
        bad = {}
    else:
        skipped = []
    good_sizes = [s for s in probed if not isinstance(s, UnreadableImageError)]
    if not good_sizes:
        unreadable = [e for _, e in skipped] + list(bad.values())
        raise DataError(f"{root}: no readable images; {describe_bad(unreadable)}")
    size, size_rule = _choose_size(image_size, good_sizes)
    if lazy is None:
        lazy = len(paths) * size[0] * size[1] * 3 > LAZY_ABOVE_BYTES
    if lazy:
        _stop_unless_skipped(root, bad)
        images = LazyImages(paths, size, parallel_map(file_digest, paths, progress, desc=f"hash {root.name}"))
    else:
        readable = [i for i in range(len(paths)) if i not in bad]
        images = np.empty((len(readable), *size, 3), np.uint8)
        failed = decode_into([paths[i] for i in readable], size, images, progress, desc=f"decode {root.name}")
        bad.update({readable[i]: e for i, e in failed.items()})
        if failed and skip_bad:  # the files that failed the header check are gone already
            paths, labels, _, more = _drop(bad, paths, labels, probed)
            skipped += more
            images = images[[i for i in range(len(readable)) if i not in failed]]
        else:
            _stop_unless_skipped(root, bad)
    if skipped:
        shown = ", ".join(str(p.relative_to(root)) for p, _ in skipped[:_NAMED_IN_WARNINGS])
        more = f" and {len(skipped) - _NAMED_IN_WARNINGS} more" if len(skipped) > _NAMED_IN_WARNINGS else ""
        warnings.warn(f"{root}: skipped {len(skipped)} unreadable image file(s) (--skip-bad): {shown}{more}; "
                      "all are listed in the data set's meta['skipped']", RuntimeWarning, stacklevel=2)
    if not paths:
        raise DataError(f"{root}: no readable images; {describe_bad([e for _, e in skipped])}")
    where = f"{root}" + (f" ({split} split)" if split_layout else "")
    warn_missing_classes(listed, labels, class_names, where, validation_split, subset, seed)
    if links:
        shown = "; ".join(f"{p.relative_to(root)} ({why})" for p, why in links[:_NAMED_IN_WARNINGS])
        more = f"; and {len(links) - _NAMED_IN_WARNINGS} more" if len(links) > _NAMED_IN_WARNINGS else ""
        warnings.warn(f"{root}: skipped {len(links)} symbolic link(s) that loop, repeat a folder or lead out "
                      f"of the folder: {shown}{more}", RuntimeWarning, stacklevel=2)
    meta = {"format": "folder", "root": str(root), "split": split if split_layout else None,
            "image_size": list(size), "image_size_rule": size_rule, "lazy": lazy,
            "n_skipped": len(skipped),
            "skipped": [{"file": str(p.relative_to(root)), "error": _reason(p, e)} for p, e in skipped],
            "skipped_links": [{"link": str(p.relative_to(root)), "why": why} for p, why in links]}
    return ImageSet(images, labels, class_names, source=source, meta=meta)


def _split_folder(root: Path, split: str, links: list) -> tuple[Path, list[str], bool]:
    """(folder whose sub-folders are the classes, class names, whether root has split folders)."""
    subdirs = _visible_dirs(root, root, links)
    if not subdirs:
        raise MissingDataError(f"{root}: no class sub-folders (expected one folder of images per class, "
                               f"e.g. {root / 'CLASS' / 'image.jpg'})")
    if not all(d.name.lower() in SPLIT_DIRS for d in subdirs):
        if split != "train":
            raise MissingSplitError(f"{root}: one folder per class and no split folders, so there is no "
                                    f"{split!r} split; hold images out with validation_split=0.2, "
                                    "subset='validation' (and subset='training', same seed, for the rest)")
        return root, [d.name for d in subdirs], False
    split_dir = next((d for d in subdirs if d.name == split), None)
    if split_dir is None:
        names = ", ".join(d.name for d in subdirs)
        raise MissingDataError(f"{root}: split folders {names}; none is {split!r}")
    classes = {d.name: _visible_dirs(d, root, links) for d in subdirs}
    if not classes[split]:
        raise MissingDataError(f"{split_dir}: no class sub-folders")
    return split_dir, sorted({c.name for found in classes.values() for c in found}), True


def _visible_dirs(folder: Path, root: Path, links: list) -> list[Path]:
    visible = [p for p in folder.iterdir() if not p.name.startswith(".") and p.is_dir()
               and _follow(p, root, links)]
    return sorted(visible, key=lambda p: p.name)


def _follow(path: Path, root: Path, links: list, seen: set[Path] | None = None) -> bool:
    """Whether to read `path`: yes unless it is a symbolic link that loops or leaves `root` (then it
    joins `links` with the reason). `seen`: real folders already walked, so no folder is read twice."""
    if not path.is_symlink():
        return True
    try:
        target = path.resolve(strict=True)
    except (OSError, RuntimeError):  # RuntimeError: a link loop, in Python < 3.13
        links.append((path, "broken or circular link"))
        return False
    if not target.is_relative_to(root):
        links.append((path, f"points outside the folder, to {target}"))
    elif path.parent.resolve().is_relative_to(target):
        links.append((path, f"loops back to {target}"))
    elif seen is not None and target in seen:
        links.append((path, f"repeats {target}, already read"))
    else:
        return True
    return False


def _index(base: Path, class_names: list[str], root: Path, links: list) -> tuple[list[Path], np.ndarray]:
    """Image paths and labels, class by class, files in Keras' order (folders sorted, files sorted)."""
    paths: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(class_names):
        folder = base / name
        if not folder.is_dir() or (folder.is_symlink() and not _follow(folder, root, [])):
            continue  # a class that this split lacks (split folders only), or a link already reported
        files = _image_files(folder, root, links)
        if not files:
            raise MissingDataError(f"{folder}: class folder holds no images ({', '.join(IMAGE_SUFFIXES)})")
        paths += files
        labels += [label] * len(files)
    return paths, np.asarray(labels, dtype=np.int64)


def _image_files(folder: Path, root: Path, links: list) -> list[Path]:
    walked = []
    seen = {folder.resolve()}
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        kept = []
        for d in sorted(dirnames):
            sub = Path(dirpath, d)
            if not d.startswith(".") and _follow(sub, root, links, seen):
                seen.add(sub.resolve())
                kept.append(d)
        dirnames[:] = kept
        files = [f for f in filenames if f.lower().endswith(IMAGE_SUFFIXES) and not f.startswith(".")]
        walked.append((dirpath, [f for f in files if _follow(Path(dirpath, f), root, links)]))
    return [Path(dirpath, f) for dirpath, filenames in sorted(walked) for f in sorted(filenames)]


def _probe(path: Path) -> Size | UnreadableImageError:
    try:
        return probe_image(path)
    except UnreadableImageError as e:
        return e


def _drop(bad: dict, paths: list[Path], labels: np.ndarray,
          probed: list) -> tuple[list[Path], np.ndarray, list, list[tuple[Path, UnreadableImageError]]]:
    """The lists without the rows in `bad`, and the (path, error) pairs dropped."""
    keep = [i for i in range(len(paths)) if i not in bad]
    dropped = [(paths[i], bad[i]) for i in sorted(bad)]
    return [paths[i] for i in keep], labels[keep], [probed[i] for i in keep], dropped


def _stop_unless_skipped(root: Path, bad: dict) -> None:
    if bad:
        raise UnreadableImageError(f"{root}: {describe_bad([bad[i] for i in sorted(bad)])}; remove or "
                                   f"replace them{SKIP_BAD_HINT}")


def _reason(path: Path, error: UnreadableImageError) -> str:
    return str(error).removeprefix(f"{path}: ")


def _choose_size(image_size: int | Size | None, sizes: list[Size]) -> tuple[Size, str]:
    if image_size is not None:
        h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
        if h < 1 or w < 1:
            raise SettingsError(f"image_size must be positive, got {image_size}")
        return (int(h), int(w)), "given"
    distinct = set(sizes)
    if len(distinct) == 1:
        return distinct.pop(), "shared by every image"
    return DEFAULT_SIZE, "default (the images differ in size)"
