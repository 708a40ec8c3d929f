"""Feature extraction on a Ray cluster: the feature cache's shards computed by a pool of backbone actors.

`vfe extract ... --engine ray` (`extract_features(..., engine="ray")`) fills the very cache entry a local
extraction fills: same key, same content-addressed shard files, same manifest. The backbone is built once
on the driver (from a `BackboneSpec`, create_backbone's arguments, or given built) and shipped to every
actor by the one shipping rule (vfe.backbones.shipping: weights on the CPU, precision and runtime named),
so no node needs the weights file. Each actor computes whole shards with `FeatureCache.extract(...,
shard_ids=[i])`:
  * shared cache (every node sees the cache folder): the actors write the shards there; the cache's
    per-shard locks, atomic writes and checksums do the coordination;
  * no shared cache (e.g. Kubernetes pods with their own disks): each shard's features come back through
    Ray's object store and the driver writes them into its cache, through the same FeatureCache.extract.
    Chosen by `shared_cache` ("yes" / "no" / "auto": a probe file the driver writes in the cache folder,
    which one actor per node looks for).
Either way a rerun computes only the missing shards, a killed actor costs only its shard in flight (Ray
restarts it and retries the task), and a local run and a Ray run can fill one entry together. The features
are the local ones (byte-equal with fp32 and eager settings, tests/features/test_ray_engine.py); only
`images_this_run` in the manifest counts the last shard's task rather than the whole run.

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
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Self

import numpy as np
from tqdm.auto import tqdm

from vfe import defaults
from vfe.backbones.shipping import ShippedBackbone, rebuild, shippable
from vfe.data.images import LazyImages
from vfe.data.types import ImageSet
from vfe.errors import SettingsError, VfeError
from vfe.features.cache import DEFAULT_SHARD_SIZE, FeatureCache, FeatureSet, ImageTransform, cache_key

log = logging.getLogger(__name__)
INSTALL = "pip install 'vfe[ray]'"
CONNECT_TIMEOUT_S = 5.0  # a head that does not accept a TCP connection in this time is reported as down
MAX_RESTARTS = 3  # per actor; a task lost with its actor is retried as often
SHARED_CACHE_CHOICES = ("auto", "yes", "no")
# on a worker node that mounts the shared cache folder at another path than the driver's: that path
CACHE_DIR_ENV = "VFE_RAY_CACHE_DIR"


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
    """create_backbone's arguments: RayExtractor builds the backbone from them once, on the driver, and ships
    it to its actors (vfe.backbones.shipping), so a weights file needs to be on the driver only.

    `settings` are ExtractionSettings overrides (precision, jit, threads, batch_size, runtime, ...).
    """

    name: str = defaults.BACKBONE
    weights: str = defaults.WEIGHTS
    image_size: int | None = defaults.IMAGE_SIZE
    device: str = "auto"
    crop_pct: float | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    def build(self):
        # torch and timm load when a backbone is built, not at import
        from vfe.backbones import create_backbone

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
    [ObjectRef] to them when several jobs share one image set (extract_many puts each set once). `root`: the
    shared cache folder as the driver sees it; None when the workers do not see it (features sent back)."""

    data: ImageSet | list
    root: str | None
    transform: ImageTransform | None
    transform_key: str | None
    shard_size: int


class _Counting:
    """The backbone as FeatureCache.extract sees it, counting the images it computes (and keeping their
    features, with `keep`)."""

    def __init__(self, backbone, keep: bool = False):
        self.backbone, self.images, self.keep, self.batches = backbone, 0, keep, []
        self.name = backbone.name

    def fingerprint(self) -> str:
        return self.backbone.fingerprint()

    def iter_features(self, images):
        for batch in self.backbone.iter_features(images):
            self.images += len(batch)
            if self.keep:
                self.batches.append(batch)
            yield batch


class _Computed:
    """Features computed elsewhere, as FeatureCache.extract sees a backbone: it writes them as the shard asked
    for, through the same checks and names as features computed here (the images are never read)."""

    def __init__(self, fingerprint: str, name: str, features: np.ndarray):
        self._fingerprint, self.name, self.features = fingerprint, name, features

    def fingerprint(self) -> str:
        return self._fingerprint

    def iter_features(self, images):
        yield self.features


