"""IDX files, the format of MNIST and Fashion-MNIST: reading them safely, and the two named sets.

An IDX file is a 4-byte magic number (0, 0, element type, number of dimensions), one big-endian
uint32 per dimension, then the elements. Image files are unsigned bytes in 3 dimensions
(magic 0x00000803), label files unsigned bytes in 1 dimension (0x00000801). Files may be gzipped.
"""
from __future__ import annotations

import gzip
import os
import re
import struct
import zlib
from dataclasses import dataclass
from math import prod
from pathlib import Path

import numpy as np

from vfe.data.download import Remote, find_or_fetch
from vfe.data.errors import MissingDataError, MissingSplitError
from vfe.data.locate import locate
from vfe.data.types import ImageSet
from vfe.errors import DataError

_WHAT = {1: "labels", 3: "images"}
_FILE_NAME = re.compile(r"^(?P<prefix>.*?)(?P<split>train|t10k|test)-(?P<kind>images|labels)"
                        r"[-.]idx(?P<ndim>[13])-ubyte(?P<gz>\.gz)?$")
_SPLIT_PREFIXES = {"train": ("train",), "test": ("t10k", "test")}


class IdxFormatError(DataError):
    """A file is not the IDX file it should be (magic number, dimensions or size)."""


@dataclass(frozen=True)
class IdxDataset:
    """A published IDX data set: its class names, where it is downloaded from, its Debian package."""

    name: str
    class_names: tuple[str, ...]
    remote: Remote
    apt_package: str | None = None


SPLIT_FILES = {"train": ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"],
               "test": ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]}

# SHA-256 of the published .gz files. Fashion-MNIST: computed from Debian's dataset-fashion-mnist files
# with their original gzip headers restored, which reproduces the MD5 sums of the Fashion-MNIST README
# (tests/data/test_fashion_mnist.py checks this); they equal the sums torchvision's dataset prototypes
# pin. MNIST: the sums torchvision's prototypes and many projects pin for these files.
FASHION_MNIST = IdxDataset(
    "fashion-mnist",
    ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
     "Ankle boot"),
    Remote(("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",), {
        "train-images-idx3-ubyte.gz": "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
        "train-labels-idx1-ubyte.gz": "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
        "t10k-images-idx3-ubyte.gz": "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
        "t10k-labels-idx1-ubyte.gz": "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
    }),
    apt_package="dataset-fashion-mnist",
)
MNIST = IdxDataset(
    "mnist",
    tuple("0123456789"),
    Remote(("https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/"), {
        "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
        "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
        "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
        "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
    }),
)
IDX_DATASETS = {d.name: d for d in (FASHION_MNIST, MNIST)}


def read_idx(path: str | os.PathLike, ndim: int) -> np.ndarray:
    """The unsigned-byte array in an IDX file (gzipped or not) that must have `ndim` dimensions."""
    path = Path(path)
    expected = 0x0800 | ndim
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            header = f.read(4 + 4 * ndim)
            if len(header) < 4 + 4 * ndim:
                raise IdxFormatError(f"{path}: {len(header)} bytes, too short for an IDX {_WHAT[ndim]} "
                                     "header")
            magic = int.from_bytes(header[:4], "big")
            if magic != expected:
                raise IdxFormatError(f"{path}: magic number 0x{magic:08x}, expected 0x{expected:08x} "
                                     f"(IDX {_WHAT[ndim]}: unsigned bytes, {ndim} "
                                     f"dimension{'s' * (ndim > 1)})")
            dims = struct.unpack(f">{ndim}I", header[4:])
            payload = f.read()  # all of it, so a corrupt header cannot make us allocate its claimed size
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError, a cut gzip an EOFError
        raise IdxFormatError(f"{path}: unreadable ({e})") from e
    if len(payload) != prod(dims):
        raise IdxFormatError(f"{path}: the header says {' x '.join(map(str, dims))} = {prod(dims)} bytes "
                             f"of data, the file holds {len(payload)}")
    return np.frombuffer(payload, np.uint8).reshape(dims).copy()  # a writable array


