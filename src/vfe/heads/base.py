"""What every head shares: the scikit-learn estimator contract and pickle-free state export.

A head is fitted on feature vectors (`fit(X, y)` returns self), predicts class probabilities,
and can hand its learned state to the pipeline as named arrays + JSON, so a saved pipeline is
safetensors + JSON and nothing else.
"""
from __future__ import annotations

from abc import abstractmethod

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data
from torch import nn

from vfe.training import History, TrainConfig, split_validation, train


class Head(ClassifierMixin, BaseEstimator):
    """Base of all heads. Subclasses implement `_fit`, `_predict_proba`, `_get_state`, `_set_state`."""

    def fit(self, X, y) -> "Head":
        X, y = validate_data(self, X, y, dtype=np.float32, ensure_min_samples=2)
        check_classification_targets(y)
        self.classes_, y_index = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError(f"{type(self).__name__}: need at least 2 classes in y, got {len(self.classes_)}")
        self._fit(X, y_index.astype(np.int64))
        return self

    def predict_proba(self, X) -> np.ndarray:
        check_is_fitted(self, "classes_")
        X = validate_data(self, X, dtype=np.float32, reset=False)
        return self._predict_proba(X)

    def predict(self, X) -> np.ndarray:
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]

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
    def from_state(cls, tensors: dict[str, torch.Tensor], meta: dict) -> "Head":
        head = cls(**meta["params"])
        head.classes_ = np.asarray(meta["classes"])
        head.n_features_in_ = meta["n_features_in"]
        if meta.get("history") is not None:
            head.history_ = meta["history"]
        head._set_state(tensors, meta["n_features_in"])
        return head


class TorchHead(Head):
    """A head whose learned state is one torch module, `module_`."""

    @abstractmethod
    def _build(self, n_features: int, n_classes: int) -> nn.Module: ...

    def _get_state(self) -> dict[str, torch.Tensor]:
        return dict(self.module_.state_dict())

    def _set_state(self, tensors: dict[str, torch.Tensor], n_features: int) -> None:
        self.module_ = self._build(n_features, len(self.classes_))
        self.module_.load_state_dict(tensors)
        self.module_.eval()

    def _train_config(self, **overrides) -> TrainConfig:
        base = dict(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, patience=self.patience,
                    seed=self.random_state, device=self.device, progress=getattr(self, "verbose", False))
        return TrainConfig(**{**base, **overrides})

    def _split(self, X: np.ndarray, y: np.ndarray):
        """Held-out part for early stopping; none when the data is too small to spare it."""
        train_idx, val_idx = split_validation(len(X), self.validation_fraction, self.random_state, y)
        if val_idx is None or len(val_idx) < 2:
            return (X, y), None
        return (X[train_idx], y[train_idx]), (X[val_idx], y[val_idx])


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


@torch.no_grad()
def batched_numpy(fn, X: np.ndarray, batch_size: int = 4096, device: str = "cpu") -> np.ndarray:
    """Apply a tensor -> tensor function to a large array in chunks; returns numpy."""
    outs = [fn(torch.from_numpy(X[i:i + batch_size]).to(device)).cpu() for i in range(0, len(X), batch_size)]
    return torch.cat(outs).numpy()
