"""Read per-replicate series out of the results dict, and format numbers the way the report prints them."""
from __future__ import annotations

import math

import numpy as np

from vfe.report.names import Metric, parse_attack
from vfe.robustness.attack_spec import AttackSpec
from vfe.robustness.stats import VERDICTS, replicate_order

MISSING = "–"


def is_number(x) -> bool:
    return isinstance(x, (int, float, np.floating, np.integer)) and not isinstance(x, bool) and math.isfinite(x)


def mean_pm_std(metric: Metric, stat: dict | None, n_expected: int | None = None) -> str:
    """'91.2 ± 0.3' from a summary cell {mean, std, n}; the replicate count is shown when it is unusual."""
    if not stat or not stat.get("n") or not is_number(stat.get("mean")):
        return MISSING
    text = f"{metric.value(stat['mean'])} ± {metric.value(stat['std'])}"
    return text if n_expected is None or stat["n"] == n_expected else f"{text} (n={stat['n']})"


def signed_difference(metric: Metric, comparison: dict) -> str:
    """'−0.4 ± 0.3 points': the mean of per-replicate differences and their standard deviation."""
    mean, std = comparison.get("mean_diff"), comparison.get("std_diff")
    if not is_number(mean):
        return MISSING
    text = _signed(metric, mean)
    if is_number(std):
        text += f" ± {metric.value(std)}"
    return text + metric.difference_unit


def _signed(metric: Metric, x: float) -> str:
    sign = "+" if x > 0 else "−" if x < 0 else "±"
    return f"{sign}{metric.value(abs(x))}"


def has_interval(comparison: dict | None) -> bool:
    """Whether a paired comparison holds the interval its verdict rests on."""
    return bool(comparison) and is_number(comparison.get("low")) and is_number(comparison.get("high"))


def paired_interval(metric: Metric, comparison: dict) -> str:
    """'[−0.9, 0.1]': the paired interval of (head − baseline), or why there is none."""
    if has_interval(comparison):
        low, high = (metric.value(comparison[k]).replace("-", "−") for k in ("low", "high"))
        return f"[{low}, {high}]"
    if comparison.get("n", 0) < 2:
        return "no interval: one replicate"
    if comparison.get("std_diff") == 0:
        return "no interval: the same difference in every replicate"
    return "no interval in these results"


def paired_difference(metric: Metric, comparison: dict, unit: bool = True) -> str:
    """'−0.4 points [−0.9, 0.1]': the mean paired difference (with its unit unless `unit` is false) and its
    paired interval."""
    mean = comparison.get("mean_diff")
    if not is_number(mean):
        return MISSING
    interval = paired_interval(metric, comparison)
    return (f"{_signed(metric, mean)}{metric.difference_unit if unit else ''} "
            + (interval if interval.startswith("[") else f"({interval})"))


def verdict(comparison: dict) -> str:
    """The comparison's verdict, or "no difference shown" when it holds no paired interval to rest on (results
    written before the paired tests said "better" when two mean ± std ranges did not overlap)."""
    v = comparison.get("verdict")
    return v if has_interval(comparison) and v in VERDICTS else VERDICTS[2]


def level_text(comparison: dict) -> str:
    level = comparison.get("level")
    return f"{level * 100:g} %" if is_number(level) else "95 %"


def p_value(comparison: dict) -> str:
    p = comparison.get("p_value")
    if not is_number(p):
        return MISSING
    return "< 0.001" if p < 0.0005 else f"{p:.3f}"


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


def replicate_keys(per_replicate: dict) -> list[str]:
    """Replicates as the results store them ("0", "1", …), in numeric order."""
    return replicate_order(per_replicate)


def clean_accuracy(results: dict, head: str, replicate: str) -> float:
    m = results.get("clean", {}).get(head, {}).get(str(replicate))
    return float(m["accuracy"]) if m and is_number(m.get("accuracy")) else math.nan


