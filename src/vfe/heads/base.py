"""What every head shares: the scikit-learn estimator contract and pickle-free state export.

A head is fitted on feature vectors (`fit(X, y)` returns self), predicts class probabilities,
and can hand its learned state to the pipeline as named arrays + JSON, so a saved pipeline is
safetensors + JSON and nothing else.
"""
from __future__ import annotations

import inspect
from abc import abstractmethod
from numbers import Integral, Real
from typing import ClassVar

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin, TransformerMixin
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_array, check_is_fitted, validate_data
from torch import nn

from vfe.data.split import holdout_index
from vfe.hardware import FEATURE_HEAD_THREADS, fit_threads
from vfe.training import History, TrainConfig, train


def at_least(n: int) -> Interval:
    """A whole number >= n, as a parameter constraint."""
    return Interval(Integral, n, None, closed="left")


# Parameter constraints in scikit-learn's `_parameter_constraints` form: each head class declares the range or the
# choices of its parameters, and `vfe.heads.registry.check_params` refuses a value outside them before any work.
POSITIVE = Interval(Real, 0, None, closed="neither")
NON_NEGATIVE = Interval(Real, 0, None, closed="left")
FRACTION = Interval(Real, 0, 1, closed="left")  # a share of the units dropped or of the rows held out
PRECISIONS = StrOptions({"auto", "fp32", "bf16"})
TRAINING = {"dropout": [FRACTION], "epochs": [at_least(1)], "batch_size": [at_least(1)], "lr": [POSITIVE],
            "patience": [at_least(1), None], "validation_fraction": [FRACTION], "random_state": [at_least(0)]}


class Head(ClassifierMixin, BaseEstimator):
    """Base of all heads. Subclasses implement `_fit`, `_predict_proba`, `_get_state`, `_set_state`."""

    inputs = "features"  # what fit/predict take: "features" (N x D floats) or "images" (uint8 N x H x W x C)
    takes_views = False  # whether fit takes several augmented views per training image (X_aug n x K x d)

    def fit(self, X, y, X_aug=None) -> Head:
        """Fit on features X and labels y.

        X_aug (optional, heads whose `_fit` takes it): features of the same training images under a
        random corruption, row-aligned with X (X_aug[i] is a corrupted view of the image behind X[i]).
        It is training data only: the early-stopping split stays clean, and a denoising head can use
        the (X_aug[i], X[i]) pairs. Heads with `takes_views` also take n x K x d: K views of each image
        (X_aug[i, k] is view k of the image behind X[i]), e.g. AugMix views.
        """
        X, y = validate_data(self, X, y, dtype=np.float32, ensure_min_samples=2)
        check_classification_targets(y)
        self.classes_, y_index = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError(f"{type(self).__name__}: need at least 2 classes in y, got {len(self.classes_)}")
        extra = {} if X_aug is None else {"X_aug": self._check_augmented(X_aug, X)}
        # small matrices: one thread whatever the load (vfe.hardware: weights depend on the thread count)
        with fit_threads(limit=FEATURE_HEAD_THREADS if self.inputs == "features" else None):
            self._fit(X, y_index.astype(np.int64), **extra)
        return self

    def _check_augmented(self, X_aug, X: np.ndarray) -> np.ndarray:
        if "X_aug" not in inspect.signature(self._fit).parameters:
            raise TypeError(f"{type(self).__name__} does not train on augmented features (X_aug)")
        X_aug = check_array(X_aug, dtype=np.float32, allow_nd=True)
        if X_aug.shape == X.shape or self.takes_views and X_aug.ndim == 3 and X_aug.shape[::2] == X.shape:
            return X_aug
        views = " (or n x K x d: K views of each)" if self.takes_views else ""
        raise ValueError(f"X_aug must be row-aligned with X (one augmented view per training image{views}): "
                         f"shape {X_aug.shape} != X's {X.shape}")

    def predict_proba(self, X) -> np.ndarray:
        check_is_fitted(self, "classes_")
        X = validate_data(self, X, dtype=np.float32, reset=False)
        return self._predict_proba(X)

    def predict(self, X) -> np.ndarray:
        probs = self.predict_proba(X)  # first: an unfitted head raises NotFittedError, not AttributeError
        return self.classes_[np.argmax(probs, axis=1)]

    @abstractmethod
    def _fit(self, X: np.ndarray, y: np.ndarray) -> None: ...

    @abstractmethod
    def _predict_proba(self, X: np.ndarray) -> np.ndarray: ...

    @abstractmethod
    def _get_state(self) -> dict[str, torch.Tensor]: ...

    @abstractmethod
    def _set_state(self, tensors: dict[str, torch.Tensor], n_features: int) -> None: ...

    def export_state(self) -> tuple[dict[str, torch.Tensor], dict]:
        """Learned state as named tensors, and JSON metadata that rebuilds the estimator around them."""
        check_is_fitted(self, "classes_")
        meta = {"head": type(self).__name__, "params": self.get_params(),
                "classes": self.classes_.tolist(), "n_features_in": int(self.n_features_in_),
                "history": getattr(self, "history_", None)}
        return self._get_state(), meta

    @classmethod
    def from_state(cls, tensors: dict[str, torch.Tensor], meta: dict) -> Head:
        head = cls(**meta["params"])
        head.classes_ = np.asarray(meta["classes"])
        head.n_features_in_ = meta["n_features_in"]
        if meta.get("history") is not None:
            head.history_ = meta["history"]
        head._set_state(tensors, meta["n_features_in"])
        return head


