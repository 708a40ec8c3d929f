"""Out-of-distribution detection: scores and the two standard metrics.

Convention, everywhere in vfe: a score is *higher for inputs that look more out-of-distribution*.
AUROC treats OOD as the positive class (1.0 = every OOD input scores above every in-distribution
one, 0.5 = chance); FPR@95 is the fraction of in-distribution inputs flagged when the threshold is
set so that 95% of the OOD inputs are caught (lower is better).

Scores: max-softmax (Hendrycks & Gimpel 2017, negated), the VFE's reconstruction error and negative
ELBO in feature space, and two strong feature-space baselines the VFE must be compared with, since
VAE likelihoods are known to rank some OOD data as *more* likely (Nalisnick et al. 2019): the
Mahalanobis distance to the closest class mean under a shared covariance (Lee et al. 2018) and its
relative version, minus the distance under one Gaussian fitted to all training data (Ren et al. 2021).

Choosing a score: a detector offers several scores, and quoting the best of them on the test data
overstates it (the choice is fitted to the very data it is judged on). `select_score` picks the score
with the best AUROC on a held-out validation half (`validation_split`) and reports that score's AUROC
and FPR@95 on the other half only; ties on validation go to the first score offered.
"""
from __future__ import annotations

import numpy as np
from sklearn.covariance import EmpiricalCovariance
from sklearn.metrics import roc_auc_score, roc_curve


def _labelled(scores_in: np.ndarray, scores_out: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores_in, scores_out = np.asarray(scores_in, dtype=np.float64), np.asarray(scores_out, dtype=np.float64)
    if scores_in.ndim != 1 or scores_out.ndim != 1 or len(scores_in) == 0 or len(scores_out) == 0:
        raise ValueError(f"need two non-empty 1-d score arrays, got shapes {scores_in.shape} "
                         f"and {scores_out.shape}")
    if not (np.isfinite(scores_in).all() and np.isfinite(scores_out).all()):
        raise ValueError("OOD scores contain NaN or infinity")
    labels = np.concatenate([np.zeros(len(scores_in)), np.ones(len(scores_out))])
    return labels, np.concatenate([scores_in, scores_out])


def auroc(scores_in: np.ndarray, scores_out: np.ndarray) -> float:
    """Area under the ROC curve, OOD = positive (higher score = more OOD)."""
    return float(roc_auc_score(*_labelled(scores_in, scores_out)))


def fpr_at_95_tpr(scores_in: np.ndarray, scores_out: np.ndarray) -> float:
    """Share of in-distribution inputs at or above the highest threshold that catches 95% of the OOD ones.

    Every distinct score is a candidate threshold (tied scores fall on the same side, so a tie is never
    split); `drop_intermediate=False` keeps them all, since the dropped collinear points can be the
    very threshold that first reaches 95% TPR, and skipping it overstates the FPR.
    """
    fpr, tpr, _ = roc_curve(*_labelled(scores_in, scores_out), drop_intermediate=False)
    return float(fpr[np.searchsorted(tpr, 0.95, side="left")])


def detection_metrics(scores_in: np.ndarray, scores_out: np.ndarray) -> dict[str, float]:
    return {"auroc": auroc(scores_in, scores_out), "fpr95": fpr_at_95_tpr(scores_in, scores_out)}


def validation_split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint sorted (validation, test) indices covering range(n): a seeded half each (validation
    gets n // 2), so the score is chosen on data the reported figure never sees."""
    if n < 2:
        raise ValueError(f"need at least 2 items to split into validation and test halves, got {n}")
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[: n // 2]), np.sort(order[n // 2:])


def select_score(scores_in: dict[str, np.ndarray], scores_out: dict[str, np.ndarray],
                 split_in: tuple[np.ndarray, np.ndarray], split_out: tuple[np.ndarray, np.ndarray]) -> dict:
    """The score with the best validation AUROC, and every score's metrics on the test half.

    `split_in`/`split_out` are (validation, test) index pairs into the in- and out-of-distribution
    scores. Returns {"chosen": name, "validation_auroc": {name: value}, "test": {name: metrics}},
    where "test" holds detection_metrics on the test halves only.
    """
    names = [name for name in scores_in if name in scores_out]
    if not names:
        raise ValueError("no score is shared by the in- and out-of-distribution scores")
    (val_in, test_in), (val_out, test_out) = split_in, split_out
    validation = {name: auroc(np.asarray(scores_in[name])[val_in], np.asarray(scores_out[name])[val_out])
                  for name in names}
    chosen = max(names, key=lambda name: validation[name])  # max keeps the first of equal values
    test = {name: detection_metrics(np.asarray(scores_in[name])[test_in],
                                    np.asarray(scores_out[name])[test_out]) for name in names}
    return {"chosen": chosen, "validation_auroc": validation, "test": test}


def max_softmax_score(probs: np.ndarray) -> np.ndarray:
    """Negated top-class probability: a confident prediction is in-distribution."""
    return -np.asarray(probs).max(axis=1)


def head_scores(head, X: np.ndarray, probs: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Every OOD score a fitted head offers on features X: "msp" always, "recon" and "elbo" for a VFE.

    `probs`, the head's predict_proba(X), may be passed when already computed.
    """
    probs = head.predict_proba(X) if probs is None else probs
    scores = {"msp": max_softmax_score(probs)}
    if hasattr(head, "reconstruction_error"):
        scores["recon"] = head.reconstruction_error(X)
    if hasattr(head, "negative_elbo"):
        scores["elbo"] = head.negative_elbo(X)
    return scores


class MahalanobisScore:
    """Squared Mahalanobis distance to the closest class mean, one covariance shared by all classes
    (Lee et al. 2018), and its relative version (Ren et al. 2021), both from one fit.

    The relative score subtracts the squared distance under a single Gaussian fitted to all training
    features, which discounts the directions every class shares and helps on near-OOD data.
    Covariances are the empirical ones, pseudo-inverted (scikit-learn), as in both papers; the distances
    to all class means are three matrix products (scikit-learn's per-mean `mahalanobis` is far slower).
    """

    def fit(self, X: np.ndarray, y: np.ndarray) -> MahalanobisScore:
        X, y = np.asarray(X, dtype=np.float64), np.asarray(y)
        if X.ndim != 2 or len(X) != len(y):
            raise ValueError(f"X must be N x D and y N, got {X.shape} and {y.shape}")
        self.classes_, index = np.unique(y, return_inverse=True)
        self.means_ = np.stack([X[index == k].mean(0) for k in range(len(self.classes_))])
        self.shared_ = EmpiricalCovariance(assume_centered=True).fit(X - self.means_[index])
        self.background_ = EmpiricalCovariance().fit(X)
        return self

    def score(self, X: np.ndarray, relative: bool = False) -> np.ndarray:
        """Higher = farther from every class = more OOD."""
        X = np.asarray(X, dtype=np.float64)
        score = _squared_distances(X, self.means_, self.shared_.precision_).min(1)
        if relative:
            background = self.background_
            score = score - _squared_distances(X, background.location_[None], background.precision_)[:, 0]
        return score


def _squared_distances(X: np.ndarray, means: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """(x - m)^T P (x - m) for every row x and mean m, as three matrix products (N x M)."""
    XP = X @ precision
    squared = (XP * X).sum(1)[:, None] - 2 * XP @ means.T + ((means @ precision) * means).sum(1)[None]
    return squared.clip(min=0)
