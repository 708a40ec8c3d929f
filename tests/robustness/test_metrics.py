"""Corruption metrics against tables computed by hand, and against the published ImageNet-C recipe."""
import math

import numpy as np
import pytest

from vfe.robustness.metrics import (
    CORRUPTION_ERROR,
    SUMMED_MCE,
    SUMMED_RELATIVE_MCE,
    corruption_error,
    degrades,
    headline,
    headline_kind,
    mce,
    mean_corruption_error,
    relative_mce,
    summed_degradation,
    summed_mce,
    summed_relative_mce,
)

# AlexNet's ImageNet-C errors, averaged over the 5 severities, in the order of the benchmark's 15
# corruptions (hendrycks/robustness ImageNet-C/test.py; the normaliser of every published mCE)
ALEXNET_MEAN_ERROR = {
    "gaussian_noise": 0.886428, "shot_noise": 0.894468, "impulse_noise": 0.922640, "defocus_blur": 0.819880,
    "glass_blur": 0.826268, "motion_blur": 0.785948, "zoom_blur": 0.798360, "snow": 0.866816,
    "frost": 0.826572,
    "fog": 0.819324, "brightness": 0.564592, "contrast": 0.853204, "elastic_transform": 0.646056,
    "pixelate": 0.717840, "jpeg_compression": 0.606500}

MODEL = {"noise": {1: 0.2, 2: 0.4}, "blur": {1: 0.1, 2: 0.1}, "extra": {1: 0.9, 2: 0.9}}
BASE = {"noise": {1: 0.4, 2: 0.6}, "blur": {1: 0.2, 2: 0.2}, "extra": {1: 0.5, 2: 0.5}}


def test_corruption_error_is_a_ratio_of_sums_not_a_mean_of_ratios():
    assert corruption_error(MODEL["noise"], BASE["noise"]) == pytest.approx((0.2 + 0.4) / (0.4 + 0.6))
    mean_of_ratios = (0.2 / 0.4 + 0.4 / 0.6) / 2
    assert corruption_error(MODEL["noise"], BASE["noise"]) != pytest.approx(mean_of_ratios)


def test_mce_averages_the_named_corruptions_only():
    assert mce(MODEL, BASE, ["noise", "blur"]) == pytest.approx((0.6 + 0.5) / 2)
    assert mce(MODEL, BASE, ["noise", "blur", "extra"]) == pytest.approx((0.6 + 0.5 + 1.8) / 3)


def test_relative_mce_normalises_the_degradation_from_clean_error():
    # noise: (0.1 + 0.3) / (0.2 + 0.4); blur: (0.0 + 0.0) / (0.0 + 0.0) is undefined -> only noise here
    assert relative_mce(MODEL, 0.1, BASE, 0.2, ["noise"]) == pytest.approx(0.4 / 0.6)


def test_relative_mce_is_nan_when_the_baseline_does_not_degrade():
    assert math.isnan(relative_mce(MODEL, 0.1, BASE, 0.2, ["noise", "blur"]))


def test_mean_corruption_error_is_the_plain_mean_over_corruptions_and_severities():
    assert mean_corruption_error(MODEL, ["noise", "blur"]) == pytest.approx((0.2 + 0.4 + 0.1 + 0.1) / 4)


def test_mce_with_the_published_alexnet_normaliser():
    """The ImageNet-C recipe divides each corruption's mean error by AlexNet's: the same as sums over
    severities; AlexNet itself scores mCE = 100%, and a model with half its errors 50%."""
    offsets = np.array([-0.2, -0.1, 0.0, 0.1, 0.2])  # errors rise with severity, mean as published
    alexnet = {c: dict(zip(range(1, 6), e + offsets * (1 - e), strict=True))
               for c, e in ALEXNET_MEAN_ERROR.items()}
    names = list(ALEXNET_MEAN_ERROR)
    assert mce(alexnet, alexnet, names) == pytest.approx(1.0)
    half = {c: {s: e / 2 for s, e in sev.items()} for c, sev in alexnet.items()}
    assert mce(half, alexnet, names) == pytest.approx(0.5)

    rng = np.random.default_rng(0)
    model = {c: {s: float(rng.uniform(0.2, 0.8)) for s in range(1, 6)} for c in names}
    published_recipe = np.mean([np.mean(list(model[c].values())) / ALEXNET_MEAN_ERROR[c] for c in names])
    assert mce(model, alexnet, names) == pytest.approx(published_recipe, rel=1e-6)


def test_mismatched_tables_are_refused_with_the_problem_named():
    with pytest.raises(ValueError, match="severities differ"):
        corruption_error({1: 0.1, 2: 0.2}, {1: 0.1})
    with pytest.raises(ValueError, match=r"missing.*fog"):
        mce(MODEL, BASE, ["noise", "fog"])
    with pytest.raises(ValueError, match="no corruption names"):
        mean_corruption_error(MODEL, [])


# a baseline that degrades overall but not on "bright" (an easy colour task): relative mCE is undefined there
EASY_MODEL = {"noise": {1: 0.30, 2: 0.50}, "bright": {1: 0.05, 2: 0.15}}
EASY_BASE = {"noise": {1: 0.40, 2: 0.70}, "bright": {1: 0.05, 2: 0.10}}  # clean 0.10: bright -0.05 + 0.00


