"""Fixtures for the viz tests: a small CNN on disk, efficientnet_lite0, a small colour image folder."""
from __future__ import annotations

import pytest
from colour_data import write_colour_classes

from vfe.viz.network import load_network
from vfe.viz.small_cnn import SmallCNNConfig, build_small_cnn, save_small_cnn


@pytest.fixture(scope="session")
def small_cnn_dir(tmp_path_factory):
    """An untrained small CNN saved the way `vfe viz small-cnn` saves one (enough to look inside)."""
    folder = tmp_path_factory.mktemp("small-cnn") / "plain"
    save_small_cnn(build_small_cnn(SmallCNNConfig(), seed=0), folder)
    return folder


@pytest.fixture(scope="session")
def efficientnet():
    """efficientnet_lite0 with its packaged ImageNet weights, as `vfe viz` loads it (224 px)."""
    return load_network("efficientnet_lite0")


@pytest.fixture(scope="session")
def colour_folder(tmp_path_factory):
    """80 RGB 32 x 32 PNGs in four classes (crops of four photos); the loader holds a fifth out as test."""
    return write_colour_classes(tmp_path_factory.mktemp("colour"))
