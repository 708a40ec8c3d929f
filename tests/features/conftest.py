"""A small real image set and a small real backbone for the feature-cache tests."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from vfe.backbones import create_backbone
from vfe.data.types import ImageSet


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: on a 2-core machine shared with other jobs, OpenMP teams of 2 wait on
    each other at every barrier (measured 5-20x slower for these small batches)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def digits_set(n: int = 40) -> ImageSet:
    """The first n scikit-learn digits as 8x8 uint8 grayscale images."""
    digits = load_digits()
    images = (digits.images[:n] * 255 / 16).round().astype(np.uint8)
    return ImageSet(images, digits.target[:n], [str(i) for i in range(10)], source="digits")


@pytest.fixture
def digits() -> ImageSet:
    return digits_set()


@pytest.fixture(scope="session")
def backbone():
    """Packaged EfficientNet-Lite0 at 32 px, eager fp32: real features, milliseconds per image."""
    return create_backbone("efficientnet_lite0", image_size=32, device="cpu", jit=False, precision="fp32")


class CountingBackbone:
    """A backbone that counts the images it is asked to extract (to prove what the cache skipped)."""

    def __init__(self, backbone):
        self.backbone, self.images = backbone, 0
        self.name = backbone.name

    def fingerprint(self) -> str:
        return self.backbone.fingerprint()

    def iter_features(self, images):
        for batch in self.backbone.iter_features(images):
            self.images += len(batch)
            yield batch


@pytest.fixture
def counting(backbone) -> CountingBackbone:
    return CountingBackbone(backbone)
