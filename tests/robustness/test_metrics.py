"""Corruption metrics against tables computed by hand, and against the published ImageNet-C recipe."""
import math

import numpy as np
import pytest

from vfe.robustness.metrics import corruption_error, mce, mean_corruption_error, relative_mce

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
