"""A small COLOUR data set from scikit-image's shipped photos, written in the formats vfe reads.

One class per photo (astronaut, chelsea, coffee, rocket), each image a random 32 x 32 crop of the
photo scaled to 128 x 128. The same crops (same seed) can be written as an image folder of PNGs
(root/train/<class>/*.png, root/test/<class>/*.png) and as a CIFAR-10 python-version archive
(data_batch_1..5, test_batch and batches.meta in cifar-10-batches-py/, pickled as Python 2 wrote the
official files), so that the two must load into identical RGB ImageSets.

Import it as `from colour_data import ...`: pytest puts tests/ on sys.path (tests/ has a conftest.py
and no __init__.py), so `tests.colour_data` is not importable.
"""
from __future__ import annotations

import io
import pickle
import struct
import tarfile
from pathlib import Path
from typing import ClassVar

import numpy as np

CLASS_NAMES = ("astronaut", "chelsea", "coffee", "rocket")  # sorted: an image folder's class order


def colour_splits(n_train: int = 5, n_test: int = 2,
                  seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{"train": (images N x 32 x 32 x 3 uint8, labels), "test": ...}, class by class (a folder's order)."""
    import skimage.data
    from skimage.transform import resize

    rng = np.random.default_rng(seed)
    parts: dict[str, list] = {"train": [], "test": []}
    for label, name in enumerate(CLASS_NAMES):
        photo = resize(getattr(skimage.data, name)(), (128, 128), anti_aliasing=True)
        for split, n in (("train", n_train), ("test", n_test)):
            for _ in range(n):
                y, x = rng.integers(0, 96, size=2)
                parts[split].append((np.rint(photo[y:y + 32, x:x + 32] * 255).astype(np.uint8), label))
    return {split: (np.array([image for image, _ in rows], np.uint8).reshape(-1, 32, 32, 3),
                    np.array([label for _, label in rows], np.int64)) for split, rows in parts.items()}


def write_colour_folder(root: str | Path, n_train: int = 5, n_test: int = 2, seed: int = 0) -> Path:
    """root/{train,test}/<class>/<NNN>.png (lossless); returns root."""
    from PIL import Image

    root = Path(root)
    for split, (images, labels) in colour_splits(n_train, n_test, seed).items():
        for i, (image, label) in enumerate(zip(images, labels)):
            folder = root / split / CLASS_NAMES[label]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(folder / f"{i:03d}.png")
    return root


def write_colour_classes(root: str | Path, per_class: int = 20, seed: int = 0) -> Path:
    """root/<class>/<NNN>.png with no split folders (the loader holds a fifth out as test); returns root."""
    from PIL import Image

    root = Path(root)
    images, labels = colour_splits(per_class, 0, seed)["train"]
    for i, (image, label) in enumerate(zip(images, labels)):
        folder = root / CLASS_NAMES[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{i:03d}.png")
    return root


def write_colour_cifar(folder: str | Path, n_train: int = 5, n_test: int = 2, seed: int = 0,
                       archive: bool = True) -> Path:
    """cifar-10-python.tar.gz in `folder` (or, archive=False, the extracted cifar-10-batches-py/); its path.

    The training images are spread over data_batch_1..5 in order, as in CIFAR-10; batches.meta names
    the four classes.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    splits = colour_splits(n_train, n_test, seed)
    images, labels = splits["train"]
    files = {f"data_batch_{i + 1}": cifar_batch(images[rows], labels[rows], b"labels",
                                                f"training batch {i + 1} of 5")
             for i, rows in enumerate(np.array_split(np.arange(len(images)), 5))}
    files["test_batch"] = cifar_batch(*splits["test"], b"labels", "testing batch 1 of 1")
    files["batches.meta"] = python2_pickle({b"num_cases_per_batch": -(-len(images) // 5), b"num_vis": 3072,
                                            b"label_names": [n.encode() for n in CLASS_NAMES]})
    if archive:
        return write_tar_gz(folder / "cifar-10-python.tar.gz", "cifar-10-batches-py", files)
    out = folder / "cifar-10-batches-py"
    out.mkdir()
    for name, data in files.items():
        (out / name).write_bytes(data)
    return out


# -- the CIFAR python-version file format -------------------------------------------------------------

class _Python2Pickler(pickle._Pickler):
    """Writes pickles as Python 2's cPickle wrote the official CIFAR batches: strings as byte strings
    (SHORT_BINSTRING / BINSTRING), NumPy's array globals under their numpy.core names."""

    dispatch: ClassVar[dict] = dict(pickle._Pickler.dispatch)

    def save_bytes(self, obj):
        n = len(obj)
        opcode = pickle.SHORT_BINSTRING + bytes([n]) if n < 256 else pickle.BINSTRING + struct.pack("<i", n)
        self.write(opcode + obj)
        self.memoize(obj)

    def save_str(self, obj):
        self.save_bytes(obj.encode("latin-1"))

    def save_global(self, obj, name=None):
        name = name or obj.__qualname__
        module = pickle.whichmodule(obj, name).replace("numpy._core", "numpy.core")
        self.write(pickle.GLOBAL + f"{module}\n{name}\n".encode())
        self.memoize(obj)

    dispatch[bytes] = save_bytes
    dispatch[str] = save_str


def python2_pickle(obj) -> bytes:
    buf = io.BytesIO()
    _Python2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def cifar_batch(images: np.ndarray, labels: np.ndarray, labels_key: bytes,
                batch_label: str = "testing batch 1 of 1") -> bytes:
    """One batch in the official layout: b'data' N x 3072 (all red, then green, then blue), labels a list."""
    data = images.transpose(0, 3, 1, 2).reshape(len(images), 3072)
    return python2_pickle({b"batch_label": batch_label.encode(), labels_key: [int(v) for v in labels],
                           b"data": data, b"filenames": [f"{i}.png".encode() for i in range(len(images))]})


def write_tar_gz(path: Path, top: str, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path
