"""The per-head summary of a run: mean +/- std over seeds of every metric the stages measured, and
paired comparisons with the baseline head (the classic linear head)."""
from __future__ import annotations

from vfe.robustness.stats import higher_is_better, mean_std, paired_comparison

BASELINE = "linear"


def by_head(per_model: dict) -> dict:
    """{(head, seed): x} -> {head: {seed: x}} (JSON-friendly)."""
    out: dict = {}
    for (head, seed), value in per_model.items():
        out.setdefault(head, {})[str(seed)] = value
    return out


def _collect(results: dict, head: str) -> dict[str, dict[int, float]]:
    """{metric: {seed: value}} for one head, from every stage that ran."""
    series: dict[str, dict[int, float]] = {}

    def put(metric, seed, value):
        if value is not None:
            series.setdefault(metric, {})[int(seed)] = float(value)

    for seed, m in results["clean"].get(head, {}).items():
        put("clean_accuracy", seed, m["accuracy"])
        put("clean_nll", seed, m["nll"])
        put("clean_ece", seed, m["ece"])
    for seed, m in results.get("corruptions", {}).get("per_head", {}).get(head, {}).items():
        put("corruption_accuracy", seed, m["mean_accuracy"])
        put("corruption_accuracy_all", seed, m["mean_accuracy_all"])
        put("corruption_nll", seed, m["mean_nll"])
        put("corruption_ece", seed, m["mean_ece"])
        put("mCE", seed, m.get("mCE"))
        put("relative_mCE", seed, m.get("relative_mCE"))
    for seed, m in results.get("adversarial", {}).get(head, {}).items():
        for name, value in m.get("accuracy", {}).items():
            put(f"adv:{name}", seed, value)
    for seed, m in results.get("ood", {}).get("per_head", {}).get(head, {}).items():
        for name, value in m.items():
            put(f"ood:{name}", seed, value)
    return series


def summarise(results: dict) -> dict:
    """{"table": {head: {metric: mean/std}}, "vs_baseline": {head: {metric: paired comparison}}, "baseline"}."""
    heads = list(results["clean"])
    table = {h: {k: mean_std(v.values()) for k, v in _collect(results, h).items()} for h in heads}
    comparisons = {}
    if BASELINE in heads:
        base = _collect(results, BASELINE)
        for h in heads:
            if h == BASELINE:
                continue
            mine = _collect(results, h)
            comparisons[h] = {k: paired_comparison(v, base[k], higher_is_better(k))
                              for k, v in mine.items() if k in base}
    return {"table": table, "vs_baseline": comparisons, "baseline": BASELINE}
