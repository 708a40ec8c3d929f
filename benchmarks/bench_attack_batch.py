"""Attack batch size: wall time and peak memory of PGD through the backbone, per batch size.

Each batch size runs in a fresh process (so its peak RSS is its own): EfficientNet-Lite0 at 112 px,
a fixed random linear head on its features, PGD L-inf 2/255 with 10 steps on 100 Fashion-MNIST test
images, the attacks' own code (`vfe.robustness.attacks.perturb`). The backward pass through the
backbone keeps every activation of a batch, so memory grows with the batch while the time per image
need not shrink.

    python benchmarks/bench_attack_batch.py                  # batch sizes 10 16 25 50 100

Prints a table and writes benchmarks/results/attack_batch.json.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vfe.io import write_json


class _RandomLinear(nn.Module):
    """A fixed random linear head with the probability-module interface the attacks expect."""

    def __init__(self, n_features: int):
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(n_features, 10)

    def forward(self, features: torch.Tensor, n_samples: int | None = None) -> torch.Tensor:
        return torch.softmax(self.linear(features), -1)


def child(batch_size: int) -> None:
    from vfe.backbones import create_backbone
    from vfe.data import load_dataset
    from vfe.robustness.attacks import AttackSpec, LogProbabilities, make_attack, perturb, to_unit_float

    backbone = create_backbone("efficientnet_lite0", image_size=112, device="cpu")
    test = load_dataset("fashion-mnist", "test")
    images = to_unit_float(test.images[:100])
    labels = torch.from_numpy(test.labels[:100].astype(np.int64))
    attack = make_attack(AttackSpec("pgd", "linf", 2 / 255), LogProbabilities(backbone, _RandomLinear(1280)), 10)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    perturb(attack, images, labels, batch_size)
    print(json.dumps({"batch_size": batch_size, "seconds": round(time.perf_counter() - start, 2),
                      "peak_rss_mb_before": round(before),
                      "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[10, 16, 25, 50, 100])
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "attack_batch.json"))
    args = ap.parse_args()
    if args.child:
        child(args.child)
        return
    rows = []
    print(f"{'batch':>5} {'seconds':>8} {'peak RSS MB':>12}")
    for batch_size in args.batch_sizes:
        done = subprocess.run([sys.executable, __file__, "--child", str(batch_size)], capture_output=True,
                              text=True, check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(f"{batch_size:>5} {rows[-1]['seconds']:8.1f} {rows[-1]['peak_rss_mb']:12d}", flush=True)
    write_json(args.out, {"setting": "efficientnet_lite0 112 px, PGD linf 2/255, 10 steps, 100 images",
                          "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d %H:%M"), "rows": rows})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
