"""Detectors a pipeline carries to abstain: a score per input and a threshold chosen for a target coverage.

The scores are vfe.robustness.ood's (higher = less familiar = abstain), not written again here:

    msp          negated max softmax probability of the head (Hendrycks & Gimpel 2017); any head
    mahalanobis  squared Mahalanobis distance of the backbone features to the closest class mean under one
                 shared covariance (Lee et al. 2018), means and precision fitted on the training features;
                 the covariance is shrunk (Ledoit & Wolf 2004, see `shrunk_precision`)
    vfe-recon    the VFE head's reconstruction error of the features (a VFE head only)
    vfe-elbo     the VFE head's negative ELBO of the features (a VFE head only)

A detector is fitted once (`fit_detector`): its scores on validation images, which the head never trained
on, give the threshold for the target coverage (vfe.robustness.selective: accepted when score <=
threshold). Those validation scores are kept (a small array), so a pipeline can abstain at another
coverage later: the threshold is re-derived from them by the same rule, never guessed.

Saved state: tensors (the validation scores; Mahalanobis' class means and precision, float64 so scores
after loading are bit-identical) and JSON (name, target coverage, threshold, its validation coverage).
The command line imports this module for the names alone, so the scores' module (scikit-learn) is
imported when a detector is fitted or scores.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np

from vfe.errors import SettingsError
from vfe.robustness.selective import check_coverage, coverage_at, threshold_for_coverage

DETECTORS = {
    "msp": "negated max softmax probability of the head (any head)",
    "mahalanobis": "Mahalanobis distance of the backbone features to the closest class mean (Lee et al. 2018)",
    "vfe-recon": "the VFE head's reconstruction error of the features (--head vfe)",
    "vfe-elbo": "the VFE head's negative ELBO of the features (--head vfe)",
}
VFE_METHODS = {"vfe-recon": "reconstruction_error", "vfe-elbo": "negative_elbo"}
# the OOD stage's name of each head-offered detector's score (vfe.robustness.ood.head_scores); Mahalanobis is the
# stage's head-free baseline instead
OOD_SCORE_OF = {"msp": "msp", "vfe-recon": "recon", "vfe-elbo": "elbo"}
MIN_VALIDATION = 20  # fewer validation images than this give a threshold that is mostly chance
DEFAULT_VALIDATION = 1000  # validation images drawn for the threshold when the caller does not say


@dataclass(frozen=True)
class Abstained:
    """What a pipeline says instead of classes for an input past its detector's threshold."""

    detector: str
    score: float
    threshold: float


def check_detector(name: str, head_class: type | None = None) -> str:
    """`name` if it is a detector (and, given the head's class, one that head offers); a SettingsError
    naming the choices otherwise, raised before any work."""
    if name not in DETECTORS:
        raise SettingsError(f"--detector {name!r} is not a detector; choose one of {', '.join(DETECTORS)}")
    if name in VFE_METHODS and head_class is not None and not hasattr(head_class, VFE_METHODS[name]):
        raise SettingsError(f"--detector {name} needs a VFE head (--head vfe); {head_class.__name__} has no "
                         f"{VFE_METHODS[name]}: choose msp or mahalanobis")
    return name


def validation_size_needed(coverage: float) -> int:
    """The fewest validation images for `coverage`: MIN_VALIDATION, and enough that at least one image
    lies past the threshold (1 / (1 - coverage))."""
    return max(MIN_VALIDATION, math.ceil(round(1 / (1 - check_coverage(coverage)), 9)))


@dataclass(eq=False)
class Detector:
    """A fitted detector: `score` inputs, abstain above `threshold_at(coverage)`."""

    name: str
    coverage: float  # the target coverage it was fitted for
    threshold: float  # threshold_for_coverage(validation_scores, coverage)
    validation_scores: np.ndarray  # float64, one per validation image
    means: np.ndarray | None = field(default=None, repr=False)  # mahalanobis: class means, classes x D
    precision: np.ndarray | None = field(default=None, repr=False)  # mahalanobis: shared precision, D x D

    @property
    def validation_coverage(self) -> float:
        """Share of the validation images accepted at `threshold` (>= coverage; more only where ties sit on it)."""
        return coverage_at(self.validation_scores, self.threshold)

    def threshold_at(self, coverage: float | None = None) -> float:
        """The threshold for `coverage` (None: the fitted one), by the rule that chose the fitted threshold."""
        if coverage is None or check_coverage(coverage) == self.coverage:
            return self.threshold
        return threshold_for_coverage(self.validation_scores, coverage)

    def score(self, head, X: np.ndarray, probs: np.ndarray | None = None) -> np.ndarray:
        """Scores (float64, higher = abstain sooner) of features X; `probs`, the head's predict_proba(X), may
        be passed when already computed."""
        from vfe.robustness.ood import max_softmax_score

        if self.name == "msp":
            return max_softmax_score(head.predict_proba(X) if probs is None else probs).astype(np.float64)
        if self.name == "mahalanobis":
            return mahalanobis_scorer(self.means, self.precision).score(X)
        return np.asarray(getattr(head, VFE_METHODS[self.name])(X), dtype=np.float64)

    def export_state(self) -> tuple[dict[str, np.ndarray], dict]:
        """(named float64 arrays, JSON) that from_state rebuilds it from."""
        tensors = {"validation_scores": np.ascontiguousarray(self.validation_scores, dtype=np.float64)}
        if self.means is not None:
            tensors["means"] = np.ascontiguousarray(self.means, dtype=np.float64)
            tensors["precision"] = np.ascontiguousarray(self.precision, dtype=np.float64)
        meta = {"name": self.name, "coverage": self.coverage, "threshold": self.threshold,
                "validation_coverage": self.validation_coverage, "n_validation": len(self.validation_scores)}
        return tensors, meta

    @classmethod
    def from_state(cls, tensors: dict, meta: dict) -> Detector:
        """The detector export_state described; `tensors` are arrays or CPU torch tensors."""
        arrays = {k: np.asarray(v) for k, v in tensors.items()}
        return cls(meta["name"], meta["coverage"], meta["threshold"], arrays["validation_scores"],
                   arrays.get("means"), arrays.get("precision"))


