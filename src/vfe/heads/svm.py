"""A linear SVM with calibrated probabilities: the head for very small labelled sets.

With tens of labels per class a max-margin linear classifier on good features beats training
anything deeper. scikit-learn's LinearSVC finds the hyperplanes; its decision values are turned
into probabilities by multinomial logistic regression fitted on *cross-validated* decision values
(Platt scaling, extended to many classes), so the calibration is not fooled by the SVM's fit to its
own training data. The whole model is two affine maps (features -> decisions -> logits), kept as
a torch module: saved as tensors, differentiable for attacks.
"""
from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.svm import LinearSVC
from sklearn.utils.validation import check_is_fitted, validate_data
from torch import nn

from vfe.heads.base import POSITIVE, SoftmaxOutput, TorchHead, at_least, batched_numpy


class SVMHead(TorchHead):
    """LinearSVC (squared hinge, L2, one-vs-rest) + Platt-style calibration on `calibration_folds`-fold
    cross-validated decision values (fewer folds when a class has fewer examples; in-sample when a
    class has only one)."""

    _parameter_constraints: ClassVar[dict] = {"C": [POSITIVE], "calibration_folds": [at_least(1)],
                                              "max_iter": [at_least(1)], "random_state": [at_least(0)]}

    def __init__(self, C: float = 1.0, calibration_folds: int = 5, max_iter: int = 10_000, random_state: int = 0):
        self.C = C
        self.calibration_folds = calibration_folds
        self.max_iter = max_iter
        self.random_state = random_state

    def _build(self, n_features: int, n_classes: int) -> nn.Module:
        n_decisions = 1 if n_classes == 2 else n_classes  # LinearSVC's decision_function shape
        return nn.Sequential(nn.Linear(n_features, n_decisions), nn.Linear(n_decisions, n_classes))

    def _fit(self, X: np.ndarray, y: np.ndarray) -> None:
        svm = LinearSVC(C=self.C, max_iter=self.max_iter, random_state=self.random_state).fit(X, y)
        folds = min(self.calibration_folds, int(np.bincount(y).min()))
        if folds >= 2:  # cross_val_predict refits a clone of the SVM on each fold
            cv = StratifiedKFold(folds, shuffle=True, random_state=self.random_state)
            decisions = cross_val_predict(svm, X, y, cv=cv, method="decision_function")
        else:
            decisions = svm.decision_function(X)
        decisions = decisions.reshape(len(X), -1)
        calibrator = LogisticRegression(max_iter=1000).fit(decisions, y)
        weight, bias = calibrator.coef_, calibrator.intercept_
        if len(self.classes_) == 2:  # one logit for class 1 -> two softmax logits (0, w.d + b)
            weight, bias = np.vstack([np.zeros_like(weight), weight]), np.concatenate([[0.0], bias])
        self.module_ = self._build(X.shape[1], len(self.classes_))
        with torch.no_grad():
            for layer, (w, b) in zip(self.module_, ((svm.coef_, svm.intercept_), (weight, bias))):
                layer.weight.copy_(torch.from_numpy(w))
                layer.bias.copy_(torch.from_numpy(np.asarray(b)))
        self.module_.eval()
        self.n_iter_ = int(svm.n_iter_)
        self.history_ = {"calibration": f"{folds}-fold cross-validated" if folds >= 2 else "in-sample",
                         "svm_iterations": self.n_iter_}

    def _predict_proba(self, X: np.ndarray) -> np.ndarray:
        return batched_numpy(lambda x: torch.softmax(self.module_(x), 1), X)

    def margins(self, X) -> np.ndarray:
        """The SVM's signed distances to its hyperplanes (one column per class; one column for two classes).

        Not `decision_function`: predictions follow the calibrated probabilities, whose argmax can
        differ from the raw margins' near a boundary."""
        check_is_fitted(self, "classes_")
        X = validate_data(self, X, dtype=np.float32, reset=False)
        decisions = batched_numpy(self.module_[0], X)
        return decisions[:, 0] if decisions.shape[1] == 1 else decisions

    def probability_module(self) -> nn.Module:
        """Features -> calibrated class probabilities, as a torch module (for end-to-end attacks)."""
        return SoftmaxOutput(self.module_)
