"""Corruption metrics (Hendrycks & Dietterich 2019) on error tables {corruption: {severity: error}}.

    CE_c          = sum_s E_{s,c} / sum_s B_{s,c}                     (B: the normaliser's errors)
    mCE           = mean_c CE_c
    relative CE_c = sum_s (E_{s,c} - E_clean) / sum_s (B_{s,c} - B_clean)
    relative mCE  = mean_c relative CE_c

ImageNet-C normalises by AlexNet; vfe normalises by the baseline head trained with the same seed.
`mean_corruption_error` is RobustBench's plain mean over corruptions x severities (no normaliser).

The leaderboard's headline pools the sums over every named corruption before dividing (docs/leaderboard.md):

    summed relative mCE = sum_c sum_s (E_{s,c} - E_clean) / sum_c sum_s (B_{s,c} - B_clean)
    summed mCE          = sum_c sum_s E_{s,c} / sum_c sum_s B_{s,c}

Relative mCE is undefined as soon as the baseline does not degrade on one corruption (an easy data set); the
summed ratio needs only the baseline's degradation over all of them to be positive, and `headline_kind` falls
back to the summed mCE, then to the plain corruption error, when even that fails.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

ErrorTable = Mapping[str, Mapping[int, float]]


def corruption_error(errors_by_severity: Mapping[int, float],
                     baseline_errors_by_severity: Mapping[int, float]) -> float:
    """CE of one corruption: the model's errors summed over severities / the baseline's summed errors."""
    severities = _same_severities(errors_by_severity, baseline_errors_by_severity)
    return _ratio(sum(errors_by_severity[s] for s in severities),
                  sum(baseline_errors_by_severity[s] for s in severities))


def mce(errors: ErrorTable, base_errors: ErrorTable, names: Sequence[str]) -> float:
    """Mean corruption error over `names` (each corruption's CE, then the plain mean)."""
    _check_names(names, errors, base_errors)
    return float(np.mean([corruption_error(errors[c], base_errors[c]) for c in names]))


def relative_mce(errors: ErrorTable, clean_error: float, base_errors: ErrorTable, base_clean_error: float,
                 names: Sequence[str]) -> float:
    """Relative mCE: the *degradation* from clean error, normalised by the baseline's degradation.

    A corruption on which the baseline does not degrade (denominator <= 0) has no defined ratio: NaN.
    """
    _check_names(names, errors, base_errors)
    ratios = []
    for c in names:
        severities = _same_severities(errors[c], base_errors[c])
        ratios.append(_ratio(sum(errors[c][s] - clean_error for s in severities),
                             sum(base_errors[c][s] - base_clean_error for s in severities)))
    return float(np.mean(ratios))


def mean_corruption_error(errors: ErrorTable, names: Sequence[str]) -> float:
    """Plain mean error over `names` x their severities (RobustBench's corruption error; 1 - accuracy)."""
    _check_names(names, errors)
    return float(np.mean([e for c in names for e in errors[c].values()]))


# a summed degradation at or below this is "no degradation": accuracies are k / n, so a real one is >= 1 / n,
# while sums of (1 - a) - (1 - a_clean) that are 0 in exact arithmetic come out as +-1e-16 and would blow a
# ratio up
MIN_DEGRADATION = 1e-9

SUMMED_RELATIVE_MCE = "summed_relative_mCE"
SUMMED_MCE = "summed_mCE"
CORRUPTION_ERROR = "corruption_error"
HEADLINE_KINDS = (SUMMED_RELATIVE_MCE, SUMMED_MCE, CORRUPTION_ERROR)  # in order of preference


def summed_degradation(errors: ErrorTable, clean_error: float, names: Sequence[str]) -> float:
    """sum_c sum_s (E_{s,c} - E_clean) over `names`: the error the corruptions add (negative: remove)."""
    _check_names(names, errors)
    return float(sum(e - clean_error for c in names for e in errors[c].values()))


def degrades(errors: ErrorTable, clean_error: float, names: Sequence[str]) -> bool:
    """Whether the summed degradation over `names` is positive beyond float round-off (a usable divisor)."""
    return summed_degradation(errors, clean_error, names) > MIN_DEGRADATION


def summed_relative_mce(errors: ErrorTable, clean_error: float, base_errors: ErrorTable,
                        base_clean_error: float, names: Sequence[str]) -> float:
    """Degradation summed over every named corruption and severity, over the baseline's (NaN when the
    baseline's sum is <= 0): defined whenever the baseline degrades overall, not on each corruption as
    relative mCE needs."""
    _check_names(names, errors, base_errors)
    for c in names:
        _same_severities(errors[c], base_errors[c])
    if not degrades(base_errors, base_clean_error, names):
        return math.nan
    return (summed_degradation(errors, clean_error, names)
            / summed_degradation(base_errors, base_clean_error, names))


def summed_mce(errors: ErrorTable, base_errors: ErrorTable, names: Sequence[str]) -> float:
    """Errors summed over every named corruption and severity, over the baseline's (NaN when the baseline
    makes no error at all): the fallback when the baseline does not degrade overall."""
    _check_names(names, errors, base_errors)
    for c in names:
        _same_severities(errors[c], base_errors[c])
    base = _summed_error(base_errors, names)
    return _summed_error(errors, names) / base if base > MIN_DEGRADATION else math.nan


def headline_kind(baselines) -> str:
    """The first of HEADLINE_KINDS defined on every (base_errors, base_clean_error, names) of `baselines`.

    One kind for all, so that the values it gives (one per head and replicate) are one quantity and can be
    averaged and ranked: summed relative mCE when the baseline degrades overall everywhere, else summed mCE
    when it makes some error under corruption everywhere, else the plain mean corruption error (no
    normaliser).
    """
    baselines = list(baselines)
    if all(degrades(b, bc, names) for b, bc, names in baselines):
        return SUMMED_RELATIVE_MCE
    if all(_summed_error(b, names) > MIN_DEGRADATION for b, _, names in baselines):
        return SUMMED_MCE
    return CORRUPTION_ERROR


def headline(kind: str, errors: ErrorTable, clean_error: float, base_errors: ErrorTable,
             base_clean_error: float, names: Sequence[str]) -> float:
    """The headline value of `kind` (see `headline_kind`); lower is better for every kind."""
    if kind == SUMMED_RELATIVE_MCE:
        return summed_relative_mce(errors, clean_error, base_errors, base_clean_error, names)
    if kind == SUMMED_MCE:
        return summed_mce(errors, base_errors, names)
    if kind == CORRUPTION_ERROR:
        return mean_corruption_error(errors, names)
    raise ValueError(f"unknown headline kind {kind!r}; expected one of {HEADLINE_KINDS}")


def _summed_error(errors: ErrorTable, names: Sequence[str]) -> float:
    _check_names(names, errors)
    return float(sum(e for c in names for e in errors[c].values()))


def _ratio(numerator: float, denominator: float) -> float:
    """numerator / denominator; NaN where the denominator is not above MIN_DEGRADATION (a degradation that is 0
    on paper comes out as +1e-16 in floating point, which would make the ratio ~1e15)."""
    return float(numerator / denominator) if denominator > MIN_DEGRADATION else math.nan


def _same_severities(errors: Mapping[int, float], baseline: Mapping[int, float]) -> list:
    if set(errors) != set(baseline):
        raise ValueError(f"severities differ between model ({sorted(errors)}) "
                         f"and baseline ({sorted(baseline)})")
    if not errors:
        raise ValueError("no severities: an error table row is empty")
    return sorted(errors)


def _check_names(names: Sequence[str], *tables: ErrorTable) -> None:
    if len(names) == 0:
        raise ValueError("no corruption names given")
    for table in tables:
        missing = [c for c in names if c not in table]
        if missing:
            raise ValueError(f"corruptions missing from the error table: {missing}")