class ShardWorker:
    """A Ray actor (made with ray.remote by RayExtractor): one backbone, built once, computing cache shards."""

    def __init__(self, shipped: ShippedBackbone, device: str = "cpu"):
        started = time.perf_counter()
        self.backbone = rebuild(shipped, device)
        if self.backbone.settings.jit and self.backbone.device.type == "cpu":
            # Trace at the configured batch size now: a trace is made on the first batch of an input shape
            # and runs only batches of that size, and the first shard an actor gets may be the short last one.
            size = self.backbone.image_size
            self.backbone.extract(np.zeros((self.backbone.settings.batch_size, size, size, 3), np.uint8),
                                  progress=False)
        self.build_s = time.perf_counter() - started
        self._job: tuple[str, _Job] | None = None

    def describe(self) -> dict[str, Any]:
        import ray
        import timm
        import torch

        return {"fingerprint": self.backbone.fingerprint(), "pid": os.getpid(), "host": socket.gethostname(),
                "node": ray.get_runtime_context().get_node_id(), "device": str(self.backbone.device),
                "precision": self.backbone.precision, "runtime": self.backbone.runtime, "timm": timm.__version__,
                "threads": torch.get_num_threads(), "build_s": round(self.build_s, 3)}

    def sees(self, root: str, name: str) -> bool:
        """Whether the probe file `name` the driver wrote in its cache folder `root` is visible here."""
        return _sees(root, name)

    def extract(self, job_ref: list, job_id: str, shard: int | None) -> dict[str, Any]:
        """Compute shard `shard` of the job's entry unless it is there (None: every shard, then the manifest).
        Without a shared cache (the job's root is None) the shard is computed into a private cache here and
        its features are returned (through the object store) for the driver to write.

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
        shared = job.root is not None
        counting = _Counting(self.backbone, keep=not shared)
        started = time.perf_counter()
        # no shared cache: a private one here, for this shard only
        folder = nullcontext(cache_dir_here(job.root)) if shared else tempfile.TemporaryDirectory(prefix="vfe-shard-")
        with folder as root:
            fs = FeatureCache(root).extract(counting, job.data, transform=job.transform,
                                            transform_key=job.transform_key, shard_size=job.shard_size,
                                            shard_ids=None if shard is None else [shard], progress=False)
        return {"job": job_id, "shard": shard, "images": counting.images, "seconds": time.perf_counter() - started,
                "pid": os.getpid(), "complete": fs.manifest if shared and fs is not None else None,
                "features": None if shared else np.concatenate(counting.batches)}

    def release(self, job_ids: str | list[str]) -> None:
        """Drop the images of the job held, if it is one of `job_ids` (so the object store can free them)."""
        if self._job is not None and self._job[0] in ([job_ids] if isinstance(job_ids, str) else job_ids):
            self._job = None


def every_node_sees(root: Path) -> bool:
    """Whether a task on each live node with a CPU sees a probe file written in the cache folder `root` now (for
    work done by tasks, where no actor is at hand to ask)."""
    ray = import_ray()
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [node["NodeID"] for node in ray.nodes() if node["Alive"] and node["Resources"].get("CPU", 0) >= 1]
    check = ray.remote(_sees)
    with _probe_file(root) as name:
        seen = _unwrap(ray, lambda: ray.get([
            check.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote(str(root), name)
            for node in nodes]))
    return _all_see(root, seen)


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
    shared_cache: bool | None = None  # whether the actors wrote the cache (else the driver wrote what they sent)
    wall_s: float = 0.0  # the whole call, on the driver
    plan_s: float = 0.0  # waiting for the actors' backbones, hashing, ray.put, listing the entry
    busy_s: dict[int, float] = field(default_factory=dict)  # seconds inside FeatureCache.extract, by actor pid
    images: dict[int, int] = field(default_factory=dict)  # images computed, by actor pid
    finish_s: float = 0.0  # the last task done -> FeatureSet

    @property
    def actor_s(self) -> float:
        return sum(self.busy_s.values())


@dataclass
class _Plan:
    """One job of extract_many as the driver tracks it."""

    id: str
    ref: list  # [ObjectRef] to its _Job
    data: ImageSet  # the portable copy, its content hash memoised
    transform: ImageTransform | None
    transform_key: str | None


class RayExtractor:
    """A pool of backbone actors on the connected Ray cluster that fill FeatureCache entries shard by shard.

        with ray_session(address), RayExtractor(BackboneSpec("efficientnet_lite0", image_size=112)) as ex:
            train = ex.extract(train_set, FeatureCache("/shared/vfe-cache"))
            test = ex.extract(test_set, FeatureCache("/shared/vfe-cache"))

    backbone: a built Backbone, or a BackboneSpec built here once; either is shipped to the actors
    (vfe.backbones.shipping). actors: how many (default: the cluster's CPUs // cpus_per_actor, at least 1).
    Each reserves `cpus_per_actor` CPUs (Ray then sets its OMP_NUM_THREADS, hence torch's threads) and
    `gpus_per_actor` GPUs (the actors then build the backbone on the GPU Ray assigns, else on the CPU). The
    actors start at once, in parallel; the first `extract` waits for their backbones. shared_cache: "yes"
    (every node sees the cache folder: the actors write it), "no" (their features come back through the
    object store and this process writes them) or "auto" (a probe file decides, once per cache folder).
    """

    def __init__(self, backbone: Any, actors: int | None = None, cpus_per_actor: float = 1.0,
                 gpus_per_actor: float = 0.0, max_restarts: int = MAX_RESTARTS, shared_cache: str = "auto"):
        ray = import_ray()
        if not ray.is_initialized():
            raise RayEngineError("RayExtractor needs a Ray connection: use it inside `with ray_session(...)`")
        if cpus_per_actor <= 0 or gpus_per_actor < 0:
            raise SettingsError(f"--cpus-per-actor must be > 0 and --gpus-per-actor >= 0, got {cpus_per_actor}, "
                                f"{gpus_per_actor}")
        if shared_cache not in SHARED_CACHE_CHOICES:
            raise SettingsError(f"--ray-shared-cache must be one of {', '.join(SHARED_CACHE_CHOICES)}, got "
                                f"{shared_cache!r}")
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
        self.backbone = backbone.build() if isinstance(backbone, BackboneSpec) else backbone
        self.shared_cache = shared_cache
        # once, for every actor; held for as long as the actors, which Ray restarts with it
        self._shipped = ray.put(shippable(self.backbone))
        remote = ray.remote(ShardWorker).options(num_cpus=cpus_per_actor, num_gpus=gpus_per_actor,
                                                 max_restarts=max_restarts, max_task_retries=max_restarts)
        device = "cuda" if gpus_per_actor > 0 else "cpu"
        self.actors = [remote.remote(self._shipped, device) for _ in range(actors)]
        self._info: list[dict] | None = None
        self._shared: dict[Path, bool] = {}  # cache folder -> whether every actor's node sees it
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
        self.actors, self._shipped = [], None

    def describe(self) -> list[dict]:
        """Each actor's fingerprint, pid, host, node, device, precision, runtime, timm version, threads and build
        time (waits for them)."""
        if self._info is None:
            ray = import_ray()
            self._info = _unwrap(ray, lambda: ray.get([a.describe.remote() for a in self.actors]))
        return self._info

    def fingerprint(self) -> str:
        """The backbone's fingerprint, the same on every actor and here (else RayEngineError: their features would
        go into cache entries this process never reads)."""
        info = self.describe()
        here = self.backbone.fingerprint()
        if any(i["fingerprint"] != here for i in info):
            import timm

            where = ", ".join(sorted({f"{i['host']}: timm {i['timm']}" for i in info}))
            raise RayEngineError(f"the actors rebuilt the backbone with another fingerprint than this machine's "
                                 f"(timm {timm.__version__} here; {where}): install the same vfe, torch and timm "
                                 "versions on every node")
        return here

    def cache_is_shared(self, root: Path) -> bool:
        """Whether the actors write the cache folder `root` themselves: `shared_cache`, or under "auto" whether
        one actor on each node sees a probe file with a random name written there now (asked once per folder)."""
        if self.shared_cache != "auto":
            return self.shared_cache == "yes"
        if root not in self._shared:
            ray = import_ray()
            per_node = {info["node"]: actor for info, actor in zip(self.describe(), self.actors, strict=True)}
            with _probe_file(root) as name:
                seen = _unwrap(ray, lambda: ray.get([a.sees.remote(str(root), name) for a in per_node.values()]))
            self._shared[root] = _all_see(root, seen)
        return self._shared[root]

    def extract(self, data: ImageSet, cache: FeatureCache | None = None, transform: ImageTransform | None = None,
                transform_key: str | None = None, shard_size: int = DEFAULT_SHARD_SIZE, progress: bool = True,
                desc: str | None = None, on_shard: Callable[[dict], None] | None = None) -> FeatureSet:
        """FeatureCache.extract(backbone, data, ...) computed by the actors; the same entry, the same features.

        `on_shard` is called on the driver with each finished task's record (shard, images, seconds, pid).
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
        here = FeatureCache((cache or FeatureCache()).root.expanduser().resolve())
        fingerprint = self.fingerprint()
        shared_cache = self.cache_is_shared(here.root)
        shared: dict[int, tuple[ImageSet, Any]] = {}  # id(ImageSet) -> (portable copy, [ObjectRef])
        for job in jobs:
            if id(job.data) not in shared:
                data = _portable(job.data)
                cache_key(fingerprint, data, None, shard_size)  # memoises the content hash before it travels
                shared[id(job.data)] = (data, [ray.put(data)])
        plans: list[_Plan] = []
        tasks: list[tuple[int, int]] = []
        for j, job in enumerate(jobs):
            data, data_ref = shared[id(job.data)]
            key = cache_key(fingerprint, data, job.transform_key, shard_size)
            on_disk = _shards_on_disk(here.root / key)
            count = -(-len(data) // shard_size)
            todo = [i for i in reversed(range(count)) if i not in on_disk]  # highest first: see the module docstring
            root = str(here.root) if shared_cache else None
            plans.append(_Plan(uuid.uuid4().hex, [ray.put(_Job(data_ref, root, job.transform, job.transform_key,
                                                                shard_size))], data, job.transform, job.transform_key))
            tasks += [(j, i) for i in todo]
        stats = self.last_run = RunStats(shards=sum(-(-len(p.data) // shard_size) for p in plans),
                                         shards_sent=len(tasks), shared_cache=shared_cache)
        stats.plan_s = time.perf_counter() - started
        index = {plan.id: j for j, plan in enumerate(plans)}
        complete: list[dict | None] = [None] * len(jobs)  # each entry's manifest, once complete

        def images_in(j: int, shard: int) -> int:
            return min(len(plans[j].data), (shard + 1) * shard_size) - shard * shard_size

        try:
            pool = ActorPool(list(self.actors))
            with tqdm(total=sum(images_in(j, i) for j, i in tasks), unit="img", desc=desc or "extract (ray)",
                      disable=not progress, dynamic_ncols=True) as bar:
                results = pool.map_unordered(
                    lambda actor, t: actor.extract.remote(plans[t[0]].ref, plans[t[0]].id, t[1]), tasks)
                for record in _unwrap_iter(ray, results):
                    j = index[record["job"]]
                    if record["features"] is not None:  # no shared cache: the features are written here
                        written = here.extract(_Computed(fingerprint, self.backbone.name, record.pop("features")),
                                               plans[j].data, transform_key=plans[j].transform_key,
                                               shard_size=shard_size, shard_ids=[record["shard"]], progress=False)
                        record["complete"] = None if written is None else written.manifest
                    stats.images_computed += record["images"]
                    stats.busy_s[record["pid"]] = stats.busy_s.get(record["pid"], 0.0) + record["seconds"]
                    stats.images[record["pid"]] = stats.images.get(record["pid"], 0) + record["images"]
                    complete[j] = complete[j] or record["complete"]
                    bar.update(images_in(j, record["shard"]))
                    if on_shard is not None:
                        on_shard(record)
            finishing = time.perf_counter()
            for j, plan in enumerate(plans):
                if complete[j] is None:  # nothing was missing, or a writer's last check raced another's: verify
                    complete[j] = self._finish(ray, plan, here, shared_cache, shard_size, stats)
            stats.finish_s = time.perf_counter() - finishing
        finally:  # the actors drop the jobs' images; bounded, so an actor that is down cannot hold us here
            ids = [plan.id for plan in plans]
            ray.wait([actor.release.remote(ids) for actor in self.actors], num_returns=len(self.actors), timeout=10)
        stats.wall_s = time.perf_counter() - started
        return [FeatureSet(here.root / manifest["key"], manifest) for manifest in complete]

    def _finish(self, ray, plan: _Plan, here: FeatureCache, shared_cache: bool, shard_size: int,
                stats: RunStats) -> dict:
        """The manifest of `plan`'s entry, verified whole; a shard found missing or damaged is computed again by
        an actor (shared cache) or by this process's own backbone (no shared cache)."""
        if not shared_cache:
            counting = _Counting(self.backbone)
            fs = here.extract(counting, plan.data, plan.transform, plan.transform_key, shard_size, progress=False)
            stats.images_computed += counting.images
            return fs.manifest
        call = self.actors[0].extract.remote(plan.ref, plan.id, None)
        record = _unwrap(ray, lambda: ray.get(call))
        stats.images_computed += record["images"]
        return record["complete"]


def extract_with_ray(spec: BackboneSpec, data: ImageSet, cache_dir: str | os.PathLike | None = None,
                     transform: ImageTransform | None = None, transform_key: str | None = None,
                     shard_size: int = DEFAULT_SHARD_SIZE, address: str | None = None, actors: int | None = None,
                     cpus_per_actor: float = 1.0, gpus_per_actor: float = 0.0, progress: bool = True,
                     desc: str | None = None, shared_cache: str = "auto") -> FeatureSet:
    """One extraction on Ray: connect (see ray_session), start the actors (at most one per shard), extract."""
    with ray_session(address):
        if actors is None:
            actors = max(1, int(cluster_cpus() // cpus_per_actor))
        actors = max(1, min(actors, -(-len(data) // shard_size)))
        with RayExtractor(spec, actors, cpus_per_actor, gpus_per_actor, shared_cache=shared_cache) as extractor:
            return extractor.extract(data, FeatureCache(cache_dir), transform, transform_key, shard_size, progress,
                                     desc)


# -- helpers ------------------------------------------------------------------------------------------

@contextmanager
def _probe_file(root: Path) -> Iterator[str]:
    """The name of a file with a random name written in `root` for the block: a worker that sees it sees the
    driver's cache folder."""
    root.mkdir(parents=True, exist_ok=True)
    probe = root / f".vfe-probe-{uuid.uuid4().hex}"
    probe.write_bytes(b"")
    try:
        yield probe.name
    finally:
        probe.unlink(missing_ok=True)


def _sees(root: str, name: str) -> bool:
    """On a worker: whether the probe file `name` in the driver's cache folder `root` is visible here."""
    return (Path(cache_dir_here(root)) / name).is_file()


def _all_see(root: Path, seen: list[bool]) -> bool:
    if not all(seen):
        log.info("vfe: %d of %d Ray nodes do not see %s: their features come back through the object store and "
                 "this process writes the cache", seen.count(False), len(seen), root)
    return all(seen)


def cache_dir_here(root: str) -> str:
    """The driver's cache folder `root` as this node sees it: where $VFE_RAY_CACHE_DIR says it is mounted, if set."""
    return os.environ.get(CACHE_DIR_ENV) or root


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


__all__ = ["CACHE_DIR_ENV", "SHARED_CACHE_CHOICES", "BackboneSpec", "ExtractionJob", "RayConnectionError", "RayEngineError", "RayExtractor", "RayNotInstalledError",
           "RunStats", "ShardWorker", "cache_dir_here", "every_node_sees", "extract_with_ray", "import_ray", "ray_session"]
