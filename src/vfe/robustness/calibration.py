"""Calibration of predicted class probabilities: ECE (Guo et al. 2017), NLL, reliability curves.

Confidence is the top-class probability; bins are equal-width on [0, 1], right-closed
((0, 1/B], (1/B, 2/B], ...), as in Guo et al.; ECE = sum_b (n_b / n) |accuracy_b - confidence_b|.
"""
from __future__ import annotations

import numpy as np

# probabilities are clipped before the log: a confidently wrong prediction costs -log(1e-15) = 34.5 nats,
# not infinity, so one such sample cannot make a whole mean NLL infinite
NLL_CLIP = 1e-15


def _check(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels)
    if probs.ndim != 2 or len(probs) != len(labels):
        raise ValueError(f"probs must be N x classes and labels N, got {probs.shape} and {labels.shape}")
    if len(labels) == 0:
        raise ValueError("no samples: probs and labels are empty")
    if labels.min() < 0 or labels.max() >= probs.shape[1]:
        raise ValueError(f"labels must be class indices in [0, {probs.shape[1]}), "
                         f"got {labels.min()}..{labels.max()}")
    return probs, labels.astype(np.int64)


def _bins(probs: np.ndarray, labels: np.ndarray, n_bins: int):
    """Per bin: sample count, mean confidence, accuracy (NaN where a bin is empty)."""
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    confidence = probs.max(1)
    correct = (probs.argmax(1) == labels).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    index = np.searchsorted(edges[1:-1], confidence, side="left")  # right-closed bins
    count = np.bincount(index, minlength=n_bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_confidence = np.bincount(index, confidence, minlength=n_bins) / count
        accuracy = np.bincount(index, correct, minlength=n_bins) / count
    return edges, count, mean_confidence, accuracy


def _ece(count: np.ndarray, confidence: np.ndarray, accuracy: np.ndarray) -> float:
    filled = count > 0
    return float(np.sum(count[filled] / count.sum() * np.abs(accuracy[filled] - confidence[filled])))


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    """Weighted mean |accuracy - confidence| over equal-width confidence bins (0 = calibrated)."""
    probs, labels = _check(probs, labels)
    _, count, confidence, accuracy = _bins(probs, labels, n_bins)
    return _ece(count, confidence, accuracy)


def negative_log_likelihood(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean -log p(true class), with probabilities clipped to [NLL_CLIP, 1]."""
    probs, labels = _check(probs, labels)
    return float(-np.mean(np.log(np.clip(probs[np.arange(len(labels)), labels], NLL_CLIP, 1.0))))


def reliability_curve(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> dict:
    """What a reliability diagram plots, JSON-friendly: bin edges, and per bin the sample count,
    mean confidence and accuracy (NaN for empty bins), plus the ECE of the same binning."""
    probs, labels = _check(probs, labels)
    edges, count, confidence, accuracy = _bins(probs, labels, n_bins)
    return {"bin_edges": edges.tolist(), "count": count.astype(int).tolist(),
            "confidence": confidence.tolist(), "accuracy": accuracy.tolist(),
            "ece": _ece(count, confidence, accuracy)}


def probability_metrics(probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Accuracy, NLL and 15-bin ECE of predicted probabilities: the numbers every evaluation reports."""
    return {"accuracy": float((probs.argmax(1) == labels).mean()),
            "nll": float(negative_log_likelihood(probs, labels)),
            "ece": float(expected_calibration_error(probs, labels, n_bins=15))}
