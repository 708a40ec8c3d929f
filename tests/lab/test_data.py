"""The lab's data: any source the core data layer reads, as float tensors in [0, 1], split and subset."""
from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

from vfe.lab.data import describe, load_train_test, subset, to_tensor


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


def test_tensors_are_channels_first_in_unit_range_and_subsets_repeat():
    images, labels = _digits_uint8()
    from vfe.data.types import ImageSet

    data = ImageSet(images, labels, [str(i) for i in range(10)], source="digits")
    x = to_tensor(data)
    assert x.shape == (len(images), 1, 8, 8) and x.dtype == torch.float32
    assert x.max() == 1.0 and x.min() == 0.0
    a, b = subset(data, 100, seed=3), subset(data, 100, seed=3)
    assert np.array_equal(a.images, b.images) and "random100-seed3" in a.source
    assert subset(data, None, 0) is data
    assert describe(a) == {"source": a.source, "n": 100, "shape": [1, 8, 8], "classes": 10}
    with pytest.raises(TypeError, match="uint8"):
        to_tensor(images.astype(np.float32))
