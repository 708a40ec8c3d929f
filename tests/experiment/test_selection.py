"""One subset selector: "n images" means the same images in `vfe run`, `vfe sweep`, `vfe lab`, the
attacked subset and the finetune head, for the same seed."""
from __future__ import annotations

import numpy as np
import pytest

from vfe.data import load_train_test
from vfe.data.split import balanced_index, balanced_subset
from vfe.experiment import fit, sweep
from vfe.experiment.config import DataSettings
from vfe.experiment.prepare import Shared, load_data
from vfe.experiment.prepare import replicate_train as _replicate_train
from vfe.experiment.replicates import replicate_seed


def by_hand(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """The documented rule written out: n // k per class (first n % k classes one more), from a seeded
    permutation of each class in sorted class order; assumes every class is large enough."""
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    picked = [rng.permutation(np.flatnonzero(labels == c))[:n // len(classes) + (i < n % len(classes))]
              for i, c in enumerate(classes)]
    return np.sort(np.concatenate(picked))


@pytest.mark.parametrize("n, seed", [(100, 0), (37, 3), (10, 1), (1000, 2)])
def test_balanced_index_follows_the_documented_rule(n, seed):
    labels = np.repeat(np.arange(10), 200)
    np.random.default_rng(9).shuffle(labels)
    index = balanced_index(labels, n, seed)
    assert np.array_equal(index, by_hand(labels, n, seed))
    counts = np.bincount(labels[index], minlength=10)
    assert counts.max() - counts.min() <= 1 and len(index) == n == len(set(index.tolist()))
    assert np.array_equal(index, balanced_index(labels, n, seed))  # deterministic
    if n < 1000:
        assert not np.array_equal(index, balanced_index(labels, n, seed + 1))


def test_a_small_class_gives_all_it_has_and_the_others_fill_up():
    labels = np.array([0] * 3 + [1] * 50 + [2] * 50)
    index = balanced_index(labels, 30, 0)
    assert len(index) == 30 and np.bincount(labels[index]).tolist() == [3, 14, 13]
    assert np.array_equal(balanced_index(labels, None, 0), np.arange(len(labels)))
    assert np.array_equal(balanced_index(labels, 500, 0), np.arange(len(labels)))
    with pytest.raises(ValueError, match="subset size"):
        balanced_index(labels, 0, 0)


def test_run_draws_its_subsets_with_the_selector():
    # the fixed test subset with the base seed; each replicate's training subset with its own seed, from the pool
    pool, test, name = load_data(DataSettings(dataset="digits", n_train=200, n_test=50, data_seed=4),
                                 log=lambda *_: None)
    full_train, full_test = load_train_test("digits", seed=4)
    assert name == "digits" and np.array_equal(pool.images, full_train.images)
    assert np.array_equal(test.images, full_test.images[balanced_index(full_test.labels, 50, 4)])
    shared = Shared(name, pool, test, backbone=None, cache=None)
    for r in range(2):
        seed = replicate_seed(4, r)
        rows = balanced_index(full_train.labels, 200, seed)
        assert np.array_equal(_replicate_train(shared, 200, seed).images, full_train.images[rows])


def test_sweep_cells_train_on_the_selectors_rows(digits_features, tmp_path, monkeypatch):
    X_train, X_test, y_train, y_test = digits_features
    seen = []

    class Recorder:
        def __init__(self, **params):
            self.params = params

        def get_params(self):
            return self.params

        def fit(self, X, y):
            seen.append(X)
            self.classes_ = np.unique(y)
            return self

        def predict_proba(self, X):
            return np.full((len(X), len(self.classes_)), 1 / len(self.classes_))

    monkeypatch.setattr(fit, "make_head", lambda name, **params: Recorder(**params))
    sweep.run_sweep({"heads": ["linear"], "seeds": [5], "train_sizes": [120]}, X_train, y_train, X_test, y_test,
                    tmp_path, progress=False)
    assert np.array_equal(seen[0], X_train[balanced_index(y_train, 120, 5)])


def test_balanced_subset_tags_what_it_chose():
    full, _ = load_train_test("digits")
    chosen = balanced_subset(full, 30, 2, "train")
    assert chosen.source.endswith("[train:n=30:seed=2]") and balanced_subset(full, None, 2, "train") is full
