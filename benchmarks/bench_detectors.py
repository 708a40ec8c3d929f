"""Which detector abstains on which unfamiliar input: the measurement behind `vfe run --best-detector auto`.

A linear head on EfficientNet-Lite0 features (packaged ImageNet weights) of a class-balanced training subset,
then each detector a pipeline can carry (max softmax, Mahalanobis with the shrunk covariance; the VFE's only for
a VFE head, not measured here), fitted as `vfe fit --detector` fits it: the threshold for 90 % coverage on
validation images of the training split outside the training subset (vfe.experiment.detection). Reported: the
share of images past the threshold (abstained on) among

  * clean test images (should be about 10 %);
  * the same test images under gaussian_noise at severity 5 (the OOD stage's noised set);
  * pure uniform noise shaped like the test images (the OOD stage's uniform_noise set).

A detector that catches one kind of unfamiliar input can miss another entirely, which is why --best-detector auto
ranks detectors by their worst case over the OOD stage's sets rather than their mean.

    python benchmarks/bench_detectors.py                        # Fashion-MNIST, 32 px, 100 and 1000 training images
    python benchmarks/bench_detectors.py --n-train 300 --image-size 64

Prints a table and writes benchmarks/results/detectors.json (a setting measured again replaces its entry).
"""
from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import numpy as np

from vfe.api import fit_pipeline
from vfe.data import load_train_test
from vfe.experiment.detection import detection_split
from vfe.experiment.stages.ood.stage import uniform_noise_set
from vfe.io import write_json
from vfe.robustness.corruptions import corrupt
from vfe.robustness.detectors import fit_detector

DETECTORS = ("msp", "mahalanobis")


def measure(dataset: str, n_train: int, image_size: int, n_test: int, coverage: float, seed: int,
            cache_dir: str) -> list[dict]:
    """One row per detector: the share abstained on among clean, noised and pure-noise test images."""
    pool, test = load_train_test(dataset)
    test = test.subset(np.arange(min(n_test, len(test))), tag=f"first:{n_test}")
    sets = {"clean": test.images, "gaussian_noise_s5": corrupt(test.images, "gaussian_noise", 5, seed=seed),
            "uniform_noise": uniform_noise_set(test, seed).images}
    pipe, _ = fit_pipeline(dataset, head="linear", head_params={"lr": 0.01, "epochs": 40}, image_size=image_size,
                           n_train=n_train, seed=seed, cache_dir=cache_dir, progress=False)
    train, validation = detection_split(pool, n_train, seed, coverage)
    X_train, X_val = pipe.features(train.images), pipe.features(validation.images)
    features = {name: pipe.features(images) for name, images in sets.items()}
    rows = []
    for name in DETECTORS:
        detector = fit_detector(name, pipe.head, X_train, train.labels, X_val, coverage)
        rows.append({"detector": name, "n_train": n_train, "n_validation": len(validation),
                     **{f"abstained_{s}": float(np.mean(detector.score(pipe.head, X) > detector.threshold))
                        for s, X in features.items()}})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="fashion-mnist")
    ap.add_argument("--n-train", type=int, nargs="+", default=[100, 1000])
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--n-test", type=int, default=200)
    ap.add_argument("--coverage", type=float, default=0.9)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--cache-dir", default=str(Path.home() / ".cache" / "vfe" / "bench-detectors"))
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "detectors.json"))
    args = ap.parse_args()

    rows = [row for n in args.n_train for row in measure(args.dataset, n, args.image_size, args.n_test,
                                                         args.coverage, args.seed, args.cache_dir)]
    print(f"{args.dataset}, {args.image_size} px, {args.n_test} test images, coverage {args.coverage}: share "
          "abstained on")
    print(f"{'detector':<12} {'n_train':>7} {'clean':>7} {'gauss s5':>9} {'uniform':>8}")
    for r in rows:
        print(f"{r['detector']:<12} {r['n_train']:>7} {100 * r['abstained_clean']:>6.1f}% "
              f"{100 * r['abstained_gaussian_noise_s5']:>8.1f}% {100 * r['abstained_uniform_noise']:>7.1f}%")
    out = Path(args.out)
    saved = json.loads(out.read_text()) if out.exists() else {}
    key = f"{args.dataset}-{args.image_size}px"
    saved[key] = {"settings": {k: v for k, v in vars(args).items() if k not in ("out", "cache_dir")},
                  "machine": platform.machine(), "rows": rows}
    write_json(out, saved)
    print(f"written to {out} ({key})")


if __name__ == "__main__":
    main()
