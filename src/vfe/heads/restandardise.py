"""Test-time feature re-standardisation: each test batch's features are given the training features'
per-dimension mean and standard deviation before the linear head.

    x' = (x - mean_batch) / sqrt(var_batch + eps) * sqrt(var_train + eps) + mean_train

This is the feature-space analogue of test-time BatchNorm adaptation (Schneider et al. 2020, "Improving
robustness against common corruptions by covariate shift adaptation"; Nado et al. 2020, "prediction-time
batch normalization"). Why it can help: a corruption of the images (noise, blur, lower contrast, fog)
moves the frozen backbone's pooled features as a whole: whole dimensions switch on or off, shrink or
grow. The linear head's boundaries stay where the training features were, so the shifted cloud lands
on the wrong side of them. Matching each dimension's first two moments to the training ones undoes the
per-dimension affine part of that shift exactly (x -> a x + b with a > 0 gives the same x' as x) and
leaves everything else (correlations, class structure within the batch) untouched.

Its cost: a prediction needs a batch of test features from one domain, and the batch's statistics enter
every row's prediction. A batch mixing domains gets mixed statistics; a batch whose classes are not in
their training proportions (label shift, e.g. a batch of one class) is pulled towards the training mean
and misclassified; a small batch gives noisy statistics. `eps` (BatchNorm's 1e-5, on both variances)
keeps constant dimensions finite and makes the map the identity when the batch's moments are the
training ones. A batch of fewer than `min_batch_size` rows, a single image in particular, is NOT
re-standardised (its statistics are undefined or noise): it falls back to the plain linear head with a
warning, rather than failing, because the attack stage evaluates attacked images in small batches.
"""
from __future__ import annotations

import warnings
from typing import ClassVar

import numpy as np
import torch
from sklearn.utils.validation import check_is_fitted, validate_data
from torch import nn

from vfe.heads.base import at_least
from vfe.heads.linear import LinearHead

EPS = 1e-5  # added to both variances, as BatchNorm does


class Restandardise(nn.Module):
    """x -> (x - batch mean) / batch std * training std + training mean, over the rows of each call;
    x unchanged when the call has fewer than `min_batch_size` rows."""

    def __init__(self, mean: torch.Tensor, scale: torch.Tensor, min_batch_size: int):
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("scale", scale)
        self.min_batch_size = min_batch_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(x) < self.min_batch_size:
            return x
        x64 = x.double()  # in float64, so that the rows' order does not change the statistics' rounding
        batch_mean = x64.mean(0)
        batch_scale = torch.sqrt(x64.var(0, unbiased=False) + EPS)
        return ((x64 - batch_mean) / batch_scale * self.scale + self.mean).to(x.dtype)


class RestandardisedProbabilities(nn.Module):
    """Re-standardise the batch, then the linear head's softmax: a `probability_module()`."""

    def __init__(self, restandardise: Restandardise, logits_module: nn.Module):
        super().__init__()
        self.restandardise = restandardise
        self.logits_module = logits_module

    def forward(self, features: torch.Tensor, n_samples: int | None = None) -> torch.Tensor:
        return torch.softmax(self.logits_module(self.restandardise(features)), 1)


class RestandardisedHead(LinearHead):
    """The linear head on test features re-standardised to the training statistics (see the module docstring).

    min_batch_size: smallest batch that is re-standardised; smaller ones (a single image) fall back to the
        plain linear head, with a warning. Statistics of a few rows are noise: give it hundreds of rows
        from one domain.
    The other parameters are the linear head's. Fit also records the training features' per-dimension
    mean and standard deviation (`mean_`, `scale_`, over all of X).
    """

    _parameter_constraints: ClassVar[dict] = {**LinearHead._parameter_constraints,
                                              "min_batch_size": [at_least(2)]}

    def __init__(self, min_batch_size: int = 16, dropout: float = 0.3, epochs: int = 30, batch_size: int = 100,
                 lr: float = 1e-3, patience: int | None = 5, validation_fraction: float = 0.1,
                 random_state: int = 0, device: str = "cpu", verbose: bool = False):
        self.min_batch_size = min_batch_size
        super().__init__(dropout=dropout, epochs=epochs, batch_size=batch_size, lr=lr, patience=patience,
                         validation_fraction=validation_fraction, random_state=random_state, device=device,
                         verbose=verbose)

    def _check_min_batch_size(self) -> None:
        if self.min_batch_size < 2:
            raise ValueError(f"min_batch_size must be at least 2 (one row has no spread), got {self.min_batch_size}")

    def _fit(self, X: np.ndarray, y: np.ndarray) -> None:
        self._check_min_batch_size()
        super()._fit(X, y)
        X64 = X.astype(np.float64)
        self.mean_ = torch.from_numpy(X64.mean(0).astype(np.float32))
        self.scale_ = torch.from_numpy(np.sqrt(X64.var(0) + EPS).astype(np.float32))

    def _restandardise(self) -> Restandardise:
        self._check_min_batch_size()
        return Restandardise(self.mean_, self.scale_, self.min_batch_size)

    def restandardise(self, X) -> np.ndarray:
        """The features the linear head sees: X's rows given the training mean and std (all rows together)."""
        X = self._validated(X)
        with torch.no_grad():
            return self._restandardise()(torch.from_numpy(X)).numpy()

    def _validated(self, X) -> np.ndarray:
        check_is_fitted(self, "classes_")
        return validate_data(self, X, dtype=np.float32, reset=False)

    def _predict_proba(self, X: np.ndarray) -> np.ndarray:
        if len(X) < self.min_batch_size:
            warnings.warn(f"linear-tts: {len(X)} rows (< min_batch_size={self.min_batch_size}) are not "
                          "re-standardised; they get the plain linear head's prediction", stacklevel=3)
        self.module_.eval()
        with torch.no_grad():  # one call on all of X: the statistics are those of the whole batch
            return self.probability_module()(torch.from_numpy(X)).numpy()

    def _get_state(self) -> dict[str, torch.Tensor]:
        return {**super()._get_state(), "train_mean": self.mean_, "train_scale": self.scale_}

    def _set_state(self, tensors: dict[str, torch.Tensor], n_features: int) -> None:
        tensors = dict(tensors)
        self.mean_, self.scale_ = tensors.pop("train_mean"), tensors.pop("train_scale")
        super()._set_state(tensors, n_features)

    def probability_module(self) -> nn.Module:
        """Features -> class probabilities, re-standardising each call's rows together (for attacks)."""
        return RestandardisedProbabilities(self._restandardise(), self.module_)

    def base_probability_module(self) -> nn.Module:
        """Features -> the linear head's probabilities on the features as they are (not re-standardised): the
        path the attack stage's transfer and BPDA attacks differentiate."""
        return super().probability_module()
