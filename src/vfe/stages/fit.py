"""Fit every head with every seed on the cached training features."""
from __future__ import annotations

import time

import numpy as np
from tqdm.auto import tqdm

from vfe.heads import make_head


def fit_heads(heads: list[str], seeds: list[int], X: np.ndarray, y: np.ndarray,
              head_params: dict[str, dict] | None = None, device: str = "cpu",
              progress: bool = True) -> tuple[dict[tuple[str, int], object], dict[str, list[float]]]:
    """{(head, seed): fitted head} and the fit seconds per head (one entry per seed)."""
    head_params = head_params or {}
    models, seconds = {}, {}
    jobs = [(h, s) for h in heads for s in seeds]
    for head, seed in tqdm(jobs, desc="fit heads", unit="model", disable=not progress):
        start = time.perf_counter()
        params = {"random_state": seed, **head_params.get(head, {})}
        model = make_head(head, **params)
        if "device" in model.get_params():
            model.set_params(device=device)
        models[(head, seed)] = model.fit(X, y)
        seconds.setdefault(head, []).append(round(time.perf_counter() - start, 3))
    return models, seconds
