"""The numbers the report prints, aggregated from per-replicate measurements: each checked on a hand-made case
whose expected values are worked out by hand in the comments (or by scipy), never by calling the code under
test."""
from __future__ import annotations

import math

import numpy as np
import pytest

from vfe.experiment.config import HeadSettings
from vfe.experiment.fit import fit_heads
from vfe.experiment.stages.corruptions.stage import corruption_summary
from vfe.experiment.summary import summarise

T_975_1 = 12.70620474  # Student t, 97.5 % quantile, 1 degree of freedom (any t table)
T_975_2 = 4.302652729  # 2 degrees of freedom


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


def test_ce_and_mce_use_the_baseline_of_the_same_replicate(results):
    vfe = results["corruptions"]["per_head"]["vfe"]
    # replicate 0: vfe's summed gaussian-noise error 0.3 + 0.5 = 0.8, linear's (replicate 0) 0.2 + 0.4 = 0.6
    assert vfe["0"]["CE"]["gaussian_noise"] == pytest.approx(0.8 / 0.6)
    # replicate 1: linear's error 0.4 + 0.6 = 1.0 is the normaliser (replicate 0's 0.6 would give 1.333)
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
    # corruption accuracy per replicate: 0.6 and 0.6 -> mean 0.6, sample std 0
    assert table["corruption_accuracy"]["mean"] == pytest.approx(0.6) and table["corruption_accuracy"]["std"] == 0
    # mCE per replicate 1.3333 and 0.8: mean 1.0667, sample std |1.3333 - 0.8| / sqrt(2)
    assert table["mCE"]["mean"] == pytest.approx((0.8 / 0.6 + 0.8) / 2)
    assert table["mCE"]["std"] == pytest.approx(abs(0.8 / 0.6 - 0.8) / math.sqrt(2))
    clean = summary["vs_baseline"]["vfe"]["clean_accuracy"]
    # paired differences 0.85 - 0.9 = -0.05 and 0.85 - 0.8 = +0.05: mean 0, sd 0.0707, two replicates:
    # 0 +/- t(0.975, 1) * 0.0707 / sqrt(2) = 0 +/- 0.635, which holds 0
    assert clean["mean_diff"] == pytest.approx(0.0) and clean["verdict"] == "no difference shown"
    assert (clean["low"], clean["high"]) == pytest.approx((-T_975_1 * 0.05, T_975_1 * 0.05), rel=1e-6)
    assert clean["test"] == "paired t over replicates"
    mce = summary["vs_baseline"]["vfe"]["mCE"]
    assert mce["mean_diff"] == pytest.approx((0.8 / 0.6 - 1 + 0.8 - 1) / 2)
    assert summary["baseline"] == "linear" and "linear" not in summary["vs_baseline"]


def test_a_lower_mce_whose_paired_interval_excludes_zero_is_better_and_a_higher_one_worse():
    # three replicates; every head 0.9 clean, linear 0.5 under gaussian noise (error 0.5) in each
    vfe, vib = (0.75, 0.7, 0.725), (0.3, 0.2, 0.25)
    per_model = {("linear", r): {"gaussian_noise": {1: metrics(0.5)}} for r in range(3)}
    per_model |= {("vfe", r): {"gaussian_noise": {1: metrics(a)}} for r, a in enumerate(vfe)}
    per_model |= {("vib", r): {"gaussian_noise": {1: metrics(a)}} for r, a in enumerate(vib)}
    clean = {key: metrics(0.9) for key in per_model}
    results = {"clean": {h: {str(r): clean[(h, r)] for r in range(3)} for h in ("linear", "vfe", "vib")},
               "corruptions": corruption_summary(per_model, clean, [1])}
    verdicts = summarise(results)["vs_baseline"]
    # vfe's CE 0.25/0.5, 0.3/0.5, 0.275/0.5 = 0.5, 0.6, 0.55 against linear's 1: differences -0.5, -0.4, -0.45,
    # mean -0.45, sd 0.05, interval -0.45 +/- 4.3027 * 0.05 / sqrt(3) = [-0.574, -0.326]
    mce = verdicts["vfe"]["mCE"]
    half = T_975_2 * 0.05 / math.sqrt(3)
    assert (mce["low"], mce["high"]) == pytest.approx((-0.45 - half, -0.45 + half), rel=1e-6)
    assert mce["verdict"] == "better than baseline"
    # vib's CE 1.4, 1.6, 1.5: differences +0.4, +0.6, +0.5, interval 0.5 +/- 4.3027 * 0.1 / sqrt(3)
    assert verdicts["vib"]["mCE"]["low"] == pytest.approx(0.5 - T_975_2 * 0.1 / math.sqrt(3), rel=1e-6)
    assert verdicts["vib"]["mCE"]["verdict"] == "worse than baseline"
    assert verdicts["vfe"]["corruption_accuracy"]["verdict"] == "better than baseline"


