"""Where do transfer features beat learning from raw pixels? Accuracy against the number of labels.

Transfer: the linear SVM (calibrated) and the linear head on frozen backbone features (cached).
From scratch: logistic regression on raw pixels (the linear head without dropout). Every cell is
`--seeds` draws of a stratified labelled subset; cells are resumable (vfe.experiment.sweep.run_sweep).

    python benchmarks/bench_train_size.py                       # Fashion-MNIST, 100 / 1000 / 10000 labels
    python benchmarks/bench_train_size.py --sizes 100 1000 --seeds 0 1

Prints a table and writes benchmarks/results/train_size.json.
"""
from __future__ import annotations

import argparse
import platform
from pathlib import Path

import torch

from vfe.backbones import create_backbone
from vfe.data import load_dataset
from vfe.data.split import balanced_subset
from vfe.experiment.sweep import markdown_table, pixel_features, train_size_sweep, transfer_gain
from vfe.features.cache import FeatureCache
from vfe.io import write_json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 10000])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--n-test", type=int, default=2000)
    parser.add_argument("--out", default="runs/bench-train-size/sweep")
    args = parser.parse_args()

    train = balanced_subset(load_dataset(args.dataset, split="train"), max(args.sizes), 0, "train")
    test = balanced_subset(load_dataset(args.dataset, split="test"), args.n_test, 0, "test")
    backbone = create_backbone(args.backbone, image_size=args.image_size)
    cache = FeatureCache()
    features = (cache.extract(backbone, train, desc="extract train").array(),
                cache.extract(backbone, test, desc="extract test").array())
    pixels = (pixel_features(train.images), pixel_features(test.images))
    rows = train_size_sweep(features, pixels, train.labels, test.labels, args.out, sizes=tuple(args.sizes),
                            seeds=tuple(args.seeds))
    gains = transfer_gain(rows)
    print(markdown_table(rows))
    print()
    for g in gains:
        print(f"{g['n_train']:>6} labels: transfer {g['transfer_head']} {g['transfer_accuracy']:.4f}  vs  "
              f"pixels {g['scratch_head']} {g['scratch_accuracy']:.4f}  ->  gain {g['gain']:+.4f}")
    setting = {"dataset": args.dataset, "backbone": backbone.name, "image_size": backbone.image_size,
               "n_test": len(test), "seeds": args.seeds, "torch": torch.__version__,
               "machine": f"{platform.machine()}, {torch.get_num_threads()} threads"}
    out = Path(__file__).parent / "results" / "train_size.json"
    write_json(out, {"setting": setting, "rows": rows, "transfer_gain": gains})
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
