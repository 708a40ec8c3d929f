"""Read per-seed series out of the results dict, and format numbers the way the report prints them."""
from __future__ import annotations

import math

import numpy as np

from vfe.report.names import Metric, parse_attack
from vfe.robustness.attack_spec import AttackSpec

MISSING = "–"


def is_number(x) -> bool:
    return isinstance(x, (int, float, np.floating, np.integer)) and not isinstance(x, bool) and math.isfinite(x)


def mean_pm_std(metric: Metric, stat: dict | None, n_expected: int | None = None) -> str:
    """'91.2 ± 0.3' from a summary cell {mean, std, n}; the seed count is shown when it is unusual."""
    if not stat or not stat.get("n") or not is_number(stat.get("mean")):
        return MISSING
    text = f"{metric.value(stat['mean'])} ± {metric.value(stat['std'])}"
    return text if n_expected is None or stat["n"] == n_expected else f"{text} (n={stat['n']})"


def signed_difference(metric: Metric, comparison: dict) -> str:
    """'−0.4 ± 0.3 points': the mean of per-seed differences and their standard deviation."""
    mean, std = comparison.get("mean_diff"), comparison.get("std_diff")
    if not is_number(mean):
        return MISSING
    sign = "+" if mean > 0 else "−" if mean < 0 else "±"
    text = f"{sign}{metric.value(abs(mean))}"
    if is_number(std):
        text += f" ± {metric.value(std)}"
    return text + metric.difference_unit


def p_value(comparison: dict) -> str:
    p = comparison.get("p_value")
    return f"{p:.3f}" if is_number(p) else MISSING


def seconds(s) -> str:
    if not is_number(s):
        return MISSING
    if s < 120:
        return f"{s:.1f} s"
    minutes, rest = divmod(round(s), 60)
    return f"{minutes} min {rest:02d} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


def general(x) -> str:
    """Any cell value of a generic table (sweep rows, baseline scores)."""
    if isinstance(x, float) and not math.isfinite(x):
        return MISSING
    if is_number(x) and isinstance(x, (float, np.floating)):
        return f"{x:.4g}"
    if isinstance(x, (list, tuple)):
        return ", ".join(general(v) for v in x)
    return MISSING if x is None else str(x)


def flatten(d: dict, prefix: str = "") -> dict:
    """{'a': {'b': 1}} -> {'a/b': 1}: nested results as one row of columns."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "/"))
        else:
            out[key] = v
    return out


def seed_keys(per_seed: dict) -> list[str]:
    """Seeds as the results store them (strings), in numeric order."""
    return sorted(per_seed, key=lambda s: int(s) if str(s).lstrip("-").isdigit() else math.inf)


def clean_accuracy(results: dict, head: str, seed: str) -> float:
    m = results.get("clean", {}).get(head, {}).get(str(seed))
    return float(m["accuracy"]) if m and is_number(m.get("accuracy")) else math.nan


def severity_curves(results: dict, benchmark_label: str) -> tuple[dict, list[int]]:
    """{head: {corruption: seeds x (1 + severities) accuracies}} with clean accuracy in column 0.

    Adds a `benchmark_label` curve: per seed, the mean over the benchmark corruptions.
    """
    corr = results["corruptions"]
    per_head = corr.get("per_head", {})
    found = {int(s) for h in per_head.values() for row in h.values() for sev in row.get("accuracy", {}).values()
             for s in sev}
    severities = sorted(int(s) for s in corr.get("severities") or found)
    benchmark = set(corr.get("benchmark_corruptions") or [])
    curves: dict[str, dict[str, np.ndarray]] = {}
    for head, per_seed in per_head.items():
        seeds = seed_keys(per_seed)
        names = list(dict.fromkeys(c for s in seeds for c in per_seed[s].get("accuracy", {})))
        table = {}
        for name in names:
            table[name] = np.array([[clean_accuracy(results, head, s)]
                                    + [per_seed[s]["accuracy"].get(name, {}).get(str(v), math.nan)
                                       for v in severities] for s in seeds], dtype=float)
        chosen = [n for n in names if n in benchmark] or names
        if chosen:
            curves[head] = {benchmark_label: np.nanmean(np.stack([table[n] for n in chosen]), axis=0), **table}
    return curves, severities


def adversarial_series(results: dict) -> tuple[dict[str, dict[AttackSpec, np.ndarray]], dict[str, np.ndarray]]:
    """Per head: per-seed accuracies of every parsed attack, and per-seed accuracy before attack.

    A head whose results say it does not sample (`samples_randomly` false) keeps only the EOT series of
    an attack run both ways: for it EOT is the plain attack, and the stage copies the same number.
    """
    curves, clean = {}, {}
    for head, per_seed in results["adversarial"].items():
        seeds = seed_keys(per_seed)
        samples = any(per_seed[s].get("samples_randomly", True) for s in seeds)
        names = list(dict.fromkeys(k for s in seeds for k in per_seed[s].get("accuracy", {})))
        attacks = {}
        for name in names:
            attack = parse_attack(name)
            if attack is not None and (samples or attack.eot or f"{name}_eot" not in names):
                attacks[attack] = np.array([per_seed[s]["accuracy"].get(name, math.nan) for s in seeds], float)
        curves[head] = attacks
        if "clean" in names:
            clean[head] = np.array([per_seed[s]["accuracy"].get("clean", math.nan) for s in seeds], float)
    return curves, clean


def history_phases(history: dict) -> dict[str, list[dict]]:
    """A head's history as {phase: per-epoch records}: one unnamed phase, or e.g. 'vae' and 'classifier'."""
    if not isinstance(history, dict):
        return {}
    if "records" in history:
        return {"": history["records"]}
    return {name: h["records"] for name, h in history.items() if isinstance(h, dict) and h.get("records")}
