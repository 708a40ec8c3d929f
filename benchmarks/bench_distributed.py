"""Distributed feature extraction with Ray: 1 vs 2 backbone actors here, and a model of N nodes built on it.

Speeds are ratios against local extraction measured in the same run: the same backbone extracting the same
images into a fresh feature cache, in this process, with all cores (as `vfe extract` runs). The job is
Fashion-MNIST test images through EfficientNet-Lite0 (packaged ImageNet weights, its registry settings:
NHWC, fp32, traced). Rounds alternate local, 1 actor and 2 actors (one CPU each) - each job alone on the
machine, the other pool idle - so each round compares like with like on a machine shared with other jobs;
tables give medians over rounds.

Measured:
  * start-up: a pool's actors importing torch and timm and building (and tracing) the backbone, in parallel;
  * cold job: a pool's first job; warm jobs: the same actors again, into fresh caches (the steady state);
  * per-actor throughput: images / seconds inside FeatureCache.extract on that actor;
  * driver overhead: a job's wall time minus the busiest actor's time in FeatureCache.extract (planning,
    ray.put, dispatch, waiting, finishing); and the driver's round trip per task (an empty actor call);
  * cache write rate: shards written and checksummed as the cache writes them, to the cache's filesystem;
  * ray.put's rate (64 MB of images) and whether Ray's features are byte-equal to local ones.
With --ray-data, the same shards also go through Ray Data (`map_batches` of a callable class on an
ActorPoolStrategy of 2 actors); Ray Data starts its actors per job, so its time includes their start-up.

The model of N nodes like this one (2 actors each) for a job of --job-images, per shard size:
  compute  = ceil(shards / actors) waves x shard_size / per-actor rate (measured with both actors busy);
  driver   = shards x the driver's round trip per task;
  fs write = feature bytes / --fs-write-gbs (the shared filesystem), plus one read to verify at the end;
  images   = N x the images' bytes / --net-gbs: every node pulls the images from the driver's node once
             (worst case: Ray also serves copies from nodes that have one);
  wall = max(compute, driver, fs) + images; throughput = job images / wall.

    python benchmarks/bench_distributed.py                 # 2048 images at 112 px, shards of 256, 3 rounds
    python benchmarks/bench_distributed.py --ray-data      # also time the Ray Data variant
    python benchmarks/bench_distributed.py --n 512 --shard-size 64 --rounds 1   # a quicker check

Writes benchmarks/results/distributed.json and benchmarks/results/distributed.png.
"""
from __future__ import annotations

import argparse
import io
import math
import os
import platform
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

from vfe.backbones.shipping import ShippedBackbone, shippable
from vfe.data import load_dataset
from vfe.features import FeatureCache
from vfe.features.cache import DEFAULT_SHARD_SIZE, _write_verified, cache_key
from vfe.features.ray_engine import BackboneSpec, RayExtractor, ShardWorker, _Job
from vfe.io import write_json

RESULTS = Path(__file__).parent / "results"
NODES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
FEATURE_BYTES = 1280 * 4  # EfficientNet-Lite0's pooled features, float32


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def ray_job(ex: RayExtractor, data, shard_size: int, root: Path, reference: np.ndarray) -> dict:
    """One extraction by a pool into a fresh cache folder, with its RunStats."""
    fs = ex.extract(data, FeatureCache(root), shard_size=shard_size, progress=False)
    run, features = ex.last_run, fs.array()
    return {"wall_s": run.wall_s, "img_s": len(data) / run.wall_s, "plan_s": run.plan_s, "finish_s": run.finish_s,
            "busy_s": sorted(run.busy_s.values()),
            "per_actor_img_s": [run.images[pid] / run.busy_s[pid] for pid in run.busy_s],
            "driver_overhead_s": run.wall_s - max(run.busy_s.values()), "shards": run.shards_sent,
            "byte_equal_to_local": features.tobytes() == reference.tobytes(),
            "max_abs_diff_to_local": float(np.abs(features - reference).max())}


class _RayDataShards:
    """Ray Data's callable class: a ShardWorker per actor, one shard per row."""

    def __init__(self, shipped: ShippedBackbone, job_ref: list, job_id: str):
        self.worker, self.job_ref, self.job_id = ShardWorker(shipped), job_ref, job_id

    def __call__(self, batch: dict) -> dict:
        records = [self.worker.extract(self.job_ref, self.job_id, int(i)) for i in batch["shard"]]
        return {key: np.array([r[key] for r in records]) for key in ("shard", "images", "seconds", "pid")}


