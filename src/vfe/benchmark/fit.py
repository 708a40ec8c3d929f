"""Fit every head on one replicate's cached training features, here or as Ray tasks."""
from __future__ import annotations

import time

import numpy as np
from tqdm.auto import tqdm

from vfe.benchmark.config import EngineSettings, HeadSettings, check_engine
from vfe.benchmark.fanout import TASK_DEVICE, cluster_session, fan_out
from vfe.heads.registry import is_augmented, is_augmix, make_head, params_for


def fit_head(head: str, seed: int, params: dict, X: np.ndarray, y: np.ndarray, device: str = "cpu",
             X_aug: np.ndarray | None = None, X_views: np.ndarray | None = None) -> tuple[object, float]:
    """`head` built with `params` and `seed` and fitted: (the fitted head, its fit seconds). `X_aug` goes to the
    augmented heads only, `X_views` to the AugMix heads only (both row-aligned with X). The run's fit stage and
    the sweep's cells both fit through here."""
    start = time.perf_counter()
    model = make_head(head, **{**params, "random_state": seed})  # the draw's seed, never a stray parameter
    if "device" in model.get_params():
        model.set_params(device=device)
    extra = {"X_aug": X_aug} if is_augmented(head) else {"X_aug": X_views} if is_augmix(head) else {}
    model = model.fit(X, y, **extra)
    return model, round(time.perf_counter() - start, 3)


def fit_one(head: str, seed: int, X: np.ndarray, y: np.ndarray, head_params: dict[str, dict], device: str = "cpu",
            X_aug: np.ndarray | None = None, X_views: np.ndarray | None = None) -> tuple[object, float]:
    """One head fitted with `seed` and the run's parameters for it. What both engines run per model."""
    return fit_head(head, seed, params_for(head, head_params), X, y, device, X_aug, X_views)


def _fit_task(head: str, *, seed: int, **shared) -> tuple[object, float]:
    return fit_one(head, seed, **shared)


def fit_heads(settings: HeadSettings, heads: list[str], X: np.ndarray, y: np.ndarray, replicate: int = 0,
              seed: int = 0, device: str = "cpu", progress: bool = True, X_aug: np.ndarray | None = None,
              X_views: np.ndarray | None = None, cluster: EngineSettings | None = None
              ) -> tuple[dict[tuple[str, int], object], dict[str, list[float]]]:
    """{(head, replicate): fitted head} for one replicate's training features, and each head's fit seconds.

    `heads` are the settings' heads with 'all' expanded; every head is initialised with the replicate's `seed`.
    `X_aug` (features of corrupted training images, row-aligned with X) goes to the augmented heads only,
    `X_views` (features of K AugMix views of each training image, n x K x d) to the AugMix heads only.

    `cluster`: EngineSettings(engine="ray", address=...) fits the heads as Ray tasks (one CPU and one
    torch thread each, on the CPU: vfe.benchmark.fanout) on the cluster at the address (a connection this
    process already has is used); the result is the same dict in the same order as the local engine's.
    """
    cluster = cluster or EngineSettings()
    check_engine(cluster)
    fitted: list[tuple[object, float] | None] = [None] * len(heads)
    if cluster.engine == "ray":
        shared = {"seed": seed, "X": X, "y": y, "head_params": settings.head_params, "device": TASK_DEVICE,
                  "X_aug": X_aug if any(map(is_augmented, heads)) else None,
                  "X_views": X_views if any(map(is_augmix, heads)) else None}
        with cluster_session(cluster):
            for i, result in fan_out(_fit_task, heads, shared, progress=progress, desc="fit heads (ray)",
                                     unit="model"):
                fitted[i] = result
    else:
        for i, head in enumerate(tqdm(heads, desc="fit heads", unit="model", disable=not progress)):
            fitted[i] = fit_one(head, seed, X, y, settings.head_params, device, X_aug, X_views)
    models, seconds = {}, {}
    for head, (model, fit_s) in zip(heads, fitted):
        models[(head, replicate)] = model
        seconds[head] = [fit_s]
    return models, seconds
