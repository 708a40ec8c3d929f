"""Replicate statistics against values worked out by hand on tiny cases (or by scipy), so a changed formula
shows."""
import math
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats as scipy_stats

from vfe.robustness.stats import (
    attack_comparisons,
    attack_intervals,
    correctness,
    hierarchical_bootstrap,
    higher_is_better,
    mean_std,
    paired_attack,
    paired_bootstrap,
    paired_comparison,
)

T_975_2 = 4.302652729  # Student t, 97.5 % quantile, 2 degrees of freedom (any t table)
T_975_3 = 3.182446305  # 3 degrees of freedom


def _bits(row) -> str:
    return "".join("1" if x else "0" for x in row)


def test_mean_std_is_the_sample_std_over_replicates():
    # mean 2.5; squared deviations 2.25 + 0.25 + 0.25 + 2.25 = 5, over n - 1 = 3
    assert mean_std([1, 2, 3, 4]) == {"mean": 2.5, "std": pytest.approx(math.sqrt(5 / 3)), "n": 4}


def test_one_replicate_has_no_spread_and_missing_values_are_dropped():
    assert mean_std([0.7]) == {"mean": 0.7, "std": 0.0, "n": 1}
    # 1 and 3 remain: mean 2, (1 + 1) / 1 = 2
    assert mean_std([1.0, None, math.nan, math.inf, 3.0]) == {"mean": 2.0, "std": pytest.approx(math.sqrt(2)),
                                                                "n": 2}
    empty = mean_std([None, math.nan])
    assert empty["n"] == 0 and math.isnan(empty["mean"]) and math.isnan(empty["std"])


def test_paired_comparison_is_the_t_interval_of_the_per_replicate_differences():
    head = {0: 10.0, 1: 12.0, 2: 14.0}
    base = {0: 1.0, 1: 2.0, 2: 6.0, 5: 100.0}  # replicate 5 has no partner
    c = paired_comparison(head, base, higher_is_better=True)
    # differences 9, 10, 8: mean 9, sd sqrt((0 + 1 + 1) / 2) = 1; 9 +/- t(0.975, 2) * 1 / sqrt(3)
    assert (c["n"], c["mean_diff"], c["std_diff"]) == (3, pytest.approx(9.0), pytest.approx(1.0))
    half = T_975_2 / math.sqrt(3)  # 2.4841
    assert c["low"] == pytest.approx(9 - half, rel=1e-9) and c["high"] == pytest.approx(9 + half, rel=1e-9)
    assert (c["low"], c["high"]) == pytest.approx(tuple(scipy_stats.ttest_rel([10, 12, 14], [1, 2, 6])
                                                        .confidence_interval(0.95)), rel=1e-12)
    assert c["verdict"] == "better than baseline" and c["test"] == "paired t over replicates" and c["level"] == 0.95
    assert "exceeds_spread" not in c
    # paired t = 9 / (1 / sqrt 3) with 2 degrees of freedom, where the two-sided p is 1 - t / sqrt(t^2 + 2)
    t = 9 * math.sqrt(3)
    assert c["p_value"] == pytest.approx(1 - t / math.sqrt(t * t + 2), rel=1e-9)


def test_pairing_decides_where_the_two_heads_spreads_overlap():
    """The heads' own ranges (mean ± std over replicates: about 2.1 ± 1.0 against 2.0 ± 1.0) overlap entirely,
    but in every replicate the head is 0.10 to 0.12 above: the paired interval excludes 0."""
    head, base = {0: 1.10, 1: 2.12, 2: 3.11}, {0: 1.0, 1: 2.0, 2: 3.0}
    c = paired_comparison(head, base)
    # differences 0.10, 0.12, 0.11: mean 0.11, sd 0.01; 0.11 +/- 4.3027 * 0.01 / sqrt(3) = 0.11 +/- 0.02484
    assert c["low"] == pytest.approx(0.11 - T_975_2 * 0.01 / math.sqrt(3), rel=1e-6)
    assert c["high"] == pytest.approx(0.11 + T_975_2 * 0.01 / math.sqrt(3), rel=1e-6)
    assert c["verdict"] == "better than baseline"


def test_a_lower_value_wins_where_lower_is_better():
    head = {0: 5.0, 1: 6.0, 2: 7.0}  # e.g. mCE
    base = {0: 9.0, 1: 10.5, 2: 11.0}
    # differences -4, -4.5, -4: mean -4.1667, sd sqrt((1/36 + 1/9 + 1/36) / 2) = sqrt(1/12)
    half = T_975_2 * math.sqrt(1 / 12) / math.sqrt(3)  # 0.7171
    lower = paired_comparison(head, base, higher_is_better("mCE"))
    assert lower["low"] == pytest.approx(-25 / 6 - half) and lower["high"] == pytest.approx(-25 / 6 + half)
    assert lower["verdict"] == "better than baseline"
    assert paired_comparison(head, base, higher_is_better=True)["verdict"] == "worse than baseline"
    assert paired_comparison(base, head, higher_is_better("clean_accuracy"))["verdict"] == "better than baseline"


