"""One colour data set (tests/colour_data.py) as a PNG folder and as a CIFAR-10 archive loads identically."""
from __future__ import annotations

import numpy as np

from vfe.data import load_dataset, load_train_test


def assert_same(a, b) -> None:
    assert a.images.dtype == b.images.dtype == np.uint8 and a.images.shape[-1] == 3
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert a.class_names == b.class_names


def test_the_folder_and_the_cifar_archive_are_the_same_rgb_images(colour_sets):
    paths, splits, names = colour_sets
    for split, (images, labels) in splits.items():
        folder = load_dataset(paths.folder, split=split)
        np.testing.assert_array_equal(folder.images, images)  # the crops, exactly (PNG is lossless)
        np.testing.assert_array_equal(folder.labels, labels)
        assert folder.class_names == names
        for cifar in (paths.archive, paths.extracted):
            assert_same(folder, load_dataset(cifar, split=split))
    train = splits["train"][0].astype(int)
    assert np.abs(train[..., 0] - train[..., 2]).mean() > 10  # colour photos: the channels differ
    for a, b in zip(load_train_test(paths.folder), load_train_test(paths.archive)):
        assert_same(a, b)
