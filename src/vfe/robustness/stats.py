"""Spread over seeds, and whether a head's difference from the baseline exceeds it.

One home for the statistics the summary computes and the report prints, so both read numbers the same
way; no torch, so the report can use it on results.json alone.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import stats

# metrics where lower is better (matched as substrings of the metric key, e.g. "clean_nll", "relative_mCE",
# "ood:msp_fpr95_mnist"); everything else is higher-is-better
LOWER_IS_BETTER = ("nll", "ece", "mCE", "fpr95")


def higher_is_better(metric: str) -> bool:
    """Direction of a summary metric key: False for NLL, ECE, (relative) mCE and FPR at 95 % TPR."""
    return not any(t in metric for t in LOWER_IS_BETTER)


def mean_std(values) -> dict:
    """Mean and sample standard deviation (ddof=1; 0 for one seed) of finite values."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    if len(v) == 0:
        return {"mean": math.nan, "std": math.nan, "n": 0}
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0, "n": len(v)}


def paired_comparison(head: dict[int, float], baseline: dict[int, float], higher_is_better: bool = True) -> dict:
    """Compare per-seed values of a head with the baseline's for the same seeds.

    Same seed = same data subset and the same initialisation seed, so the pairs share their noise.
    `exceeds_spread` is the conservative verdict: the two mean +/- std intervals do not overlap.
    The paired t-test p-value is given too (weak with 3 seeds; read it with that in mind).
    """
    seeds = sorted(set(head) & set(baseline))
    if len(seeds) == 0:
        return {"n": 0}
    a = np.array([head[s] for s in seeds], dtype=float)
    b = np.array([baseline[s] for s in seeds], dtype=float)
    diff = a - b
    sa = a.std(ddof=1) if len(a) > 1 else 0.0
    sb = b.std(ddof=1) if len(b) > 1 else 0.0
    exceeds = bool(abs(a.mean() - b.mean()) > sa + sb) if len(seeds) > 1 else False
    p = float(stats.ttest_rel(a, b).pvalue) if len(seeds) > 1 and np.any(diff != diff[0]) else math.nan
    better = (diff.mean() > 0) == higher_is_better
    verdict = "no clear difference"
    if exceeds:
        verdict = "better than baseline" if better else "worse than baseline"
    return {"n": len(seeds), "mean_diff": float(diff.mean()),
            "std_diff": float(diff.std(ddof=1)) if len(diff) > 1 else 0.0,
            "p_value": p, "exceeds_spread": exceeds, "verdict": verdict}
