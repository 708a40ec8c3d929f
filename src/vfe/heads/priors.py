"""Posteriors for a deployment whose class priors differ from the training set's (Bayes' rule).

A classifier trained with priors p_train(c) estimates p(c | x) = p(x | c) p_train(c) / p(x). If
p(x | c) is unchanged and only the priors move to p_new(c) (label shift), then

    p_new(c | x) = p(c | x) * p_new(c) / p_train(c)  /  sum_k p(k | x) * p_new(k) / p_train(k)

(Saerens, Latinne & Decaestecker 2002). Priors may be given as counts or probabilities.
"""
from __future__ import annotations

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.utils.validation import check_is_fitted
from torch import nn

from vfe.heads.registry import head_class


def class_priors(priors, n_classes: int | None = None, name: str = "priors", positive: bool = False) -> np.ndarray:
    """Counts or probabilities -> probabilities summing to 1, validated (finite, >= 0, > 0 when `positive`)."""
    p = np.asarray(priors, dtype=np.float64)
    if p.ndim != 1 or len(p) < 2:
        raise ValueError(f"{name}: expected one value per class (at least 2), got shape {p.shape}")
    if n_classes is not None and len(p) != n_classes:
        raise ValueError(f"{name}: {len(p)} values for {n_classes} classes")
    if not np.all(np.isfinite(p)) or np.any(p < 0):
        raise ValueError(f"{name}: priors must be finite and non-negative, got {p.tolist()}")
    if positive and np.any(p == 0):
        raise ValueError(f"{name}: every class needs a prior > 0 (a class absent from training cannot be "
                         f"re-weighted), got {p.tolist()}")
    if p.sum() == 0:
        raise ValueError(f"{name}: priors sum to 0")
    return p / p.sum()


def adjust_priors(probs, train_priors, new_priors) -> np.ndarray:
    """Re-weight class probabilities [N, C] from the training priors to new ones (Bayes' rule).

    Rows whose probability lies only on classes with new prior 0 fall back to the new priors.
    """
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2:
        raise ValueError(f"probs: expected an N x C array, got shape {probs.shape}")
    if not np.all(np.isfinite(probs)) or np.any(probs < 0):
        raise ValueError("probs: probabilities must be finite and non-negative")
    weighted = probs * prior_ratio(train_priors, new_priors, probs.shape[1])
    total = weighted.sum(1, keepdims=True)
    fallback = class_priors(new_priors, probs.shape[1], "new_priors")
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, weighted / total, fallback)


def prior_ratio(train_priors, new_priors, n_classes: int) -> np.ndarray:
    """p_new(c) / p_train(c), the factor each class's probability is multiplied by."""
    return (class_priors(new_priors, n_classes, "new_priors")
            / class_priors(train_priors, n_classes, "train_priors", positive=True))


class PriorCorrected(ClassifierMixin, BaseEstimator):
    """A head whose probabilities are corrected to `new_priors`.

    fit(X, y) fits a clone of `head` and takes the training priors from y's class frequencies
    (unless `train_priors` is given). With `prefit=True`, `head` is already fitted and is used as
    is; fit then only records the training priors (X may be None).
    """

    def __init__(self, head, new_priors, train_priors=None, prefit: bool = False):
        self.head = head
        self.new_priors = new_priors
        self.train_priors = train_priors
        self.prefit = prefit

    @property
    def inputs(self) -> str:
        return getattr(self.head, "inputs", "features")

    @property
    def n_features_in_(self) -> int:
        return self.head_.n_features_in_

    def fit(self, X, y, **fit_params) -> PriorCorrected:
        self.head_ = self.head if self.prefit else clone(self.head).fit(X, y, **fit_params)
        self.classes_ = self.head_.classes_
        if self.train_priors is not None:
            self.train_priors_ = class_priors(self.train_priors, len(self.classes_), "train_priors", positive=True)
        else:
            labels = np.asarray(y)
            unknown = np.setdiff1d(labels, self.classes_)
            if len(unknown):
                raise ValueError(f"y holds labels the head does not know: {unknown[:5].tolist()}")
            counts = np.array([(labels == c).sum() for c in self.classes_])
            self.train_priors_ = class_priors(counts, name="class counts of y", positive=True)
        prior_ratio(self.train_priors_, self.new_priors, len(self.classes_))  # validate new_priors now
        return self

    def predict_proba(self, X) -> np.ndarray:
        check_is_fitted(self, "head_")
        return adjust_priors(self.head_.predict_proba(X), self.train_priors_, self.new_priors)

    def predict(self, X) -> np.ndarray:
        probs = self.predict_proba(X)  # first: an unfitted head raises NotFittedError, not AttributeError
        return self.classes_[np.argmax(probs, axis=1)]

    def export_state(self) -> tuple[dict[str, torch.Tensor], dict]:
        """The wrapped head's tensors and JSON, plus both priors."""
        check_is_fitted(self, "head_")
        tensors, head_meta = self.head_.export_state()
        meta = {"head": type(self).__name__, "classes": self.classes_.tolist(), "wrapped": head_meta,
                "params": {"new_priors": np.asarray(self.new_priors, dtype=float).tolist(), "prefit": True,
                           "train_priors": self.train_priors_.tolist()}}
        return tensors, meta

    @classmethod
    def from_state(cls, tensors: dict[str, torch.Tensor], meta: dict) -> PriorCorrected:

        wrapped = head_class(meta["wrapped"]["head"]).from_state(tensors, meta["wrapped"])
        model = cls(wrapped, **meta["params"])
        model.head_ = wrapped
        model.classes_ = wrapped.classes_
        model.train_priors_ = np.asarray(meta["params"]["train_priors"])
        return model

    def probability_module(self) -> nn.Module:
        """The wrapped head's probability module followed by the prior correction."""
        check_is_fitted(self, "head_")
        ratio = prior_ratio(self.train_priors_, self.new_priors, len(self.classes_))
        return _Reweighted(self.head_.probability_module(), torch.tensor(ratio, dtype=torch.float32))


class _Reweighted(nn.Module):
    def __init__(self, probability_module: nn.Module, ratio: torch.Tensor):
        super().__init__()
        self.probability_module = probability_module
        self.register_buffer("ratio", ratio)

    def forward(self, x: torch.Tensor, n_samples: int | None = None) -> torch.Tensor:
        weighted = self.probability_module(x, n_samples) * self.ratio
        return weighted / weighted.sum(1, keepdim=True)