def _attacked(correct_per_replicate: list[np.ndarray]) -> dict:
    return {str(r): {"accuracy": {"pgd_linf_8/255": float(c.mean())},
                     "correct": {"pgd_linf_8/255": "".join("1" if x else "0" for x in c)}}
            for r, c in enumerate(correct_per_replicate)}


def test_attacks_use_the_paired_bootstrap_over_replicates_and_images(results):
    """Each replicate attacked its own 100 images; in each the linear head is right on 40 and vfe on those 40
    and 30 more: the per-image differences are 30 ones of 100 in every replicate, so the paired bootstrap
    interval is 0.3 +/- 1.96 sqrt(0.3 * 0.7 / 200) = [0.236, 0.364] (only the images vary)."""
    rng = np.random.default_rng(0)
    order = [rng.permutation(100) for _ in range(2)]  # which images each replicate's 40 and 70 are
    results["adversarial"] = {"linear": _attacked([o < 40 for o in order]),
                              "vfe": _attacked([o < 70 for o in order])}
    attack = summarise(results)["vs_baseline"]["vfe"]["adv:pgd_linf_8/255"]
    assert attack["test"] == "paired bootstrap over replicates and images"
    assert (attack["n"], attack["n_images"]) == (2, 100) and attack["mean_diff"] == pytest.approx(0.3)
    assert attack["low"] == pytest.approx(0.3 - 1.96 * math.sqrt(0.21 / 200), abs=0.015)
    assert attack["verdict"] == "better than baseline"
    # without per-image correctness, the paired t over the replicates' accuracies: 0.3 and 0.3, no spread
    for rows in results["adversarial"].values():
        for row in rows.values():
            del row["correct"]
    plain = summarise(results)["vs_baseline"]["vfe"]["adv:pgd_linf_8/255"]
    assert plain["test"] == "paired t over replicates" and plain["verdict"] == "no difference shown"


def test_each_replicate_seed_reaches_its_head(digits_features):
    X_train, X_test, y_train, _ = digits_features
    settings = HeadSettings(heads=["linear"], head_params={"linear": {"epochs": 5}})
    models = {}
    for replicate, seed in ((0, 0), (1, 3)):
        fitted, seconds = fit_heads(settings, ["linear"], X_train, y_train, replicate, seed, progress=False)
        models.update(fitted)
        assert len(seconds["linear"]) == 1
    assert [m.random_state for m in models.values()] == [0, 3]
    from vfe.heads import LinearHead

    by_hand = LinearHead(epochs=5, random_state=3).fit(X_train, y_train)
    assert np.array_equal(models[("linear", 1)].predict_proba(X_test), by_hand.predict_proba(X_test))
    assert not np.array_equal(models[("linear", 0)].predict_proba(X_test), by_hand.predict_proba(X_test))


def test_summed_relative_mce_is_defined_where_the_linear_head_does_not_degrade_on_one_corruption():
    # two benchmark corruptions, one severity; linear (clean error 0.1): fog error 0.1 (no degradation),
    # gaussian noise 0.5 (+0.4); vfe (clean error 0.2): fog 0.3 (+0.1), gaussian noise 0.4 (+0.2)
    per_model = {("linear", 0): {"fog": {1: metrics(0.9)}, "gaussian_noise": {1: metrics(0.5)}},
                 ("vfe", 0): {"fog": {1: metrics(0.7)}, "gaussian_noise": {1: metrics(0.6)}}}
    clean = {("linear", 0): metrics(0.9), ("vfe", 0): metrics(0.8)}
    vfe = corruption_summary(per_model, clean, [1])["per_head"]["vfe"]["0"]
    assert math.isnan(vfe["relative_mCE"])  # fog's ratio divides by linear's 0 degradation
    # (0.1 + 0.2) / (0.0 + 0.4) = 0.75
    assert vfe["summed_relative_mCE"] == pytest.approx(0.75)
    summary = summarise({"clean": {h: {"0": clean[(h, 0)]} for h in ("linear", "vfe")},
                         "corruptions": corruption_summary(per_model, clean, [1])})
    assert summary["table"]["vfe"]["summed_relative_mCE"]["mean"] == pytest.approx(0.75)
