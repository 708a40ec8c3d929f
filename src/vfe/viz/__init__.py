"""Looking inside CNNs: feature maps of named layers, inputs that maximise a channel, and a small CNN
trained from scratch as the no-transfer baseline.

    from vfe.viz import run_activations, run_maximize
    run_activations("efficientnet_lite0", image="chelsea", layers=["blocks.1", "blocks.3"])

Names are imported on first use, so `vfe --help` does not pay for torch, matplotlib and timm.
Imports go one way: viz uses `vfe.lab` (its saved autoencoders, its data and training settings for
the small CNN); the lab never uses viz. Run folders and charts are `vfe.rundir` and `vfe.plotting`.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "activation_maps": "activations", "run_activations": "activations",
    "AscentConfig": "config", "maximize_channels": "maximize", "run_maximize": "maximize",
    "Network": "network", "load_network": "network", "load_image": "images",
    "SmallCNN": "small_cnn", "SmallCNNConfig": "small_cnn", "build_small_cnn": "small_cnn",
    "fit_small_cnn": "small_cnn", "load_small_cnn": "small_cnn", "run_small_cnn": "small_cnn",
}

__all__ = ["AscentConfig", "Network", "SmallCNN", "SmallCNNConfig", "activation_maps",
           "build_small_cnn", "fit_small_cnn", "load_image", "load_network", "load_small_cnn",
           "maximize_channels", "run_activations", "run_maximize", "run_small_cnn"]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'vfe.viz' has no attribute {name!r}")
    return getattr(importlib.import_module(f"vfe.viz.{_EXPORTS[name]}"), name)


def __dir__() -> list[str]:
    return __all__
