"""Every head and strategy of a run ranked on corruptions it did not see in training (results.json
"leaderboard").

A head trained on features of corrupted images (`vfe-aug`, `dae-aug`: the noise family) would be scored
in-distribution on those corruptions, so each head's corruption numbers here use only the benchmark
corruptions it did not see (`held_out`), normalised by the linear head's errors on that same set, replicate
by replicate. The ranking is by the headline (docs/leaderboard.md): the summed relative mCE, defined wherever
the linear head degrades overall, with a run-wide fallback (`vfe.robustness.metrics.headline_kind`) where it
does not, so that an easy data set still gets a ranking. Classic relative mCE (the mean of per-corruption
ratios) is kept beside it where every ratio is defined.

Each verdict against the linear head is paired (replicate r of every head shares its random factors): the
Student-t interval of the per-replicate differences for the headline and clean accuracy
(`vfe.robustness.stats.paired_comparison`), the paired bootstrap over replicates and their attacked images for
the attack (`vfe.robustness.stats.paired_bootstrap`).
"""
from __future__ import annotations

import math

import numpy as np

from vfe.experiment.summary import BASELINE
from vfe.robustness import metrics as cm
from vfe.robustness.attack_spec import AttackSpec
from vfe.robustness.stats import paired_attack, paired_comparison, replicate_order


def seen_corruptions(results: dict, head: str, augmented: bool) -> list[str]:
    """The corruptions `head` saw in training: the augmentation family's, for heads fitted with it."""
    return list((results.get("augmentation") or {}).get("train_corruptions", [])) if augmented else []


def ranked_attack(keys) -> str | None:
    """The attack the leaderboard reports: L-inf, EOT preferred, PGD preferred, the smallest budget (at the
    default budgets every head is near 0 % from 4/255 up, so only the smallest one tells heads apart)."""
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


def _tables(results: dict, head: str) -> dict[str, tuple[dict, float]]:
    """{replicate: (errors {corruption: {severity: error}}, clean error)} of `head`, replicates with both."""
    clean = results["clean"].get(head, {})
    per_head = (results.get("corruptions") or {}).get("per_head", {}).get(head, {})
    return {r: ({c: {int(s): 1.0 - a for s, a in sev.items()} for c, sev in row["accuracy"].items()},
                1.0 - clean[r]["accuracy"]) for r, row in per_head.items() if r in clean}


def held_out_corruptions(results: dict, head: str, seen: list[str]) -> list[str]:
    """The benchmark corruptions `head` did not see in training, measured in every replicate of it and of the
    linear head."""
    tables = [t for h in (head, BASELINE) for t, _ in _tables(results, h).values()]
    bench = (results.get("corruptions") or {}).get("benchmark_corruptions", [])
    return [c for c in bench if c not in seen and tables and all(c in t for t in tables)]


def _pairs(results: dict, head: str, names: list[str]) -> dict[str, tuple]:
    """{replicate: (errors, clean error, linear errors, linear clean error)}, replicates both heads have."""
    if not names:
        return {}
    mine, base = _tables(results, head), _tables(results, BASELINE)
    return {r: (*mine[r], *base[r]) for r in replicate_order(set(mine) & set(base))}


def _comparison(head: dict, linear: dict, higher_is_better: bool) -> dict | None:
    return paired_comparison(head, linear, higher_is_better) if head and linear else None


def attack_comparison(results: dict, head: str, attack: str) -> dict | None:
    """`head`'s accuracy under `attack` against the linear head's (`vfe.robustness.stats.paired_attack`: the paired
    bootstrap over replicates and the same attacked images where per-image correctness is stored, else the paired
    t over replicates); None when they share no replicate."""
    adv = results.get("adversarial") or {}
    compared = paired_attack(adv.get(head, {}), adv.get(BASELINE, {}), attack)
    return compared if compared.get("n") else None


