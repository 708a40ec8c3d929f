"""T3A, the test-time classifier adjustment module (Iwasawa & Matsuo, NeurIPS 2021), on the linear head.

Fit trains the linear head (Dropout -> Dense) as usual. At prediction time nothing is trained: each class
keeps a support set of test-time representations (here the features, the input of the Dense layer),
initialised with the Dense layer's weight rows. The rows of X are processed in order, `adapt_batch_size`
at a time; for each batch, as in the official code (matsuolab/T3A, `domainbed/adapt_algorithms.py`):

    1. the Dense layer's logits give each row a pseudo-label (argmax) and an entropy (of their softmax);
    2. each row joins the support set of its pseudo-label;
    3. each support set keeps its `filter_k` lowest-entropy entries (-1 keeps all);
    4. class k's template is the normalised sum of its supports' unit vectors, and a row's adjusted logit
       for class k is the cosine between the row and that template.

The support sets are reset at every `predict_proba` call, so each evaluated set (a corruption at one
severity) adapts on its own, as in the paper's per-domain evaluation; within a call, a row's prediction
depends on the rows before it (the sklearn checks for order and subset invariance are expected to fail).

Two deliberate differences from the official code. (a) `filter_k=-1` keeps every support: the official
`select_supports` computes that case, then overwrites it with the filtering loop, whose `[:-1]` drops
each class's highest-entropy entry. (b) Probabilities: the official logits are z . template_k with z
unnormalised, i.e. |z| * cosine, a softmax temperature of 1/|z| that makes backbone features (|z| ~ 60
for EfficientNet-Lite0) near one-hot. Here the logits are cosine / `temperature`, and the temperature
is fitted on the held-out early-stopping split (NLL of T3A's own cosine logits on clean data, i.e.
temperature scaling, Guo et al. 2017) unless given; the argmax, hence every prediction, is the official one.
"""
from __future__ import annotations

from numbers import Integral
from typing import ClassVar

import numpy as np
import torch
from scipy.optimize import minimize_scalar
from sklearn.utils._param_validation import Options
from torch import nn

from vfe.heads.base import POSITIVE, at_least
from vfe.heads.linear import LinearHead

# fitted temperatures are searched in [1e-3, 10]: cosines lie in [-1, 1], so 1/T = 1000 is already one-hot
TEMPERATURE_RANGE = (1e-3, 10.0)


def softmax_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of softmax(logits), per row."""
    return -(logits.softmax(1) * logits.log_softmax(1)).sum(1)


def select_supports(labels: torch.Tensor, entropy: torch.Tensor, filter_k: int) -> torch.Tensor:
    """Indices of the entries to keep: per class, the `filter_k` of lowest entropy (ties: the earlier
    entry), grouped by class; all of them when filter_k is -1."""
    if filter_k == -1:
        return torch.arange(len(labels), device=labels.device)
    order = torch.argsort(entropy, stable=True)
    order = order[torch.argsort(labels[order], stable=True)]  # by class, then entropy, then position
    grouped = labels[order]
    first = torch.searchsorted(grouped, grouped)  # where each entry's class starts in `order`
    rank = torch.arange(len(order), device=labels.device) - first
    return order[rank < filter_k]


class T3AClassifier(nn.Module):
    """Features -> T3A's cosine logits, adapting over the rows of one call in order (see the module
    docstring). Differentiable in the features (for end-to-end attacks): the supports' selection is
    discrete, their values are not."""

    def __init__(self, linear: nn.Linear, filter_k: int, batch_size: int):
        super().__init__()
        self.linear = linear
        self.filter_k = filter_k
        self.batch_size = batch_size

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        weight = self.linear.weight
        warmup = self.linear(weight)  # the templates are the first supports, labelled by the classifier
        supports, labels, entropy = weight, warmup.argmax(1), softmax_entropy(warmup)
        n_classes = weight.shape[0]
        out = []
        for batch in torch.split(z, self.batch_size):
            logits = self.linear(batch)
            supports = torch.cat([supports, batch])
            labels = torch.cat([labels, logits.argmax(1)])
            entropy = torch.cat([entropy, softmax_entropy(logits)])
            keep = select_supports(labels, entropy, self.filter_k)
            supports, labels, entropy = supports[keep], labels[keep], entropy[keep]
            unit = nn.functional.normalize(supports, dim=1)
            templates = torch.zeros(n_classes, unit.shape[1], dtype=unit.dtype, device=unit.device)
            templates = nn.functional.normalize(templates.index_add(0, labels, unit), dim=1)
            out.append(nn.functional.normalize(batch, dim=1) @ templates.T)
        return torch.cat(out) if out else z.new_zeros((0, n_classes))


class T3AProbabilities(nn.Module):
    """softmax(T3A cosine logits / temperature): a T3A head's `probability_module()`."""

    def __init__(self, classifier: T3AClassifier, temperature: torch.Tensor):
        super().__init__()
        self.classifier = classifier
        self.register_buffer("temperature", temperature)

    def forward(self, features: torch.Tensor, n_samples: int | None = None) -> torch.Tensor:
        return torch.softmax(self.classifier(features) / self.temperature, 1)


