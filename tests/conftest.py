"""Shared fixtures: small real data sets that every area's tests can use."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from threads import one_thread


@pytest.fixture(scope="session")
def digits_features():
    """scikit-learn's 8x8 digits as 64-d float features in [0, 1]: (X_train, X_test, y_train, y_test)."""
    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32)
    return train_test_split(X, y, test_size=0.3, random_state=0, stratify=y)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """No test writes into the user's ~/.cache/vfe: the feature cache lives in the test's tmp folder."""
    monkeypatch.setenv("VFE_CACHE", str(tmp_path / "vfe-cache"))


@pytest.fixture(autouse=True)
def _one_thread():
    """One thread for torch and the BLAS / OpenMP pools. The tests run tiny models on tiny data, where
    thread hand-off dominates: on 2 cores shared with other jobs, teams of two spin-wait on each other
    at every barrier (measured 5-20x slower for small convolutions, up to 80x for scikit-learn)."""
    with one_thread():
        yield
