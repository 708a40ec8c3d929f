"""Turn per-seed measurements into the report's numbers: corruption metrics, then a per-head
summary (mean +/- std over seeds) and paired comparisons with the baseline head."""
from __future__ import annotations

import numpy as np

from vfe.robustness import metrics as cm
from vfe.stages.corruption import error_table
from vfe.stages.summary import mean_std, paired_comparison

BASELINE = "linear"


def corruption_summary(per_model: dict, clean: dict, config) -> dict:
    """Per head and seed: accuracy per corruption/severity, mean corruption accuracy, CE, mCE, relative mCE.

    The normaliser of CE is the baseline head trained with the same seed (Hendrycks & Dietterich
    normalise by AlexNet; here the classic transfer head plays that role).
    """
    from vfe.robustness.corruptions import BENCHMARK_CORRUPTIONS

    out: dict = {}
    for (head, seed), table in per_model.items():
        errors = error_table(table)
        clean_error = 1.0 - clean[(head, seed)]["accuracy"]
        base_key = (BASELINE, seed)
        row = {"accuracy": {c: {str(s): m["accuracy"] for s, m in sev.items()} for c, sev in table.items()},
               "nll": {c: {str(s): m["nll"] for s, m in sev.items()} for c, sev in table.items()},
               "ece": {c: {str(s): m["ece"] for s, m in sev.items()} for c, sev in table.items()},
               "mean_accuracy": 1.0 - cm.mean_corruption_error(errors, [c for c in errors
                                                                         if c in BENCHMARK_CORRUPTIONS]),
               "mean_accuracy_all": 1.0 - cm.mean_corruption_error(errors, list(errors)),
               "mean_nll": float(np.mean([m["nll"] for sev in table.values() for m in sev.values()])),
               "mean_ece": float(np.mean([m["ece"] for sev in table.values() for m in sev.values()]))}
        if base_key in per_model:
            base_errors = error_table(per_model[base_key])
            base_clean = 1.0 - clean[base_key]["accuracy"]
            bench = [c for c in errors if c in BENCHMARK_CORRUPTIONS]
            row["CE"] = {c: cm.corruption_error(errors[c], base_errors[c]) for c in errors}
            row["mCE"] = cm.mce(errors, base_errors, bench)
            row["relative_mCE"] = cm.relative_mce(errors, clean_error, base_errors, base_clean, bench)
        out.setdefault(head, {})[str(seed)] = row
    return {"per_head": out, "normaliser": BASELINE, "severities": list(config.severities),
            "benchmark_corruptions": [c for c in BENCHMARK_CORRUPTIONS]}


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


# metrics where lower is better; everything else is higher-is-better
LOWER_IS_BETTER = ("nll", "ece", "mCE", "fpr95")


def summarise(results: dict, config) -> dict:
    heads = list(results["clean"])
    table = {h: {k: mean_std(v.values()) for k, v in _collect(results, h).items()} for h in heads}
    comparisons = {}
    if BASELINE in heads:
        base = _collect(results, BASELINE)
        for h in heads:
            if h == BASELINE:
                continue
            mine = _collect(results, h)
            comparisons[h] = {k: paired_comparison(v, base[k], not any(t in k for t in LOWER_IS_BETTER))
                              for k, v in mine.items() if k in base}
    return {"table": table, "vs_baseline": comparisons, "baseline": BASELINE}
