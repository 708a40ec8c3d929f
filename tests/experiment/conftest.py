"""Fixtures of the tests that compute corrupted test sets through a run's feature sources."""
from __future__ import annotations

import pytest
from colour_data import colour_splits

from vfe.backbones import create_backbone
from vfe.data import load_train_test
from vfe.data.split import balanced_subset
from vfe.data.types import ImageSet


@pytest.fixture(scope="module")
def lite0():
    return create_backbone("efficientnet_lite0", image_size=32, device="cpu")  # the default fast path (bf16, traced)


@pytest.fixture(scope="module", params=["digits", "colour"])
def test_set(request):
    """A small test set, grayscale digits or colour photo crops."""
    if request.param == "digits":
        return balanced_subset(load_train_test("digits")[1], 60, 0, "test")
    images, labels = colour_splits(n_train=1, n_test=6)["test"]
    return ImageSet(images, labels, [str(c) for c in sorted(set(labels.tolist()))], "colour crops")
