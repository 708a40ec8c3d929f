"""Fixtures for the lab's tests: a Fashion-MNIST subset, and one thread per test (the machine is shared)."""
from __future__ import annotations

import pytest

from vfe.lab.common import LabData, LabSettings, load_data


def _require_fashion_mnist() -> None:
    from vfe.data import available_fashion_mnist

    if available_fashion_mnist() is None:
        pytest.skip("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")


@pytest.fixture(scope="session")
def fashion() -> LabData:
    """400 training and 300 test images of Fashion-MNIST, seeded random subsets."""
    _require_fashion_mnist()
    return load_data(LabSettings(n_train=400, n_test=300, seed=0))


@pytest.fixture
def tiny_settings(tmp_path) -> LabSettings:
    """Settings for end-to-end command runs: a few hundred images, two epochs, no progress bars."""
    _require_fashion_mnist()
    return LabSettings(n_train=200, n_test=100, epochs=2, batch_size=32, lr=3e-3, patience=None, progress=False)
