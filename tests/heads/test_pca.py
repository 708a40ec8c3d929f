"""PCAHead: the linear bottleneck (PCA to the latent size, then the linear head) on digits."""
from __future__ import annotations

import numpy as np
import torch
from sklearn.base import clone
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from vfe.heads import PCAHead, head_class, make_head


def _round_trip(head):
    tensors, meta = head.export_state()
    return head_class(meta["head"]).from_state(tensors, meta)


def test_pca_head_learns_and_round_trips(digits_features):
    X_train, X_test, y_train, y_test = digits_features
    head = make_head("pca", latent_dim=16, lr=1e-2, random_state=0).fit(X_train, y_train)
    assert head.score(X_test, y_test) > 0.9  # chance is 0.1
    assert head.history_["bottleneck"]["n_components"] == 16
    loaded = _round_trip(head)
    np.testing.assert_array_equal(loaded.predict_proba(X_test), head.predict_proba(X_test))
    np.testing.assert_array_equal(loaded.transform(X_test), head.transform(X_test))


def test_pca_code_is_decorrelated_with_decreasing_variance(digits_features):
    X_train, _, y_train, _ = digits_features
    head = PCAHead(latent_dim=8, epochs=1).fit(X_train, y_train)
    code = head.transform(X_train).astype(np.float64)
    cov = np.cov(code, rowvar=False)
    variances = np.diag(cov)
    assert np.all(np.diff(variances) < 0)
    off_diagonal = cov - np.diag(variances)
    assert np.abs(off_diagonal).max() < 0.05 * variances.max()


def test_latent_size_is_capped_by_the_data(digits_features):
    X_train, X_test, y_train, _ = digits_features
    head = PCAHead(latent_dim=256, epochs=1, validation_fraction=0.0).fit(X_train[:40], y_train[:40])
    assert head.transform(X_test).shape == (len(X_test), 40)  # 40 samples < 64 features < 256


def test_pca_head_in_a_pipeline_and_as_a_torch_module(digits_features):
    X_train, X_test, y_train, y_test = digits_features
    pipe = make_pipeline(StandardScaler(), PCAHead(latent_dim=24, lr=1e-2, random_state=1))
    assert clone(pipe).fit(X_train, y_train).score(X_test, y_test) > 0.85
    head = pipe.fit(X_train, y_train)[-1]
    X_scaled = pipe[0].transform(X_test).astype(np.float32)
    with torch.no_grad():
        probs = head.probability_module()(torch.from_numpy(X_scaled)).numpy()
    np.testing.assert_allclose(probs, head.predict_proba(X_scaled), atol=1e-6)
