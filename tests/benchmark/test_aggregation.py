"""The numbers the report prints, aggregated from per-seed measurements: each checked on a hand-made case
whose expected values are worked out by hand in the comments, never by calling the code under test."""
from __future__ import annotations

import math

import numpy as np
import pytest

from vfe.benchmark.config import HeadSettings
from vfe.benchmark.corruption import corruption_summary
from vfe.benchmark.fit import fit_heads
from vfe.benchmark.summary import summarise


def metrics(accuracy: float) -> dict:
    return {"accuracy": accuracy, "nll": 1.0 - accuracy, "ece": 0.01}


# accuracy per corruption and severity; gaussian_noise is one of the 15 benchmark corruptions,
# speckle_noise one of the 4 extra ones
TABLE = {
    ("linear", 0): {"gaussian_noise": {1: 0.8, 2: 0.6}, "speckle_noise": {1: 0.9, 2: 0.7}},
    ("linear", 1): {"gaussian_noise": {1: 0.6, 2: 0.4}, "speckle_noise": {1: 0.9, 2: 0.7}},
    ("vfe", 0): {"gaussian_noise": {1: 0.7, 2: 0.5}, "speckle_noise": {1: 0.9, 2: 0.9}},
    ("vfe", 1): {"gaussian_noise": {1: 0.7, 2: 0.5}, "speckle_noise": {1: 0.8, 2: 0.8}},
}
CLEAN = {("linear", 0): 0.9, ("linear", 1): 0.8, ("vfe", 0): 0.85, ("vfe", 1): 0.85}


@pytest.fixture
def results() -> dict:
    per_model = {key: {c: {s: metrics(a) for s, a in sev.items()} for c, sev in table.items()}
                 for key, table in TABLE.items()}
    clean = {key: metrics(a) for key, a in CLEAN.items()}
    corruptions = corruption_summary(per_model, clean, [1, 2])
    return {"clean": {h: {str(s): clean[(h, s)] for (h2, s) in CLEAN if h2 == h} for h in ("linear", "vfe")},
            "corruptions": corruptions}


def test_ce_and_mce_use_the_baseline_of_the_same_seed(results):
    vfe = results["corruptions"]["per_head"]["vfe"]
    # seed 0: vfe's summed gaussian-noise error 0.3 + 0.5 = 0.8, linear's (seed 0) 0.2 + 0.4 = 0.6
    assert vfe["0"]["CE"]["gaussian_noise"] == pytest.approx(0.8 / 0.6)
    # seed 1: linear's seed-1 error 0.4 + 0.6 = 1.0 is the normaliser (seed 0's 0.6 would give 1.333)
    assert vfe["1"]["CE"]["gaussian_noise"] == pytest.approx(0.8 / 1.0)
    # mCE averages the benchmark corruptions only: speckle noise is not among the 15
    assert vfe["0"]["mCE"] == pytest.approx(0.8 / 0.6) and vfe["1"]["mCE"] == pytest.approx(0.8)
    assert results["corruptions"]["per_head"]["linear"]["1"]["mCE"] == pytest.approx(1.0)


def test_relative_mce_measures_the_drop_from_clean_error(results):
    vfe = results["corruptions"]["per_head"]["vfe"]["0"]
    # (0.3 - 0.15) + (0.5 - 0.15) = 0.5 against linear's (0.2 - 0.1) + (0.4 - 0.1) = 0.4
    assert vfe["relative_mCE"] == pytest.approx(0.5 / 0.4)


def test_mean_corruption_accuracy_over_the_benchmark_corruptions_and_over_all(results):
    vfe = results["corruptions"]["per_head"]["vfe"]["1"]
    assert vfe["mean_accuracy"] == pytest.approx((0.7 + 0.5) / 2)  # the 15 benchmark ones: gaussian noise
    assert vfe["mean_accuracy_all"] == pytest.approx((0.7 + 0.5 + 0.8 + 0.8) / 4)  # all 19 measured


def test_summary_means_stds_and_verdicts(results):
    summary = summarise(results)
    table = summary["table"]["vfe"]
    # corruption accuracy per seed: 0.6 and 0.6 -> mean 0.6, sample std 0
    assert table["corruption_accuracy"]["mean"] == pytest.approx(0.6) and table["corruption_accuracy"]["std"] == 0
    # mCE per seed 1.3333 and 0.8: mean 1.0667, sample std |1.3333 - 0.8| / sqrt(2)
    assert table["mCE"]["mean"] == pytest.approx((0.8 / 0.6 + 0.8) / 2)
    assert table["mCE"]["std"] == pytest.approx(abs(0.8 / 0.6 - 0.8) / math.sqrt(2))
    clean = summary["vs_baseline"]["vfe"]["clean_accuracy"]
    # paired differences 0.85 - 0.9 = -0.05 and 0.85 - 0.8 = +0.05: mean 0, and no clear difference
    assert clean["mean_diff"] == pytest.approx(0.0) and clean["verdict"] == "no clear difference"
    mce = summary["vs_baseline"]["vfe"]["mCE"]
    assert mce["mean_diff"] == pytest.approx((0.8 / 0.6 - 1 + 0.8 - 1) / 2)
    assert summary["baseline"] == "linear" and "linear" not in summary["vs_baseline"]


def test_a_lower_mce_beyond_the_spread_is_better_and_a_higher_one_worse():
    per_model = {("linear", s): {"gaussian_noise": {1: metrics(0.5)}} for s in (0, 1)}
    per_model |= {("vfe", 0): {"gaussian_noise": {1: metrics(0.75)}}, ("vfe", 1): {"gaussian_noise": {1: metrics(0.7)}}}
    per_model |= {("vib", 0): {"gaussian_noise": {1: metrics(0.3)}}, ("vib", 1): {"gaussian_noise": {1: metrics(0.2)}}}
    clean = {key: metrics(0.9) for key in per_model}
    results = {"clean": {h: {str(s): clean[(h, s)] for s in (0, 1)} for h in ("linear", "vfe", "vib")},
               "corruptions": corruption_summary(per_model, clean, [1])}
    verdicts = summarise(results)["vs_baseline"]
    assert verdicts["vfe"]["mCE"]["verdict"] == "better than baseline"  # CE 0.5 and 0.6 < 1
    assert verdicts["vib"]["mCE"]["verdict"] == "worse than baseline"  # CE 1.4 and 1.6 > 1
    assert verdicts["vfe"]["corruption_accuracy"]["verdict"] == "better than baseline"


def test_each_seed_reaches_its_head(digits_features):
    X_train, X_test, y_train, _ = digits_features
    settings = HeadSettings(heads=["linear"], seeds=[0, 3], head_params={"linear": {"epochs": 5}})
    models, seconds = fit_heads(settings, ["linear"], X_train, y_train, progress=False)
    assert [m.random_state for m in models.values()] == [0, 3] and len(seconds["linear"]) == 2
    from vfe.heads import LinearHead

    by_hand = LinearHead(epochs=5, random_state=3).fit(X_train, y_train)
    assert np.array_equal(models[("linear", 3)].predict_proba(X_test), by_hand.predict_proba(X_test))
    assert not np.array_equal(models[("linear", 0)].predict_proba(X_test), by_hand.predict_proba(X_test))