class _Finished:
    """A backbone that only names itself: finishing an entry whose shards are all there computes nothing."""

    name = "(finished)"

    def __init__(self, fingerprint: str):
        self._fingerprint = fingerprint

    def fingerprint(self) -> str:
        return self._fingerprint

    def iter_features(self, images):
        raise RuntimeError("a shard is missing")


def ray_data_job(backbone, fingerprint: str, data, shard_size: int, actors: int, root: Path) -> float:
    """Seconds for the same shards through Ray Data, its actors' start-up included."""
    import ray
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False
    start = time.perf_counter()
    count = -(-len(data) // shard_size)
    key = cache_key(fingerprint, data, None, shard_size)
    job_ref = [ray.put(_Job(data, str(root), None, None, shard_size))]
    shards = ray.data.from_items([{"shard": i} for i in reversed(range(count))], override_num_blocks=count)
    rows = shards.map_batches(_RayDataShards, batch_size=1, compute=ray.data.ActorPoolStrategy(size=actors),
                              num_cpus=1, fn_constructor_kwargs={"shipped": shippable(backbone),
                                                                 "job_ref": job_ref,
                                                                 "job_id": uuid.uuid4().hex}).take_all()
    seconds = time.perf_counter() - start
    complete = FeatureCache(root).extract(_Finished(fingerprint), data, shard_size=shard_size, progress=False)
    assert complete is not None and complete.key == key and sum(int(r["images"]) for r in rows) == len(data)
    return seconds


def write_rate(root: Path, shard_size: int, shards: int = 8) -> float:
    """MB/s of shards written as the cache writes them (checksum, temporary file, fsync, rename)."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    blobs = []
    for _ in range(shards):
        buffer = io.BytesIO()
        np.save(buffer, rng.normal(size=(shard_size, FEATURE_BYTES // 4)).astype(np.float32))
        blobs.append(buffer.getvalue())
    _, seconds = timed(lambda: [_write_verified(root, f"shard-{i:05d}-{{}}.npy", b) for i, b in enumerate(blobs)])
    return sum(map(len, blobs)) / seconds / 1e6


def model(m: dict, shard_size: int, nodes=NODES) -> list[dict]:
    """Modelled throughput of N nodes of 2 actors for a job of m["job_images"], and what bounds it."""
    images = m["job_images"]
    shards = math.ceil(images / shard_size)
    rows = []
    for n in nodes:
        actors = 2 * n
        parts = {"compute": math.ceil(shards / actors) * shard_size / m["per_actor_img_s"],
                 "driver": shards * m["task_s"],
                 "shared-fs writes": 2 * images * FEATURE_BYTES / (m["fs_write_gbs"] * 1e9)}
        bound = max(parts, key=parts.get)
        pull = n * images * m["image_bytes"] / (m["net_gbs"] * 1e9)
        if bound == "compute" and actors > shards:
            bound = f"shard count ({shards} shards)"
        if pull > parts[max(parts, key=parts.get)]:
            bound = "object store: images pulled by every node"
        wall = max(parts.values()) + pull
        rows.append({"nodes": n, "actors": actors, "shard_size": shard_size, "img_s": images / wall,
                     "vs_local": images / wall / m["local_img_s"], "bound": bound})
    return rows


def plot(tables: dict[int, list[dict]], m: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = np.array(NODES, float)
    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    ax.plot(n, 2 * n * m["per_actor_img_s"], "--", c="tab:blue", lw=1, label="compute alone (measured rate)")
    for (size, rows), marker in zip(tables.items(), "os"):
        ax.plot(n, [r["img_s"] for r in rows], marker + "-", label=f"model, shards of {size}")
    ax.axhline(m["fs_write_gbs"] * 1e9 / (2 * FEATURE_BYTES), ls=":", c="tab:purple",
               label=f"shared fs at {m['fs_write_gbs']:g} GB/s (write + verify)")
    ax.plot(n, m["net_gbs"] * 1e9 / (n * m["image_bytes"]), ":", c="tab:brown",
            label=f"images pulled by every node at {m['net_gbs']:g} GB/s")
    ax.axhline(m["local_img_s"], c="tab:green", lw=0.8, label="local extraction here (measured)")
    ax.set(xscale="log", yscale="log", xlabel="nodes (2 cores, 2 actors each, like the project machine)",
           ylabel="images / s", ylim=(m["local_img_s"] / 3, None),
           title=f"Ray extraction, modelled: EfficientNet-Lite0 {m['image_size']} px, {m['job_images']:,} images")
    ax.set_xticks(n, [str(int(v)) for v in n])
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2048, help="images (default 2048)")
    ap.add_argument("--image-size", type=int, default=112)
    ap.add_argument("--shard-size", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=3, help="rounds of local / 1 actor / 2 actors (default 3)")
    ap.add_argument("--ray-data", action="store_true", help="also run the shards through Ray Data")
    ap.add_argument("--job-images", type=int, default=70_000, help="the modelled job (default: all Fashion-MNIST)")
    ap.add_argument("--fs-write-gbs", type=float, default=1.0, help="shared filesystem bandwidth, GB/s")
    ap.add_argument("--net-gbs", type=float, default=1.25, help="driver node's network bandwidth, GB/s (10 GbE)")
    ap.add_argument("--out", type=Path, default=RESULTS / "distributed.json")
    args = ap.parse_args()

    import ray

    data = load_dataset("fashion-mnist", split="test")
    data = data.subset(np.arange(args.n), tag=f"first-{args.n}")
    spec = BackboneSpec("efficientnet_lite0", image_size=args.image_size, device="cpu")
    cores = len(os.sched_getaffinity(0))
    load = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        backbone = spec.build()
        backbone.extract(data.images[:64], progress=False)  # warm-up: the trace

        def local_job(tag: str) -> tuple[float, np.ndarray]:
            fs, seconds = timed(lambda: FeatureCache(root / tag).extract(backbone, data, shard_size=args.shard_size,
                                                                         progress=False))
            return len(data) / seconds, fs.array()

        local_first, reference = local_job("local-0")
        # one CPU more than the machine has: the two pools (1 + 2 actors) stay up side by side and take turns
        _, init_s = timed(lambda: ray.init(num_cpus=cores + 1, include_dashboard=False, logging_level="ERROR"))
        pools, startup, cold = {}, {}, {}
        try:
            for actors in (1, 2):
                start = time.perf_counter()
                pools[actors] = RayExtractor(backbone, actors=actors)
                fingerprint = pools[actors].fingerprint()  # waits for every actor's backbone
                startup[actors] = time.perf_counter() - start
                cold[actors] = ray_job(pools[actors], data, args.shard_size, root / f"cold-{actors}", reference)
                print(f"{actors} actor(s): start-up {startup[actors]:.1f} s, cold job {cold[actors]['img_s']:.1f} img/s",
                      flush=True)
            rounds = []
            for r in range(args.rounds):
                local_img_s, _ = local_job(f"local-{r + 1}")
                jobs = {a: ray_job(pools[a], data, args.shard_size, root / f"warm-{a}-{r}", reference) for a in (1, 2)}
                rounds.append({"local_img_s": local_img_s, "jobs": jobs})
                load.append(os.getloadavg()[0])
                print(f"round {r + 1}: local {local_img_s:.1f}, 1 actor {jobs[1]['img_s']:.1f}, 2 actors "
                      f"{jobs[2]['img_s']:.1f} img/s", flush=True)
            pool = pools[2]
            ray.get(pool.actors[0].release.remote("none"))
            _, trips = timed(lambda: [ray.get(pool.actors[0].release.remote("none")) for _ in range(200)])
            task_s = trips / 200
            for p in pools.values():
                p.close()
            ray_data_s = (ray_data_job(backbone, fingerprint, data, args.shard_size, 2, root / "ray-data")
                          if args.ray_data else None)
            blob = np.random.default_rng(0).integers(0, 256, 64 * 2**20, dtype=np.uint8)
            ref, put_s = timed(lambda: ray.put(blob))
            del ref
        finally:
            ray.shutdown()
        write_mb_s = write_rate(root / "write-rate", args.shard_size)

    def med(fn) -> float:
        return statistics.median(fn(r) for r in rounds)

    local_img_s = med(lambda r: r["local_img_s"])
    rows = {}
    for a in (1, 2):
        rows[a] = {"img_s": med(lambda r, a=a: r["jobs"][a]["img_s"]),
                   "vs_local": med(lambda r, a=a: r["jobs"][a]["img_s"] / r["local_img_s"]),
                   "per_actor_img_s": med(lambda r, a=a: float(np.mean(r["jobs"][a]["per_actor_img_s"]))),
                   "driver_overhead_s": med(lambda r, a=a: r["jobs"][a]["driver_overhead_s"]),
                   "driver_share": med(lambda r, a=a: r["jobs"][a]["driver_overhead_s"] / r["jobs"][a]["wall_s"]),
                   "byte_equal": all(r["jobs"][a]["byte_equal_to_local"] for r in rounds) and
                   cold[a]["byte_equal_to_local"], "startup_s": startup[a], "cold_img_s": cold[a]["img_s"]}
    feature_mb_s = rows[2]["img_s"] * FEATURE_BYTES / 1e6
    measured = {"job_images": args.job_images, "image_size": args.image_size,
                "per_actor_img_s": rows[2]["per_actor_img_s"], "task_s": task_s,
                "image_bytes": int(np.prod(data.images.shape[1:])), "fs_write_gbs": args.fs_write_gbs,
                "net_gbs": args.net_gbs, "local_img_s": local_img_s}
    tables = {size: model(measured, size) for size in (DEFAULT_SHARD_SIZE, 512)}
    png = args.out.with_suffix(".png")
    plot(tables, measured, png)

    print(f"\nEfficientNet-Lite0 {args.image_size} px, {args.n} Fashion-MNIST images, shards of {args.shard_size}, "
          f"{args.rounds} rounds (medians); {cores} cores, load average {min(load):.1f}-{max(load):.1f}; "
          f"ray.init {init_s:.1f} s")
    print(f"{'engine':16} {'img/s':>7} {'vs local':>9} {'per actor':>10} {'driver ovh':>11} {'start-up':>9} "
          f"{'cold job':>9} {'byte-equal':>10}")
    print(f"{'local':16} {local_img_s:7.1f} {1:8.2f}x")
    for a, row in rows.items():
        print(f"{f'ray, {a} actor' + 's' * (a > 1):16} {row['img_s']:7.1f} {row['vs_local']:8.2f}x "
              f"{row['per_actor_img_s']:10.1f} {row['driver_overhead_s']:6.2f} s {100 * row['driver_share']:2.0f}% "
              f"{row['startup_s']:7.1f} s {row['cold_img_s']:9.1f} {row['byte_equal']!s:>10}")
    print(f"2 actors vs 1: {rows[2]['img_s'] / rows[1]['img_s']:.2f}x; driver round trip per task "
          f"{task_s * 1e3:.2f} ms")
    print(f"cache writes here {write_mb_s:.0f} MB/s (features arrive at {feature_mb_s:.2f} MB/s with 2 actors); "
          f"ray.put {64 * 2**20 / put_s / 1e6:.0f} MB/s")
    if ray_data_s is not None:
        print(f"Ray Data, 2 actors, start-up included: {ray_data_s:.1f} s per job; the engine's pool: "
              f"{startup[2]:.1f} s start-up once, then {args.n / rows[2]['img_s']:.1f} s per job")
    print(f"\nmodel: {args.job_images:,} images; nodes of 2 actors at {measured['per_actor_img_s']:.1f} img/s each "
          f"(measured with both busy); shared fs {args.fs_write_gbs:g} GB/s; driver's network {args.net_gbs:g} GB/s")
    print(f"{'nodes':>6} {'actors':>7} " + " ".join(f"{f'img/s @{s}':>11} {'vs local':>9} {'bound':34}" for s in tables))
    for i, n in enumerate(NODES):
        print(f"{n:6d} {2 * n:7d} " + " ".join(f"{t[i]['img_s']:11.0f} {t[i]['vs_local']:8.1f}x {t[i]['bound']:34}"
                                            for t in tables.values()))

    write_json(args.out, {"setting": {"backbone": "efficientnet_lite0", "weights": "default",
                                      "image_size": args.image_size, "images": args.n, "shard_size": args.shard_size,
                                      "rounds": args.rounds, "cores": cores, "machine": platform.machine(),
                                      "load_average": [min(load), max(load)]},
                          "ray_init_s": init_s, "local_img_s": local_img_s, "local_first_img_s": local_first,
                          "summary": {str(a): row for a, row in rows.items()}, "cold": {str(a): c for a, c in cold.items()},
                          "rounds": [{"local_img_s": r["local_img_s"], "jobs": {str(a): j for a, j in r["jobs"].items()}}
                                     for r in rounds],
                          "task_round_trip_s": task_s, "cache_write_mb_s": write_mb_s,
                          "ray_put_mb_s": 64 * 2**20 / put_s / 1e6, "ray_data_job_s": ray_data_s,
                          "measured": measured, "model": {str(s): t for s, t in tables.items()}, "plot": str(png)})
    print(f"\nwrote {args.out} and {png}")


if __name__ == "__main__":
    main()
