"""`vfe run --engine ray` and `vfe sweep --engine ray`: the independent work of a run, sent to a Ray cluster.

  * tasks (`fan_out`): the fit stage's heads x seeds, the sweep's cells, the attack stage's heads x seeds;
  * `extract_on_cluster`: the corruption stage's test set under every corruption x severity, into the feature
    cache, which the stage then reads: shard by shard by a pool of backbone actors (frozen protocol; with or
    without a cache folder the nodes share, `--ray-shared-cache`), or entry by entry in tasks that receive the
    run's feature source (the reference protocol's fine-tuned top; a shared cache folder needed).
The work itself is one function used by both engines (vfe.experiment.fit.fit_one for a head x seed,
vfe.experiment.sweep.fit_cell for a sweep cell, vfe.experiment.stages.adversarial.stage.attack_one for an attacked head,
FeatureCache.extract for a shard); this module only runs it on the connected Ray cluster
(vfe.features.ray_engine.ray_session connects) and hands the results back to the driver.

  * Data movement: the arrays every task reads (training and test features, labels, augmented views) go
    into the object store once (`ray.put`); tasks on the driver's node read them zero-copy (read-only),
    other nodes fetch them once per node.
  * Resources and numbers: each task reserves one CPU and runs torch (`torch.set_num_threads(1)`, in the
    task) and the BLAS/OpenMP pools (threadpoolctl) at one thread, so a task's numbers are those of a local
    fit at one thread (tests/experiment/test_ray_fanout.py), and as many tasks run at once as the cluster
    has CPUs. Tasks fit on the CPU (`TASK_DEVICE`; no GPU is reserved).
  * Results come back in completion order with their position, so the caller writes each one as it arrives
    (a sweep stays resumable: a killed driver loses only the cells in flight) and orders them as the local
    engine does. Fitted heads travel back pickled by Ray between its own processes; nothing is unpickled
    from disk.
  * Failures: a task that raises a user error (VfeError) re-raises it on the driver as itself, and the tasks
    still pending are cancelled; a worker process that dies is retried by Ray (`MAX_RETRIES`).

Ray is imported only when a fan-out runs: the local engine never imports it.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from vfe.errors import SettingsError, VfeError
from vfe.experiment.config import EngineSettings
from vfe.features.cache import FeatureCache
from vfe.features.ray_engine import (
    ExtractionJob,
    RayEngineError,
    RayExtractor,
    cache_dir_here,
    cluster_cpus,
    every_node_sees,
    import_ray,
    ray_session,
)
from vfe.features.source import BackboneFeatures, FeatureSource

TASK_DEVICE = "cpu"  # tasks reserve one CPU and no GPU
TASK_THREADS = 1  # torch and BLAS threads inside a task (its one reserved CPU)
MAX_RETRIES = 3  # a task whose worker process died is run again this often


@contextmanager
def cluster_session(cluster: EngineSettings) -> Iterator[None]:
    """Connected to the Ray cluster for the block when `--engine ray` (a connection this process already has
    is reused); nothing at all with the local engine."""
    if cluster.engine != "ray":
        yield
        return
    with ray_session(cluster.address):
        yield


def fan_out(function: Callable[..., Any], items: Sequence, shared: dict[str, Any], *, progress: bool = True,
            desc: str = "ray", unit: str = "task", total: int | None = None,
            initial: int = 0) -> Iterator[tuple[int, Any]]:
    """(position in `items`, function(item, **shared)) for every item, each computed as a Ray task and
    yielded as it finishes (completion order), under a progress bar of `total` (default len(items)) steps
    starting at `initial`.

    `function` must be importable by the workers (a module-level function of vfe); `shared` (the arrays)
    is put in the object store once for all the tasks. Needs a Ray connection (ray_session / cluster_session).
    """
    if not items:
        return
    ray = import_ray()
    if not ray.is_initialized():
        raise RayEngineError("fan_out needs a Ray connection: use it inside `with ray_session(...)`")
    shared_ref = ray.put(shared)  # once; a top-level ObjectRef argument reaches each task as the value
    remote = ray.remote(run_task).options(num_cpus=1, max_retries=MAX_RETRIES)
    pending = {remote.remote(function, shared_ref, item): i for i, item in enumerate(items)}
    try:
        with tqdm(total=len(items) if total is None else total, initial=initial, desc=desc, unit=unit,
                  disable=not progress, dynamic_ncols=True) as bar:
            while pending:
                (ref,), _ = ray.wait(list(pending), num_returns=1)
                position = pending.pop(ref)
                result = _result(ray, ref)
                bar.update()
                yield position, result
    finally:  # an error here or in the caller (e.g. writing a cell): the rest is not computed for nothing
        for ref in pending:
            ray.cancel(ref)


def extract_on_cluster(source: FeatureSource, jobs: list[ExtractionJob], cluster: EngineSettings, *,
                       progress: bool = True, desc: str = "extract (ray)") -> None:
    """Fill the cache entries that `source` will read for `jobs`; the caller then reads them through `source`
    as the local engine would (every entry found).

      * frozen backbone (BackboneFeatures): one backbone actor per CPU of the cluster, each with the run's
        backbone shipped to it (vfe.backbones.shipping: the same fingerprint, or an error naming why not),
        computes every missing shard of every job in one queue. The actors write the cache folder when every
        node sees it; otherwise (`cluster.ray_shared_cache`: "no", or "auto" and a node that does not see a
        probe file) they send each shard's features back and this process writes them;
      * any other source (the reference protocol's CutFeatures: activations at the cut, then the fine-tuned
        top): the source itself travels to one task per job (its networks pickled once into the object store),
        and each task fills that job's entries exactly as the driver would, in the cache folder, which every
        node must see: with --ray-shared-cache no, or under auto a node that does not see a probe file, this
        is refused in one line.
    """
    if not isinstance(source, BackboneFeatures):
        _check_tasks_see(source.cache.root.expanduser().resolve(), cluster.ray_shared_cache)
        shared = {"source": source, "data": [job.data for job in jobs]}
        items = [(i, job.transform, job.transform_key) for i, job in enumerate(jobs)]
        for _ in fan_out(_fill_entry, items, shared, progress=progress, desc=desc, unit="entry"):
            pass
        return
    with RayExtractor(source.backbone, actors=max(1, int(cluster_cpus())),
                      shared_cache=cluster.ray_shared_cache) as extractor:
        extractor.extract_many(jobs, source.cache, progress=progress, desc=desc)


def _check_tasks_see(root: Path, shared_cache: str) -> None:
    """SettingsError unless tasks on every node can write the cache folder `root` (`shared_cache`: yes, no, auto)."""
    if shared_cache == "yes":
        return
    why = "--ray-shared-cache no" if shared_cache == "no" else None
    if why is None and not every_node_sees(root):
        why = f"a Ray node does not see the cache folder {root}"
    if why is not None:
        raise SettingsError(f"{why}: the reference protocol's corruption stage on Ray writes the cache from its tasks, "
                            "which needs a folder every node sees (docs/ray.md); mount one on every node, or run "
                            "with --engine local")


def _fill_entry(item: tuple, *, source: FeatureSource, data: list) -> None:
    """One job of extract_on_cluster in a task: `source(images, transform, key)` into the cache folder as this node
    sees it, nothing sent back."""
    i, transform, key = item
    source.progress = False
    source.cache = FeatureCache(cache_dir_here(str(source.cache.root)))
    source(data[i], transform=transform, transform_key=key)


def run_task(function: Callable[..., Any], shared: dict[str, Any], item: Any) -> Any:
    """One task on a worker (a Ray task, or a local worker process: vfe.experiment.processes): `function(item,
    **shared)` at one torch and one BLAS thread."""
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(TASK_THREADS)  # Ray sets OMP_NUM_THREADS for a 1-CPU task; torch is set explicitly
    with threadpool_limits(limits=TASK_THREADS), warnings.catch_warnings():
        # the shared arrays are the object store's read-only buffers; the heads only read them
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return function(item, **shared)


def _result(ray, ref) -> Any:
    """ray.get(ref), with a user error raised in the task re-raised as itself (one line at the command
    line) and a worker that died more often than it may be retried reported in one line."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as err:
        if isinstance(err.cause, VfeError):
            raise err.cause from None
        raise
    except ray.exceptions.WorkerCrashedError as err:
        first = next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)
        raise RayEngineError(f"a Ray worker fitting a head died {MAX_RETRIES + 1} times ({first}); what was "
                             "written is kept: run the command again to compute the rest") from None


__all__ = ["MAX_RETRIES", "TASK_DEVICE", "TASK_THREADS", "cluster_session", "extract_on_cluster", "fan_out", "run_task"]