class FeatureTransformer(TransformerMixin):
    """For heads with a `transform` (their code): fit_transform = fit(X, y).transform(X), in float32."""

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float32"]
        return tags


class TorchHead(Head):
    """A head whose learned state is one torch module, `module_`."""

    _parameter_constraints: ClassVar[dict] = TRAINING

    @abstractmethod
    def _build(self, n_features: int, n_classes: int) -> nn.Module: ...

    def _get_state(self) -> dict[str, torch.Tensor]:
        return dict(self.module_.state_dict())

    def _set_state(self, tensors: dict[str, torch.Tensor], n_features: int) -> None:
        self.module_ = self._build(n_features, len(self.classes_))
        self.module_.load_state_dict(tensors)
        self.module_.eval()

    def _train_config(self, **overrides) -> TrainConfig:
        base = {"epochs": self.epochs, "batch_size": self.batch_size, "lr": self.lr, "patience": self.patience,
                "seed": self.random_state, "device": self.device, "progress": getattr(self, "verbose", False)}
        return TrainConfig(**{**base, **overrides})

    def _validation_indices(self, y: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(train, held-out) row indices for early stopping; no held-out part when the data is too small."""
        train_idx, val_idx = holdout_index(len(y), self.validation_fraction, self.random_state, y)
        if val_idx is None or len(val_idx) < 2:
            return np.arange(len(y)), None
        return train_idx, val_idx

    def _split(self, X: np.ndarray, y: np.ndarray, X_aug: np.ndarray | None = None):
        """(X_train, y_train), held-out (X_val, y_val) or None. Augmented views join the training part only
        (all K views of each row, when X_aug is n x K x d)."""
        train_idx, val_idx = self._validation_indices(y)
        train = (X, y) if val_idx is None else (X[train_idx], y[train_idx])
        if X_aug is not None:
            views = X_aug[train_idx].reshape(-1, X.shape[1])
            labels = np.repeat(y[train_idx], len(views) // len(train_idx))
            train = (np.concatenate([train[0], views]), np.concatenate([train[1], labels]))
        return train, (None if val_idx is None else (X[val_idx], y[val_idx]))


def classification_loss(module: nn.Module, batch) -> tuple[torch.Tensor, dict[str, float]]:
    """Cross-entropy on the module's logits, with accuracy as a metric."""
    x, y = batch
    logits = module(x)
    loss = nn.functional.cross_entropy(logits, y)
    return loss, {"acc": float((logits.detach().argmax(1) == y).float().mean())}


def fit_classifier(module: nn.Module, X: np.ndarray, y: np.ndarray, val, config: TrainConfig,
                   parameters=None) -> History:
    """Train a logits module with cross-entropy; the shared path of every classifier head."""
    tensors = (torch.from_numpy(X), torch.from_numpy(y))
    val_tensors = (torch.from_numpy(val[0]), torch.from_numpy(val[1])) if val is not None else None
    with torch.random.fork_rng():
        torch.manual_seed(config.seed)
        return train(module, classification_loss, tensors, val_tensors, config, parameters=parameters)


class SoftmaxOutput(nn.Module):
    """Logits module -> class probabilities: a head's `probability_module()` for end-to-end attacks."""

    def __init__(self, logits_module: nn.Module):
        super().__init__()
        self.logits_module = logits_module

    def forward(self, features: torch.Tensor, n_samples: int | None = None) -> torch.Tensor:
        return torch.softmax(self.logits_module(features), 1)


@torch.no_grad()
def batched_numpy(fn, X: np.ndarray, batch_size: int = 4096, device: str = "cpu") -> np.ndarray:
    """Apply a tensor -> tensor function to a large array in chunks; returns numpy."""
    outs = [fn(torch.from_numpy(X[i:i + batch_size]).to(device)).cpu() for i in range(0, len(X), batch_size)]
    return torch.cat(outs).numpy()
