"""The per-head summary of a run: mean +/- std over replicates of every metric the stages measured, and
paired comparisons with the baseline head (the classic linear head): the Student-t interval of the
per-replicate differences, and for attacks the paired bootstrap over replicates and attacked images."""
from __future__ import annotations

from vfe.robustness.stats import attack_comparisons, higher_is_better, mean_std, paired_comparison

BASELINE = "linear"


def by_head(per_model: dict) -> dict:
    """{(head, replicate): x} -> {head: {replicate: x}} (JSON-friendly)."""
    out: dict = {}
    for (head, replicate), value in per_model.items():
        out.setdefault(head, {})[str(replicate)] = value
    return out


def _collect(results: dict, head: str) -> dict[str, dict[int, float]]:
    """{metric: {replicate: value}} for one head, from every stage that ran."""
    series: dict[str, dict[int, float]] = {}

    def put(metric, replicate, value):
        if value is not None:
            series.setdefault(metric, {})[int(replicate)] = float(value)

    for r, m in results["clean"].get(head, {}).items():
        put("clean_accuracy", r, m["accuracy"])
        put("clean_nll", r, m["nll"])
        put("clean_ece", r, m["ece"])
    for r, m in results.get("corruptions", {}).get("per_head", {}).get(head, {}).items():
        put("corruption_accuracy", r, m["mean_accuracy"])
        put("corruption_accuracy_all", r, m["mean_accuracy_all"])
        put("corruption_nll", r, m["mean_nll"])
        put("corruption_ece", r, m["mean_ece"])
        put("mCE", r, m.get("mCE"))
        put("relative_mCE", r, m.get("relative_mCE"))
        put("summed_relative_mCE", r, m.get("summed_relative_mCE"))
    for r, m in results.get("adversarial", {}).get(head, {}).items():
        for name, value in m.get("accuracy", {}).items():
            put(f"adv:{name}", r, value)
    for r, m in results.get("ood", {}).get("per_head", {}).get(head, {}).items():
        for name, value in m.items():
            put(f"ood:{name}", r, value)
    return series


def summarise(results: dict) -> dict:
    """{"table": {head: {metric: mean/std}}, "vs_baseline": {head: {metric: paired comparison}}, "baseline"}.

    Every comparison pairs replicate r of the head with replicate r of the baseline. Attack keys ("adv:…")
    use the paired bootstrap over the replicates and their attacked images where results.json holds the
    per-image correctness ("correct"), since ~100 attacked images carry a sampling error that the replicates'
    accuracies alone understate; the paired t over replicates otherwise, as every other metric.
    """
    heads = list(results["clean"])
    table = {h: {k: mean_std(v.values()) for k, v in _collect(results, h).items()} for h in heads}
    comparisons = {}
    if BASELINE in heads:
        base = _collect(results, BASELINE)
        attacks = attack_comparisons(results.get("adversarial") or {}, BASELINE)
        for h in heads:
            if h == BASELINE:
                continue
            mine, by_attack = _collect(results, h), attacks.get(h, {})
            comparisons[h] = {k: by_attack.get(k[4:]) if k.startswith("adv:") and k[4:] in by_attack
                              else paired_comparison(v, base[k], higher_is_better(k))
                              for k, v in mine.items() if k in base}
    return {"table": table, "vs_baseline": comparisons, "baseline": BASELINE}
