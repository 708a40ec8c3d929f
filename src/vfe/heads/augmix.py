"""The linear head trained on clean features and K augmented views of each training image (AugMix views).

`fit(X, y, X_aug=views)` with views n x K x d (or n x d, one view each): each step trains on (clean, view,
view) triples, with `js_weight` times AugMix's Jensen-Shannon consistency term (vfe.heads.views). Without
views it is the linear head. The VFE takes views itself (VFEHead.js_weight), so only the linear head needs a
class of its own: LinearHead refuses X_aug.
"""
from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch

from vfe.heads.base import NON_NEGATIVE
from vfe.heads.linear import LinearHead
from vfe.heads.views import fit_on_views


class AugMixLinearHead(LinearHead):
    """Dropout -> Dense trained on (clean, view, view) triples; the linear head's parameters plus `js_weight`."""

    takes_views = True
    _parameter_constraints: ClassVar[dict] = {**LinearHead._parameter_constraints, "js_weight": [NON_NEGATIVE]}

    def __init__(self, js_weight: float = 0.0, dropout: float = 0.3, epochs: int = 30, batch_size: int = 100,
                 lr: float = 1e-3, patience: int | None = 5, validation_fraction: float = 0.1,
                 random_state: int = 0, device: str = "cpu", verbose: bool = False):
        super().__init__(dropout=dropout, epochs=epochs, batch_size=batch_size, lr=lr, patience=patience,
                         validation_fraction=validation_fraction, random_state=random_state, device=device,
                         verbose=verbose)
        self.js_weight = js_weight

    def _fit(self, X: np.ndarray, y: np.ndarray, X_aug: np.ndarray | None = None) -> None:
        if X_aug is None:
            return super()._fit(X, y)
        views = X_aug if X_aug.ndim == 3 else X_aug[:, None]
        with torch.random.fork_rng():
            torch.manual_seed(self.random_state)
            self.module_ = self._build(X.shape[1], len(self.classes_))
        train_idx, val_idx = self._validation_indices(y)
        val = None if val_idx is None else (X[val_idx], y[val_idx])
        history = fit_on_views(self.module_, X[train_idx], views[train_idx], y[train_idx], val,
                               self._train_config(desc="linear head on views"), self.js_weight)
        self.history_ = history.to_dict()
        self.module_.cpu()
