"""The classic linear bottleneck: PCA of the features to the VFE's latent size, then the linear head.

It answers the first question any VFE gain must face: does a plain linear compression to the same
size do as well? PCA is fitted by scikit-learn and kept as a fixed affine map in torch, so the
head is differentiable end to end and saves as tensors.
"""
from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
from sklearn.decomposition import PCA
from torch import nn

from vfe.heads.base import TRAINING, at_least
from vfe.heads.bottleneck import BottleneckHead


class PCAProjection(nn.Module):
    """x -> (x - mean) @ components.T, the fitted PCA as buffers."""

    def __init__(self, mean: torch.Tensor, components: torch.Tensor):
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("components", components)
        self.code_dim = int(components.shape[0])

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) @ self.components.T


class PCAHead(BottleneckHead):
    """PCA to `latent_dim` components (fewer when the data has fewer samples or features), then
    Dropout -> Dense(classes) trained as the linear head is (Adam, early stopping)."""

    _parameter_constraints: ClassVar[dict] = {**TRAINING, "latent_dim": [at_least(1)]}

    def __init__(self, latent_dim: int = 256, dropout: float = 0.3, epochs: int = 30, batch_size: int = 100,
                 lr: float = 1e-3, patience: int | None = 5, validation_fraction: float = 0.1,
                 random_state: int = 0, device: str = "cpu", verbose: bool = False):
        self.latent_dim = latent_dim
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
        data = X_train if X_aug_train is None else np.concatenate([X_train, X_aug_train])
        n_components = min(self.latent_dim, *data.shape)
        pca = PCA(n_components=n_components, random_state=self.random_state).fit(data)
        projection = PCAProjection(torch.from_numpy(pca.mean_.astype(np.float32)),
                                   torch.from_numpy(pca.components_.astype(np.float32)))
        return projection, {"n_components": n_components,
                            "explained_variance_ratio": float(pca.explained_variance_ratio_.sum())}

    def _empty_bottleneck(self, n_features, tensors):
        return PCAProjection(torch.empty_like(tensors["mean"]), torch.empty_like(tensors["components"]))
