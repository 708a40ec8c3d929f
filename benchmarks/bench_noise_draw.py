"""Noise draws against replicates: does every replicate of the main job need its own corruption noise?

Each replicate of `vfe run` redraws its training subset and head seed but reads one draw of the corrupted
test set (seeded by the run's base seed), so the corrupted features are extracted once for all replicates.
That is sound only if the mean corruption accuracy moves much less between noise draws than between
replicates. This measures both on the frozen protocol with the default backbone (EfficientNet-Lite0, packaged
ImageNet weights, 112 px) and the linear head (optionally the VFE head, and their difference):

  1. which of the 15 benchmark corruptions are random at all: 8 test images corrupted with seeds 0 and 1 at
     every severity; a deterministic one gives the same images and cannot move between draws;
  2. R replicates: a class-balanced training subset (seed r) of a training pool and a head with
     random_state=r, each measured on the same corrupted test set (noise seed 0, the main job's draw);
  3. K noise draws (seeds 0..K-1) of every random corruption x severity, measured with every replicate's head.

Reported, for the mean accuracy over the 15 corruptions x 5 severities (`summarise`): the sd over noise draws,
pooled per image (images draw their noise independently, so the mean's variance is the sum of the per-image
variances / n^2: many degrees of freedom, and exact scaling to the main job's n_test), and the sd over
replicates (R - 1 degrees of freedom only). The replicates' sd has a per-image part that falls as 1/sqrt(n_test)
like the noise's, and a part shared by many images that does not; so the sd over replicates is at least its
per-image part, and noise / replicates at most sqrt(per-image noise variance / per-image replicate variance), a
bound that holds at any n_test. A single draw shared by all replicates shifts them all alike, so it is not
averaged away over replicates: the bound is also given against the standard error of a 3-replicate mean.

The defaults are sized for about 10 CPU-minutes on the 2-core project machine, smaller than the main job;
the JSON says which settings differ from it. A pool barely larger than n_train makes replicates share most
training images, lowering their sd, so ratios here are if anything larger than in the main job. The cache
folder keeps the features and each fitted head's table of correct answers: a rerun with more replicates fits
only the new heads.

    python benchmarks/bench_noise_draw.py                           # n_test 500, K 3, R 3, linear head
    python benchmarks/bench_noise_draw.py --n-test 2000 --pool 60000 --heads linear,vfe   # the main job's sizes
    python benchmarks/bench_noise_draw.py --quick                   # a smoke check in a minute or two

Prints a table and writes benchmarks/results/noise_draw.json (--quick: into the cache folder), keeping the runs
of other settings already there ("runs", by heads and sizes; "table": every run's rows).
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from vfe import defaults
from vfe.backbones import create_backbone
from vfe.data import load_train_test
from vfe.data.split import balanced_index, balanced_subset
from vfe.experiment.stages.corruptions.stage import corrupted_features
from vfe.features.cache import FeatureCache
from vfe.features.source import BackboneFeatures
from vfe.heads.registry import make_head
from vfe.io import read_json, write_json
from vfe.robustness.corruptions import BENCHMARK_CORRUPTIONS, SEVERITIES, corrupt

RESULTS = Path(__file__).parent / "results"
MAIN_JOB = {"n_test": 2000, "n_train": 10_000, "pool": 60_000, "replicates": 3}
PARAMS = "auto"  # the main job's corruption parameter tables


def random_corruptions(images: np.ndarray) -> dict[str, list[int]]:
    """{corruption: severities at which seeds 0 and 1 give different images} for the 15 benchmark ones."""
    return {name: [s for s in SEVERITIES if not np.array_equal(corrupt(images, name, s, seed=0, params=PARAMS),
                                                                corrupt(images, name, s, seed=1, params=PARAMS))]
            for name in BENCHMARK_CORRUPTIONS}


def measure(args: argparse.Namespace) -> dict:
    started, load_start = time.perf_counter(), os.getloadavg()[0]
    seconds: dict[str, float] = {}

    def lap(name: str, since: float) -> float:
        now = time.perf_counter()
        seconds[name] = round(seconds.get(name, 0.0) + now - since, 2)
        return now

    t = time.perf_counter()
    train_all, test_all = load_train_test("fashion-mnist")
    test = balanced_subset(test_all, args.n_test, 0, "test")
    pool = balanced_subset(train_all, args.pool, 0, "pool")
    random = random_corruptions(np.asarray(test.images[:8]))
    cells = [(c, s) for c in BENCHMARK_CORRUPTIONS for s in SEVERITIES]
    noisy = [i for i, (c, s) in enumerate(cells) if s in random[c]]
    print(f"random at some severity: {', '.join(c for c in random if random[c])}; deterministic: "
          f"{', '.join(c for c in random if not random[c])} ({len(noisy)} of {len(cells)} cells random)", flush=True)
    t = lap("data and random-corruption check", t)

    backbone = create_backbone(defaults.BACKBONE, weights=defaults.WEIGHTS, image_size=defaults.IMAGE_SIZE,
                               device="cpu")
    features = BackboneFeatures(FeatureCache(args.cache_dir), backbone, progress=False)
    X_pool = features(pool, desc="training pool")
    t = lap("extract training pool", t)

    # correct[head][r, i, cell, k]: test image i classified correctly under draw k of the cell's corruption. Each
    # (head, replicate) table is kept in the cache folder: a rerun with more replicates fits only the new heads
    K, labels = args.noise_seeds, np.asarray(test.labels)
    tables = {(h, r): args.cache_dir / (f"correct-{h}-replicate{r}-n_test{args.n_test}-pool{args.pool}-"
                                        f"n_train{args.n_train}-draws{K}.npy")
              for h in args.heads for r in range(args.replicates)}
    models = {}
    for r in range(args.replicates):
        rows = balanced_index(pool.labels, args.n_train, r)
        for head in args.heads:
            if not tables[(head, r)].exists():
                models[(head, r)] = make_head(head, random_state=r).fit(X_pool[rows], pool.labels[rows])
        print(f"replicate {r}: {len(rows)} training images, {sum(k[1] == r for k in models)} heads fitted", flush=True)
    t = lap("fit heads", t)

    found = {key: np.zeros((len(test), len(cells), K), bool) for key in models}
    for j, (name, severity) in enumerate(cells if models else []):
        for k in range(K if j in noisy else 1):
            te = time.perf_counter()
            X = corrupted_features(features, test, name, severity, k, PARAMS)
            t = lap("extract corrupted test sets", te)
            for key, model in models.items():
                hit = model.predict(X) == labels
                if k == 0:
                    found[key][:, j, :] = hit[:, None]  # a deterministic cell: every draw alike
                else:
                    found[key][:, j, k] = hit
            t = lap("predict", t)
        if severity == SEVERITIES[-1]:
            print(f"{name}: done ({time.perf_counter() - started:.0f} s in all)", flush=True)
    for key, table in found.items():
        np.save(tables[key], table)
    correct = {h: np.stack([np.load(tables[(h, r)]) for r in range(args.replicates)]) for h in args.heads}

    per_head = {h: summarise(c, args.n_test, len(noisy)) for h, c in correct.items()}
    if len(args.heads) > 1:
        a, b = args.heads[1], args.heads[0]
        difference = correct[a].astype(np.int8) - correct[b].astype(np.int8)
        per_head[f"{a} - {b}"] = summarise(difference, args.n_test, len(noisy))
    settings = {"n_test": args.n_test, "n_train": args.n_train, "pool": args.pool, "replicates": args.replicates,
                "noise_seeds": K, "heads": args.heads, "backbone": defaults.BACKBONE, "weights": defaults.WEIGHTS,
                "image_size": defaults.IMAGE_SIZE, "protocol": "frozen", "corruption_params": PARAMS,
                "cache_dir": str(args.cache_dir)}
    return {"command": "python benchmarks/bench_noise_draw.py" + (" " + " ".join(args.argv) if args.argv else ""),
            "date": time.strftime("%Y-%m-%d %H:%M"), "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
            "torch": torch.__version__, "load_average": [round(load_start, 2), round(os.getloadavg()[0], 2)],
            "settings": settings, "main_job": MAIN_JOB,
            "differs_from_main_job": {k: [settings[k], v] for k, v in MAIN_JOB.items() if settings[k] != v},
            "random_corruptions": {c: s for c, s in random.items() if s},
            "deterministic_corruptions": [c for c, s in random.items() if not s],
            "cells": {"all": len(cells), "random": len(noisy)},
            "heads_fitted": len(models), "heads_reused": len(tables) - len(models),  # reused: read from the cache
            "per_head": per_head, "table": table_rows(per_head, args.n_test),
            "seconds": {**seconds, "total": round(time.perf_counter() - started, 1)}}


def summarise(correct: np.ndarray, n_test: int, n_random_cells: int) -> dict:
    """Mean corruption accuracy per replicate and draw, and its sd over draws and over replicates (in points).

    `correct` is R x n x cells x K (bool, or -1/0/1 for a difference of two heads). Per image i, s_i is the sum
    over cells of its correctness; the mean's variance over draws is sum_i var(s_i) / (n cells)^2, as images
    draw their noise independently. Over replicates it is (n v + n (n - 1) c) / (n cells)^2, with v the mean
    per-image variance and c the mean covariance between two images (a better head is better on many):
    expected to be >= 0 for test images drawn at random, so the replicate sd is at least its per-image part
    and the ratio noise / replicates at most sqrt(w / v) at any n_test (w: the per-image variance over draws)."""
    R, n, cells, K = correct.shape
    mean = correct.mean(axis=(1, 2)) * 100  # R x K: the mean over cells and images of each replicate and draw
    s = correct.sum(axis=2, dtype=np.float64)  # R x n x K
    w = s.var(axis=2, ddof=1).mean()  # per image, over draws, averaged over images and the replicates' heads
    v = s[:, :, 0].var(axis=0, ddof=1).mean()  # per image, over replicates, at the main job's draw (seed 0)
    c = (s[:, :, 0].sum(axis=1).var(ddof=1) - n * v) / (n * (n - 1))

    def sd(variance: float, at: int) -> float:  # of the mean, in points, on `at` test images
        return round(float(100 * np.sqrt(max(0.0, variance) / at) / cells), 4)

    replicates = float(mean[:, 0].std(ddof=1))
    main = MAIN_JOB["n_test"]
    return {"mean_accuracy": {str(r): [round(float(x), 4) for x in mean[r]] for r in range(R)},
            "mean": round(float(mean.mean()), 4),
            "sd_over_noise_draws": {"per_image": sd(w, n), "per_image_at_n_test_2000": sd(w, main),
                                    "direct": round(float(np.sqrt(mean.var(axis=1, ddof=1).mean())), 4),
                                    "degrees_of_freedom_per_image": n * (K - 1),  # images are independent
                                    "degrees_of_freedom_direct": R * (K - 1)},
            "sd_over_replicates": {"direct": round(replicates, 4), "degrees_of_freedom": R - 1,
                                   "standard_error_of_the_mean": round(replicates / np.sqrt(R), 4),
                                   "per_image_part": sd(v, n), "per_image_part_at_n_test_2000": sd(v, main),
                                   "at_n_test_2000_estimated": sd(v + (main - 1) * max(c, 0.0), main),
                                   "covariance_between_images": float(c)},
            "noise_over_replicates_direct": round(sd(w, n) / replicates, 3),
            "noise_over_replicates_bound": round(float(np.sqrt(w / v)), 3),
            "noise_over_standard_error_bound": round(float(np.sqrt(w / v * MAIN_JOB["replicates"])), 3),
            "random_cells": n_random_cells}


def table_rows(per_head: dict, n_test: int) -> list[dict]:
    return [{"head": h, "replicates": len(s["mean_accuracy"]), "mean corruption accuracy %": round(s["mean"], 2),
             f"sd over noise draws, n_test {n_test}": s["sd_over_noise_draws"]["per_image"],
             "sd over noise draws, n_test 2000": s["sd_over_noise_draws"]["per_image_at_n_test_2000"],
             f"sd over replicates, n_test {n_test}": s["sd_over_replicates"]["direct"],
             "sd over replicates, n_test 2000, at least": s["sd_over_replicates"]["per_image_part_at_n_test_2000"],
             f"noise / replicates, n_test {n_test}": s["noise_over_replicates_direct"],
             "noise / replicates, at most (any n_test)": s["noise_over_replicates_bound"],
             "noise / standard error of 3 replicates, at most": s["noise_over_standard_error_bound"]}
            for h, s in per_head.items()]


def print_table(rows: list[dict]) -> None:
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |")
    print("| " + " | ".join("---" if i == 0 else "---:" for i in range(len(keys))) + " |")
    for row in rows:
        print("| " + " | ".join(str(row[k]) for k in keys) + " |")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n-test", type=int, default=500, help="test images (the main job: 2000)")
    p.add_argument("--n-train", type=int, default=10_000, help="training images per replicate (the main job: 10000)")
    p.add_argument("--pool", type=int, default=12_000,
                   help="training images the replicates draw from (the main job: all 60000; fewer: cheaper, "
                        "and a lower, conservative replicate sd)")
    p.add_argument("--replicates", type=int, default=3)
    p.add_argument("--noise-seeds", type=int, default=3, help="noise draws K of each random corruption (>= 3)")
    p.add_argument("--heads", default="linear", help="comma-separated; a second head adds the difference")
    p.add_argument("--cache-dir", type=Path, default=Path("/tmp/noise-cache"),
                   help="features, and each fitted head's table of correct answers (a rerun reuses both)")
    p.add_argument("--quick", action="store_true", help="n_test 48, pool 600, n_train 500: a smoke check")
    args = p.parse_args(argv)
    args.argv = list(argv) if argv is not None else sys.argv[1:]
    if args.quick:
        args.n_test, args.pool, args.n_train = 48, 600, 500
    args.heads = [h.strip() for h in args.heads.split(",") if h.strip()]
    if args.noise_seeds < 3 or args.replicates < 2 or args.n_train > args.pool:
        p.error("need --noise-seeds >= 3, --replicates >= 2 and --n-train <= --pool")
    result = measure(args)
    print_table(result["table"])
    out = args.cache_dir / "noise_draw_quick.json" if args.quick else RESULTS / "noise_draw.json"
    write_json(out, merged(out, result))
    print(f"wrote {out}")


def merged(path: Path, result: dict) -> dict:
    """The JSON's runs, by heads and sizes: this run replaces an earlier one with the same settings only, so a
    cheap rerun (more replicates of the linear head, on the cached features) keeps a costlier one beside it."""
    s = result["settings"]
    label = (f"heads {','.join(s['heads'])}, {s['replicates']} replicates, n_test {s['n_test']}, "
             f"pool {s['pool']}, {s['noise_seeds']} noise seeds")
    runs = read_json(path).get("runs", {}) if path.exists() else {}
    runs[label] = result
    return {"runs": runs, "table": [{"run": name, **row} for name, run in runs.items() for row in run["table"]]}


if __name__ == "__main__":
    main()
