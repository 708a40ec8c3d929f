"""Training an image autoencoder with the core loop (`vfe.training.train`) and scoring it.

Nothing here re-implements training: this module only prepares the tensors (a held-out split,
fixed corrupted validation inputs for denoisers) and wires in best-only checkpoints.
"""
from __future__ import annotations

from pathlib import Path

import torch

from vfe.checkpoint import Checkpointer
from vfe.data.split import holdout_index
from vfe.lab.losses import autoencoder_loss, corrupt, psnr, validation_pair
from vfe.lab.models import ImageAutoencoder
from vfe.training import History, TrainConfig, train


def fit_autoencoder(model: ImageAutoencoder, images: torch.Tensor, config: TrainConfig | None = None,
                    val_fraction: float = 0.1, checkpoint_dir: str | Path | None = None,
                    keep: int = 2) -> History:
    """Train `model` on N x C x H x W images in [0, 1]; early-stop on the held-out loss, best weights kept.

    With `checkpoint_dir`, the best `keep` checkpoints and the last one are written there as
    training goes, and a previous run in that folder is resumed from its last checkpoint.
    """
    config = config or TrainConfig(epochs=10, patience=3)
    _check_images(model, images)
    train_idx, val_idx = holdout_index(len(images), val_fraction, config.seed)
    val = validation_pair(images[val_idx], model.config, config.seed + 1) if val_idx is not None else None
    checkpointer = Checkpointer(checkpoint_dir, keep=keep) if checkpoint_dir is not None else None
    with torch.random.fork_rng():
        torch.manual_seed(config.seed)  # the corruption noise and the VAE's samples
        return train(model, autoencoder_loss, (images[train_idx],), val, config, checkpointer)


def _check_images(model: ImageAutoencoder, images: torch.Tensor) -> None:
    if images.dtype != torch.float32 or images.ndim != 4:
        raise ValueError(f"images must be a float32 N x C x H x W tensor, got {images.dtype} {tuple(images.shape)}")
    if tuple(images.shape[1:]) != tuple(model.config.input_shape):
        raise ValueError(f"images are {tuple(images.shape[1:])} but the model expects "
                         f"{tuple(model.config.input_shape)} (C, H, W); build it with input_shape=...")


@torch.no_grad()
def evaluate_reconstruction(model: ImageAutoencoder, images: torch.Tensor, seed: int = 0) -> dict[str, float]:
    """Test-set MSE per pixel and PSNR of the model's output against the clean images.

    A denoiser / in-painter is scored on corrupted inputs (fixed by `seed`), as it is used.
    """
    inputs = corrupt(images, model.config, torch.Generator().manual_seed(seed))
    recon = model.reconstruct(inputs)
    return {"mse": float((recon - images).pow(2).mean()), "psnr": float(psnr(recon, images).mean())}


def mean_image_mse(train_images: torch.Tensor, test_images: torch.Tensor) -> float:
    """The trivial baseline: MSE per pixel of predicting the training set's mean image for every test image."""
    return float((test_images - train_images.mean(0, keepdim=True)).pow(2).mean())
