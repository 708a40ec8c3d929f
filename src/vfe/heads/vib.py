"""The supervised Deep Variational Information Bottleneck (Alemi et al. 2017) on backbone features.

Unlike the VFE, the Gaussian code is learned *for the labels*: encoder and classifier train jointly,

    loss = CE(classifier(z), y) + beta * KL(q(z|x) || N(0, I)),   z = mu + sigma * eps  (one draw)

with the KL summed over latent dimensions and averaged over the batch, as in the paper (a
beta of 1e-3 was its sweet spot on MNIST). Predictions average the class probabilities of
`n_samples` draws (12 in the paper). The encoder has the VFE's architecture for a fair comparison.
"""
from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
from sklearn.utils._param_validation import StrOptions
from sklearn.utils.validation import check_is_fitted, validate_data
from torch import nn

from vfe.heads.base import NON_NEGATIVE, TRAINING, FeatureTransformer, TorchHead, at_least, batched_numpy
from vfe.heads.vfe import (
    PREDICT_MODES,
    FeatureEncoder,
    LatentClassifier,
    LatentProbabilities,
    latent_predict_proba,
)
from vfe.training import train
from vfe.vae import gaussian_kl, reparameterise


def vib_loss(beta: float):
    """Cross-entropy on one sampled z + beta * KL; reports accuracy and the KL (nats per example)."""
    def loss_fn(classifier: LatentClassifier, batch):
        x, y = batch
        mu, log_var = classifier.encoder(x)
        logits = classifier.head(reparameterise(mu, log_var))
        ce = nn.functional.cross_entropy(logits, y)
        kl = gaussian_kl(mu, log_var).sum(1).mean()
        return ce + beta * kl, {"ce": float(ce.detach()), "kl": float(kl.detach()),
                                "acc": float((logits.detach().argmax(1) == y).float().mean())}
    return loss_fn


class VIBHead(FeatureTransformer, TorchHead):
    """Features -> Dense(encoder_units, relu) -> BatchNorm -> Gaussian z -> Dropout -> Dense(classes)."""

    _parameter_constraints: ClassVar[dict] = {
        **TRAINING, "encoder_units": [at_least(1)], "latent_dim": [at_least(1)], "beta": [NON_NEGATIVE],
        "predict_mode": [StrOptions(set(PREDICT_MODES))], "n_samples": [at_least(1)]}

    def __init__(self, encoder_units: int = 256, latent_dim: int = 256, beta: float = 1e-3,
                 dropout: float = 0.0, epochs: int = 100, batch_size: int = 128, lr: float = 1e-3,
                 patience: int | None = 10, predict_mode: str = "average", n_samples: int = 12,
                 validation_fraction: float = 0.1, random_state: int = 0, device: str = "cpu",
                 verbose: bool = False):
        self.encoder_units = encoder_units
        self.latent_dim = latent_dim
        self.beta = beta
        self.dropout = dropout
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.patience = patience
        self.predict_mode = predict_mode
        self.n_samples = n_samples
        self.validation_fraction = validation_fraction
        self.random_state = random_state
        self.device = device
        self.verbose = verbose

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.non_deterministic = self.predict_mode != "mean"  # sampled z: a row's draw depends on its position
        return tags

    def _build(self, n_features: int, n_classes: int) -> nn.Module:
        if self.predict_mode not in PREDICT_MODES:
            raise ValueError(f"predict_mode must be one of {PREDICT_MODES}, got {self.predict_mode!r}")
        if self.beta < 0:
            raise ValueError(f"beta must be >= 0, got {self.beta}")
        encoder = FeatureEncoder(n_features, self.encoder_units, self.latent_dim)
        return LatentClassifier(encoder, n_classes, self.dropout, "sample", freeze_encoder=False)

    def _fit(self, X: np.ndarray, y: np.ndarray, X_aug: np.ndarray | None = None) -> None:
        with torch.random.fork_rng():
            torch.manual_seed(self.random_state)
            self.module_ = self._build(X.shape[1], len(self.classes_))
            (X_train, y_train), val = self._split(X, y, X_aug)
            history = train(self.module_, vib_loss(self.beta), (torch.from_numpy(X_train), torch.from_numpy(y_train)),
                            None if val is None else (torch.from_numpy(val[0]), torch.from_numpy(val[1])),
                            self._train_config(desc="VIB"))
        self.module_.cpu().eval()
        self.history_ = history.to_dict()

    def _predict_proba(self, X: np.ndarray) -> np.ndarray:
        return latent_predict_proba(self.module_, X, self.predict_mode, self.n_samples, self.random_state)

    def transform(self, X) -> np.ndarray:
        """The code's mean, mu(x)."""
        check_is_fitted(self, "classes_")
        X = validate_data(self, X, dtype=np.float32, reset=False)
        self.module_.eval()
        return batched_numpy(lambda x: self.module_.encoder(x)[0], X)

    def probability_module(self) -> nn.Module:
        """Features -> class probabilities through the sampling path a user runs (for EOT attacks)."""
        return LatentProbabilities(self.module_, self.predict_mode, self.n_samples)
