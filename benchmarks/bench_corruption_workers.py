"""The corruption stage's extraction, one set at a time against `fill_cache`'s workers (several sets at once, one
intra-op thread each): seconds, CPU utilisation and whether the features are bit for bit the same.

Each round extracts the same corrupted test sets twice from empty caches: "sequential" as `run_corruptions`
alone does it (one set after another, the network at the default intra-op threads), then "workers"
(`vfe.experiment.stages.corruptions.stage.fill_cache` with `cache_workers()` workers). Rounds alternate the order, so a
change in the machine's load hits both. Both protocols' feature sources are measured with the main job's
backbone (EfficientNet-Lite0, packaged ImageNet weights, 112 px, Fashion-MNIST test images):
  * frozen: BackboneFeatures, the whole network's fast path (traced, prefetching);
  * reference: CutFeatures, the frozen bottom to the cut (cached activations), then the top (here the
    ImageNet top, not a fine-tuned one: the same computation and cost).
CPU utilisation is this process's CPU seconds (getrusage, user + system, all threads) over the wall seconds:
200 % is both cores of the project machine busy.

    python benchmarks/bench_corruption_workers.py                  # 4 corruptions x 5 severities x 500 images
    python benchmarks/bench_corruption_workers.py --quick          # a check in a minute

Prints a table and writes benchmarks/results/corruption_workers.json.
"""
from __future__ import annotations

import argparse
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from vfe import defaults
from vfe.backbones import create_backbone
from vfe.backbones.cut import CutActivations, CutModel, TopFeatures, faithful_storage, reference_cut
from vfe.data import load_train_test
from vfe.data.split import balanced_subset
from vfe.experiment.config import BackboneSettings
from vfe.experiment.stages.corruptions.stage import cache_workers, corrupted_features, fill_cache
from vfe.features.cache import FeatureCache
from vfe.features.source import BackboneFeatures, CutFeatures
from vfe.io import write_json

RESULTS = Path(__file__).parent / "results"
CORRUPTIONS = ["gaussian_noise", "defocus_blur", "fog", "jpeg_compression"]
PARAMS = "auto"  # the main job's


def source(protocol: str, cache: FeatureCache, runtime: str):
    """The run's feature source of one protocol on a fresh cache (exported networks kept in the default place)."""
    backbone = create_backbone(defaults.BACKBONE, image_size=defaults.IMAGE_SIZE, device="cpu", runtime=runtime)
    if protocol == "frozen":
        return BackboneFeatures(cache, backbone, progress=False)
    point = reference_cut(backbone.model, backbone.arch)
    cut = CutModel(backbone.model, point)
    storage, _ = faithful_storage(backbone, cut)
    bottom = CutActivations(backbone, cut, storage)
    top = TopFeatures(backbone, cut, bottom.shape, backbone.runtime, backbone.precision)
    return CutFeatures(cache, bottom, top, progress=False)


def measure(protocol: str, mode: str, test, severities: list[int], workers: int, runtime: str) -> dict:
    """Seconds, CPU utilisation and the features of every set, from an empty cache."""
    with tempfile.TemporaryDirectory(prefix="vfe-workers-") as tmp:
        features = source(protocol, FeatureCache(tmp), runtime)
        cpu0, start = _cpu_seconds(), time.perf_counter()
        if mode == "workers":
            fill_cache(features, test, CORRUPTIONS, severities, 0, PARAMS, workers=workers, progress=False)
        out = {(c, s): corrupted_features(features, test, c, s, 0, PARAMS) for c in CORRUPTIONS for s in severities}
        wall = time.perf_counter() - start
        cpu = _cpu_seconds() - cpu0
    return {"seconds": wall, "cpu_percent": 100 * cpu / wall, "features": out}


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-test", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="2 severities, 200 images, 1 round")
    ap.add_argument("--runtime", default="auto", choices=["auto", "torch"],
                    help="what runs the network, as vfe run's --runtime (default: %(default)s, vfe's default)")
    ap.add_argument("--out", default=str(RESULTS / "corruption_workers.json"))
    args = ap.parse_args()
    n_test, rounds, severities = (200, 1, [1, 5]) if args.quick else (args.n_test, args.rounds, [1, 2, 3, 4, 5])
    _, test = load_train_test(defaults.DATASET)
    test = balanced_subset(test, n_test, 0, "test")
    workers = cache_workers(BackboneSettings(device="cpu"))
    rows = []
    for protocol in ("reference", "frozen"):
        timings = {"sequential": [], "workers": []}
        for r in range(rounds):
            order = ("sequential", "workers") if r % 2 == 0 else ("workers", "sequential")
            got = {mode: measure(protocol, mode, test, severities, workers, args.runtime) for mode in order}
            same = all(np.array_equal(got["sequential"]["features"][k], got["workers"]["features"][k])
                       for k in got["sequential"]["features"])
            for mode in order:
                timings[mode].append({"seconds": round(got[mode]["seconds"], 2),
                                      "cpu_percent": round(got[mode]["cpu_percent"], 1), "bitwise_equal": same})
        seq = np.median([t["seconds"] for t in timings["sequential"]])
        par = np.median([t["seconds"] for t in timings["workers"]])
        rows.append({"protocol": protocol, "runtime": args.runtime, "sets": len(CORRUPTIONS) * len(severities), "n_test": n_test,
                     "workers": workers, "sequential_seconds": round(float(seq), 2),
                     "workers_seconds": round(float(par), 2), "speedup": round(float(seq / par), 2),
                     "sequential_cpu_percent": float(np.median([t["cpu_percent"] for t in timings["sequential"]])),
                     "workers_cpu_percent": float(np.median([t["cpu_percent"] for t in timings["workers"]])),
                     "bitwise_equal": all(t["bitwise_equal"] for t in timings["workers"]), "rounds": timings})
    print(f"{'protocol':10} {'sets':>5} {'images':>6} {'sequential s':>13} {'CPU %':>6} {'workers s':>10} {'CPU %':>6} "
          f"{'speed-up':>9} {'same bits':>9}")
    for r in rows:
        print(f"{r['protocol']:10} {r['sets']:5d} {r['n_test']:6d} {r['sequential_seconds']:13.1f} "
              f"{r['sequential_cpu_percent']:6.0f} {r['workers_seconds']:10.1f} {r['workers_cpu_percent']:6.0f} "
              f"{r['speedup']:8.2f}x {'yes' if r['bitwise_equal'] else 'NO':>9}")
    write_json(args.out, {"command": "python benchmarks/bench_corruption_workers.py" + (" --quick" if args.quick
                                                                                      else "")
                          + (f" --runtime {args.runtime}" if args.runtime != "auto" else ""),
                          "machine": f"{platform.machine()}, {platform.node()}, {os.cpu_count()} CPUs",
                          "torch_threads": torch.get_num_threads(), "load_average_after": list(os.getloadavg()),
                          "rows": rows})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