def fit_detector(name: str, head, X_train: np.ndarray, y_train: np.ndarray, X_val: np.ndarray,
                 coverage: float) -> Detector:
    """A detector for a fitted `head`: Mahalanobis fitted on the training features and labels, the
    threshold chosen on the validation features X_val (images the head never trained on)."""
    check_detector(name, type(head))
    coverage = check_coverage(coverage)
    if len(X_val) < validation_size_needed(coverage):
        raise SettingsError(f"a threshold for coverage {coverage} needs at least "
                            f"{validation_size_needed(coverage)} validation images, got {len(X_val)}")
    detector = Detector(name, coverage, math.nan, np.empty(0))
    if name == "mahalanobis":
        detector.means, detector.precision = shrunk_precision(X_train, y_train)
    detector.validation_scores = detector.score(head, X_val)
    detector.threshold = threshold_for_coverage(detector.validation_scores, coverage)
    return detector


def mahalanobis_scorer(means: np.ndarray, precision: np.ndarray):
    """A vfe.robustness.ood.MahalanobisScore whose `score` uses these class means and shared precision (its
    score reads nothing else), e.g. those of `shrunk_precision`."""
    from vfe.robustness.ood import MahalanobisScore

    fitted = MahalanobisScore()
    fitted.means_, fitted.shared_ = means, SimpleNamespace(precision_=precision)
    return fitted


def shrunk_precision(X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(class means, precision of the shared covariance shrunk towards a multiple of the identity by the
    Ledoit-Wolf amount), as ood.MahalanobisScore's fit estimates them but for the shrinkage; its `score`
    reads them (Detector.score).

    Why shrink: with fewer training images than feature dimensions (300 digits, 1280 features) the empirical
    covariance is singular and its pseudo-inverse gives distance 0 along every direction the training data
    does not span, exactly where unfamiliar inputs differ: measured on digits at 32 px, uniform noise images
    were flagged 5 % of the time at 90 % coverage with the pseudo-inverse, 100 % with shrinkage. With many
    images per dimension the Ledoit-Wolf amount goes to 0 and this is Lee et al.'s estimate. The shrunk
    covariance is positive definite, so a plain inverse does (6x faster at 1280 features than the two
    eigendecompositions MahalanobisScore.fit makes).
    """
    from sklearn.covariance import ledoit_wolf

    X = np.asarray(X, dtype=np.float64)
    classes, index = np.unique(np.asarray(y), return_inverse=True)
    means = np.stack([X[index == k].mean(0) for k in range(len(classes))])
    covariance, _ = ledoit_wolf(X - means[index], assume_centered=True)
    return means, np.linalg.inv(covariance)


def expected_layout(meta: dict, n_features: int, n_classes: int) -> dict[str, tuple[str, tuple[int, ...]]]:
    """{tensor name: (safetensors dtype, shape)} a detector with this JSON must have, checked against the
    file before anything is built; a ValueError names a field that does not fit."""
    name, n = meta.get("name"), meta.get("n_validation")
    if name not in DETECTORS:
        raise ValueError(f"the header's detector.name {name!r} is not one of {', '.join(DETECTORS)}")
    for key in ("coverage", "threshold", "validation_coverage"):
        value = meta.get(key)
        if not (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)):
            raise ValueError(f"the header's detector.{key} {value!r} is not a finite number")
    if not 0 < meta["coverage"] < 1:
        raise ValueError(f"the header's detector.coverage {meta['coverage']!r} is not between 0 and 1")
    if not (isinstance(n, int) and not isinstance(n, bool) and n >= 1):
        raise ValueError(f"the header's detector.n_validation {n!r} is not a positive whole number")
    layout = {"validation_scores": ("F64", (n,))}
    if name == "mahalanobis":
        layout.update(means=("F64", (n_classes, n_features)), precision=("F64", (n_features, n_features)))
    return layout


__all__ = ["DEFAULT_VALIDATION", "DETECTORS", "MIN_VALIDATION", "Abstained", "Detector", "check_detector", "expected_layout", "fit_detector",
           "shrunk_precision", "validation_size_needed"]
