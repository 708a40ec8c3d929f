"""Fixtures for the viz tests: one thread per test (the machine is shared), a small CNN on disk."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def small_cnn_dir(tmp_path_factory):
    """An untrained small CNN saved the way `vfe viz small-cnn` saves one (enough to look inside)."""
    from vfe.viz.small_cnn import SmallCNNConfig, build_small_cnn, save_small_cnn

    folder = tmp_path_factory.mktemp("small-cnn") / "plain"
    save_small_cnn(build_small_cnn(SmallCNNConfig(), seed=0), folder)
    return folder


@pytest.fixture(scope="session")
def efficientnet():
    """efficientnet_lite0 with its packaged ImageNet weights, as `vfe viz` loads it (224 px)."""
    from vfe.viz.network import load_network

    return load_network("efficientnet_lite0")