def test_an_interval_holding_zero_one_replicate_or_identical_differences_give_no_verdict():
    overlap = paired_comparison({0: 1.0, 1: 3.0, 2: 5.0}, {0: 1.5, 1: 2.5, 2: 3.5})
    # differences -0.5, 0.5, 1.5: mean 0.5, sd 1: 0.5 +/- 2.484 holds 0
    assert overlap["low"] == pytest.approx(0.5 - T_975_2 / math.sqrt(3))
    assert overlap["low"] < 0 < overlap["high"]
    assert overlap["verdict"] == "no difference shown"
    one = paired_comparison({0: 5.0}, {0: 1.0})
    assert (one["n"], one["mean_diff"], one["std_diff"]) == (1, 4.0, 0.0)
    assert one["verdict"] == "no difference shown" and math.isnan(one["low"]) and math.isnan(one["p_value"])
    same = paired_comparison({0: 5.0, 1: 6.0, 2: 7.0}, {0: 9.0, 1: 10.0, 2: 11.0})  # -4 every time
    assert same["std_diff"] == 0 and math.isnan(same["low"]) and same["verdict"] == "no difference shown"
    assert paired_comparison({0: 1.0}, {1: 1.0}) == {"n": 0}


def test_float_round_off_is_no_difference():
    """0.1 + 0.2 is 0.3 + 5.6e-17 in floats and 0.2 + 0.4 is 0.6 + 1.1e-16: four unequal, all-positive
    differences of round-off whose t interval would exclude 0 if they counted as spread."""
    head = {0: 0.1 + 0.2, 1: 0.2 + 0.4, 2: 0.2 + 0.4, 3: 0.4 + 0.2}
    base = {0: 0.3, 1: 0.6, 2: 0.6, 3: 0.6}
    diffs = np.array([head[r] - base[r] for r in range(4)])
    assert (diffs > 0).all() and diffs.std(ddof=1) > 0
    assert diffs.mean() - T_975_3 * diffs.std(ddof=1) / 2 > 0  # what the raw formula would conclude
    c = paired_comparison(head, base)
    assert c["std_diff"] == 0 and c["verdict"] == "no difference shown"


@pytest.mark.parametrize("metric, higher", [
    ("clean_accuracy", True), ("corruption_accuracy", True), ("corruption_accuracy_all", True),
    ("adv:pgd_linf_8/255_eot", True), ("adv:clean", True), ("ood:msp_auroc_mnist", True),
    ("ood:energy_aupr_in_svhn", True), ("clean_nll", False), ("corruption_nll", False), ("clean_ece", False),
    ("corruption_ece", False), ("mCE", False), ("relative_mCE", False), ("ood:msp_fpr95_mnist", False)])
def test_direction_of_every_metric_family(metric, higher):
    assert higher_is_better(metric) is higher


@pytest.mark.slow
def test_statistics_do_not_need_torch():
    code = "import sys, vfe.robustness.stats; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_all_correct_or_all_wrong_has_no_sampling_error():
    assert hierarchical_bootstrap(np.ones((3, 50))) == (1.0, 1.0)
    assert hierarchical_bootstrap(np.zeros((1, 7))) == (0.0, 0.0)


@pytest.mark.parametrize("n", [100, 400])
def test_one_replicate_of_half_right_images_gives_the_binomial_width(n):
    # one replicate, n images, half right: the binomial standard error is sqrt(0.25 / n), so the 95 % interval
    # is 0.5 +/- 1.96 sqrt(0.25 / n) (0.098 at 100 images)
    low, high = hierarchical_bootstrap(np.arange(n)[None] % 2, n_resamples=4000)
    assert low < 0.5 < high
    assert (high - low) / 2 == pytest.approx(1.96 * math.sqrt(0.25 / n), rel=0.12)


