"""SVMHead: a linear SVM with cross-validated Platt calibration, for very small labelled sets."""
from __future__ import annotations

import numpy as np
import torch
from sklearn.svm import LinearSVC

from vfe.heads import SVMHead, head_class
from vfe.robustness.calibration import probability_metrics


def _round_trip(head):
    tensors, meta = head.export_state()
    return head_class(meta["head"]).from_state(tensors, meta)


def _per_class(y: np.ndarray, n: int) -> np.ndarray:
    return np.concatenate([np.flatnonzero(y == c)[:n] for c in np.unique(y)])


def test_svm_learns_from_ten_labels_per_class_with_useful_probabilities(digits_features):
    X_train, X_test, y_train, y_test = digits_features
    few = _per_class(y_train, 10)
    head = SVMHead().fit(X_train[few], y_train[few])
    metrics = probability_metrics(head.predict_proba(X_test), y_test)
    assert metrics["accuracy"] > 0.8  # chance is 0.1
    assert metrics["nll"] < 0.5 * np.log(10)  # far better than the uniform guess
    assert head.history_["calibration"] == "5-fold cross-validated"
    loaded = _round_trip(head)
    np.testing.assert_array_equal(loaded.predict_proba(X_test), head.predict_proba(X_test))


def test_decisions_are_scikit_learns_linear_svm(digits_features):
    X_train, X_test, y_train, _ = digits_features
    head = SVMHead(C=0.5).fit(X_train, y_train)
    reference = LinearSVC(C=0.5, max_iter=10_000, random_state=0).fit(X_train, y_train)
    np.testing.assert_allclose(head.margins(X_test), reference.decision_function(X_test), atol=1e-4)
    with torch.no_grad():
        probs = head.probability_module()(torch.from_numpy(X_test)).numpy()
    np.testing.assert_allclose(probs, head.predict_proba(X_test), atol=1e-6)


def test_two_classes_and_single_example_classes(digits_features):
    X_train, X_test, y_train, y_test = digits_features
    binary, test_binary = np.isin(y_train, [3, 8]), np.isin(y_test, [3, 8])
    head = SVMHead().fit(X_train[binary], y_train[binary])
    probs = head.predict_proba(X_test[test_binary])
    assert probs.shape == (test_binary.sum(), 2) and head.margins(X_test[:3]).shape == (3,)
    assert head.score(X_test[test_binary], y_test[test_binary]) > 0.9
    one_each = _per_class(y_train, 1)
    tiny = SVMHead().fit(X_train[one_each], y_train[one_each])
    assert tiny.history_["calibration"] == "in-sample"
    assert tiny.score(X_test, y_test) > 0.4
