"""Selective classification: abstain where a score says the input is unfamiliar, and what that buys.

Convention, as for OOD scores (vfe.robustness.ood): a score is *higher for inputs the model should not
answer*. An input is **accepted when its score <= the threshold** and **abstained on when it is above**.
Tied scores always fall on the same side, so a tie is never split: the accepted set at a threshold is
every input scoring at most that threshold.

Coverage is the share of inputs accepted; selective risk is the mean loss (here: the error rate, loss 1
for a wrong class, 0 for a right one) over the accepted inputs. The risk-coverage curve and the area
under it (AURC) are those of Geifman & El-Yaniv 2017, "Selective classification for deep neural
networks": lower is better; a score that ranks every error above every correct answer gives the
smallest area the errors allow.

Every function takes plain arrays (scores N, errors N of 0/1 or booleans), so a run stage can compute
risk at 80 % / 90 % coverage per corruption family from the same code a pipeline uses for its threshold.
"""
from __future__ import annotations

import math

import numpy as np

from vfe.errors import SettingsError

COVERAGES = (0.8, 0.9)  # the coverages a run reports risk at


def risk_key(coverage: float) -> str:
    """results.json's name of the selective risk at `coverage`: "risk_90" for 0.9."""
    return f"risk_{round(coverage * 100)}"


def _scores(scores) -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 1 or len(scores) == 0:
        raise ValueError(f"need a non-empty 1-d array of scores, got shape {scores.shape}")
    if not np.isfinite(scores).all():
        raise ValueError("scores contain NaN or infinity")
    return scores


def _scores_and_errors(scores, errors) -> tuple[np.ndarray, np.ndarray]:
    scores, errors = _scores(scores), np.asarray(errors, dtype=np.float64)
    if errors.shape != scores.shape:
        raise ValueError(f"errors must be one per score: shape {errors.shape} != scores' {scores.shape}")
    return scores, errors


def check_coverage(coverage) -> float:
    """`coverage` as a float strictly between 0 and 1 (a SettingsError, a ValueError, otherwise)."""
    if isinstance(coverage, bool) or not isinstance(coverage, (int, float, np.floating)) \
            or not 0 < coverage < 1:
        raise SettingsError(f"coverage must be a number strictly between 0 and 1 (e.g. 0.9), got {coverage!r}")
    return float(coverage)


def accepted_count(n: int, coverage: float) -> int:
    """ceil(coverage * n): the fewest of n inputs that reach `coverage` (0.07 of 100 is 7, not 8, although
    0.07 * 100 is 7.000000000000001 in binary floating point: the product is rounded to 9 decimals first)."""
    return max(1, math.ceil(round(check_coverage(coverage) * n, 9)))


def threshold_for_coverage(scores, coverage: float) -> float:
    """The threshold that accepts (score <= threshold) at least `coverage` of `scores`, and as few as that
    allows: the k-th smallest score, k = ceil(coverage * n).

    Inputs tied with it are accepted too, so the coverage reached on `scores` is the smallest coverage
    >= the target that does not split a tie (coverage_at tells it).
    """
    scores = _scores(scores)
    k = accepted_count(len(scores), coverage)
    return float(np.partition(scores, k - 1)[k - 1])


def coverage_at(scores, threshold: float) -> float:
    """Share of `scores` accepted (score <= threshold)."""
    return float(np.mean(_scores(scores) <= threshold))


def risk_at_threshold(scores, errors, threshold: float) -> tuple[float, float]:
    """(selective risk, coverage) when inputs scoring <= `threshold` are answered: e.g. a threshold
    chosen on validation data, applied to test data. The risk is NaN when nothing is accepted."""
    scores, errors = _scores_and_errors(scores, errors)
    accepted = scores <= threshold
    risk = float(errors[accepted].mean()) if accepted.any() else math.nan
    return risk, float(accepted.mean())


def selective_risk(scores, errors, coverage: float) -> float:
    """Error rate over the inputs accepted at `coverage`: the threshold is chosen on these same scores by
    threshold_for_coverage (ties accepted together), as risk-at-coverage figures are defined."""
    return risk_at_threshold(scores, errors, threshold_for_coverage(scores, coverage))[0]


def risk_coverage_curve(scores, errors) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(coverage, risk, threshold), one point per distinct score in increasing order: accepting every input
    scoring <= threshold[j] covers coverage[j] of them with selective risk risk[j]. The last point
    accepts everything (coverage 1, risk = the plain error rate)."""
    scores, errors = _scores_and_errors(scores, errors)
    order = np.argsort(scores, kind="stable")
    sorted_scores, cumulative = scores[order], np.cumsum(errors[order])
    last = np.flatnonzero(np.r_[sorted_scores[1:] != sorted_scores[:-1], True])  # end of each tie group
    accepted = last + 1
    return accepted / len(scores), cumulative[last] / accepted, sorted_scores[last]


def aurc(scores, errors) -> float:
    """Area under the risk-coverage curve (Geifman & El-Yaniv 2017), in [0, 1]; lower is better.

    The curve is a step function read at each distinct score: the area is sum_j (coverage[j] -
    coverage[j-1]) * risk[j]. Without ties this is the usual mean over k = 1..n of the risk of the k
    lowest-scoring inputs; a tie group contributes its members at the risk of accepting the whole group,
    so the area does not depend on how ties happen to be ordered.
    """
    coverage, risk, _ = risk_coverage_curve(scores, errors)
    return float(np.sum(np.diff(coverage, prepend=0.0) * risk))


__all__ = ["COVERAGES", "accepted_count", "aurc", "check_coverage", "coverage_at", "risk_at_threshold",
           "risk_coverage_curve", "risk_key", "selective_risk", "threshold_for_coverage"]