def test_replicates_attack_different_images_so_each_is_resampled_on_its_own():
    """Four replicates, each half right on its own 100 images, equal accuracy: the replicates add no spread,
    and the four image draws are independent, so the width is that of 400 images, 1.96 sqrt(0.25 / 400) =
    0.049, not 100 images' 0.098 (one shared image draw). A replicate drawn twice must get two image draws: one
    shared draw would give sqrt(E[sum of squared replicate weights]) = sqrt(7 / 16) / sqrt(1 / 4) = 1.32 times
    the width."""
    rng = np.random.default_rng(0)
    rows = np.stack([rng.permutation(np.arange(100) % 2) for _ in range(4)])
    low, high = hierarchical_bootstrap(rows, n_resamples=4000)
    assert (high - low) / 2 == pytest.approx(1.96 * math.sqrt(0.25 / 400), rel=0.12)
    same = np.tile(np.arange(100) % 2, (4, 1))  # the same pattern: still four replicates' own images
    assert np.subtract(*hierarchical_bootstrap(same, n_resamples=4000)[::-1]) / 2 == \
        pytest.approx(1.96 * math.sqrt(0.25 / 400), rel=0.12)


def test_replicates_that_disagree_widen_the_interval_and_a_seed_fixes_it():
    agree = np.stack([np.arange(100) < 25] * 2)
    disagree = np.stack([np.arange(100) < 10, np.arange(100) < 40])  # 10 % and 40 %: the replicates differ
    assert agree.mean() == disagree.mean() == 0.25
    width = [np.subtract(*hierarchical_bootstrap(c)[::-1]) for c in (agree, disagree)]
    assert width[1] > width[0] * 1.5
    assert hierarchical_bootstrap(disagree, seed=3) == hierarchical_bootstrap(disagree, seed=3)
    assert hierarchical_bootstrap(disagree, seed=3) != hierarchical_bootstrap(disagree, seed=4)


def test_paired_bootstrap_of_identical_heads_is_zero_and_no_difference():
    rng = np.random.default_rng(2)
    c = rng.random((3, 80)) < 0.4
    out = paired_bootstrap(c, c)
    assert (out["mean_diff"], out["low"], out["high"]) == (0.0, 0.0, 0.0)
    assert out["verdict"] == "no difference shown" and out["test"] == "paired bootstrap over replicates and images"
    assert (out["n"], out["n_replicates"], out["n_images"]) == (3, 3, 80)


def test_paired_bootstrap_of_a_clear_gain():
    """Each of 3 replicates: the baseline right on 40 of 100 images, the head on the same 40 and 30 more.
    The differences are 30 ones per replicate: replicate means all 0.3 (no spread over replicates), so only
    the images vary: sd of the mean sqrt(0.3 * 0.7 / 300) = 0.0265, interval 0.3 +/- 0.052."""
    base = np.tile(np.arange(100) < 40, (3, 1))
    head = np.tile(np.arange(100) < 70, (3, 1))
    out = paired_bootstrap(head, base, n_resamples=4000)
    assert out["mean_diff"] == pytest.approx(0.3)
    assert out["low"] == pytest.approx(0.3 - 1.96 * math.sqrt(0.21 / 300), abs=0.01)
    assert out["high"] == pytest.approx(0.3 + 1.96 * math.sqrt(0.21 / 300), abs=0.01)
    assert out["verdict"] == "better than baseline"
    assert paired_bootstrap(base, head)["verdict"] == "worse than baseline"
    assert paired_bootstrap(head, base, higher_is_better=False)["verdict"] == "worse than baseline"
    one = paired_bootstrap(head[:1], base[:1])  # one replicate: its images only, no training spread
    assert one["low"] > 0 and one["verdict"] == "no difference shown"
    with pytest.raises(ValueError, match="same replicates x images"):
        paired_bootstrap(head, base[:, :50])


def test_attack_intervals_read_the_stored_correctness_strings():
    assert correctness("0110").tolist() == [0, 1, 1, 0]
    per_replicate = {"0": {"correct": {"clean": "1111", "pgd": "1100", "only_here": "1"}},
                     "1": {"correct": {"clean": "1111", "pgd": "1000"}}}
    out = attack_intervals(per_replicate)
    assert set(out) == {"clean", "pgd"}  # a key one replicate lacks has no interval
    assert out["clean"] == {"mean": 1.0, "low": pytest.approx(0.025 ** (1 / 8)), "high": 1.0, "n_images": 4,
                            "n_replicates": 2, "level": 0.95}  # 8 of 8 right: the exact binomial lower bound
    assert out["pgd"]["mean"] == 3 / 8 and 0 <= out["pgd"]["low"] < 3 / 8 < out["pgd"]["high"] <= 1
    assert attack_intervals({"0": {"accuracy": {"clean": 1.0}}}) == {}  # results without correctness
    # two replicates, each half right on its own 200 images (the same string, unrelated images): the width of
    # 400 images, 1.96 sqrt(0.25 / 400) = 0.049, not that of 200 images shared by both (0.069)
    half = {str(r): {"correct": {"pgd": "10" * 100}} for r in range(2)}
    iv = attack_intervals(half, n_resamples=4000)["pgd"]
    assert (iv["high"] - iv["low"]) / 2 == pytest.approx(1.96 * math.sqrt(0.25 / 400), rel=0.12)


