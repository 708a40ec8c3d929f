"""VFE training: wall time to reach the reference's validation reconstruction MSE, reference vs fast recipe.

Reference-style training (DESIGN.md): Adam lr 1e-3, batch 128, a fixed number of epochs (the
reference ran 2000). The target is the best validation MSE that reference-style training reaches in
`--reference-epochs` epochs; then every recipe is timed to its first epoch at or below the target
(both runs use the same shared training loop, vfe.training.train, on features held as one tensor).
Downstream: the VFE classifier (frozen encoder, sampled z) trained on each VAE, test accuracy.

    python benchmarks/bench_vfe_training.py                      # the default main-job features
    python benchmarks/bench_vfe_training.py --quick              # a smaller check

Prints a table and writes benchmarks/results/vfe_training.json.
"""
from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np
import torch

from vfe.backbones import create_backbone
from vfe.data import load_dataset
from vfe.experiment import stratified_subset
from vfe.features.cache import FeatureCache
from vfe.heads.base import fit_classifier
from vfe.heads.vfe import FeatureVAE, LatentClassifier, vae_loss
from vfe.io import write_json
from vfe.training import TrainConfig, split_validation, train

REFERENCE = {"batch_size": 128, "lr": 1e-3, "schedule": None}
# candidate fast recipes: larger batches (fewer, better-used matrix products), a higher rate, and a
# schedule that decays it; every one stops as soon as it reaches the target
RECIPES = {
    "b512-lr3e-3-cosine": {"batch_size": 512, "lr": 3e-3, "schedule": "cosine"},
    "b1024-lr5e-3-cosine": {"batch_size": 1024, "lr": 5e-3, "schedule": "cosine"},
    "b2048-lr1e-2-cosine": {"batch_size": 2048, "lr": 1e-2, "schedule": "cosine"},
}


def features(args) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    bb = create_backbone(args.backbone, image_size=args.image_size)
    cache = FeatureCache()
    train_set = stratified_subset(load_dataset(args.dataset, "train"), args.n_train, 0, "train")
    test_set = stratified_subset(load_dataset(args.dataset, "test"), args.n_test, 0, "test")
    X = cache.extract(bb, train_set, desc="extract train").array()
    X_test = cache.extract(bb, test_set, desc="extract test").array()
    return X, train_set.labels, X_test, test_set.labels


def fit_vae(X_train, X_val, recipe: dict, epochs: int, seed: int = 0) -> tuple[FeatureVAE, list[dict]]:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        vae = FeatureVAE(X_train.shape[1], 256, 256, 512)
        config = TrainConfig(epochs=epochs, patience=None, seed=seed, monitor="val_mse", **recipe)
        history = train(vae, vae_loss(1000.0, 1.0), (torch.from_numpy(X_train),), (torch.from_numpy(X_val),),
                        config)
    return vae, history.records


def time_to(records: list[dict], target: float) -> tuple[float | None, int | None]:
    for r in records:
        if r["val_mse"] <= target:
            return r["seconds"], r["epoch"]
    return None, None


def downstream_accuracy(vae: FeatureVAE, X, y, X_val, y_val, X_test, y_test) -> float:
    classifier = LatentClassifier(vae.encoder, int(y.max()) + 1, 0.3, "sample")
    fit_classifier(classifier, X, y, (X_val, y_val), TrainConfig(epochs=50, patience=5, seed=0),
                   parameters=classifier.head.parameters())
    classifier.eval()
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(0)
        pred = classifier(torch.from_numpy(X_test), "sample").argmax(1).numpy()
    return float((pred == y_test).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="fashion-mnist")
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--image-size", type=int, default=112)
    ap.add_argument("--n-train", type=int, default=10000)
    ap.add_argument("--n-test", type=int, default=2000)
    ap.add_argument("--reference-epochs", type=int, default=300)
    ap.add_argument("--recipe-epochs", type=int, default=60, help="cosine schedule length of the fast recipes")
    ap.add_argument("--quick", action="store_true", help="3000 images, 60 reference epochs")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "vfe_training.json"))
    args = ap.parse_args()
    if args.quick:
        args.n_train, args.reference_epochs, args.recipe_epochs = 3000, 60, 30

    X_all, y_all, X_test, y_test = features(args)
    tr, va = split_validation(len(X_all), 0.1, 0, y_all)  # the head's own split
    X, y, X_val, y_val = X_all[tr], y_all[tr], X_all[va], y_all[va]

    print(f"reference-style training: Adam 1e-3, batch 128, {args.reference_epochs} epochs on {len(X)} features")
    ref_vae, ref_records = fit_vae(X, X_val, REFERENCE, args.reference_epochs)
    target = min(r["val_mse"] for r in ref_records)
    ref_seconds, ref_epoch = time_to(ref_records, target)
    rows = [{"recipe": "reference (b128, lr 1e-3, fixed epochs)", **REFERENCE, "epochs_to_target": ref_epoch,
             "seconds_to_target": ref_seconds, "seconds_per_epoch": ref_records[-1]["seconds"] / len(ref_records),
             "best_val_mse": target, "accuracy": downstream_accuracy(ref_vae, X, y, X_val, y_val, X_test, y_test)}]
    for name, recipe in RECIPES.items():
        vae, records = fit_vae(X, X_val, recipe, args.recipe_epochs)
        seconds, epoch = time_to(records, target)
        rows.append({"recipe": name, **recipe, "epochs_to_target": epoch, "seconds_to_target": seconds,
                     "seconds_per_epoch": records[-1]["seconds"] / len(records),
                     "best_val_mse": min(r["val_mse"] for r in records),
                     "accuracy": downstream_accuracy(vae, X, y, X_val, y_val, X_test, y_test)})
    for row in rows:
        row["speedup"] = (ref_seconds / row["seconds_to_target"]) if row["seconds_to_target"] else None

    print(f"\ntarget: validation MSE {target:.5f} (best of {args.reference_epochs} reference epochs, "
          f"reached at epoch {ref_epoch})\n")
    print(f"{'recipe':42} {'epochs':>7} {'s to target':>12} {'s/epoch':>8} {'best mse':>9} {'acc':>6} {'speedup':>8}")
    for r in rows:
        sec = f"{r['seconds_to_target']:.1f}" if r["seconds_to_target"] else "never"
        speed = f"{r['speedup']:.1f}x" if r["speedup"] else "-"
        print(f"{r['recipe']:42} {r['epochs_to_target'] or '-':>7} {sec:>12} {r['seconds_per_epoch']:8.3f} "
              f"{r['best_val_mse']:9.5f} {r['accuracy']:6.3f} {speed:>8}")
    result = {"setting": {"dataset": args.dataset, "backbone": args.backbone, "image_size": args.image_size,
                          "n_train": len(X), "n_val": len(X_val), "n_test": len(X_test),
                          "reference_epochs": args.reference_epochs, "recipe_epochs": args.recipe_epochs,
                          "threads": torch.get_num_threads(), "machine": platform.machine(),
                          "date": time.strftime("%Y-%m-%d")},
              "target_val_mse": target, "rows": rows}
    write_json(args.out, result)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
