"""Every head and strategy of a run ranked on corruptions it did not see in training (results.json "leaderboard").

A head trained on features of corrupted images (`vfe-aug`, `dae-aug`: the noise family) would be scored
in-distribution on those corruptions, so each head's corruption numbers here use only the benchmark
corruptions it did not see (`held_out`), and its relative mCE is normalised by the linear head's errors
on that same set, seed by seed. The ranking is by that held-out relative mCE; the 95 % interval over seeds
(Student t, n - 1 degrees of freedom) says whether a head separates from the linear head (1 by definition;
the report prints it as 100).
"""
from __future__ import annotations

import math

import numpy as np
from scipy import stats

from vfe.benchmark.summary import BASELINE
from vfe.robustness import metrics as cm
from vfe.robustness.attack_spec import AttackSpec

LEVEL = 0.95


def seen_corruptions(results: dict, head: str, augmented: bool) -> list[str]:
    """The corruptions `head` saw in training: the augmentation family's, for heads fitted with it."""
    return list((results.get("augmentation") or {}).get("train_corruptions", [])) if augmented else []


def t_interval(values: list[float], level: float = LEVEL) -> tuple[float, float] | None:
    """The Student-t interval of the mean of `values` (None for fewer than 2)."""
    if len(values) < 2:
        return None
    v = np.asarray(values, dtype=float)
    half = stats.t.ppf(0.5 + level / 2, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v))
    return float(v.mean() - half), float(v.mean() + half)


def ranked_attack(keys) -> str | None:
    """The attack the leaderboard reports: L-inf, EOT preferred, PGD preferred, the smallest budget (at the default
    budgets every head is near 0 % from 4/255 up, so only the smallest one tells heads apart)."""
    specs = []
    for key in keys:
        try:
            spec = AttackSpec.parse(key)
        except ValueError:
            continue
        if spec.norm == "linf":
            specs.append(((not spec.eot, spec.method != "pgd", spec.eps), key))
    return min(specs)[1] if specs else None


def _mean_std(values: list[float]) -> dict | None:
    if not values:
        return None
    v = np.asarray(values, dtype=float)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0, "n": len(v)}


def head_row(results: dict, head: str, seen: list[str]) -> dict:
    """One head's leaderboard entry (see the module docstring)."""
    clean = results["clean"].get(head, {})
    base_clean = results["clean"].get(BASELINE, {})
    corr = results.get("corruptions", {})
    per_head = corr.get("per_head", {})
    bench = [c for c in corr.get("benchmark_corruptions", []) if c not in seen]
    held, rel, base_held = [], [], []
    for seed, row in per_head.get(head, {}).items():
        errors = {c: {int(s): 1.0 - a for s, a in sev.items()} for c, sev in row["accuracy"].items()}
        names = [c for c in bench if c in errors]
        if not names:
            continue
        held.append(1.0 - cm.mean_corruption_error(errors, names))
        base_row = per_head.get(BASELINE, {}).get(seed)
        if base_row is not None and seed in clean and seed in base_clean:
            base = {c: {int(s): 1.0 - a for s, a in sev.items()} for c, sev in base_row["accuracy"].items()}
            rel.append(cm.relative_mce(errors, 1.0 - clean[seed]["accuracy"], base,
                                               1.0 - base_clean[seed]["accuracy"], names))
            base_held.append(1.0 - cm.mean_corruption_error(base, names))
    clean_diff = [clean[s]["accuracy"] - base_clean[s]["accuracy"] for s in clean if s in base_clean]
    attacks = results.get("adversarial", {}).get(head, {})
    attack = ranked_attack({k for m in attacks.values() for k in m.get("accuracy", {})})
    interval = (results.get("adversarial_intervals") or {}).get(head, {}).get(attack) if attack else None
    ood = results.get("ood", {}).get("per_head", {}).get(head, {})
    ood_keys = sorted({k for m in ood.values() for k in m if k.startswith("selected_auroc_")})
    rel_interval = t_interval(rel)
    return {
        "head": head,
        "clean_accuracy": _mean_std([m["accuracy"] for m in clean.values()]),
        "clean_diff_vs_linear": _mean_std(clean_diff),
        "clean_ece": _mean_std([m["ece"] for m in clean.values()]),
        "seen_corruptions": list(seen),
        "held_out_corruptions": bench,
        "held_out_accuracy": _mean_std(held),
        "linear_held_out_accuracy": _mean_std(base_held),
        "held_out_relative_mCE": _mean_std(rel),
        "held_out_relative_mCE_interval": list(rel_interval) if rel_interval else None,
        "separates_from_linear": bool(rel_interval and (rel_interval[1] < 1.0 or rel_interval[0] > 1.0))
        and head != BASELINE,
        "attack": attack,
        "attack_accuracy": _mean_std([m["accuracy"][attack] for m in attacks.values() if attack in m["accuracy"]]),
        "attack_interval": [interval["low"], interval["high"]] if interval else None,
        "ood_auroc": {k.removeprefix("selected_auroc_"): _mean_std([m[k] for m in ood.values() if k in m])
                      for k in ood_keys},
        "fit_seconds": _mean_std(results.get("fit_seconds", {}).get(head, [])),
    }


def leaderboard(results: dict, augmented: dict[str, bool]) -> list[dict]:
    """Every head of the run, best held-out relative mCE first (heads without one last, in run order)."""
    rows = [head_row(results, h, seen_corruptions(results, h, augmented.get(h, False))) for h in results["clean"]]

    def rank(row):
        rel = row["held_out_relative_mCE"]
        return (rel is None, rel["mean"] if rel else 0.0)

    return sorted(rows, key=rank)