def is_idx_folder(folder: str | os.PathLike) -> bool:
    """Whether `folder` holds files named like MNIST's IDX files."""
    return any(_FILE_NAME.match(p.name) and p.is_file() for p in Path(folder).iterdir())


def find_split_files(folder: str | os.PathLike, split: str) -> tuple[Path, Path] | None:
    """(images, labels) files of `split` in `folder`, None if absent; an uncompressed copy wins over .gz.

    Names follow MNIST's: [prefix]train-images-idx3-ubyte[.gz] and t10k- (or test-) for the test split;
    a '.' instead of the '-' before 'idx' is accepted too (as in some re-distributions).
    """
    if split not in _SPLIT_PREFIXES:
        raise MissingSplitError(f"split {split!r}: IDX data sets have the splits 'train' and 'test'")
    found: dict[str, dict[str, Path]] = {"images": {}, "labels": {}}
    for path in sorted(Path(folder).iterdir(), key=lambda p: (p.name.endswith(".gz"), p.name)):
        m = _FILE_NAME.match(path.name)
        if m and m["split"] in _SPLIT_PREFIXES[split] and path.is_file():
            found[m["kind"]].setdefault(m["prefix"] + m["split"], path)
    stems = sorted(set(found["images"]) & set(found["labels"]))
    if not stems:
        return None
    if len(stems) > 1:
        raise DataError(f"{folder}: several IDX {split} sets ({', '.join(stems)}); keep one per folder")
    return found["images"][stems[0]], found["labels"][stems[0]]


def read_split(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images (N x H x W) and labels (N) of one split, checked to belong together."""
    images, labels = read_idx(images_path, 3), read_idx(labels_path, 1)
    if len(images) != len(labels):
        raise IdxFormatError(f"{images_path} holds {len(images)} images but {labels_path} holds "
                             f"{len(labels)} labels")
    return images, labels


def load_idx_folder(folder: str | os.PathLike, split: str = "train") -> ImageSet:
    """An IDX split from a folder the user names; classes are named by their numbers."""
    folder = Path(folder).resolve()
    files = find_split_files(folder, split)
    if files is None:
        raise MissingDataError(f"{folder}: no IDX {split} files (expected e.g. "
                                f"{' and '.join(SPLIT_FILES[split])}, gzipped or not)")
    images, labels = read_split(*files)
    class_names = [str(i) for i in range(int(labels.max(initial=0)) + 1)]
    return ImageSet(images, labels, class_names, source=f"idx:{folder}:{split}",
                    meta={"format": "idx", "split": split, "files": [str(f) for f in files]})


def load_idx_dataset(dataset: IdxDataset, split: str = "train", data_dir: str | os.PathLike | None = None,
                     download: bool = False) -> ImageSet:
    """A split of a named IDX data set, found on this machine (see vfe.data.locate) or downloaded."""
    if split not in SPLIT_FILES:
        raise MissingSplitError(f"split {split!r}: {dataset.name} has the splits 'train' and 'test'")
    folder = find_or_fetch(dataset.name, lambda d: find_split_files(d, split) is not None, dataset.remote,
                           SPLIT_FILES[split], data_dir, download, dataset.apt_package)
    files = find_split_files(folder, split)
    images, labels = read_split(*files)
    if labels.max(initial=0) >= len(dataset.class_names):
        raise IdxFormatError(f"{files[1]}: label {labels.max()} but {dataset.name} has "
                             f"{len(dataset.class_names)} classes; is this folder really {dataset.name}?")
    return ImageSet(images, labels, list(dataset.class_names), source=f"{dataset.name}:{split}",
                    meta={"format": "idx", "dataset": dataset.name, "split": split,
                          "files": [str(f) for f in files]})


def available(dataset: IdxDataset, data_dir: str | os.PathLike | None = None) -> Path | None:
    """The folder holding both splits of `dataset`, or None (never downloads)."""
    def holds_both(folder: Path) -> bool:
        return all(find_split_files(folder, s) is not None for s in SPLIT_FILES)

    return locate(dataset.name, holds_both, data_dir)
