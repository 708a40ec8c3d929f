"""ImageSet (src/vfe/data/types.py) and from_arrays (src/vfe/data/arrays.py)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from vfe.data import from_arrays
from vfe.features.cache import content_hash


def test_from_arrays_accepts_gray_and_integer_images_and_names_classes(digits_uint8):
    images, labels = digits_uint8
    data = from_arrays(images[:50].astype(np.int64), labels[:50])
    assert data.images.shape == (50, 8, 8, 1) and data.images.dtype == np.uint8
    np.testing.assert_array_equal(data.images[..., 0], images[:50])
    assert data.class_names == [str(i) for i in range(labels[:50].max() + 1)]
    tensors = from_arrays(torch.from_numpy(images[:5]), torch.from_numpy(labels[:5]),
                          class_names=list("abcdefghij"))
    assert tensors.class_names[0] == "a" and tensors.source == "arrays"


@pytest.mark.parametrize("images, labels, error, message", [
    (np.zeros((2, 8, 8), np.float32), [0, 1], TypeError, r"scale floats yourself, e.g. \(x \* 255\)"),
    (np.full((2, 8, 8), 300), [0, 1], ValueError, "must lie in 0..255, got 300..300"),
    (np.zeros((2, 3, 8, 8), np.uint8), [0, 1], ValueError, r"channels-first .*\.transpose\(0, 2, 3, 1\)"),
    (np.zeros((2, 8, 8), np.uint8), [0.0, 1.0], TypeError, "labels must be a 1-D array of integers"),
    (np.zeros((2, 8, 8), np.uint8), [0, 1, 1], ValueError, "2 images but 3 labels"),
])
def test_from_arrays_refuses_what_it_would_have_to_guess(images, labels, error, message):
    with pytest.raises(error, match=message):
        from_arrays(images, labels)


def test_class_names_must_cover_the_labels(digits_uint8):
    images, labels = digits_uint8
    with pytest.raises(ValueError, match="labels span 0..9 but there are 3 class names"):
        from_arrays(images[:100], labels[:100], class_names=["a", "b", "c"])


def test_a_subset_never_inherits_its_parents_memoised_content_hash(digits_uint8):
    images, labels = digits_uint8
    full = from_arrays(images, labels)
    parent_hash = content_hash(full)  # memoised in full.meta
    index = np.arange(0, 200, 2)
    part = full.subset(index, tag="even rows")
    assert content_hash(part) != parent_hash
    assert content_hash(part) == content_hash(from_arrays(images[index], labels[index]))
    assert part.source == "arrays[even rows]"
