"""Clean test metrics of every fitted head: accuracy, negative log-likelihood, calibration error."""
from __future__ import annotations

import numpy as np

from vfe.robustness.calibration import expected_calibration_error, negative_log_likelihood


def probability_metrics(probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    return {"accuracy": float((probs.argmax(1) == labels).mean()),
            "nll": float(negative_log_likelihood(probs, labels)),
            "ece": float(expected_calibration_error(probs, labels, n_bins=15))}


def evaluate_clean(models: dict, X: np.ndarray, y: np.ndarray) -> tuple[dict, dict]:
    """Per (head, seed) metrics, and the probabilities (kept for reliability diagrams and OOD scores)."""
    metrics, probs = {}, {}
    for key, model in models.items():
        p = model.predict_proba(X)
        probs[key] = p
        metrics[key] = probability_metrics(p, y)
    return metrics, probs
