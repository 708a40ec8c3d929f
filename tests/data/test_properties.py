"""Damaged IDX and CIFAR files: truncated at every offset, or one byte flipped at random.

The promise: a damaged file loads as exactly what was written, or raises a VfeError (the CLI prints
it as one line), never another exception. What can be detected depends on the format:

* A raw IDX file has no checksum. Truncation always shows (the header states the data size), and so
  does any flip in the 16 header bytes (magic number or a dimension). A flip in the pixel bytes
  cannot be detected: it loads as that one pixel changed, and the test checks that nothing else does.
* A gzipped IDX file carries a CRC-32 of its content, so every flip is an error, or harmless (the
  gzip header's time stamp and flags that do not change the content).
* A CIFAR batch is a pickle without a checksum. Truncation always shows (no STOP opcode). A flip in
  the pixel bytes changes that pixel and a flip in a label byte may change that label to another
  valid class, both undetectably; the test checks they change nothing else. Every other flip (keys,
  opcodes, the array's shape, dtype and memory order, the pickled NumPy globals) must be an error or
  leave the result unchanged (unused fields such as batch_label and filenames).
"""
from __future__ import annotations

import gzip
import pickle

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vfe.data import load_dataset
from vfe.errors import VfeError

PROPERTY = settings(max_examples=50, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


def load(path, **kwargs):
    """The loaded set, or None for a VfeError; any other exception fails the test."""
    try:
        return load_dataset(path, **kwargs)
    except VfeError:
        return None


def flipped(data: bytes, offset: int, xor: int) -> bytes:
    return data[:offset] + bytes([data[offset] ^ xor]) + data[offset + 1:]


# -- IDX ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def idx_files(digits_uint8, tmp_path_factory, formats):
    """(folder, raw bytes of its train images file, images, labels): 5 digits, train split only."""
    images, labels = digits_uint8[0][:5], digits_uint8[1][:5]
    folder = tmp_path_factory.mktemp("idx")
    raw = formats.write_idx(folder / "train-images-idx3-ubyte", images).read_bytes()
    formats.write_idx(folder / "train-labels-idx1-ubyte", labels)
    return folder, raw, images, labels


@pytest.mark.parametrize("gzipped", [False, True], ids=["raw", "gzip"])
def test_idx_truncated_at_every_offset_is_an_error(idx_files, tmp_path, gzipped):
    folder, raw, images, _ = idx_files
    data = gzip.compress(raw, mtime=0) if gzipped else raw
    target = tmp_path / ("train-images-idx3-ubyte" + ".gz" * gzipped)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes((folder / "train-labels-idx1-ubyte").read_bytes())
    target.write_bytes(data)
    np.testing.assert_array_equal(load(tmp_path).images[..., 0], images)  # whole: exact
    for cut in range(len(data)):
        target.write_bytes(data[:cut])
        assert load(tmp_path) is None, f"cut at {cut} of {len(data)} bytes was not detected"


@PROPERTY
@given(offset=st.integers(0, 16 + 5 * 64 - 1), xor=st.integers(1, 255))
def test_idx_byte_flip_in_the_header_is_an_error_in_the_pixels_changes_that_pixel(idx_files, offset, xor):
    folder, raw, images, labels = idx_files
    (folder / "train-images-idx3-ubyte").write_bytes(flipped(raw, offset, xor))
    try:
        got = load(folder)
    finally:
        (folder / "train-images-idx3-ubyte").write_bytes(raw)
    if offset < 16:
        assert got is None, f"flip at header byte {offset} was not detected"
        return
    expected = images.copy().reshape(-1)
    expected[offset - 16] ^= xor  # no checksum: the flipped pixel is all that may change
    np.testing.assert_array_equal(got.images[..., 0], expected.reshape(images.shape))
    np.testing.assert_array_equal(got.labels, labels)


@PROPERTY
@given(data=st.data())
def test_gzipped_idx_byte_flip_is_an_error_or_harmless(idx_files, tmp_path, data):
    folder, raw, images, labels = idx_files
    packed = gzip.compress(raw, mtime=0)
    offset, xor = data.draw(st.integers(0, len(packed) - 1)), data.draw(st.integers(1, 255))
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(flipped(packed, offset, xor))
    (tmp_path / "train-labels-idx1-ubyte").write_bytes((folder / "train-labels-idx1-ubyte").read_bytes())
    got = load(tmp_path)
    if got is not None:  # CRC-32 checked: only a change outside the content (e.g. the time stamp) loads
        np.testing.assert_array_equal(got.images[..., 0], images)
        np.testing.assert_array_equal(got.labels, labels)


# -- CIFAR -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cifar_files(photo_crops, tmp_path_factory, formats):
    """(folder with batches.meta and test_batch, test_batch bytes, images, labels): 2 colour images."""
    images, labels = photo_crops[0][[0, 20]], photo_crops[1][[0, 20]]  # two classes (labels 0 and 3)
    folder = tmp_path_factory.mktemp("cifar") / "cifar-10-batches-py"
    folder.mkdir()
    files = formats.cifar10_files(photo_crops[0], photo_crops[1])
    (folder / "batches.meta").write_bytes(files["batches.meta"])
    blob = formats.cifar_batch(images, labels, b"labels")
    (folder / "test_batch").write_bytes(blob)
    return folder, blob, images, labels


def regions(blob: bytes, images: np.ndarray) -> tuple[range, range]:
    """Byte ranges of the pixel payload and of the pickled labels list inside a batch."""
    payload = images.transpose(0, 3, 1, 2).tobytes()
    start = blob.index(payload)
    labels_from = blob.index(b"U\x06labels") + 8
    return range(start, start + len(payload)), range(labels_from, blob.index(b"U\x04data", labels_from))


def test_cifar_batch_and_meta_truncated_at_every_offset_are_errors(cifar_files, tmp_path):
    """Every offset, except that inside the 6144 pixel bytes every 64th stands for the rest (a cut there is
    one case: the byte-string opcode asks for more bytes than are left)."""
    folder, blob, images, _ = cifar_files
    copy = tmp_path / "cifar-10-batches-py"
    copy.mkdir()
    meta = (folder / "batches.meta").read_bytes()
    pixels, _ = regions(blob, images)
    for name, data, other, other_data in (("test_batch", blob, "batches.meta", meta),
                                          ("batches.meta", meta, "test_batch", blob)):
        (copy / other).write_bytes(other_data)
        (copy / name).write_bytes(data)
        np.testing.assert_array_equal(load(copy, split="test").images, images)
        cuts = [c for c in range(len(data)) if name != "test_batch" or c not in pixels or c % 64 == 0]
        for cut in cuts:
            (copy / name).write_bytes(data[:cut])
            assert load(copy, split="test") is None, f"{name} cut at {cut} of {len(data)} bytes: not detected"
        (copy / name).write_bytes(data)


@PROPERTY
@given(data=st.data())
def test_cifar_byte_flip_is_an_error_or_changes_only_one_pixel_or_label(cifar_files, data):
    folder, blob, images, labels = cifar_files
    pixels, label_bytes = regions(blob, images)
    # half the draws in the structure (everything but the pixels), which is where errors must show
    structure = st.integers(0, len(blob) - 1).filter(lambda i: i not in pixels)
    offset = data.draw(st.one_of(structure, st.integers(0, len(blob) - 1)))
    xor = data.draw(st.integers(1, 255))
    (folder / "test_batch").write_bytes(flipped(blob, offset, xor))
    try:
        got = load(folder, split="test")
    finally:
        (folder / "test_batch").write_bytes(blob)
    if got is None:
        return
    assert got.images.shape == images.shape and got.class_names == load(folder, split="test").class_names
    if offset in pixels:
        planes = images.transpose(0, 3, 1, 2).copy().reshape(-1)
        planes[offset - pixels.start] ^= xor
        np.testing.assert_array_equal(got.images, planes.reshape(2, 3, 32, 32).transpose(0, 2, 3, 1))
        np.testing.assert_array_equal(got.labels, labels)
    elif offset in label_bytes:
        np.testing.assert_array_equal(got.images, images)
        assert (got.labels != labels).sum() <= 1 and got.labels.max() < 10
    else:
        np.testing.assert_array_equal(got.images, images)
        np.testing.assert_array_equal(got.labels, labels)


def test_the_structure_regions_are_where_the_test_thinks(cifar_files):
    """Guards the property above: the ranges it treats as pixels and labels are exactly those."""
    _, blob, images, labels = cifar_files
    pixels, label_bytes = regions(blob, images)
    assert len(pixels) == 2 * 3072
    assert pickle.loads(blob, encoding="bytes")[b"labels"] == labels.tolist()
    assert blob[label_bytes.start - 8:label_bytes.start] == b"U\x06labels"
