"""Fit every head on each replicate's cached training features: here, in worker processes, or as Ray tasks."""
from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np

from vfe.experiment.config import EngineSettings, HeadSettings, check_engine
from vfe.experiment.fanout import TASK_DEVICE, cluster_session, fan_out
from vfe.experiment.processes import map_local
from vfe.heads.registry import is_augmented, is_augmix, is_external, make_head, params_for


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


@dataclass
class TrainingDraw:
    """One replicate's training features: what its heads are fitted on."""

    replicate: int
    seed: int  # every head of the replicate is initialised with it
    X: np.ndarray
    y: np.ndarray
    X_aug: np.ndarray | None = None  # features of corrupted training images, row-aligned with X (augmented heads)
    X_views: np.ndarray | None = None  # features of K AugMix views of each image, n x K x d (AugMix heads)


def _fit_draw_task(item: tuple[str, int], *, draws: list[TrainingDraw], head_params: dict[str, dict],
                   device: str) -> tuple[object, float]:
    """One (head, draw) of fit_replicates, wherever it runs: this process, a worker process or a Ray task."""
    head, k = item
    d = draws[k]
    return fit_one(head, d.seed, d.X, d.y, head_params, device, d.X_aug, d.X_views)


def fit_replicates(settings: HeadSettings, heads: list[str], draws: list[TrainingDraw], device: str = "cpu",
                   progress: bool = True, cluster: EngineSettings | None = None, workers: int = 1
                   ) -> tuple[dict[tuple[str, int], object], dict[str, list[float]]]:
    """{(head, replicate): fitted head} for every head on every draw's training features, and each head's fit
    seconds (one per draw, in draw order).

    `heads` are the settings' heads with 'all' expanded; each is initialised with its draw's seed. The local
    engine fits `workers` heads at once in worker processes (vfe.experiment.processes: one thread each, as a
    feature head fits anyway, so the weights are those of fitting them one by one); heads registered in this
    process only (`register_head`) are fitted here, since a fresh process does not know them.

    `cluster`: EngineSettings(engine="ray", address=...) fits them as Ray tasks (one CPU and one torch thread
    each, on the CPU: vfe.experiment.fanout) on the cluster at the address (a connection this process already
    has is used). Either way the result is the same dict in the same order.
    """
    cluster = cluster or EngineSettings()
    check_engine(cluster)
    items = [(head, k) for head in heads for k in range(len(draws))]
    needs_aug, needs_views = any(map(is_augmented, heads)), any(map(is_augmix, heads))
    draws = [replace(d, X_aug=d.X_aug if needs_aug else None, X_views=d.X_views if needs_views else None)
             for d in draws]  # only what some head reads travels to the workers
    fitted: dict[tuple[str, int], tuple[object, float]] = {}
    if cluster.engine == "ray":
        shared = {"draws": draws, "head_params": settings.head_params, "device": TASK_DEVICE}
        with cluster_session(cluster):
            for i, result in fan_out(_fit_draw_task, items, shared, progress=progress, desc="fit heads (ray)",
                                     unit="model"):
                fitted[items[i]] = result
    else:
        shared = {"draws": draws, "head_params": settings.head_params, "device": device}
        here = 1 if any(map(is_external, heads)) else workers
        desc = f"fit heads ({here} at a time)" if here > 1 else "fit heads"
        for i, result in map_local(_fit_draw_task, items, shared, workers=here, progress=progress, desc=desc,
                                   unit="model"):
            fitted[items[i]] = result
    models, seconds = {}, {}
    for k, d in enumerate(draws):
        for head in heads:
            model, fit_s = fitted[(head, k)]
            models[(head, d.replicate)] = model
            seconds.setdefault(head, []).append(fit_s)
    return models, seconds


def fit_heads(settings: HeadSettings, heads: list[str], X: np.ndarray, y: np.ndarray, replicate: int = 0,
              seed: int = 0, device: str = "cpu", progress: bool = True, X_aug: np.ndarray | None = None,
              X_views: np.ndarray | None = None, cluster: EngineSettings | None = None, workers: int = 1
              ) -> tuple[dict[tuple[str, int], object], dict[str, list[float]]]:
    """fit_replicates on one draw: {(head, replicate): fitted head} and each head's fit seconds ([one])."""
    return fit_replicates(settings, heads, [TrainingDraw(replicate, seed, X, y, X_aug, X_views)], device, progress,
                          cluster, workers)
