"""Seed statistics against values worked out by hand on tiny cases, so a changed formula shows."""
import math
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats as scipy_stats

from vfe.robustness.stats import (
    attack_intervals,
    bootstrap_interval,
    correctness,
    higher_is_better,
    mean_std,
    paired_comparison,
)


def test_mean_std_is_the_sample_std_over_seeds():
    # mean 2.5; squared deviations 2.25 + 0.25 + 0.25 + 2.25 = 5, over n - 1 = 3
    assert mean_std([1, 2, 3, 4]) == {"mean": 2.5, "std": pytest.approx(math.sqrt(5 / 3)), "n": 4}


def test_one_seed_has_no_spread_and_missing_values_are_dropped():
    assert mean_std([0.7]) == {"mean": 0.7, "std": 0.0, "n": 1}
    # 1 and 3 remain: mean 2, (1 + 1) / 1 = 2
    assert mean_std([1.0, None, math.nan, math.inf, 3.0]) == {"mean": 2.0, "std": pytest.approx(math.sqrt(2)),
                                                                "n": 2}
    empty = mean_std([None, math.nan])
    assert empty["n"] == 0 and math.isnan(empty["mean"]) and math.isnan(empty["std"])


def test_paired_comparison_pairs_seeds_and_reports_a_clear_gain():
    head = {0: 10.0, 1: 12.0, 2: 14.0}  # mean 12, std 2
    base = {0: 1.0, 1: 2.0, 2: 6.0, 5: 100.0}  # seed 5 has no partner; paired mean 3, std sqrt(14 / 2)
    c = paired_comparison(head, base, higher_is_better=True)
    # differences 9, 10, 8: mean 9, std sqrt((0 + 1 + 1) / 2) = 1; |12 - 3| = 9 > 2 + sqrt(7)
    assert c["n"] == 3
    assert c["mean_diff"] == pytest.approx(9.0)
    assert c["std_diff"] == pytest.approx(1.0)
    assert c["exceeds_spread"] is True
    assert c["verdict"] == "better than baseline"
    # paired t = 9 / (1 / sqrt 3) with 2 degrees of freedom, where the two-sided p is 1 - t / sqrt(t^2 + 2)
    t = 9 * math.sqrt(3)
    assert c["p_value"] == pytest.approx(1 - t / math.sqrt(t * t + 2), rel=1e-9)
    assert c["p_value"] == pytest.approx(scipy_stats.ttest_rel([10, 12, 14], [1, 2, 6]).pvalue, rel=1e-12)


def test_a_lower_value_wins_where_lower_is_better():
    head = {0: 5.0, 1: 6.0, 2: 7.0}  # e.g. mCE; mean 6, std 1
    base = {0: 9.0, 1: 10.0, 2: 11.0}  # mean 10, std 1: |6 - 10| = 4 > 1 + 1
    lower = paired_comparison(head, base, higher_is_better("mCE"))
    assert (lower["mean_diff"], lower["std_diff"], lower["exceeds_spread"]) == (-4.0, 0.0, True)
    assert lower["verdict"] == "better than baseline"
    assert math.isnan(lower["p_value"])  # identical differences: no t statistic
    assert paired_comparison(head, base, higher_is_better=True)["verdict"] == "worse than baseline"
    assert paired_comparison(base, head, higher_is_better("clean_accuracy"))["verdict"] == "better than baseline"


def test_overlapping_spreads_and_too_few_seeds_give_no_verdict():
    overlap = paired_comparison({0: 1.0, 1: 3.0, 2: 5.0}, {0: 1.5, 1: 2.5, 2: 3.5})  # 0.5 < 2 + 1
    assert overlap["exceeds_spread"] is False and overlap["verdict"] == "no clear difference"
    assert overlap["mean_diff"] == pytest.approx(0.5) and overlap["std_diff"] == pytest.approx(1.0)
    one = paired_comparison({0: 5.0}, {0: 1.0})
    assert (one["n"], one["mean_diff"], one["std_diff"], one["exceeds_spread"]) == (1, 4.0, 0.0, False)
    assert one["verdict"] == "no clear difference" and math.isnan(one["p_value"])
    assert paired_comparison({0: 1.0}, {1: 1.0}) == {"n": 0}