def severity_curves(results: dict, benchmark_label: str) -> tuple[dict, list[int]]:
    """{head: {corruption: replicates x (1 + severities) accuracies}} with clean accuracy in column 0.

    Adds a `benchmark_label` curve: per replicate, the mean over the benchmark corruptions.
    """
    corr = results["corruptions"]
    per_head = corr.get("per_head", {})
    found = {int(s) for h in per_head.values() for row in h.values() for sev in row.get("accuracy", {}).values()
             for s in sev}
    severities = sorted(int(s) for s in corr.get("severities") or found)
    benchmark = set(corr.get("benchmark_corruptions") or [])
    curves: dict[str, dict[str, np.ndarray]] = {}
    for head, per_rep in per_head.items():
        reps = replicate_keys(per_rep)
        names = list(dict.fromkeys(c for r in reps for c in per_rep[r].get("accuracy", {})))
        table = {}
        for name in names:
            table[name] = np.array([[clean_accuracy(results, head, r)]
                                    + [per_rep[r]["accuracy"].get(name, {}).get(str(v), math.nan)
                                       for v in severities] for r in reps], dtype=float)
        chosen = [n for n in names if n in benchmark] or names
        if chosen:
            curves[head] = {benchmark_label: np.nanmean(np.stack([table[n] for n in chosen]), axis=0), **table}
    return curves, severities


def samples_randomly(per_replicate: dict, unknown: bool = True) -> bool:
    """Whether a head's attack results say it samples at prediction time (`unknown` when none says either way)."""
    said = [r["samples_randomly"] for r in per_replicate.values() if "samples_randomly" in r]
    return any(said) if said else unknown


def is_adaptive(per_replicate: dict) -> bool:
    """Whether the head was attacked adaptively: its accuracy is the worst case over several attacks."""
    return any(r.get("per_attack") for r in per_replicate.values())


def strongest_attacks(per_replicate: dict, key: str) -> dict[str, list[str]]:
    """{attack name: [replicates]} of the attack that set an adaptively attacked head's accuracy under `key`."""
    out: dict[str, list[str]] = {}
    for r in replicate_keys(per_replicate):
        name = (per_replicate[r].get("strongest") or {}).get(key)
        if name:
            out.setdefault(name, []).append(r)
    return out


def strongest_text(per_replicate: dict, key: str) -> str:
    """'transfer' (every replicate) or 'transfer in replicates 0, 1; bpda in replicate 2'; '' if none says."""
    found = strongest_attacks(per_replicate, key)
    if len(found) <= 1:
        return next(iter(found), "")
    return "; ".join(f"{name} in replicate{'s' if len(reps) > 1 else ''} {', '.join(reps)}"
                     for name, reps in found.items())


def adversarial_series(results: dict) -> tuple[dict[str, dict[AttackSpec, np.ndarray]], dict[str, np.ndarray]]:
    """Per head: per-replicate accuracies of every parsed attack, and per-replicate accuracy before attack.

    A head whose results say it does not sample (`samples_randomly` false) keeps only the EOT series of
    an attack run both ways: for it EOT is the plain attack, and the stage copies the same number.
    """
    curves, clean = {}, {}
    for head, per_rep in results["adversarial"].items():
        reps = replicate_keys(per_rep)
        samples = samples_randomly(per_rep)
        names = list(dict.fromkeys(k for r in reps for k in per_rep[r].get("accuracy", {})))
        attacks = {}
        for name in names:
            attack = parse_attack(name)
            if attack is not None and (samples or attack.eot or f"{name}_eot" not in names):
                attacks[attack] = np.array([per_rep[r]["accuracy"].get(name, math.nan) for r in reps], float)
        curves[head] = attacks
        if "clean" in names:
            clean[head] = np.array([per_rep[r]["accuracy"].get("clean", math.nan) for r in reps], float)
    return curves, clean


def history_phases(history: dict) -> dict[str, list[dict]]:
    """A head's history as {phase: per-epoch records}: one unnamed phase, or e.g. 'vae' and 'classifier'."""
    if not isinstance(history, dict):
        return {}
    if "records" in history:
        return {"": history["records"]}
    return {name: h["records"] for name, h in history.items() if isinstance(h, dict) and h.get("records")}
