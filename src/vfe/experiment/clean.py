"""Clean test metrics of every fitted head: accuracy, negative log-likelihood, calibration error."""
from __future__ import annotations

import numpy as np

from vfe.robustness.calibration import probability_metrics


def evaluate_clean(models: dict, X: np.ndarray, y: np.ndarray) -> tuple[dict, dict]:
    """Per (head, seed) metrics, and the probabilities (kept for reliability diagrams and OOD scores)."""
    metrics, probs = {}, {}
    for key, model in models.items():
        p = model.predict_proba(X)
        probs[key] = p
        metrics[key] = probability_metrics(p, y)
    return metrics, probs
