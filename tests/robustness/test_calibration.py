"""ECE, NLL and reliability curves: a hand-computed case, a calibrated sampler, scikit-learn's log loss."""
import math

import numpy as np
import pytest
from sklearn.metrics import log_loss

from vfe.robustness.calibration import (
    expected_calibration_error,
    negative_log_likelihood,
    probability_metrics,
    reliability_curve,
)


def _two_class(confidence: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    probs = np.empty((len(confidence), 2))
    probs[np.arange(len(confidence)), predicted] = confidence
    probs[np.arange(len(confidence)), 1 - predicted] = 1 - confidence
    return probs


def test_ece_by_hand():
    # confidences 0.85, 0.85 (one right) -> bin (0.8, 0.9]: |0.5 - 0.85| x 2/4
    # confidences 0.55, 0.65 (both right) -> bins (0.5, 0.6], (0.6, 0.7]: |1 - 0.55| x 1/4 + |1 - 0.65| x 1/4
    probs = _two_class(np.array([0.85, 0.85, 0.55, 0.65]), np.array([0, 0, 1, 1]))
    labels = np.array([0, 1, 1, 1])
    expected = 0.35 * 2 / 4 + 0.45 / 4 + 0.35 / 4
    assert expected_calibration_error(probs, labels, n_bins=10) == pytest.approx(expected)
    # one bin: |mean accuracy - mean confidence|
    assert expected_calibration_error(probs, labels, n_bins=1) == pytest.approx(abs(0.75 - 0.725))


def test_bins_are_right_closed():
    probs = _two_class(np.array([0.5, 1.0]), np.array([0, 0]))
    curve = reliability_curve(probs, np.array([0, 0]), n_bins=2)
    assert curve["count"] == [1, 1]  # 0.5 ends the first bin (0, 0.5]; 1.0 ends the last


def _sample(n: int, n_classes: int, rng, temperature: float) -> tuple[np.ndarray, np.ndarray]:
    """Predictions whose label is drawn from the predicted distribution itself (calibrated when
    temperature = 1); temperature < 1 reports sharper probabilities than the labels follow."""
    logits = rng.normal(scale=2.0, size=(n, n_classes))
    true_probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = (rng.random((n, 1)) > true_probs.cumsum(1)).sum(1).clip(max=n_classes - 1)
    reported = np.exp(logits / temperature) / np.exp(logits / temperature).sum(1, keepdims=True)
    return reported, labels


def test_ece_of_a_calibrated_sampler_vanishes_and_overconfidence_shows():
    rng = np.random.default_rng(0)
    probs, labels = _sample(40000, 5, rng, temperature=1.0)
    assert expected_calibration_error(probs, labels) < 0.01
    sharp, labels = _sample(40000, 5, rng, temperature=0.5)
    assert expected_calibration_error(sharp, labels) > 0.05


def test_nll_matches_scikit_learn_log_loss():
    rng = np.random.default_rng(1)
    probs = rng.dirichlet(np.ones(7), size=500)
    labels = rng.integers(0, 7, size=500)
    assert negative_log_likelihood(probs, labels) == pytest.approx(log_loss(labels, probs, labels=range(7)))
    assert negative_log_likelihood(probs.astype(np.float32), labels) == pytest.approx(
        log_loss(labels, probs, labels=range(7)), rel=1e-5)


def test_nll_of_a_certain_mistake_is_finite():
    probs = np.array([[1.0, 0.0], [0.5, 0.5]])
    expected = (-math.log(1e-15) + math.log(2)) / 2
    assert negative_log_likelihood(probs, np.array([1, 0])) == pytest.approx(expected)


def test_reliability_curve_agrees_with_ece_and_marks_empty_bins():
    rng = np.random.default_rng(2)
    probs, labels = _sample(2000, 3, rng, temperature=1.0)
    curve = reliability_curve(probs, labels, n_bins=15)
    assert sum(curve["count"]) == 2000 and len(curve["bin_edges"]) == 16
    assert curve["ece"] == pytest.approx(expected_calibration_error(probs, labels, n_bins=15))
    # with 3 classes no top probability is below 1/3: the first bins are empty
    assert curve["count"][0] == 0 and math.isnan(curve["accuracy"][0]) and math.isnan(curve["confidence"][0])
    filled = [i for i, c in enumerate(curve["count"]) if c]
    assert all(curve["bin_edges"][i] < curve["confidence"][i] <= curve["bin_edges"][i + 1] for i in filled)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="N x classes"):
        expected_calibration_error(np.ones(3), np.zeros(3, int))
    with pytest.raises(ValueError, match="class indices"):
        negative_log_likelihood(np.full((2, 2), 0.5), np.array([0, 2]))
    with pytest.raises(ValueError, match="n_bins"):
        reliability_curve(np.full((2, 2), 0.5), np.array([0, 1]), n_bins=0)


def test_the_default_is_15_bins_and_n_bins_changes_the_binning():
    """Confidences 0.62 (right) and 0.68 (wrong). 15 bins, edges at k/15: (0.6, 0.667] and (0.667, 0.733]
    apart, ECE = |1 - 0.62| / 2 + |0 - 0.68| / 2 = 0.53. 10 bins: both in (0.6, 0.7], ECE = |0.5 - 0.65| = 0.15."""
    probs = _two_class(np.array([0.62, 0.68]), np.array([0, 0]))
    labels = np.array([0, 1])
    assert expected_calibration_error(probs, labels) == pytest.approx(0.53)
    assert expected_calibration_error(probs, labels, n_bins=10) == pytest.approx(0.15)
    curve = reliability_curve(probs, labels)
    assert len(curve["bin_edges"]) == 16 and curve["ece"] == pytest.approx(0.53)
    assert [i for i, c in enumerate(curve["count"]) if c] == [9, 10]
    assert reliability_curve(probs, labels, n_bins=10)["count"][6] == 2
    # what every stage reports: accuracy, NLL = mean -log p(label) = (-log 0.62 - log 0.32) / 2, 15-bin ECE
    assert probability_metrics(probs, labels) == pytest.approx(
        {"accuracy": 0.5, "nll": -(math.log(0.62) + math.log(0.32)) / 2, "ece": 0.53})