def test_summed_relative_mce_pools_the_degradations_before_dividing():
    # head clean 0.05: (0.25 + 0.45 + 0.00 + 0.10) = 0.80; base clean 0.10: (0.30 + 0.60 - 0.05 + 0.00) = 0.85
    names = ["noise", "bright"]
    assert summed_relative_mce(EASY_MODEL, 0.05, EASY_BASE, 0.10, names) == pytest.approx(0.80 / 0.85)
    assert math.isnan(relative_mce(EASY_MODEL, 0.05, EASY_BASE, 0.10, names))  # bright: -0.05 / ...
    # on one corruption it is the classic relative CE; on several, not the mean of the ratios
    classic = relative_mce(MODEL, 0.1, BASE, 0.2, ["noise"])
    assert summed_relative_mce(MODEL, 0.1, BASE, 0.2, ["noise"]) == pytest.approx(classic)
    model = {"a": {1: 0.3}, "b": {1: 0.9}}
    base = {"a": {1: 0.2}, "b": {1: 0.6}}  # clean 0.1: ratios 2 and 1.6, mean 1.8; pooled (0.2 + 0.8) / 0.6
    assert summed_relative_mce(model, 0.1, base, 0.1, ["a", "b"]) == pytest.approx(1.0 / 0.6)
    assert relative_mce(model, 0.1, base, 0.1, ["a", "b"]) == pytest.approx(1.8)


def test_summed_relative_mce_is_nan_when_the_baseline_does_not_degrade_overall():
    base = {"noise": {1: 0.05, 2: 0.10}, "bright": {1: 0.05, 2: 0.10}}  # clean 0.10: -0.05 + 0 - 0.05 + 0 < 0
    assert summed_degradation(base, 0.10, ["noise", "bright"]) == pytest.approx(-0.10)
    assert not degrades(base, 0.10, ["noise", "bright"])
    assert math.isnan(summed_relative_mce(EASY_MODEL, 0.05, base, 0.10, ["noise", "bright"]))


def test_a_degradation_that_is_zero_but_for_float_round_off_is_no_degradation():
    base = {"a": {1: 1 - 0.1, 2: 1 - 1.0}}  # accuracies 0.1 and 1.0 around a clean accuracy of 0.55
    # 0 in exact arithmetic, 1.1e-16 in floats: as a denominator it would make any head's ratio ~1e15
    assert 0 < summed_degradation(base, 1 - 0.55, ["a"]) < 1e-15
    assert not degrades(base, 1 - 0.55, ["a"])
    assert math.isnan(summed_relative_mce({"a": {1: 0.5, 2: 0.5}}, 0.4, base, 1 - 0.55, ["a"]))


def test_summed_mce_is_a_ratio_of_summed_errors():
    assert summed_mce(EASY_MODEL, EASY_BASE, ["noise", "bright"]) == pytest.approx((0.3 + 0.5 + 0.05 + 0.15)
                                                                                   / (0.4 + 0.7 + 0.05 + 0.1))
    perfect = {"noise": {1: 0.0, 2: 0.0}, "bright": {1: 0.0, 2: 0.0}}
    assert math.isnan(summed_mce(EASY_MODEL, perfect, ["noise", "bright"]))
    with pytest.raises(ValueError, match="severities differ"):
        summed_mce({"noise": {1: 0.1}}, EASY_BASE, ["noise"])


def test_the_headline_kind_is_the_first_defined_on_every_baseline():
    names = ["noise", "bright"]
    no_degradation = {"noise": {1: 0.05, 2: 0.10}, "bright": {1: 0.05, 2: 0.10}}
    perfect = {"noise": {1: 0.0, 2: 0.0}, "bright": {1: 0.0, 2: 0.0}}
    assert headline_kind([(EASY_BASE, 0.10, names)]) == SUMMED_RELATIVE_MCE
    assert headline_kind([(EASY_BASE, 0.10, names), (no_degradation, 0.10, names)]) == SUMMED_MCE
    assert headline_kind([(EASY_BASE, 0.10, names), (perfect, 0.0, names)]) == CORRUPTION_ERROR
    assert headline_kind([(EASY_BASE, 0.10, ["bright"])]) == SUMMED_MCE  # -0.05 + 0.00 on bright alone

    summed = headline(SUMMED_RELATIVE_MCE, EASY_MODEL, 0.05, EASY_BASE, 0.10, names)
    assert summed == pytest.approx(0.80 / 0.85)
    assert headline(SUMMED_MCE, EASY_MODEL, 0.05, EASY_BASE, 0.10, names) == pytest.approx(1.0 / 1.25)
    assert headline(CORRUPTION_ERROR, EASY_MODEL, 0.05, perfect, 0.0, names) == pytest.approx(1.0 / 4)
    with pytest.raises(ValueError, match="unknown headline kind"):
        headline("mean_of_ratios", EASY_MODEL, 0.05, EASY_BASE, 0.10, names)


def test_a_round_off_denominator_gives_no_ratio():
    from vfe.robustness.metrics import relative_mce

    # the baseline's degradation is 0 on paper: (0.1 + 0.2) - 0.3 in floats is +5.6e-17, not 0
    base = {"fog": {1: 0.1 + 0.2}}
    head = {"fog": {1: 0.5}}
    assert (0.1 + 0.2) - 0.3 > 0
    assert math.isnan(relative_mce(head, 0.1, base, 0.3, ["fog"]))
