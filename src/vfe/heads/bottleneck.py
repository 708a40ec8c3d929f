"""What the bottleneck heads (pca, ae, dae) share: stage 1 learns a code from the features alone,
stage 2 trains Dropout -> Dense(classes) on that frozen code, as the VFE's second stage does.

A subclass supplies the stage-1 model (`_fit_bottleneck`, `_empty_bottleneck`): an nn.Module with
`encode(x) -> code` and a `code_dim` attribute. Saved state is `bottleneck.*` (that model) and `head.*` (the classifier).
"""
from __future__ import annotations

from abc import abstractmethod

import numpy as np
import torch
from sklearn.utils.validation import check_is_fitted, validate_data
from torch import nn

from vfe.heads.base import FeatureTransformer, SoftmaxOutput, TorchHead, batched_numpy, fit_classifier


class CodeClassifier(nn.Module):
    """Frozen bottleneck (BatchNorm in inference mode) -> code -> Dropout -> Dense. Returns logits."""

    def __init__(self, bottleneck: nn.Module, n_classes: int, dropout: float):
        super().__init__()
        self.bottleneck = bottleneck.requires_grad_(False)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(bottleneck.code_dim, n_classes))

    def train(self, mode: bool = True) -> CodeClassifier:
        super().train(mode)
        self.bottleneck.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.bottleneck.encode(x))


class BottleneckHead(FeatureTransformer, TorchHead):
    """Base of heads that compress features to a code, then classify the code (hyperparameters:
    `dropout`, `epochs`, `batch_size`, `lr`, `patience`, `validation_fraction`, `random_state`,
    `device`, `verbose` for stage 2, plus the subclass's own)."""

    @abstractmethod
    def _fit_bottleneck(self, X_train: np.ndarray, X_val: np.ndarray | None,
                        X_aug_train: np.ndarray | None) -> tuple[nn.Module, dict | None]:
        """Stage 1: the fitted bottleneck model and its training history (None when it does not train)."""

    @abstractmethod
    def _empty_bottleneck(self, n_features: int, tensors: dict[str, torch.Tensor]) -> nn.Module:
        """An untrained bottleneck shaped to receive `tensors` (its saved state)."""

    def _fit(self, X: np.ndarray, y: np.ndarray, X_aug: np.ndarray | None = None) -> None:
        train_idx, val_idx = self._validation_indices(y)
        X_val = None if val_idx is None else X[val_idx]
        with torch.random.fork_rng():
            torch.manual_seed(self.random_state)
            bottleneck, bottleneck_history = self._fit_bottleneck(
                X[train_idx], X_val, None if X_aug is None else X_aug[train_idx])
            self.bottleneck_ = bottleneck.cpu().eval()
            self.module_ = CodeClassifier(self.bottleneck_, len(self.classes_), self.dropout)
        (X_train, y_train), val = self._split(X, y, X_aug)
        history = fit_classifier(self.module_, X_train, y_train, val,
                                 self._train_config(desc=f"{type(self).__name__} classifier"),
                                 parameters=self.module_.head.parameters())
        self.module_.cpu().eval()
        self.history_ = {"bottleneck": bottleneck_history, "classifier": history.to_dict()}

    def _get_state(self) -> dict[str, torch.Tensor]:
        return {**{f"bottleneck.{k}": v for k, v in self.bottleneck_.state_dict().items()},
                **{f"head.{k}": v for k, v in self.module_.head.state_dict().items()}}

    def _set_state(self, tensors: dict[str, torch.Tensor], n_features: int) -> None:
        own = {k.removeprefix("bottleneck."): v for k, v in tensors.items() if k.startswith("bottleneck.")}
        head = {k.removeprefix("head."): v for k, v in tensors.items() if k.startswith("head.")}
        self.bottleneck_ = self._empty_bottleneck(n_features, own)
        self.bottleneck_.load_state_dict(own)
        self.module_ = CodeClassifier(self.bottleneck_, len(self.classes_), self.dropout)
        self.module_.head.load_state_dict(head)
        self.module_.eval()

    def _predict_proba(self, X: np.ndarray) -> np.ndarray:
        self.module_.eval()
        return batched_numpy(lambda x: torch.softmax(self.module_(x), 1), X)

    def transform(self, X) -> np.ndarray:
        """The code each feature vector is compressed to (what the classifier sees)."""
        check_is_fitted(self, "classes_")
        X = validate_data(self, X, dtype=np.float32, reset=False)
        self.bottleneck_.eval()
        return batched_numpy(self.bottleneck_.encode, X)

    def probability_module(self) -> nn.Module:
        """Features -> class probabilities, as a torch module (for end-to-end attacks)."""
        return SoftmaxOutput(self.module_)
