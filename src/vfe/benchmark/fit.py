"""Fit every head with every seed on the cached training features."""
from __future__ import annotations

import time

import numpy as np
from tqdm.auto import tqdm

from vfe.benchmark.config import HeadSettings
from vfe.heads.registry import is_augmented, is_augmix, make_head, params_for


def fit_heads(settings: HeadSettings, heads: list[str], X: np.ndarray, y: np.ndarray, device: str = "cpu",
              progress: bool = True, X_aug: np.ndarray | None = None, X_views: np.ndarray | None = None
              ) -> tuple[dict[tuple[str, int], object], dict[str, list[float]]]:
    """{(head, seed): fitted head} and the fit seconds per head (one entry per seed).

    `heads` are the settings' heads with 'all' expanded. `X_aug` (features of corrupted training
    images, row-aligned with X) goes to the augmented heads only, `X_views` (features of K AugMix views of
    each training image, n x K x d) to the AugMix heads only.
    """
    models, seconds = {}, {}
    jobs = [(h, s) for h in heads for s in settings.seeds]
    for head, seed in tqdm(jobs, desc="fit heads", unit="model", disable=not progress):
        start = time.perf_counter()
        model = make_head(head, **{"random_state": seed, **params_for(head, settings.head_params)})
        if "device" in model.get_params():
            model.set_params(device=device)
        extra = {"X_aug": X_aug} if is_augmented(head) else {"X_aug": X_views} if is_augmix(head) else {}
        models[(head, seed)] = model.fit(X, y, **extra)
        seconds.setdefault(head, []).append(round(time.perf_counter() - start, 3))
    return models, seconds
