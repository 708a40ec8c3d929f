"""Seconds per fine-tuning epoch of the reference protocol, with and without the cut-point cache.

Stage 0 of `vfe run --protocol reference` trains only the top of the backbone. With the cache, the
frozen bottom runs once per image (its output at the cut is stored) and every epoch runs the top alone;
without it (as `--finetune-augment` must, since augmented images change every epoch) each epoch runs
the whole backbone. Same code as the run (`vfe.experiment.reference`), same images, one process,
alternating the two ways round by round so that load on the shared machine hits both alike.

    python benchmarks/bench_finetune.py                     # Lite0 at 112 px, 2,000 Fashion-MNIST images
    python benchmarks/bench_finetune.py --n 500 --rounds 1  # a quick look

Prints a table and writes benchmarks/results/finetune.json.
"""
from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from vfe.backbones import create_backbone
from vfe.backbones.cut import CutActivations, CutModel, clone_for_finetuning, faithful_storage, reference_cut
from vfe.data import load_train_test
from vfe.data.split import balanced_subset
from vfe.heads.base import fit_classifier
from vfe.heads.finetune import CompareModel, FromImages
from vfe.io import write_json
from vfe.training import TrainConfig

OUT = Path(__file__).parent / "results" / "finetune.json"


def one_epoch(module, X, y, parameters, batch_size: int) -> float:
    config = TrainConfig(epochs=1, batch_size=batch_size, lr=1e-3, patience=None, seed=0)
    started = time.perf_counter()
    fit_classifier(module, X, y, None, config, parameters=parameters)
    return time.perf_counter() - started


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--image-size", type=int, default=112)
    ap.add_argument("--n", type=int, default=2000, help="training images")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()

    train, _ = load_train_test("fashion-mnist")
    train = balanced_subset(train, args.n, 0, "train")
    base = create_backbone(args.backbone, image_size=args.image_size, device="cpu")
    point = reference_cut(base.model, base.arch)
    storage, _ = faithful_storage(base, CutModel(base.model, point))
    bottom = CutActivations(base, CutModel(base.model, point), storage)
    started = time.perf_counter()
    A = np.concatenate(list(bottom.iter_features(train.images)))
    activation_seconds = time.perf_counter() - started
    images = np.ascontiguousarray(np.moveaxis(train.images, -1, 1))
    y = train.labels

    def model():
        cut = clone_for_finetuning(base, point)
        cut.top_units.requires_grad_(True)
        m = CompareModel(cut, bottom.shape, train.num_classes, base.feature_dim)
        return m, [*cut.top_units.parameters(), *m.head.parameters()]

    cached, whole = [], []
    for _ in range(args.rounds):
        m, params = model()
        cached.append(one_epoch(m, A, y, params, args.batch_size))
        m, params = model()
        whole.append(one_epoch(FromImages(m, base.normalise, None), images, y, params, args.batch_size))
    row = {"backbone": args.backbone, "image_size": args.image_size, "cut_point": point, "storage": storage,
           "images": args.n, "activation_pass_seconds": round(activation_seconds, 2),
           "epoch_seconds_cached": round(min(cached), 2), "epoch_seconds_whole_backbone": round(min(whole), 2),
           "speedup": round(min(whole) / min(cached), 2), "rounds": args.rounds,
           "load_average": os.getloadavg()[0], "threads": torch.get_num_threads(),
           "machine": f"{platform.machine()}, {os.cpu_count()} cores"}
    print(f"{'way':40} {'s / epoch':>10} {'img/s':>8}")
    print(f"{'top only, on cached activations':40} {row['epoch_seconds_cached']:10.2f} "
          f"{args.n / row['epoch_seconds_cached']:8.0f}")
    print(f"{'whole backbone (bottom frozen)':40} {row['epoch_seconds_whole_backbone']:10.2f} "
          f"{args.n / row['epoch_seconds_whole_backbone']:8.0f}")
    print(f"speed-up {row['speedup']}x per epoch; the one activation pass took {activation_seconds:.1f} s "
          f"(cut at {point}, {storage}); load average {row['load_average']:.1f}")
    write_json(args.out, row)


if __name__ == "__main__":
    main()
