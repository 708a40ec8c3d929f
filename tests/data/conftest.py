"""Fixtures for the data-layer tests: files in the real formats, written small into tmp_path.

Pixels come from real images (scikit-learn digits, scikit-image photos), so that a loader that
swaps channels, rows or planes gives visibly different arrays.
"""
from __future__ import annotations

import functools
import gzip
import struct
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from colour_data import (  # tests/colour_data.py: pytest puts tests/ on sys.path
    CLASS_NAMES,
    cifar_batch,
    colour_splits,
    python2_pickle,
    write_colour_cifar,
    write_colour_folder,
    write_tar_gz,
)


@pytest.fixture(autouse=True)
def _no_user_data(tmp_path, monkeypatch):
    """Named data sets are looked up in, and downloaded to, the test's own home folder only."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("VFE_DATA", raising=False)
    monkeypatch.delenv("VFE_DATA_MIRROR", raising=False)


def write_idx(path: Path, array: np.ndarray) -> Path:
    """An IDX file as MNIST's are written: magic (0, 0, 0x08 = unsigned byte, ndim), big-endian dims, data."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as f:
        f.write(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())
    return path


@pytest.fixture(scope="session")
def digits_uint8():
    """scikit-learn's digits as 8 x 8 uint8 images (0..255) and labels."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return np.rint(bunch.images * (255 / 16)).astype(np.uint8), bunch.target.astype(np.uint8)


@pytest.fixture
def idx_folder(tmp_path, digits_uint8):
    """A folder of the four MNIST-named gzipped IDX files: 300 digits for train, 100 for test."""
    images, labels = digits_uint8
    folder = tmp_path / "idx"
    folder.mkdir()
    for prefix, rows in (("train", slice(0, 300)), ("t10k", slice(300, 400))):
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images[rows])
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels[rows])
    return folder


@pytest.fixture(scope="session")
def photo_crops():
    """32 x 32 RGB crops of four scikit-image photos, 6 per photo: (images N x 32 x 32 x 3, labels)."""
    import skimage.data
    from skimage.transform import resize

    rng = np.random.default_rng(0)
    images, labels = [], []
    for label, name in enumerate(("chelsea", "coffee", "astronaut", "rocket")):
        photo = resize(getattr(skimage.data, name)(), (128, 128), anti_aliasing=True)
        for _ in range(6):
            y, x = rng.integers(0, 96, size=2)
            images.append(np.rint(photo[y:y + 32, x:x + 32] * 255).astype(np.uint8))
            labels.append(label)
    return np.stack(images), np.asarray(labels)


CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def cifar10_files(images: np.ndarray, labels: np.ndarray) -> dict[str, bytes]:
    """cifar-10-batches-py's files: the first 5/6 of the images over data_batch_1..5, the rest test_batch."""
    n_train = len(images) * 5 // 6
    files = {f"data_batch_{i + 1}": cifar_batch(images[rows], labels[rows], b"labels")
             for i, rows in enumerate(np.array_split(np.arange(n_train), 5))}
    files["test_batch"] = cifar_batch(images[n_train:], labels[n_train:], b"labels")
    files["batches.meta"] = python2_pickle({b"num_cases_per_batch": 10000, b"num_vis": 3072,
                                            b"label_names": [n.encode() for n in CIFAR10_NAMES]})
    files["readme.html"] = b"<html>CIFAR-10</html>"
    return files


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # keep the test output clean
        pass


@pytest.fixture
def http_server(tmp_path):
    """(folder it serves, base URL): a real HTTP server on 127.0.0.1, in a thread."""
    root = tmp_path / "www"
    root.mkdir()
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()
    thread.join()


def tree_state(root: Path) -> dict:
    """Every path under root with its type, size and modification time: equal before and after = untouched."""
    state = {".": root.stat().st_mtime_ns}
    for p in sorted(root.rglob("*")):
        st = p.stat()
        state[str(p.relative_to(root))] = (p.is_dir(), st.st_size, st.st_mtime_ns)
    return state


@pytest.fixture
def colour_sets(tmp_path):
    """The colour data set of tests/colour_data.py as a PNG folder, a CIFAR-10 archive and its extracted
    folder: (namespace of the three paths, {"train": (images, labels), "test": ...}, class names)."""
    from types import SimpleNamespace

    paths = SimpleNamespace(folder=write_colour_folder(tmp_path / "photos"),
                            archive=write_colour_cifar(tmp_path / "archive"),
                            extracted=write_colour_cifar(tmp_path / "extracted", archive=False))
    return paths, colour_splits(), list(CLASS_NAMES)


@pytest.fixture(scope="session")
def formats():
    """The file writers above (a fixture, since conftest modules are not meant to be imported)."""
    from types import SimpleNamespace

    return SimpleNamespace(write_idx=write_idx, python2_pickle=python2_pickle, cifar_batch=cifar_batch,
                           cifar10_files=cifar10_files, write_tar_gz=write_tar_gz, tree_state=tree_state,
                           cifar10_names=CIFAR10_NAMES)