@pytest.mark.parametrize("metric, higher", [
    ("clean_accuracy", True), ("corruption_accuracy", True), ("corruption_accuracy_all", True),
    ("adv:pgd_linf_8/255_eot", True), ("adv:clean", True), ("ood:msp_auroc_mnist", True),
    ("ood:energy_aupr_in_svhn", True), ("clean_nll", False), ("corruption_nll", False), ("clean_ece", False),
    ("corruption_ece", False), ("mCE", False), ("relative_mCE", False), ("ood:msp_fpr95_mnist", False)])
def test_direction_of_every_metric_family(metric, higher):
    assert higher_is_better(metric) is higher


def test_statistics_do_not_need_torch():
    code = "import sys, vfe.robustness.stats; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_all_correct_or_all_wrong_has_no_sampling_error():
    assert bootstrap_interval(np.ones((3, 50))) == (1.0, 1.0)
    assert bootstrap_interval(np.zeros((1, 7))) == (0.0, 0.0)


@pytest.mark.parametrize("n", [100, 400])
def test_a_half_right_subset_gives_the_binomial_width(n):
    # one seed, n images, half right: the binomial standard error is sqrt(0.25 / n), so the 95 % interval
    # is 0.5 +/- 1.96 sqrt(0.25 / n) (0.098 at 100 images); identical seeds add nothing to it
    for seeds in (1, 3):
        low, high = bootstrap_interval(np.tile(np.arange(n) % 2, (seeds, 1)), n_resamples=4000)
        assert low < 0.5 < high
        assert (high - low) / 2 == pytest.approx(1.96 * math.sqrt(0.25 / n), rel=0.15)


def test_more_images_narrow_the_interval_and_a_seed_fixes_it():
    rng = np.random.default_rng(1)
    small, large = (rng.random((3, n)) < 0.2 for n in (50, 800))
    low_s, high_s = bootstrap_interval(small)
    low_l, high_l = bootstrap_interval(large)
    assert high_l - low_l < (high_s - low_s) / 2  # 16 times the images: about a quarter of the width
    assert bootstrap_interval(small, seed=3) == bootstrap_interval(small, seed=3)
    assert bootstrap_interval(small, seed=3) != bootstrap_interval(small, seed=4)


def test_seeds_that_disagree_widen_the_interval():
    # the same 100 images, seeds right on 10 and 40 of them: the seed resampling adds their spread
    agree = np.tile(np.arange(100) < 25, (2, 1))
    disagree = np.stack([np.arange(100) < 10, np.arange(100) < 40])
    assert agree.mean() == disagree.mean() == 0.25
    width = [np.subtract(*bootstrap_interval(c)[::-1]) for c in (agree, disagree)]
    assert width[1] > width[0] * 1.5


def test_attack_intervals_read_the_stored_correctness_strings():
    assert correctness("0110").tolist() == [0, 1, 1, 0]
    per_seed = {"0": {"correct": {"clean": "1111", "pgd": "1100", "only_here": "1"}},
                "1": {"correct": {"clean": "1111", "pgd": "1000"}}}
    out = attack_intervals(per_seed)
    assert set(out) == {"clean", "pgd"}  # a key one seed lacks has no interval
    assert out["clean"] == {"mean": 1.0, "low": 1.0, "high": 1.0, "n_images": 4, "n_seeds": 2, "level": 0.95}
    assert out["pgd"]["mean"] == 3 / 8 and 0 <= out["pgd"]["low"] < 3 / 8 < out["pgd"]["high"] <= 1
    assert attack_intervals({"0": {"accuracy": {"clean": 1.0}}}) == {}  # results without correctness
