"""Deterministic feature autoencoders with the VFE's architecture, classifier on their code.

    encoder  Dense(encoder_units, relu) -> BatchNorm -> Dense(latent_dim)            (the code)
    decoder  Dense(decoder_units, relu) -> BatchNorm -> Dense(n_features, relu)      (the VFE's)
    loss     MSE(decoder(encoder(x_in)), x)

No sampling and no KL: if the VFE beats this head, the variational part matters; if not, the
bottleneck alone explains the gain. Two ways to make it *denoising* (the `dae` presets):
  * `noise_std > 0`: x_in = x + noise_std * (per-feature std of x) * N(0, 1) during training;
  * `fit(X, y, X_aug=...)`: x_in is the feature vector of the same image under a random corruption
    and the target its clean features, so the code learns to ignore what corruptions change.
"""
from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
from sklearn.utils.validation import check_is_fitted, validate_data
from torch import nn

from vfe.heads.base import NON_NEGATIVE, POSITIVE, PRECISIONS, TRAINING, at_least, batched_numpy
from vfe.heads.bottleneck import BottleneckHead
from vfe.heads.vfe import feature_decoder
from vfe.training import TrainConfig, train


class FeatureAutoencoder(nn.Module):
    def __init__(self, n_features: int, encoder_units: int, latent_dim: int, decoder_units: int):
        super().__init__()
        self.code_dim = latent_dim
        self.encoder = nn.Sequential(nn.Linear(n_features, encoder_units), nn.ReLU(), nn.BatchNorm1d(encoder_units),
                                     nn.Linear(encoder_units, latent_dim))
        self.decoder = feature_decoder(latent_dim, decoder_units, n_features)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


def reconstruction_loss(noise_scale: torch.Tensor | None):
    """MSE of reconstructing the target from the input; Gaussian input noise (per-feature scale) in training."""
    def loss_fn(autoencoder: nn.Module, batch):
        x_in, target = batch
        if autoencoder.training and noise_scale is not None:
            x_in = x_in + noise_scale.to(x_in.device) * torch.randn_like(x_in)
        return (autoencoder(x_in) - target).pow(2).mean(), {}
    return loss_fn


class AutoencoderHead(BottleneckHead):
    """Feature autoencoder (stage 1) + Dropout -> Dense on its frozen code (stage 2).

    Stage-1 settings mirror the VFE's (`ae_epochs` is a cap; early stopping on the held-out
    reconstruction error with `ae_patience`, best weights restored; bf16 where native, `ae_precision`).
    """

    _parameter_constraints: ClassVar[dict] = {
        **TRAINING, "encoder_units": [at_least(1)], "latent_dim": [at_least(1)], "decoder_units": [at_least(1)],
        "noise_std": [NON_NEGATIVE], "ae_epochs": [at_least(1)], "ae_batch_size": [at_least(1)], "ae_lr": [POSITIVE],
        "ae_patience": [at_least(1), None], "ae_precision": [PRECISIONS]}

    def __init__(self, encoder_units: int = 256, latent_dim: int = 256, decoder_units: int = 512,
                 noise_std: float = 0.0, ae_epochs: int = 2000, ae_batch_size: int = 128, ae_lr: float = 1e-3,
                 ae_patience: int | None = 20, ae_precision: str = "auto", dropout: float = 0.3,
                 epochs: int = 50, batch_size: int = 128, lr: float = 1e-3, patience: int | None = 5,
                 validation_fraction: float = 0.1, random_state: int = 0, device: str = "cpu", verbose: bool = False):
        self.encoder_units = encoder_units
        self.latent_dim = latent_dim
        self.decoder_units = decoder_units
        self.noise_std = noise_std
        self.ae_epochs = ae_epochs
        self.ae_batch_size = ae_batch_size
        self.ae_lr = ae_lr
        self.ae_patience = ae_patience
        self.ae_precision = ae_precision
        self.dropout = dropout
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.patience = patience
        self.validation_fraction = validation_fraction
        self.random_state = random_state
        self.device = device
        self.verbose = verbose

    def _fit_bottleneck(self, X_train, X_val, X_aug_train):
        if self.noise_std < 0:
            raise ValueError(f"noise_std must be >= 0, got {self.noise_std}")
        autoencoder = self._empty_bottleneck(X_train.shape[1], {})
        inputs, targets = X_train, X_train
        if X_aug_train is not None:  # clean -> clean and corrupted -> clean pairs
            inputs, targets = np.concatenate([X_train, X_aug_train]), np.concatenate([X_train, X_train])
        noise_scale = torch.from_numpy(self.noise_std * X_train.std(0)) if self.noise_std > 0 else None
        config = TrainConfig(epochs=self.ae_epochs, batch_size=self.ae_batch_size, lr=self.ae_lr,
                             patience=self.ae_patience, precision=self.ae_precision, seed=self.random_state,
                             device=self.device, progress=self.verbose, desc="feature autoencoder")
        val = None if X_val is None else (torch.from_numpy(X_val), torch.from_numpy(X_val))
        history = train(autoencoder, reconstruction_loss(noise_scale),
                        (torch.from_numpy(inputs), torch.from_numpy(targets)), val, config)
        return autoencoder, history.to_dict()

    def _empty_bottleneck(self, n_features, tensors):
        return FeatureAutoencoder(n_features, self.encoder_units, self.latent_dim, self.decoder_units)

    def reconstruction_error(self, X) -> np.ndarray:
        """Per-sample MSE between features and their reconstruction (an out-of-distribution score)."""
        check_is_fitted(self, "classes_")
        X = validate_data(self, X, dtype=np.float32, reset=False)
        self.bottleneck_.eval()
        return batched_numpy(lambda x: (self.bottleneck_(x) - x).pow(2).mean(1), X)
