"""Where the selective-classification stage's time goes: the cost of each score on one test set.

`vfe run`'s selective-classification stage scores every test set (clean and each corruption x severity: 96 sets at
the main job's 19 x 5) in every replicate with every detector: the heads' probabilities (max softmax),
Mahalanobis (the shrunk covariance), and the VFE's reconstruction error and negative ELBO (8 sampled decodings per
image). This times each on random features of the main job's shape (2,000 test images x 1,280 features; heads of
the default sizes, fitted briefly on 2,000 random rows: the cost of a forward pass does not depend on the weights)
and reports the seconds per set and per run (x sets x replicates).

    python benchmarks/bench_selective_scores.py
    python benchmarks/bench_selective_scores.py --n-test 500 --sets 16 --replicates 2   # vfe run --quick's shape

Prints a table and writes benchmarks/results/selective_scores.json.
"""
from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np
import torch

from vfe.heads import make_head
from vfe.io import write_json
from vfe.robustness.detectors import mahalanobis_scorer, shrunk_precision


def seconds(fn, repeats: int) -> float:
    """Mean wall time of `fn()` over `repeats` calls after one warm-up call."""
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-test", type=int, default=2000)
    ap.add_argument("--n-train", type=int, default=10000, help="training rows for Mahalanobis' covariance")
    ap.add_argument("--features", type=int, default=1280)
    ap.add_argument("--sets", type=int, default=96, help="test sets per replicate (clean + corruptions x severities)")
    ap.add_argument("--replicates", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "selective_scores.json"))
    args = ap.parse_args()

    rng = np.random.default_rng(0)
    X_train = rng.normal(size=(args.n_train, args.features)).astype(np.float32)
    y_train = rng.integers(0, 10, args.n_train)
    X = rng.normal(size=(args.n_test, args.features)).astype(np.float32)
    linear = make_head("linear", epochs=1).fit(X_train[:2000], y_train[:2000])
    vfe = make_head("vfe", vae_epochs=1, epochs=1).fit(X_train[:2000], y_train[:2000])
    mahalanobis = mahalanobis_scorer(*shrunk_precision(X_train, y_train))
    scores = {"linear probabilities": lambda: linear.predict_proba(X),
              "VFE probabilities": lambda: vfe.predict_proba(X),
              "Mahalanobis (shrunk)": lambda: mahalanobis.score(X),
              "VFE reconstruction error": lambda: vfe.reconstruction_error(X),
              "VFE negative ELBO (8 samples)": lambda: vfe.negative_elbo(X)}
    per_set = {name: seconds(fn, args.repeats) for name, fn in scores.items()}
    runs = args.sets * args.replicates
    print(f"{args.n_test} x {args.features} features per set; {args.sets} sets x {args.replicates} replicates; "
          f"torch threads {torch.get_num_threads()}")
    print(f"{'score':<32} {'s per set':>10} {'s per run':>10}")
    for name, s in per_set.items():
        print(f"{name:<32} {s:>10.3f} {s * runs:>10.1f}")
    total = sum(per_set.values())
    print(f"{'all':<32} {total:>10.3f} {total * runs:>10.1f}")
    write_json(Path(args.out), {"settings": {k: v for k, v in vars(args).items() if k != "out"},
                                "torch_threads": torch.get_num_threads(), "machine": platform.machine(),
                                "seconds_per_set": per_set, "seconds_per_run": {k: v * runs for k, v in per_set.items()}})
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
