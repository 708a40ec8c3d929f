"""The autoencoder lab: image autoencoders (dense, convolutional, variational, denoising), their five
uses (compression, features, denoising, in-painting, pre-training) and their figures.

    from vfe.lab import LabSettings, run_train, build_model, fit_autoencoder
    run_train("conv-vae", LabSettings(n_train=5000))       # = `vfe lab train --model conv-vae --n-train 5000`

Training goes through the core loop (`vfe.training.train`) and checkpoints (`vfe.checkpoint`).
"""
from vfe.lab.common import LabData, LabSettings, load_data
from vfe.lab.compression import run_compress
from vfe.lab.denoising import run_denoise
from vfe.lab.features import run_features
from vfe.lab.fit import evaluate_reconstruction, fit_autoencoder, mean_image_mse
from vfe.lab.inpainting import run_inpaint
from vfe.lab.losses import autoencoder_loss
from vfe.lab.models import PRESETS, AEConfig, ImageAutoencoder, build_model, load_model, preset, save_model
from vfe.lab.pretraining import run_pretrain
from vfe.lab.train import run_train
from vfe.lab.traverse import run_traverse

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