def _replicate(row) -> dict:
    row = np.asarray(row, bool)
    return {"accuracy": {"pgd": float(row.mean())}, "correct": {"pgd": _bits(row)}}


def test_attack_comparisons_pair_each_head_with_the_baseline_on_the_same_images():
    base = {str(r): _replicate(np.arange(100) < 40) for r in range(3)}
    adversarial = {"linear": base,
                   "same": {str(r): _replicate(np.arange(100) < 40) for r in range(3)},
                   "gain": {**{str(r): _replicate(np.arange(100) < 70) for r in range(3)},
                            "7": _replicate(np.arange(100) < 70)}}  # replicate 7: no baseline to pair with
    out = attack_comparisons(adversarial, "linear")
    assert set(out) == {"same", "gain"}
    assert (out["same"]["pgd"]["low"], out["same"]["pgd"]["high"], out["same"]["pgd"]["verdict"]) == \
        (0.0, 0.0, "no difference shown")
    gain = out["gain"]["pgd"]
    assert (gain["n"], gain["test"], gain["verdict"]) == (3, "paired bootstrap over replicates and images",
                                                          "better than baseline")
    assert gain["low"] == pytest.approx(0.3 - 1.96 * math.sqrt(0.21 / 300), abs=0.012)
    assert attack_comparisons(adversarial, "missing") == {}


def test_without_correctness_an_attack_falls_back_to_the_paired_t():
    head = {"0": {"accuracy": {"pgd": 0.5}}, "1": {"accuracy": {"pgd": 0.62}}, "2": {"accuracy": {"pgd": 0.41}}}
    base = {"0": {"accuracy": {"pgd": 0.3}}, "1": {"accuracy": {"pgd": 0.35}},
            "2": {"accuracy": {"pgd": 0.3}, "correct": {"pgd": "0101"}}}  # one side's strings alone are no pairing
    out = paired_attack(head, base, "pgd")
    expected = scipy_stats.ttest_rel([0.5, 0.62, 0.41], [0.3, 0.35, 0.3]).confidence_interval(0.95)
    assert out["test"] == "paired t over replicates"
    assert (out["low"], out["high"]) == pytest.approx((expected.low, expected.high), rel=1e-9)
    # strings of different lengths in a replicate are not the same images either
    mixed = {r: {**m, "correct": {"pgd": "1" * (4 + int(r))}} for r, m in head.items()}
    assert paired_attack(mixed, {r: {**m, "correct": {"pgd": "0000"}} for r, m in base.items()},
                         "pgd")["test"] == "paired t over replicates"


def test_an_eot_attack_pairs_with_the_naive_one_of_the_same_head():
    rows = {str(r): {"accuracy": {"pgd": 0.6, "pgd_eot": 0.2},
                     "correct": {"pgd": _bits(np.arange(50) < 30), "pgd_eot": _bits(np.arange(50) < 10)}}
            for r in range(3)}
    out = paired_attack(rows, rows, "pgd_eot", "pgd")  # EOT - naive: 20 images of 50 lost in every replicate
    assert out["mean_diff"] == pytest.approx(-0.4) and out["high"] < 0 and out["verdict"] == "worse than baseline"


def test_an_attack_that_broke_every_image_gets_the_exact_binomial_bound_not_a_point():
    """0 of 3 x 100 images standing: the bootstrap alone says [0, 0]; the interval is [0, 1 - 0.025^(1/300)], the
    Clopper-Pearson bound; 300 of 300 mirrors it; a mixed outcome keeps the bootstrap's interval."""
    broken = {str(r): {"correct": {"pgd": "0" * 100}} for r in range(3)}
    iv = attack_intervals(broken)["pgd"]
    assert iv["mean"] == 0 and iv["low"] == 0
    assert iv["high"] == pytest.approx(1 - 0.025 ** (1 / 300), rel=1e-9) and 0.0122 < iv["high"] < 0.0123
    standing = {str(r): {"correct": {"pgd": "1" * 100}} for r in range(3)}
    iv = attack_intervals(standing)["pgd"]
    assert iv["high"] == 1 and iv["low"] == pytest.approx(0.025 ** (1 / 300), rel=1e-9)
    mixed = {str(r): {"correct": {"pgd": "0" * 99 + "1"}} for r in range(3)}
    c = np.array([[0.0] * 99 + [1.0]] * 3)
    assert (attack_intervals(mixed)["pgd"]["low"], attack_intervals(mixed)["pgd"]["high"]) == hierarchical_bootstrap(c)
