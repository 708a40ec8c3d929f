"""Fit every head with every seed on the cached training features."""
from __future__ import annotations

import time

import numpy as np
from tqdm.auto import tqdm

from vfe.heads import PRESETS, is_augmented, make_head


def params_for(head: str, head_params: dict[str, dict]) -> dict:
    """A head's parameters: those given for its base head (e.g. "vfe" for "vfe-k8"), then its own."""
    base = PRESETS[head].head if head in PRESETS else head
    return {**(head_params.get(base, {}) if base != head else {}), **head_params.get(head, {})}


def fit_heads(heads: list[str], seeds: list[int], X: np.ndarray, y: np.ndarray,
              head_params: dict[str, dict] | None = None, device: str = "cpu", progress: bool = True,
              X_aug: np.ndarray | None = None) -> tuple[dict[tuple[str, int], object], dict[str, list[float]]]:
    """{(head, seed): fitted head} and the fit seconds per head (one entry per seed).

    `X_aug` (features of corrupted training images, row-aligned with X) goes to the augmented heads only.
    """
    head_params = head_params or {}
    models, seconds = {}, {}
    jobs = [(h, s) for h in heads for s in seeds]
    for head, seed in tqdm(jobs, desc="fit heads", unit="model", disable=not progress):
        start = time.perf_counter()
        params = {"random_state": seed, **params_for(head, head_params)}
        model = make_head(head, **params)
        if "device" in model.get_params():
            model.set_params(device=device)
        extra = {"X_aug": X_aug} if is_augmented(head) else {}
        models[(head, seed)] = model.fit(X, y, **extra)
        seconds.setdefault(head, []).append(round(time.perf_counter() - start, 3))
    return models, seconds
