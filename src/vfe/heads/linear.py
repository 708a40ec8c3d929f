"""The reference baseline: frozen features -> Dropout(0.3) -> Dense(classes) -> softmax, Adam."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from vfe.heads.base import SoftmaxOutput, TorchHead, batched_numpy, fit_classifier


class LinearHead(TorchHead):
    """The classic transfer-learning head. Defaults are the reference's (Adam, batch 100, 30 epochs).

    Unlike the reference it keeps `validation_fraction` of the training data aside and restores
    the best epoch's weights (early stopping); `patience=None` trains all epochs.
    """

    def __init__(self, dropout: float = 0.3, epochs: int = 30, batch_size: int = 100, lr: float = 1e-3,
                 patience: int | None = 5, validation_fraction: float = 0.1, random_state: int = 0,
                 device: str = "cpu", verbose: bool = False):
        self.dropout = dropout
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.patience = patience
        self.validation_fraction = validation_fraction
        self.random_state = random_state
        self.device = device
        self.verbose = verbose

    def _build(self, n_features: int, n_classes: int) -> nn.Module:
        return nn.Sequential(nn.Dropout(self.dropout), nn.Linear(n_features, n_classes))

    def _fit(self, X: np.ndarray, y: np.ndarray) -> None:
        with torch.random.fork_rng():
            torch.manual_seed(self.random_state)
            self.module_ = self._build(X.shape[1], len(self.classes_))
        train_part, val = self._split(X, y)
        history = fit_classifier(self.module_, *train_part, val, self._train_config(desc="linear head"))
        self.history_ = history.to_dict()
        self.module_.cpu()

    def _predict_proba(self, X: np.ndarray) -> np.ndarray:
        self.module_.eval()
        return batched_numpy(lambda x: torch.softmax(self.module_(x), 1), X)

    def probability_module(self) -> nn.Module:
        """Features -> class probabilities, as a torch module (for end-to-end attacks)."""
        return SoftmaxOutput(self.module_)

