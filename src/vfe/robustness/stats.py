"""Spread over replicates, and paired tests of a head against the baseline.

One home for the statistics the summary computes and the report prints, so both read numbers the same
way; no torch, so the report can use it on results.json alone.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import stats

# metrics where lower is better (matched as substrings of the metric key, e.g. "clean_nll", "relative_mCE",
# "ood:msp_fpr95_mnist"); everything else is higher-is-better
LOWER_IS_BETTER = ("nll", "ece", "mCE", "fpr95", "risk_", "aurc")


def higher_is_better(metric: str) -> bool:
    """Direction of a summary metric key: False for NLL, ECE, (relative) mCE, FPR at 95 % TPR, selective risk and
    AURC."""
    return not any(t in metric for t in LOWER_IS_BETTER)


def mean_std(values) -> dict:
    """Mean and sample standard deviation (ddof=1; 0 for one replicate) of finite values."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    if len(v) == 0:
        return {"mean": math.nan, "std": math.nan, "n": 0}
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0, "n": len(v)}


VERDICTS = ("better than baseline", "worse than baseline", "no difference shown")
LEVEL = 0.95
T_TEST = "paired t over replicates"
BOOTSTRAP_TEST = "paired bootstrap over replicates and images"
N_RESAMPLES = 2000


def paired_comparison(head: dict[int, float], baseline: dict[int, float], higher_is_better: bool = True,
                      level: float = LEVEL) -> dict:
    """Paired comparison of a head with the baseline over the replicates both have (Bouthillier et al. 2021).

    Replicate r of both heads shares every random factor (training subset, fine-tuning, initialisation seed,
    attacked images), so the per-replicate differences d_r carry the comparison. Their Student-t interval,
    mean(d) +/- t_{level, n-1} * sd(d) / sqrt(n), is the verdict: "better" / "worse" only when it excludes 0,
    else "no difference shown" (also for fewer than two replicates, and for identical differences, whose
    zero spread gives no interval: no test can be made from them; a spread of float round-off counts as zero,
    so two bit-for-bit different copies of one head are not "better").
    """
    reps = sorted(set(head) & set(baseline))
    if len(reps) == 0:
        return {"n": 0}
    a = np.array([head[r] for r in reps], dtype=float)
    b = np.array([baseline[r] for r in reps], dtype=float)
    diff = a - b
    sd = float(diff.std(ddof=1)) if len(diff) > 1 else 0.0
    if sd <= 1e-12 * max(1.0, float(np.abs(np.r_[a, b]).max())):
        sd = 0.0
    low = high = p = math.nan
    if len(diff) > 1 and sd > 0:
        half = float(stats.t.ppf(0.5 + level / 2, len(diff) - 1)) * sd / math.sqrt(len(diff))
        low, high = float(diff.mean() - half), float(diff.mean() + half)
        p = float(stats.ttest_rel(a, b).pvalue)
    return {"n": len(reps), "mean_diff": float(diff.mean()), "std_diff": sd, "low": low, "high": high,
            "level": level, "p_value": p, "test": T_TEST, "verdict": interval_verdict(low, high, higher_is_better)}


def interval_verdict(low: float, high: float, higher_is_better: bool = True) -> str:
    """The verdict of a paired interval of (head - baseline): better / worse only when it excludes 0."""
    if not (np.isfinite(low) and np.isfinite(high)) or low <= 0 <= high:
        return VERDICTS[2]
    return VERDICTS[0] if (low > 0) == higher_is_better else VERDICTS[1]


def hierarchical_bootstrap(correct, n_resamples: int = N_RESAMPLES, seed: int = 0, level: float = LEVEL
                           ) -> tuple[float, float]:
    """Percentile interval of mean 0/1 correctness [replicates, images] where each replicate has its own images.

    Two-stage resampling: replicates with replacement, then, within each drawn replicate, its images with
    replacement. Row r's images are replicate r's own draw, so image i of two rows are unrelated and each
    row is resampled on its own; a replicate drawn twice gets two independent image draws (sharing one
    would understate the images' sampling error). Given a difference array (head minus baseline, same images
    per row), this is the paired bootstrap of an attack's accuracy difference.
    """
    c = np.atleast_2d(np.asarray(correct, dtype=float))
    if c.size == 0:
        return math.nan, math.nan
    n_reps, n_images = c.shape
    rng = np.random.default_rng(seed)
    drawn = rng.integers(0, n_reps, size=(n_resamples, n_reps))  # which replicate fills each slot
    total = np.zeros(n_resamples)
    for slot in range(n_reps):  # one [resamples, images] draw at a time keeps the memory small
        images = rng.integers(0, n_images, size=(n_resamples, n_images))
        total += c[drawn[:, slot, None], images].mean(1)
    stat = np.clip(total / n_reps, c.min(), c.max())  # clip: float round-off only
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(stat, [tail, 100 - tail])
    return float(low), float(high)


def paired_bootstrap(head_correct, base_correct, higher_is_better: bool = True, n_resamples: int = N_RESAMPLES,
                     seed: int = 0, level: float = LEVEL) -> dict:
    """Paired bootstrap of an attack's accuracy difference (head - baseline) over the same replicates and, within
    each, the same attacked images: {n, n_replicates, n_images, mean_diff, low, high, level, test, verdict}.

    As the paired t, one replicate gives no verdict: its interval covers the images' sampling error only,
    not that of training, which is what tells two heads apart.
    """
    a = np.atleast_2d(np.asarray(head_correct, dtype=float))
    b = np.atleast_2d(np.asarray(base_correct, dtype=float))
    if a.shape != b.shape:
        raise ValueError(f"paired bootstrap needs the same replicates x images on both sides, got {a.shape} "
                         f"and {b.shape}")
    diff = a - b
    low, high = hierarchical_bootstrap(diff, n_resamples, seed, level)
    if not np.any(diff):
        low = high = 0.0
    verdict = interval_verdict(low, high, higher_is_better) if a.shape[0] > 1 else VERDICTS[2]
    return {"n": int(a.shape[0]), "n_replicates": int(a.shape[0]), "n_images": int(a.shape[1]),
            "mean_diff": float(diff.mean()), "low": low, "high": high, "level": level, "test": BOOTSTRAP_TEST,
            "verdict": verdict}


