"""Corrupt the test images (every corruption x severity), extract their features through the cache,
and measure every head on them; then the corruption metrics (mCE with the linear head as normaliser).
"""
from __future__ import annotations

import time

import numpy as np

from vfe.benchmark.config import CorruptionSettings
from vfe.benchmark.context import RunContext
from vfe.benchmark.summary import BASELINE
from vfe.data.types import ImageSet
from vfe.features.source import FeatureSource
from vfe.robustness import metrics as cm
from vfe.robustness.calibration import probability_metrics
from vfe.robustness.corruptions import BENCHMARK_CORRUPTIONS, CORRUPTIONS_VERSION, EXTRA_CORRUPTIONS, corrupt


def corruption_names(settings: CorruptionSettings) -> list[str]:
    """The corruptions a run measures: the settings' list, or all 19 (the 15 benchmark ones first)."""
    if settings.corruptions is not None:
        return list(settings.corruptions)
    return list(BENCHMARK_CORRUPTIONS) + list(EXTRA_CORRUPTIONS)


def run_stage(settings: CorruptionSettings, ctx: RunContext) -> dict:
    """results.json's "corruptions" (per head and seed, and mCE against the baseline) and "corruption_seconds"."""
    p = ctx.prepared
    measured = run_corruptions(p.features, p.test, ctx.models, corruption_names(settings), settings.severities,
                               ctx.data_seed, settings.corruption_params)
    return {"corruptions": corruption_summary(measured["per_model"], ctx.clean, settings.severities),
            "corruption_seconds": measured["seconds"]}


def corrupted_features(features: FeatureSource, test: ImageSet, name: str, severity: int, seed: int,
                       params: str) -> np.ndarray:
    """Features of the test images under one corruption (from the run's feature source, cached under a key
    naming the corruption)."""

    def transform(images: np.ndarray, first_row: int) -> np.ndarray:
        # the seed depends on the shard's first row, so every shard draws its own noise
        return corrupt(images, name, severity, seed=seed + first_row, params=params)

    key = f"corrupt:{name}:s{severity}:seed{seed}:params={params}:v{CORRUPTIONS_VERSION}"
    return features(test, transform=transform, transform_key=key, desc=f"{name} s{severity}")


def run_corruptions(features: FeatureSource, test: ImageSet, models: dict, names: list[str],
                    severities: list[int], seed: int, params: str) -> dict:
    """{(head, seed): {corruption: {severity: metrics}}} plus per-corruption seconds."""
    table: dict = {key: {} for key in models}
    seconds: dict[str, float] = {}
    for name in names:
        start = time.perf_counter()
        for severity in severities:
            X = corrupted_features(features, test, name, severity, seed, params)
            for key, model in models.items():
                table[key].setdefault(name, {})[severity] = probability_metrics(model.predict_proba(X),
                                                                                test.labels)
        seconds[name] = round(time.perf_counter() - start, 3)
    return {"per_model": table, "seconds": seconds}


def corruption_summary(per_model: dict, clean: dict, severities: list[int]) -> dict:
    """Per head and seed: accuracy per corruption/severity, mean corruption accuracy, CE, mCE, relative mCE.

    The normaliser of CE is the baseline head trained with the same seed (Hendrycks & Dietterich
    normalise by AlexNet; here the classic transfer head plays that role).
    """
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
    return {"per_head": out, "normaliser": BASELINE, "severities": list(severities),
            "benchmark_corruptions": [c for c in BENCHMARK_CORRUPTIONS]}


def error_table(per_corruption: dict) -> dict[str, dict[int, float]]:
    """{corruption: {severity: error}} from {corruption: {severity: metrics}}."""
    return {c: {s: 1.0 - m["accuracy"] for s, m in sev.items()} for c, sev in per_corruption.items()}
