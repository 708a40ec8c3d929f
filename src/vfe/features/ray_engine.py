"""Feature extraction on a Ray cluster: the feature cache's shards computed by a pool of backbone actors.

`vfe extract ... --engine ray` (`extract_features(..., engine="ray")`) fills the very cache entry a local
extraction fills: same key, same content-addressed shard files, same manifest. Each actor builds the
backbone once from a `BackboneSpec` (create_backbone's arguments) and computes whole shards with
`FeatureCache.extract(..., shard_ids=[i])` on the shared cache folder; the cache's per-shard locks,
atomic writes and checksums do the coordination. So a rerun computes only the missing shards, a killed
actor costs only its shard in flight (Ray restarts it and retries the task), and a local run and a Ray
run can fill one entry together. The features are the local ones (byte-equal with fp32 and eager
settings, tests/features/test_ray_engine.py); only `images_this_run` in the manifest counts the last
shard's task rather than the whole run.

Data movement. The images go into Ray's object store once per extraction (`ray.put`, with the content
hash already memoised in them so no actor re-hashes); actors on the driver's node read the NumPy
arrays zero-copy, other nodes fetch them once. Each actor fetches them once per extraction (not per
task). `extract_many` queues the shards of many entries at once (the corruption stage of `vfe run
--engine ray`: one image set under 95 transforms), puts each distinct image set in the store once, and
ships each entry's transform (a closure, by value) with its job; the actors corrupt the images themselves. A lazily decoded image folder travels as its file list (absolute paths, which must be on the
shared filesystem), and each actor decodes only its shards' files.

Why long-lived actors (an ActorPool) and not Ray Data's `map_batches(CallableClass, compute=...)`
(measured with benchmarks/bench_distributed.py, results in docs/ray.md):
  * the unit of work is a cache shard, not a batch of images: the output goes into the
    shard-addressed cache, not into a Ray Dataset, so Ray Data would carry only shard numbers;
  * Ray Data creates its actor pool per dataset execution: each extraction would pay the actors'
    start-up (importing torch and timm, building and tracing the backbone: 6-20 s each here under load)
    again, and one `vfe run` extracts dozens of entries (clean, then every corruption x severity). A
    `RayExtractor` keeps its actors for all of them;
  * dispatch order matters to the cache: `extract(shard_ids=[i])` verifies the entry's shards from 0
    up to the first one missing, to see whether it is complete. Shards sent highest first keep shard 0
    missing until the end, so each task checks one file name instead of re-reading every shard before it
    (quadratic reads on a shared filesystem). Ray Data schedules its blocks in its own order;
  * measured on the same 2-core machine: a Ray Data job over the same shards ran slower than the pool
    by its executor's start-up and its per-job actor start-up (numbers in docs/ray.md).
Fault tolerance is Ray's own: actors restart (`max_restarts`) and a task lost with its actor is retried
(`max_task_retries`); errors raised by the extraction itself (an unreadable image) are not retried.

Ray is optional (`pip install 'vfe[ray]'`): this module imports it only when an engine is used.
"""
from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Self

from tqdm.auto import tqdm

from vfe import defaults
from vfe.data.images import LazyImages
from vfe.data.types import ImageSet
from vfe.errors import SettingsError, VfeError
from vfe.features.cache import DEFAULT_SHARD_SIZE, FeatureCache, FeatureSet, ImageTransform, cache_key

log = logging.getLogger(__name__)
INSTALL = "pip install 'vfe[ray]'"
CONNECT_TIMEOUT_S = 5.0  # a head that does not accept a TCP connection in this time is reported as down
MAX_RESTARTS = 3  # per actor; a task lost with its actor is retried as often


class RayNotInstalledError(VfeError):
    """The Ray engine was asked for, but Ray is not installed here."""


class RayConnectionError(VfeError):
    """No Ray cluster could be reached at the address given."""


