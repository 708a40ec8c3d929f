"""Selective classification metrics against hand-computed values and brute-force loops written here:
the threshold for a coverage (exact, ties kept together), risk at a coverage, the risk-coverage curve and
its area (AURC, Geifman & El-Yaniv 2017)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from vfe.errors import SettingsError
from vfe.robustness.selective import (
    accepted_count,
    aurc,
    coverage_at,
    risk_at_threshold,
    risk_coverage_curve,
    selective_risk,
    threshold_for_coverage,
)

TEN = np.array([0.5, 0.1, 0.9, 0.3, 0.7, 0.2, 0.8, 0.4, 0.6, 1.0])  # 0.1 .. 1.0, shuffled


def brute_risk(scores, errors, threshold) -> float:
    """Selective risk by a loop: the mean error over every input scoring at most the threshold."""
    kept = [e for s, e in zip(scores, errors) if s <= threshold]
    return sum(kept) / len(kept)


def brute_aurc(scores, errors) -> float:
    """The mean over inputs of the risk of accepting every input scoring at most that input's score."""
    return sum(brute_risk(scores, errors, s) for s in scores) / len(scores)


@pytest.mark.parametrize(("coverage", "threshold"), [(0.9, 0.9), (0.7, 0.7), (0.5, 0.5), (0.05, 0.1),
                                                      (0.91, 1.0), (0.3, 0.3)])
def test_threshold_accepts_exactly_the_target_share(coverage, threshold):
    """ceil(coverage * 10) of ten distinct scores are accepted (0.91 -> 10, 0.05 -> 1), no more."""
    assert threshold_for_coverage(TEN, coverage) == threshold
    assert coverage_at(TEN, threshold) == {0.91: 1.0, 0.05: 0.1}.get(coverage, coverage)


def test_floating_point_never_adds_an_accepted_input():
    """0.07 * 100 is 7.000000000000001 in binary floating point: a plain ceil would accept 8 of 100."""
    hundred = np.arange(100.0)
    assert threshold_for_coverage(hundred, 0.07) == 6.0 and coverage_at(hundred, 6.0) == 0.07
    assert threshold_for_coverage(hundred, 0.55) == 54.0


def test_ties_are_accepted_together_never_split():
    scores = np.array([1.0, 2.0, 2.0, 2.0, 3.0])
    assert threshold_for_coverage(scores, 0.5) == 2.0  # k = ceil(2.5) = 3 lands in the tie
    assert coverage_at(scores, 2.0) == 0.8  # so all three 2s are accepted: 0.8 >= 0.5, not 0.6
    assert threshold_for_coverage(scores, 0.2) == 1.0 and coverage_at(scores, 1.0) == 0.2
    assert accepted_count(10, 0.7) == 7 and accepted_count(3, 0.5) == 2 and accepted_count(1, 0.01) == 1


def test_risk_at_coverage_by_hand():
    scores, errors = np.array([0.1, 0.2, 0.3, 0.4]), np.array([0, 1, 0, 1])
    assert selective_risk(scores, errors, 0.5) == 0.5  # accepts 0.1 and 0.2: one error in two
    assert selective_risk(scores, errors, 0.75) == pytest.approx(1 / 3)
    assert selective_risk(scores, errors, 0.25) == 0.0
    assert selective_risk(scores, errors.astype(bool), 0.99) == 0.5  # everything: the plain error rate
    assert risk_at_threshold(scores, errors, 0.35) == (pytest.approx(1 / 3), 0.75)  # a validation threshold
    risk, coverage = risk_at_threshold(scores, errors, 0.0)
    assert math.isnan(risk) and coverage == 0.0  # nothing accepted: no risk to speak of


def test_aurc_by_hand():
    """Risks of the 1..4 lowest scores: 0/1, 1/2, 1/3, 2/4, mean 1/3."""
    assert aurc([0.1, 0.2, 0.3, 0.4], [0, 1, 0, 1]) == pytest.approx(1 / 3)
    assert aurc([0.4, 0.3, 0.2, 0.1], [0, 1, 0, 1]) == pytest.approx((1 + 1 / 2 + 2 / 3 + 2 / 4) / 4)
    assert aurc([0.1, 0.2, 0.3, 0.4], [0, 0, 1, 1]) == pytest.approx((0 + 0 + 1 / 3 + 2 / 4) / 4)  # the best order
    assert aurc([1.0, 1.0, 1.0, 1.0], [0, 1, 0, 1]) == 0.5  # one tie: every input at the plain error rate


@pytest.mark.parametrize("seed", range(5))
def test_risk_coverage_curve_and_aurc_match_brute_force_loops(seed):
    rng = np.random.default_rng(seed)
    n = 60
    scores = rng.integers(0, 25, n).astype(float) if seed % 2 else rng.normal(size=n)  # odd seeds: many ties
    errors = rng.random(n) < 0.3
    coverage, risk, thresholds = risk_coverage_curve(scores, errors)
    assert list(thresholds) == sorted(set(scores))
    for c, r, t in zip(coverage, risk, thresholds):
        assert c == pytest.approx(np.mean(scores <= t)) and r == pytest.approx(brute_risk(scores, errors, t))
    assert coverage[-1] == 1.0 and risk[-1] == pytest.approx(errors.mean())
    assert aurc(scores, errors) == pytest.approx(brute_aurc(scores, errors.astype(int)))
    for target in (0.8, 0.9):
        k = math.ceil(round(target * n, 9))
        kth = sorted(scores)[k - 1]
        assert threshold_for_coverage(scores, target) == kth
        assert selective_risk(scores, errors, target) == pytest.approx(brute_risk(scores, errors, kth))
    if seed % 2 == 0:  # no ties: the usual definition, the mean risk of the k lowest scores
        order = np.argsort(scores)
        assert aurc(scores, errors) == pytest.approx(np.mean([errors[order[:k]].mean() for k in range(1, n + 1)]))


def test_a_score_that_ranks_errors_last_beats_one_that_ranks_them_first():
    errors = np.array([0] * 8 + [1] * 2)
    good, bad = np.arange(10.0), -np.arange(10.0)
    assert aurc(good, errors) < aurc(np.zeros(10), errors) < aurc(bad, errors)
    assert selective_risk(good, errors, 0.8) == 0.0 and selective_risk(bad, errors, 0.8) == 0.25


@pytest.mark.parametrize("coverage", [0, 1, 1.5, -0.1, True, float("nan"), "0.9", None])
def test_a_coverage_outside_0_1_is_refused(coverage):
    with pytest.raises(SettingsError, match="strictly between 0 and 1"):
        threshold_for_coverage(TEN, coverage)


def test_bad_arrays_are_refused():
    with pytest.raises(ValueError, match="non-empty 1-d"):
        threshold_for_coverage([], 0.9)
    with pytest.raises(ValueError, match="NaN"):
        aurc([0.1, float("nan")], [0, 1])
    with pytest.raises(ValueError, match="one per score"):
        selective_risk([0.1, 0.2], [0, 1, 1], 0.5)
