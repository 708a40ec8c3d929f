"""Fixtures for the lab's tests: a Fashion-MNIST subset, and a small colour image folder."""
from __future__ import annotations

import pytest
from colour_data import write_colour_classes

from vfe.data import available_fashion_mnist
from vfe.lab.common import LabData, load_data
from vfe.lab.config import LabSettings


def _require_fashion_mnist() -> None:
    if available_fashion_mnist() is None:
        pytest.skip("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")


@pytest.fixture(scope="session")
def fashion() -> LabData:
    """400 training and 300 test images of Fashion-MNIST, the project's balanced subsets."""
    _require_fashion_mnist()
    return load_data(LabSettings(n_train=400, n_test=300, seed=0))


@pytest.fixture
def tiny_settings(tmp_path) -> LabSettings:
    """Settings for end-to-end command runs: a few hundred images, two epochs, no progress bars."""
    _require_fashion_mnist()
    return LabSettings(n_train=200, n_test=100, epochs=2, batch_size=32, lr=3e-3, patience=None, progress=False)


@pytest.fixture(scope="session")
def colour_folder(tmp_path_factory):
    """80 RGB 32 x 32 PNGs in four classes (crops of four photos); the loader holds a fifth out as test."""
    return write_colour_classes(tmp_path_factory.mktemp("colour"))