class RayEngineError(VfeError):
    """The cluster cannot extract as asked (actors that disagree on the backbone, too few resources)."""


def import_ray():
    """The `ray` module, or RayNotInstalledError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise RayNotInstalledError(f"--engine ray needs Ray, which is not installed here: {INSTALL}") from None
    return ray


# -- connecting ---------------------------------------------------------------------------------------

@contextmanager
def ray_session(address: str | None = None, **init_kwargs: Any) -> Iterator[None]:
    """Ray connected for the block. A connection this process already has is used as it is (and left
    open); otherwise `ray.init(address)` runs and Ray is shut down after the block.

    address: None - a running cluster if Ray finds one (RAY_ADDRESS, or the last one started on this
    machine), else a new local one (about 12 s here); "auto" - a running cluster, else an error;
    "local" - a new local one; "ray://HOST:PORT" - Ray Client; "HOST:PORT" - a head node's GCS port.
    """
    ray = import_ray()
    if ray.is_initialized():
        yield
        return
    _check_reachable(address)
    kwargs = {"include_dashboard": False, "logging_level": logging.WARNING, **init_kwargs}
    try:
        ray.init(address=address, **kwargs)
    except (ConnectionError, TimeoutError, OSError, RuntimeError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise RayConnectionError(f"--address {address}: cannot connect to a Ray cluster ({first}); start one "
                                 "with `ray start --head` (docs/ray.md), or pass --address local") from None
    try:
        yield
    finally:
        ray.shutdown()


def _check_reachable(address: str | None) -> None:
    """Refuse at once an explicit HOST:PORT that accepts no TCP connection (ray.init would retry for minutes)."""
    if address in (None, "auto", "local"):
        return
    rest = address.split("://", 1)[1] if "://" in address else address
    host, sep, port = rest.rstrip("/").rpartition(":")
    if not sep or not port.isdigit():
        raise RayConnectionError(f"--address {address}: expected auto, local, ray://HOST:PORT or HOST:PORT")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as err:
        raise RayConnectionError(f"--address {address}: nothing answers at {host}:{port} ({err.strerror or err}); "
                                 "is the Ray head running there (`ray start --head`)?") from None


# -- what every actor builds --------------------------------------------------------------------------

@dataclass
class BackboneSpec:
    """create_backbone's arguments, so that every actor builds the same backbone once.

    `settings` are ExtractionSettings overrides (precision, jit, threads, batch_size, ...). A weights
    file must be at the same path on every node (give an absolute path on the shared filesystem).
    """

    name: str = defaults.BACKBONE
    weights: str = defaults.WEIGHTS
    image_size: int | None = defaults.IMAGE_SIZE
    device: str = "auto"
    crop_pct: float | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    def portable(self) -> BackboneSpec:
        """The same spec with a relative weights path made absolute (actors do not share the driver's cwd)."""
        path = Path(os.path.expanduser(str(self.weights)))
        return replace(self, weights=str(path.resolve())) if path.is_file() else self

    def build(self):
        from vfe.backbones import create_backbone  # torch and timm load in the actor, not at import

        return create_backbone(self.name, weights=self.weights, image_size=self.image_size, device=self.device,
                               crop_pct=self.crop_pct, **self.settings)


@dataclass
class ExtractionJob:
    """One cache entry for `RayExtractor.extract_many` to fill: FeatureCache.extract's data and transform."""

    data: ImageSet
    transform: ImageTransform | None = None
    transform_key: str | None = None


@dataclass
class _Job:
    """One extraction, put in the object store once and fetched once per actor. `data` is the images, or
    [ObjectRef] to them when several jobs share one image set (extract_many puts each set once)."""

    data: ImageSet | list
    root: str
    transform: ImageTransform | None
    transform_key: str | None
    shard_size: int


class _Counting:
    """The backbone as FeatureCache.extract sees it, counting the images it computes."""

    def __init__(self, backbone):
        self.backbone, self.images = backbone, 0
        self.name = backbone.name

    def fingerprint(self) -> str:
        return self.backbone.fingerprint()

    def iter_features(self, images):
        for batch in self.backbone.iter_features(images):
            self.images += len(batch)
            yield batch


class ShardWorker:
    """A Ray actor (made with ray.remote by RayExtractor): one backbone, built once, computing cache shards."""

    def __init__(self, spec: BackboneSpec):
        started = time.perf_counter()
        self.backbone = spec.build()
        if self.backbone.settings.jit and self.backbone.device.type == "cpu":
            # Trace at the configured batch size now: a trace is made on the first batch of an input shape
            # and runs only batches of that size, and the first shard an actor gets may be the short last one.
            import numpy as np

            size = self.backbone.image_size
            self.backbone.extract(np.zeros((self.backbone.settings.batch_size, size, size, 3), np.uint8),
                                  progress=False)
        self.build_s = time.perf_counter() - started
        self._job: tuple[str, _Job] | None = None

    def describe(self) -> dict[str, Any]:
        import ray
        import torch

        return {"fingerprint": self.backbone.fingerprint(), "pid": os.getpid(), "host": socket.gethostname(),
                "node": ray.get_runtime_context().get_node_id(), "device": str(self.backbone.device),
                "precision": self.backbone.precision, "threads": torch.get_num_threads(),
                "build_s": round(self.build_s, 3)}

    def extract(self, job_ref: list, job_id: str, shard: int | None) -> dict[str, Any]:
        """Compute shard `shard` of the job's entry unless it is there (None: every shard, then the manifest).

        `job_ref` is [ObjectRef]: nested in a list so that Ray passes the reference and the job is fetched
        here once per job, not resolved again for every task.
        """
        import ray

        if self._job is None or self._job[0] != job_id:
            self._job = None  # the previous job's images are released before the next are fetched
            job = ray.get(job_ref[0])
            if not isinstance(job.data, ImageSet):  # shared images: fetched once per node, zero-copy here
                job = replace(job, data=ray.get(job.data[0]))
            self._job = (job_id, job)
        job = self._job[1]
        counting = _Counting(self.backbone)
        started = time.perf_counter()
        fs = FeatureCache(job.root).extract(counting, job.data, transform=job.transform,
                                            transform_key=job.transform_key, shard_size=job.shard_size,
                                            shard_ids=None if shard is None else [shard], progress=False)
        return {"job": job_id, "shard": shard, "images": counting.images, "seconds": time.perf_counter() - started,
                "pid": os.getpid(), "complete": None if fs is None else (str(fs.path), fs.manifest)}

    def release(self, job_ids: str | list[str]) -> None:
        """Drop the images of the job held, if it is one of `job_ids` (so the object store can free them)."""
        if self._job is not None and self._job[0] in ([job_ids] if isinstance(job_ids, str) else job_ids):
            self._job = None


def cluster_cpus() -> float:
    """CPUs of the connected cluster."""
    return float(import_ray().cluster_resources().get("CPU", 1))


# -- the driver ---------------------------------------------------------------------------------------

@dataclass
class RunStats:
    """What one RayExtractor.extract did, for benchmarks and logs."""

    shards: int = 0  # in the entry
    shards_sent: int = 0  # tasks dispatched (the shards with no file at the start)
    images_computed: int = 0
    wall_s: float = 0.0  # the whole call, on the driver
    plan_s: float = 0.0  # waiting for the actors' backbones, hashing, ray.put, listing the entry
    busy_s: dict[int, float] = field(default_factory=dict)  # seconds inside FeatureCache.extract, by actor pid
    images: dict[int, int] = field(default_factory=dict)  # images computed, by actor pid
    finish_s: float = 0.0  # the last task done -> FeatureSet

    @property
    def actor_s(self) -> float:
        return sum(self.busy_s.values())


class RayExtractor:
    """A pool of backbone actors on the connected Ray cluster that fill FeatureCache entries shard by shard.

        with ray_session(address), RayExtractor(BackboneSpec("efficientnet_lite0", image_size=112)) as ex:
            train = ex.extract(train_set, FeatureCache("/shared/vfe-cache"))
            test = ex.extract(test_set, FeatureCache("/shared/vfe-cache"))

    actors: how many (default: the cluster's CPUs // cpus_per_actor, at least 1). Each reserves
    `cpus_per_actor` CPUs (Ray then sets its OMP_NUM_THREADS, hence torch's threads) and `gpus_per_actor`
    GPUs (device "auto" then picks the GPU Ray assigns). The actors start at once, in parallel; the first
    `extract` waits for their backbones.
    """

    def __init__(self, spec: BackboneSpec, actors: int | None = None, cpus_per_actor: float = 1.0,
                 gpus_per_actor: float = 0.0, max_restarts: int = MAX_RESTARTS):
        ray = import_ray()
        if not ray.is_initialized():
            raise RayEngineError("RayExtractor needs a Ray connection: use it inside `with ray_session(...)`")
        if cpus_per_actor <= 0 or gpus_per_actor < 0:
            raise SettingsError(f"--cpus-per-actor must be > 0 and --gpus-per-actor >= 0, got {cpus_per_actor}, "
                                f"{gpus_per_actor}")
        if actors is None:
            actors = max(1, int(cluster_cpus() // cpus_per_actor))
        if actors < 1:
            raise SettingsError(f"--actors must be at least 1, got {actors}")
        have = ray.cluster_resources()
        for name, each in (("CPU", cpus_per_actor), ("GPU", gpus_per_actor)):
            if actors * each > have.get(name, 0) + 1e-9:
                raise RayEngineError(f"{actors} actors x {each:g} {name}s need {actors * each:g} {name}s, and the "
                                     f"cluster has {have.get(name, 0):g}: the extra actors would never start; "
                                     "pass fewer --actors (or add nodes)")
        self.spec = spec.portable()
        remote = ray.remote(ShardWorker).options(num_cpus=cpus_per_actor, num_gpus=gpus_per_actor,
                                                 max_restarts=max_restarts, max_task_retries=max_restarts)
        self.actors = [remote.remote(self.spec) for _ in range(actors)]
        self._info: list[dict] | None = None
        self.last_run = RunStats()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """End the actors (Ray would when the extractor is garbage-collected; this is at once)."""
        ray = import_ray()
        for actor in self.actors:
            ray.kill(actor)
        self.actors = []

    def describe(self) -> list[dict]:
        """Each actor's fingerprint, pid, host, node, device, precision, threads and build time (waits for them)."""
        if self._info is None:
            ray = import_ray()
            self._info = _unwrap(ray, lambda: ray.get([a.describe.remote() for a in self.actors]))
        return self._info

    def fingerprint(self) -> str:
        """The backbone's fingerprint, the same on every actor (else RayEngineError: their features would differ)."""
        info = self.describe()
        prints = {i["fingerprint"] for i in info}
        if len(prints) > 1:
            where = ", ".join(f"{i['host']} {i['device']} {i['precision']}" for i in info)
            raise RayEngineError(f"the actors built different backbones ({where}): their features would go into "
                                 "different cache entries; give every actor the same device, and an explicit "
                                 "precision (e.g. precision='fp32')")
        return prints.pop()

    def extract(self, data: ImageSet, cache: FeatureCache | None = None, transform: ImageTransform | None = None,
                transform_key: str | None = None, shard_size: int = DEFAULT_SHARD_SIZE, progress: bool = True,
                desc: str | None = None, on_shard: Callable[[dict], None] | None = None) -> FeatureSet:
        """FeatureCache.extract(backbone, data, ...) computed by the actors; the same entry, the same features.

        `cache`'s folder must be the same path on every node (a shared filesystem). `on_shard` is called
        on the driver with each finished task's record (shard, images, seconds, pid).
        """
        return self.extract_many([ExtractionJob(data, transform, transform_key)], cache, shard_size, progress,
                                 desc or f"extract {data.source} (ray)", on_shard)[0]

    def extract_many(self, jobs: list[ExtractionJob], cache: FeatureCache | None = None,
                     shard_size: int = DEFAULT_SHARD_SIZE, progress: bool = True, desc: str | None = None,
                     on_shard: Callable[[dict], None] | None = None) -> list[FeatureSet]:
        """Several entries at once (e.g. the test set under every corruption x severity): every missing shard
        of every job goes to the pool in one queue, so the actors stay busy across entries instead of idling
        at the end of each one. Jobs that share an ImageSet object share one copy of it in the object store.
        Returns each job's FeatureSet, in order."""
        ray = import_ray()
        from ray.util import ActorPool

        started = time.perf_counter()
        if shard_size < 1:
            raise ValueError(f"shard_size must be at least 1, got {shard_size}")
        for job in jobs:
            if job.transform is not None and not job.transform_key:
                raise ValueError("a transform needs a transform_key naming it (it is part of the cache key)")
            if len(job.data) == 0:
                raise ValueError(f"{job.data.source}: no images to extract features from")
        root = (cache or FeatureCache()).root.expanduser().resolve()
        fingerprint = self.fingerprint()
        shared: dict[int, tuple[ImageSet, Any]] = {}  # id(ImageSet) -> (portable copy, [ObjectRef])
        for job in jobs:
            if id(job.data) not in shared:
                data = _portable(job.data)
                cache_key(fingerprint, data, None, shard_size)  # memoises the content hash before it travels
                shared[id(job.data)] = (data, [ray.put(data)])
        plans = []  # (job id, [ObjectRef to its _Job], shards to send, images)
        tasks: list[tuple[int, int]] = []
        for j, job in enumerate(jobs):
            data, data_ref = shared[id(job.data)]
            key = cache_key(fingerprint, data, job.transform_key, shard_size)
            on_disk = _shards_on_disk(root / key)
            count = -(-len(data) // shard_size)
            todo = [i for i in reversed(range(count)) if i not in on_disk]  # highest first: see the module docstring
            plans.append((uuid.uuid4().hex, [ray.put(_Job(data_ref, str(root), job.transform, job.transform_key,
                                                           shard_size))], len(data)))
            tasks += [(j, i) for i in todo]
        stats = self.last_run = RunStats(shards=sum(-(-n // shard_size) for *_, n in plans), shards_sent=len(tasks))
        stats.plan_s = time.perf_counter() - started
        index = {job_id: j for j, (job_id, _, _) in enumerate(plans)}
        complete: list = [None] * len(jobs)

        def images_in(j: int, shard: int) -> int:
            return min(plans[j][2], (shard + 1) * shard_size) - shard * shard_size

        try:
            pool = ActorPool(list(self.actors))
            with tqdm(total=sum(images_in(j, i) for j, i in tasks), unit="img", desc=desc or "extract (ray)",
                      disable=not progress, dynamic_ncols=True) as bar:
                results = pool.map_unordered(
                    lambda actor, t: actor.extract.remote(plans[t[0]][1], plans[t[0]][0], t[1]), tasks)
                for record in _unwrap_iter(ray, results):
                    j = index[record["job"]]
                    stats.images_computed += record["images"]
                    stats.busy_s[record["pid"]] = stats.busy_s.get(record["pid"], 0.0) + record["seconds"]
                    stats.images[record["pid"]] = stats.images.get(record["pid"], 0) + record["images"]
                    complete[j] = complete[j] or record["complete"]
                    bar.update(images_in(j, record["shard"]))
                    if on_shard is not None:
                        on_shard(record)
            finishing = time.perf_counter()
            for j, (job_id, job_ref, _) in enumerate(plans):
                if complete[j] is None:  # nothing was missing, or a writer's last check raced another's: verify
                    call = self.actors[0].extract.remote(job_ref, job_id, None)
                    record = _unwrap(ray, lambda call=call: ray.get(call))
                    stats.images_computed += record["images"]
                    complete[j] = record["complete"]
            stats.finish_s = time.perf_counter() - finishing
        finally:  # the actors drop the jobs' images; bounded, so an actor that is down cannot hold us here
            ids = [job_id for job_id, _, _ in plans]
            ray.wait([actor.release.remote(ids) for actor in self.actors], num_returns=len(self.actors), timeout=10)
        stats.wall_s = time.perf_counter() - started
        return [FeatureSet(Path(path), manifest) for path, manifest in complete]


def extract_with_ray(spec: BackboneSpec, data: ImageSet, cache_dir: str | os.PathLike | None = None,
                     transform: ImageTransform | None = None, transform_key: str | None = None,
                     shard_size: int = DEFAULT_SHARD_SIZE, address: str | None = None, actors: int | None = None,
                     cpus_per_actor: float = 1.0, gpus_per_actor: float = 0.0, progress: bool = True,
                     desc: str | None = None) -> FeatureSet:
    """One extraction on Ray: connect (see ray_session), start the actors (at most one per shard), extract."""
    with ray_session(address):
        if actors is None:
            actors = max(1, int(cluster_cpus() // cpus_per_actor))
        actors = max(1, min(actors, -(-len(data) // shard_size)))
        with RayExtractor(spec, actors, cpus_per_actor, gpus_per_actor) as extractor:
            return extractor.extract(data, FeatureCache(cache_dir), transform, transform_key, shard_size, progress,
                                     desc)


# -- helpers ------------------------------------------------------------------------------------------

def _portable(data: ImageSet) -> ImageSet:
    """`data` with a lazy image folder's relative paths made absolute (the content hash does not change)."""
    images = data.images
    if not isinstance(images, LazyImages) or all(p.is_absolute() for p in images.paths):
        return data
    absolute = LazyImages([p.resolve() for p in images.paths], images.size, images.file_digests)
    return ImageSet(absolute, data.labels, list(data.class_names), data.source, dict(data.meta))


def _shards_on_disk(entry: Path) -> set[int]:
    """Shard numbers with a file in the entry (named shard-NNNNN-<xxh3>.npy by vfe.features.cache).

    Only a plan of what to send: each task verifies what it reuses, and the last step verifies the
    whole entry and recomputes a shard whose file fails.
    """
    if not entry.is_dir():
        return set()
    return {int(p.name[6:11]) for p in entry.glob("shard-[0-9][0-9][0-9][0-9][0-9]-*.npy")}


def _unwrap(ray, call: Callable[[], Any]) -> Any:
    """call(), with a user error (VfeError) raised in an actor re-raised as itself rather than wrapped in
    RayTaskError, and an actor that died more often than it may restart reported in one line."""
    try:
        return call()
    except ray.exceptions.RayTaskError as err:
        if isinstance(err.cause, VfeError):
            raise err.cause from None
        raise
    except ray.exceptions.ActorDiedError as err:
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        if getattr(err, "actor_init_failed", False):  # the message ends with the constructor's exception
            raise RayEngineError(f"the backbone actors could not build the backbone: {lines[-1]}") from None
        first = lines[0] if lines else type(err).__name__
        raise RayEngineError(f"a backbone actor died and was not restarted ({first}); the shards written are "
                             "kept: run the extraction again to compute the rest") from None


def _unwrap_iter(ray, results: Iterator) -> Iterator:
    while True:
        try:
            item = _unwrap(ray, lambda: next(results))
        except StopIteration:
            return
        yield item


__all__ = ["BackboneSpec", "ExtractionJob", "RayConnectionError", "RayEngineError", "RayExtractor", "RayNotInstalledError",
           "RunStats", "ShardWorker", "extract_with_ray", "import_ray", "ray_session"]
