"""Corrupt the test images (every corruption x severity), extract their features through the cache,
and measure every head on them; then the corruption metrics (mCE with the linear head as normaliser).
"""
from __future__ import annotations

import time

import numpy as np

from vfe.data.types import ImageSet
from vfe.features.cache import FeatureCache
from vfe.stages.clean import probability_metrics


def corrupted_features(cache: FeatureCache, backbone, test: ImageSet, name: str, severity: int, seed: int,
                       params: str, progress: bool) -> np.ndarray:
    """Features of the test images under one corruption; cached under a key naming it."""
    from vfe.robustness.corruptions import CORRUPTIONS_VERSION, corrupt

    def transform(images: np.ndarray, first_row: int) -> np.ndarray:
        # the seed depends on the shard's first row, so every shard draws its own noise
        return corrupt(images, name, severity, seed=seed + first_row, params=params)

    key = f"corrupt:{name}:s{severity}:seed{seed}:params={params}:v{CORRUPTIONS_VERSION}"
    fs = cache.extract(backbone, test, transform=transform, transform_key=key, progress=progress,
                       desc=f"{name} s{severity}")
    return fs.array()


def run_corruptions(cache: FeatureCache, backbone, test: ImageSet, models: dict, names: list[str],
                    severities: list[int], seed: int, params: str, progress: bool = True) -> dict:
    """{(head, seed): {corruption: {severity: metrics}}} plus per-corruption seconds."""
    table: dict = {key: {} for key in models}
    seconds: dict[str, float] = {}
    for name in names:
        start = time.perf_counter()
        for severity in severities:
            X = corrupted_features(cache, backbone, test, name, severity, seed, params, progress)
            for key, model in models.items():
                table[key].setdefault(name, {})[severity] = probability_metrics(model.predict_proba(X),
                                                                                test.labels)
        seconds[name] = round(time.perf_counter() - start, 3)
    return {"per_model": table, "seconds": seconds}


def error_table(per_corruption: dict) -> dict[str, dict[int, float]]:
    """{corruption: {severity: error}} from {corruption: {severity: metrics}}."""
    return {c: {s: 1.0 - m["accuracy"] for s, m in sev.items()} for c, sev in per_corruption.items()}