class T3AHead(LinearHead):
    """The linear head, classified at test time by T3A (Iwasawa & Matsuo 2021; see the module docstring).

    filter_k: supports kept per class (the M of the paper; the official search grid is 1, 5, 20, 50,
        100, -1; -1 keeps all).
    adapt_batch_size: test rows per adaptation step (the official default is 32). Not `batch_size`,
        which stays the linear head's training batch.
    temperature: softmax temperature of the cosine logits; None fits it on the held-out split (on the
        training data when there is none). It changes probabilities, never predictions.
    The other parameters are the linear head's.
    """

    _parameter_constraints: ClassVar[dict] = {**LinearHead._parameter_constraints,
                                              "filter_k": [at_least(1), Options(Integral, {-1})],
                                              "adapt_batch_size": [at_least(1)], "temperature": [POSITIVE, None]}

    def __init__(self, filter_k: int = 100, adapt_batch_size: int = 32, temperature: float | None = None,
                 dropout: float = 0.3, epochs: int = 30, batch_size: int = 100, lr: float = 1e-3,
                 patience: int | None = 5, validation_fraction: float = 0.1, random_state: int = 0,
                 device: str = "cpu", verbose: bool = False):
        self.filter_k = filter_k
        self.adapt_batch_size = adapt_batch_size
        self.temperature = temperature
        super().__init__(dropout=dropout, epochs=epochs, batch_size=batch_size, lr=lr, patience=patience,
                         validation_fraction=validation_fraction, random_state=random_state, device=device,
                         verbose=verbose)

    def _check_t3a_params(self) -> None:
        if not (self.filter_k == -1 or self.filter_k >= 1):
            raise ValueError(f"filter_k must be -1 (keep every support) or at least 1, got {self.filter_k}")
        if self.adapt_batch_size < 1:
            raise ValueError(f"adapt_batch_size must be at least 1, got {self.adapt_batch_size}")
        if self.temperature is not None and not self.temperature > 0:
            raise ValueError(f"temperature must be > 0 (or None to fit it), got {self.temperature}")

    def _fit(self, X: np.ndarray, y: np.ndarray) -> None:
        self._check_t3a_params()
        super()._fit(X, y)
        if self.temperature is not None:
            self.temperature_ = torch.tensor([float(self.temperature)])
            return
        _, val_idx = self._validation_indices(y)
        rows = np.arange(len(y)) if val_idx is None else val_idx
        self.temperature_ = torch.tensor([fit_temperature(self.cosine_logits(X[rows]), y[rows])])

    def cosine_logits(self, X: np.ndarray) -> np.ndarray:
        """T3A's adjusted logits (cosines in [-1, 1], before the temperature) of the rows of X, in order."""
        self._check_t3a_params()
        self.module_.eval()
        with torch.no_grad():
            return self._classifier()(torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32))).numpy()

    def _classifier(self) -> T3AClassifier:
        return T3AClassifier(self.module_[1], self.filter_k, self.adapt_batch_size)

    def _predict_proba(self, X: np.ndarray) -> np.ndarray:
        self._check_t3a_params()
        self.module_.eval()
        with torch.no_grad():
            return self.probability_module()(torch.from_numpy(X)).numpy()

    def _get_state(self) -> dict[str, torch.Tensor]:
        return {**super()._get_state(), "temperature": self.temperature_}

    def _set_state(self, tensors: dict[str, torch.Tensor], n_features: int) -> None:
        tensors = dict(tensors)
        self.temperature_ = tensors.pop("temperature")
        super()._set_state(tensors, n_features)

    def probability_module(self) -> nn.Module:
        """Features -> class probabilities through T3A (adapting over the rows of each call), for attacks."""
        return T3AProbabilities(self._classifier(), self.temperature_)

    def base_probability_module(self) -> nn.Module:
        """Features -> the Dense layer's own probabilities, row by row (no adaptation): the path the attack
        stage's transfer and BPDA attacks differentiate."""
        return super().probability_module()


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """The T in TEMPERATURE_RANGE minimising the mean NLL of softmax(logits / T) for labels y."""
    logits = logits.astype(np.float64)
    picked = logits[np.arange(len(y)), y]

    def nll(log_t: float) -> float:
        scaled = logits / np.exp(log_t)
        top = scaled.max(1)
        return float(np.mean(top + np.log(np.exp(scaled - top[:, None]).sum(1)) - picked / np.exp(log_t)))

    low, high = np.log(TEMPERATURE_RANGE)
    return float(np.exp(minimize_scalar(nll, bounds=(low, high), method="bounded").x))