def head_row(results: dict, head: str, seen: list[str], kind: str) -> dict:
    """One head's leaderboard entry (see the module docstring); `kind`: the run's headline kind."""
    clean = results["clean"].get(head, {})
    base_clean = results["clean"].get(BASELINE, {})
    names = held_out_corruptions(results, head, seen)
    pairs = _pairs(results, head, names)
    held = [1.0 - cm.mean_corruption_error(e, names) for e, _ in _tables(results, head).values() if names]
    headline = {r: cm.headline(kind, *p, names) for r, p in pairs.items()}
    linear_headline = {r: cm.headline(kind, b, bc, b, bc, names) for r, (_, _, b, bc) in pairs.items()}
    # classic relative mCE: only where the linear head degrades on each held-out corruption in every replicate
    classic_defined = bool(pairs) and all(cm.degrades(b, bc, [c]) for *_, b, bc in pairs.values()
                                          for c in names)
    classic = [cm.relative_mce(*p, names) for p in pairs.values()] if classic_defined else []
    is_base = head == BASELINE
    accuracy, base_accuracy = ({r: m["accuracy"] for r, m in c.items()} for c in (clean, base_clean))

    adversarial = (results.get("adversarial") or {}).get(head, {})
    attack = ranked_attack({k for m in adversarial.values() for k in m.get("accuracy", {})})
    attacked = {r: m for r, m in adversarial.items() if attack and attack in m.get("accuracy", {})}
    strongest = {r: m["strongest"][attack] for r, m in attacked.items()
                 if attack in (m.get("strongest") or {})}

    ood = (results.get("ood") or {}).get("per_head", {}).get(head, {})
    ood_keys = sorted({k for m in ood.values() for k in m if k.startswith("selected_auroc_")})
    return {
        "head": head,
        "clean_accuracy": _mean_std(list(accuracy.values())),
        "clean_vs_linear": None if is_base else _comparison(accuracy, base_accuracy, True),
        "clean_ece": _mean_std([m["ece"] for m in clean.values()]),
        "seen_corruptions": list(seen),
        "held_out_corruptions": names,
        "n_benchmark_corruptions": len(held_out_corruptions(results, head, [])),
        "held_out_accuracy": _mean_std(held),
        "linear_held_out_accuracy": _mean_std([1.0 - cm.mean_corruption_error(b, names)
                                               for _, _, b, _ in pairs.values()]),
        "headline_metric": kind,
        "headline": _mean_std([v for v in headline.values() if math.isfinite(v)]),
        "headline_by_replicate": headline,
        "headline_vs_linear": None if is_base else _comparison(headline, linear_headline, False),
        "linear_summed_degradation": {r: cm.summed_degradation(b, bc, names)
                                      for r, (*_, b, bc) in pairs.items()},
        "held_out_relative_mCE": _mean_std(classic),
        "attack": attack,
        "attack_accuracy": _mean_std([m["accuracy"][attack] for m in attacked.values()]),
        "attack_strongest": strongest or None,
        "attack_vs_linear": None if is_base or not attack else attack_comparison(results, head, attack),
        "ood_auroc": {k.removeprefix("selected_auroc_"): _mean_std([m[k] for m in ood.values() if k in m])
                      for k in ood_keys},
        "fit_seconds": _mean_std(results.get("fit_seconds", {}).get(head, [])),
    }


def leaderboard(results: dict, augmented: dict[str, bool]) -> list[dict]:
    """Every head of the run, best headline first (heads without one last, in run order).

    The headline kind is chosen once for the run, over every head's held-out set and every replicate, so that
    every row's number is the same quantity and the ranking compares like with like.
    """
    heads = list(results["clean"])
    seen = {h: seen_corruptions(results, h, augmented.get(h, False)) for h in heads}
    cases = [(b, bc, names) for h in heads if (names := held_out_corruptions(results, h, seen[h]))
             for _, _, b, bc in _pairs(results, h, names).values()]
    kind = cm.headline_kind(cases)
    rows = [head_row(results, h, seen[h], kind) for h in heads]

    def rank(row):
        value = row["headline"]
        return (value is None, value["mean"] if value else 0.0)

    return sorted(rows, key=rank)