def correctness(bits: str) -> np.ndarray:
    """'0110…' (how results.json stores per-image correctness, one character per image) -> 0/1 array."""
    return np.frombuffer(bits.encode("ascii"), dtype=np.uint8) - ord("0")


def replicate_order(per_replicate) -> list:
    """Replicate keys ("0", "1", … as results.json stores them) in numeric order."""
    return sorted(per_replicate, key=lambda r: int(r) if str(r).lstrip("-").isdigit() else math.inf)


def _correct_matrix(rows: list[dict], key: str) -> np.ndarray | None:
    """[replicates, images] 0/1 correctness of `key` from per-replicate attack results; None when a replicate
    lacks it or the replicates attacked different numbers of images."""
    bits = [(r.get("correct") or {}).get(key) for r in rows]
    if not bits or any(not b for b in bits) or len({len(b) for b in bits}) != 1:
        return None
    return np.stack([correctness(b) for b in bits])


def attack_intervals(per_replicate: dict, n_resamples: int = N_RESAMPLES, seed: int = 0, level: float = LEVEL
                     ) -> dict:
    """{attack key: {mean, low, high, n_images, n_replicates, level}} for one head from its per-replicate attack
    results (each with "correct": {key: '0110…'}), by `hierarchical_bootstrap`: each replicate attacked its own
    images. Keys missing in a replicate, or of unequal length, are left out."""
    rows = [per_replicate[r] for r in replicate_order(per_replicate)]
    keys = dict.fromkeys(k for r in rows for k in (r.get("correct") or {}))
    out = {}
    for key in keys:
        c = _correct_matrix(rows, key)
        if c is None:
            continue
        low, high = exact_bound_at_the_edge(int(c.sum()), c.size, *hierarchical_bootstrap(c, n_resamples, seed, level),
                                            level)
        out[key] = {"mean": float(c.mean()), "low": low, "high": high, "n_images": int(c.shape[1]),
                    "n_replicates": int(c.shape[0]), "level": level}
    return out


def exact_bound_at_the_edge(k: int, n: int, low: float, high: float, level: float = LEVEL) -> tuple[float, float]:
    """(low, high) with its open side widened to the exact binomial (Clopper-Pearson) bound when k of the n pooled
    images stood and k is 0 (every image fell) or n (every image stood).

    A percentile bootstrap never leaves the range it observed: 0 of 300 attacked images standing gives [0, 0],
    as if the next run could not keep one, and it did (benchmarks/README.md, "A second run"). With k = 0 of N the
    upper bound is 1 - ((1 - level) / 2)^(1/N) (0.012 for N = 300); with k = N the lower bound mirrors it. A
    mixed outcome keeps the bootstrap interval."""
    tail = (1 - level) / 2
    if k == 0:
        high = max(high, float(stats.beta.ppf(1 - tail, 1, n)))
    elif k == n:
        low = min(low, float(stats.beta.ppf(tail, n, 1)))
    return low, high


def paired_attack(head: dict, baseline: dict, key: str, baseline_key: str | None = None,
                  n_resamples: int = N_RESAMPLES, seed: int = 0, level: float = LEVEL) -> dict:
    """Paired comparison of attack `key` of `head` with `baseline_key` (default: the same key) of `baseline`,
    both per-replicate attack results ({replicate: {"accuracy": {...}, "correct": {...}}}), over the replicates
    both measured.

    The paired bootstrap over replicates and images when every such replicate holds both correctness strings
    over the same images (within a replicate every head attacked the same images; the same head's naive and
    EOT attacks did too); else the paired t over the replicates' accuracies.
    """
    baseline_key = baseline_key or key
    reps = [r for r in replicate_order(head) if r in baseline
            and key in (head[r].get("accuracy") or {}) and baseline_key in (baseline[r].get("accuracy") or {})]
    if not reps:
        return {"n": 0}
    a = _correct_matrix([head[r] for r in reps], key)
    b = _correct_matrix([baseline[r] for r in reps], baseline_key)
    if a is not None and b is not None and a.shape == b.shape:
        return paired_bootstrap(a, b, True, n_resamples, seed, level)
    return paired_comparison({r: head[r]["accuracy"][key] for r in reps},
                             {r: baseline[r]["accuracy"][baseline_key] for r in reps}, True, level)


def attack_comparisons(adversarial: dict, baseline: str, n_resamples: int = N_RESAMPLES, seed: int = 0,
                       level: float = LEVEL) -> dict:
    """{head: {attack key: paired comparison with `baseline`}} for every other head of results.json's
    "adversarial" section and every key both measured (`paired_attack`). For a head attacked adaptively the
    key's accuracy is already the worst case over its attacks, so that is what is compared."""
    base = adversarial.get(baseline)
    if not base:
        return {}
    out = {}
    for head, per_replicate in adversarial.items():
        if head == baseline:
            continue
        keys = dict.fromkeys(k for r in per_replicate.values() for k in (r.get("accuracy") or {}))
        compared = {k: paired_attack(per_replicate, base, k, None, n_resamples, seed, level) for k in keys}
        out[head] = {k: c for k, c in compared.items() if c.get("n")}
    return out
