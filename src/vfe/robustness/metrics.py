"""Corruption metrics (Hendrycks & Dietterich 2019) on error tables {corruption: {severity: error}}.

    CE_c          = sum_s E_{s,c} / sum_s B_{s,c}                     (B: the normaliser's errors)
    mCE           = mean_c CE_c
    relative CE_c = sum_s (E_{s,c} - E_clean) / sum_s (B_{s,c} - B_clean)
    relative mCE  = mean_c relative CE_c

ImageNet-C normalises by AlexNet; vfe normalises by the baseline head trained with the same seed.
`mean_corruption_error` is RobustBench's plain mean over corruptions x severities (no normaliser).
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


def _ratio(numerator: float, denominator: float) -> float:
    return float(numerator / denominator) if denominator > 0 else math.nan


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
