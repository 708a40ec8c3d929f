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


def bootstrap_interval(correct, n_resamples: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean accuracy over seeds, from 0/1 correctness [seeds, images].

    Images and seeds are resampled with replacement, each independently; one image draw serves every
    seed of a resample, because the seeds attack the same images. So the interval carries the sampling
    error of the attacked subset, which the std over seeds (same images every seed) leaves out.
    """
    c = np.atleast_2d(np.asarray(correct, dtype=float))
    n_seeds, n_images = c.shape
    if c.size == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    # resample weights: how often each image / seed is drawn, over the draw size
    w_img = _draw_weights(rng, n_images, n_resamples)
    w_seed = _draw_weights(rng, n_seeds, n_resamples)
    # a weighted mean lies in [min, max]; the clip only removes float round-off (all-correct gives 1, not 1 - 1e-16)
    stat = np.clip(np.einsum("bs,si,bi->b", w_seed, c, w_img), c.min(), c.max())
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(stat, [tail, 100 - tail])
    return float(low), float(high)


def _draw_weights(rng: np.random.Generator, n: int, n_resamples: int) -> np.ndarray:
    """[n_resamples, n] share of each item in a with-replacement draw of n items."""
    idx = rng.integers(0, n, size=(n_resamples, n))
    flat = (idx + n * np.arange(n_resamples)[:, None]).ravel()
    return np.bincount(flat, minlength=n * n_resamples).reshape(n_resamples, n) / n


def correctness(bits: str) -> np.ndarray:
    """'0110…' (how results.json stores per-image correctness, one character per image) -> 0/1 array."""
    return np.frombuffer(bits.encode("ascii"), dtype=np.uint8) - ord("0")


def attack_intervals(per_seed: dict, n_resamples: int = 2000, seed: int = 0, level: float = 0.95) -> dict:
    """{attack key: {mean, low, high, n_images, n_seeds}} for one head from its per-seed attack results
    (each with "correct": {key: '0110…'}); keys missing in a seed, or of unequal length, are left out."""
    rows = [r.get("correct") or {} for r in per_seed.values()]
    keys = list(dict.fromkeys(k for r in rows for k in r))
    out = {}
    for key in keys:
        if not all(key in r for r in rows) or len({len(r[key]) for r in rows}) != 1 or not rows[0][key]:
            continue
        c = np.stack([correctness(r[key]) for r in rows])
        low, high = bootstrap_interval(c, n_resamples, seed, level)
        out[key] = {"mean": float(c.mean()), "low": low, "high": high, "n_images": int(c.shape[1]),
                    "n_seeds": int(c.shape[0]), "level": level}
    return out
