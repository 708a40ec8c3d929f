"""scikit-learn's 8 x 8 handwritten digits: a data set that is always there, for quick runs and tests."""
from __future__ import annotations

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from vfe.data.errors import MissingSplitError
from vfe.data.types import ImageSet

TEST_FRACTION = 0.2
SPLIT_SEED = 0


def load_digits_split(split: str = "train") -> ImageSet:
    """1437 training / 360 test images (a stratified 80/20 split, fixed seed), gray levels 0..16 -> 0..255."""

    if split not in ("train", "test"):
        raise MissingSplitError(f"split {split!r}: digits has the splits 'train' and 'test'")
    bunch = load_digits()
    images, labels = bunch.images, bunch.target
    images = np.rint(images * (255.0 / 16.0)).astype(np.uint8)
    index = np.arange(len(labels))
    train, test = train_test_split(index, test_size=TEST_FRACTION, stratify=labels, random_state=SPLIT_SEED)
    chosen = np.sort(train if split == "train" else test)
    rule = f"stratified {1 - TEST_FRACTION:.0%}/{TEST_FRACTION:.0%}, seed {SPLIT_SEED}"
    return ImageSet(images[chosen], labels[chosen], [str(d) for d in range(10)], source=f"digits:{split}",
                    meta={"format": "sklearn", "dataset": "digits", "split": split, "split_rule": rule})
