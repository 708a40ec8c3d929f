"""Prior correction (Bayes' rule) for a deployment whose class priors differ from training."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA
from sklearn.pipeline import make_pipeline

from vfe.heads import SVMHead, adjust_priors, head_class
from vfe.heads.priors import PriorCorrected
from vfe.robustness.calibration import probability_metrics

# deployment priors: digit 0 is ten times and digit 9 six times as common as each other digit
SHIFTED = np.array([10, 1, 1, 1, 1, 1, 1, 1, 1, 6], dtype=float)


def _resample(y: np.ndarray, priors: np.ndarray, seed: int = 0) -> np.ndarray:
    """Test rows drawn without replacement so that class frequencies follow `priors`."""
    rng = np.random.default_rng(seed)
    per_class = min(np.sum(y == c) / p for c, p in enumerate(priors / priors.max()))
    return np.concatenate([rng.choice(np.flatnonzero(y == c), int(per_class * p), replace=False)
                           for c, p in enumerate(priors / priors.max())])


def test_bayes_rule_by_hand_and_counts_equal_probabilities():
    probs = np.array([[0.5, 0.5], [0.8, 0.2]])
    # train 50/50, deployment 3:1 -> p' proportional to (3 p0, p1)
    expected = np.array([[0.75, 0.25], [2.4 / 2.6, 0.2 / 2.6]])
    np.testing.assert_allclose(adjust_priors(probs, [0.5, 0.5], [0.75, 0.25]), expected)
    np.testing.assert_allclose(adjust_priors(probs, [50, 50], [300, 100]), expected)
    np.testing.assert_allclose(adjust_priors(probs, [2, 7], [2, 7]), probs)
    # all mass on a class that no longer occurs: the posterior falls back to the new priors
    np.testing.assert_allclose(adjust_priors([[1.0, 0.0, 0.0]], [1, 1, 1], [0, 1, 3]), [[0.0, 0.25, 0.75]])


@pytest.mark.parametrize("train, new, message", [
    ([0.5, 0.5, 0.0], [1, 1, 1], "train_priors: every class needs a prior > 0"),
    ([1, 1, 1], [1, -1, 1], "new_priors: priors must be finite and non-negative"),
    ([1, 1], [1, 1, 1], "train_priors: 2 values for 3 classes"),
    ([1, 1, 1], [0, 0, 0], "new_priors: priors sum to 0"),
])
def test_invalid_priors_are_named(train, new, message):
    with pytest.raises(ValueError, match=message):
        adjust_priors(np.full((2, 3), 1 / 3), train, new)


def test_correction_helps_on_a_test_set_with_shifted_priors(digits_features):
    X_train, X_test, y_train, y_test = digits_features
    shifted = _resample(y_test, SHIFTED)
    assert np.bincount(y_test[shifted])[0] > 5 * np.bincount(y_test[shifted])[1]
    # a weak but calibrated model (4 principal components): the priors then carry real information
    head = make_pipeline(PCA(4, random_state=0), SVMHead()).fit(X_train, y_train)
    corrected = PriorCorrected(head, SHIFTED, prefit=True).fit(None, y_train)
    before = probability_metrics(head.predict_proba(X_test[shifted]), y_test[shifted])
    after = probability_metrics(corrected.predict_proba(X_test[shifted]), y_test[shifted])
    assert after["nll"] < 0.9 * before["nll"]
    assert after["accuracy"] > before["accuracy"]


def test_wrapper_fits_saves_and_differentiates(digits_features):
    X_train, X_test, y_train, _ = digits_features
    X_train, y_train = X_train[:400], y_train[:400]
    model = PriorCorrected(SVMHead(), SHIFTED).fit(X_train, y_train)
    np.testing.assert_allclose(model.train_priors_, np.bincount(y_train) / len(y_train))
    tensors, meta = model.export_state()
    loaded = head_class(meta["head"]).from_state(tensors, meta)
    np.testing.assert_array_equal(loaded.predict_proba(X_test), model.predict_proba(X_test))
    with torch.no_grad():
        probs = model.probability_module()(torch.from_numpy(X_test)).numpy()
    np.testing.assert_allclose(probs, model.predict_proba(X_test), atol=1e-5)
    with pytest.raises(ValueError, match="new_priors: 3 values for 10 classes"):
        PriorCorrected(SVMHead(), [1, 1, 1]).fit(X_train, y_train)
