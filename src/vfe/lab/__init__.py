"""The autoencoder lab: image autoencoders (dense, convolutional, variational, denoising), their five
uses (compression, features, denoising, in-painting, pre-training) and their figures.

    from vfe.lab import LabSettings, run_train
    run_train("conv-vae", LabSettings(n_train=5000))       # = `vfe lab train --model conv-vae --n-train 5000`

Training goes through the core loop (`vfe.training.train`) and checkpoints (`vfe.checkpoint`).
Names are imported on first use, so `vfe --help` does not pay for torch, matplotlib and scikit-learn.
The lab never imports `vfe.viz`; run folders and charts come from `vfe.rundir` and `vfe.plotting`.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "LabData": "common", "load_data": "common", "LabSettings": "config",
    "run_compress": "compression", "run_denoise": "denoising", "run_features": "features",
    "evaluate_reconstruction": "fit", "fit_autoencoder": "fit", "mean_image_mse": "fit",
    "run_inpaint": "inpainting", "autoencoder_loss": "losses",
    "PRESETS": "config", "AEConfig": "config", "preset": "config",
    "ImageAutoencoder": "models", "build_model": "models", "load_model": "models", "save_model": "models",
    "run_pretrain": "pretraining", "run_train": "train", "run_traverse": "traverse",
}

__all__ = [
    "PRESETS",
    "AEConfig",
    "ImageAutoencoder",
    "LabData",
    "LabSettings",
    "autoencoder_loss",
    "build_model",
    "evaluate_reconstruction",
    "fit_autoencoder",
    "load_data",
    "load_model",
    "mean_image_mse",
    "preset",
    "run_compress",
    "run_denoise",
    "run_features",
    "run_inpaint",
    "run_pretrain",
    "run_train",
    "run_traverse",
    "save_model",
]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'vfe.lab' has no attribute {name!r}")
    return getattr(importlib.import_module(f"vfe.lab.{_EXPORTS[name]}"), name)


def __dir__() -> list[str]:
    return __all__
