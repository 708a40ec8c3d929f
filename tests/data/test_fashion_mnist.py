"""The real Fashion-MNIST, as Debian's dataset-fashion-mnist installs it (skipped where it is absent).

Debian's .gz files differ from the published ones only in their gzip headers (strip-nondeterminism
drops the stored file name and resets the time stamp); the deflate streams are the published
bytes. Putting the original header back must reproduce the MD5 sums of the Fashion-MNIST README
and the SHA-256 sums vfe verifies downloads against.
"""
from __future__ import annotations

import hashlib
import struct
from pathlib import Path

import numpy as np
import pytest

from vfe.data import available_fashion_mnist, load_dataset
from vfe.data.idx import FASHION_MNIST

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
needs_debian_files = pytest.mark.skipif(
    not DEBIAN_DIR.is_dir(), reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")

# from the Fashion-MNIST README (github.com/zalandoresearch/fashion-mnist, "Get the Data")
PUBLISHED_MD5 = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
# gzip time stamps of the published files (2017-08-31), found by matching the MD5 sums above
ORIGINAL_MTIME = {"train": 1504176606, "t10k": 1504176627}


def published_bytes(debian_gz: bytes, name: str) -> bytes:
    """The published .gz: Debian's deflate stream behind the original header (FNAME flag, name, mtime)."""
    assert debian_gz[:4] == b"\x1f\x8b\x08\x00", "expected a gzip header without a stored file name"
    mtime = ORIGINAL_MTIME[name.split("-")[0]]
    stored_name = name.removesuffix(".gz").encode() + b"\0"
    return b"\x1f\x8b\x08\x08" + struct.pack("<I", mtime) + debian_gz[8:10] + stored_name + debian_gz[10:]


@needs_debian_files
@pytest.mark.parametrize("name", sorted(PUBLISHED_MD5))
def test_debian_files_are_the_published_files_and_match_the_download_sums(name):
    original = published_bytes((DEBIAN_DIR / name).read_bytes(), name)
    assert hashlib.md5(original).hexdigest() == PUBLISHED_MD5[name]
    assert hashlib.sha256(original).hexdigest() == FASHION_MNIST.remote.sha256[name]


@needs_debian_files
def test_fashion_mnist_loads_with_its_published_shape_and_balance():
    assert available_fashion_mnist() == DEBIAN_DIR
    train, test = load_dataset("fashion-mnist"), load_dataset("fashion-mnist", split="test")
    assert train.images.shape == (60000, 28, 28, 1) and test.images.shape == (10000, 28, 28, 1)
    assert train.images.dtype == np.uint8 and train.images.max() == 255
    assert np.bincount(train.labels).tolist() == [6000] * 10  # the README: 6,000 per class
    assert np.bincount(test.labels).tolist() == [1000] * 10
    assert train.class_names[0] == "T-shirt/top" and train.class_names[9] == "Ankle boot"
    assert train.source == "fashion-mnist:train" and test.source == "fashion-mnist:test"
    # the same set whether found in the system folder or named through data_dir
    same = load_dataset("fashion-mnist", split="test", data_dir=DEBIAN_DIR)
    np.testing.assert_array_equal(same.images, test.images)
