"""The lab's data: any source the core data layer reads, as float tensors in [0, 1], split, and the
project's one subset selector (`vfe.data.split.balanced_subset`)."""
from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

from vfe.data import load_train_test as load_full_splits
from vfe.data.split import balanced_index, balanced_subset
from vfe.data.types import ImageSet
from vfe.lab.common import load_data
from vfe.lab.config import LabSettings
from vfe.lab.data import describe, load_images, load_train_test, to_tensor


def _digits_uint8() -> tuple[np.ndarray, np.ndarray]:
    d = load_digits()
    return (d.images * (255 / 16)).round().astype(np.uint8), d.target


def test_an_image_folder_without_a_test_split_holds_a_fifth_out(tmp_path):
    images, labels = _digits_uint8()
    for i in range(60):
        folder = tmp_path / "photos" / f"class{labels[i]}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.kron(images[i], np.ones((2, 2), np.uint8))).convert("RGB").save(folder / f"{i}.png")
    train, test = load_train_test(str(tmp_path / "photos"), seed=0)
    assert len(train) + len(test) == 60 and len(test) == 12
    assert train.images.shape[1:] == (16, 16, 3)
    seen = {im.tobytes() for im in train.images}
    assert not any(im.tobytes() in seen for im in test.images)  # disjoint
    small, _ = load_train_test(str(tmp_path / "photos"), image_size=8)
    assert small.images.shape[1:] == (8, 8, 3)


def test_an_idx_folder_and_its_own_test_split(tmp_path):
    images, labels = _digits_uint8()
    for prefix, sl in (("train", slice(0, 100)), ("t10k", slice(100, 140))):
        for kind, array in (("images-idx3-ubyte", images[sl]), ("labels-idx1-ubyte", labels[sl].astype(np.uint8))):
            header = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
            with gzip.open(tmp_path / f"{prefix}-{kind}.gz", "wb") as f:
                f.write(header + array.tobytes())
    train, test = load_train_test(str(tmp_path), n_train=50, seed=1)
    assert (len(train), len(test)) == (50, 40)
    np.testing.assert_array_equal(test.images[..., 0], images[100:140])


def test_tensors_are_channels_first_in_unit_range():
    images, labels = _digits_uint8()
    data = ImageSet(images, labels, [str(i) for i in range(10)], source="digits")
    x = to_tensor(data)
    assert x.shape == (len(images), 1, 8, 8) and x.dtype == torch.float32
    assert x.max() == 1.0 and x.min() == 0.0
    assert describe(data) == {"source": "digits", "n": len(images), "shape": [1, 8, 8], "classes": 10}
    with pytest.raises(TypeError, match="uint8"):
        to_tensor(images.astype(np.float32))


def test_the_lab_trains_and_tests_on_exactly_the_projects_balanced_subset(colour_folder):
    data = load_data(LabSettings(dataset=str(colour_folder), n_train=30, n_test=10, seed=3))
    train, test = load_full_splits(str(colour_folder), seed=3)
    for part, full, n, tag in ((data.train, train, 30, "train"), (data.test, test, 10, "test")):
        expected = balanced_subset(full, n, 3, tag)
        assert np.array_equal(part.images, expected.images) and np.array_equal(part.labels, expected.labels)
        assert part.source == expected.source
        assert np.array_equal(part.labels, full.labels[balanced_index(full.labels, n, 3)])
    assert np.bincount(data.train.labels).tolist() == [8, 8, 7, 7]  # 30 over 4 classes, the first ones +1
    torch.testing.assert_close(data.x_train, to_tensor(data.train))
    assert data.input_shape == (3, 32, 32)
    other = load_data(LabSettings(dataset=str(colour_folder), n_train=30, n_test=10, seed=4))
    assert not np.array_equal(other.train.images, data.train.images)  # the seed picks the images
    some = load_images(str(colour_folder), "train", n=12, seed=5)  # the whole folder as one split
    assert np.array_equal(some.images, balanced_subset(load_images(str(colour_folder)), 12, 5, "train").images)
    assert np.bincount(some.labels).tolist() == [3, 3, 3, 3]
