"""Time `run_attacks` at the main job's default attack settings on a few images; extrapolate to n_attack.

    python bench_attacks.py [--n 40] [--image-size 112] [--out attacks.json]
Work grows linearly with the number of attacked images (the heads and budgets are fixed), so the
seconds per image of each head, times the default n_attack and the number of seeds, give the stage's cost.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from vfe.backbones import create_backbone
from vfe.data import load_dataset
from vfe.data.split import balanced_subset
from vfe.experiment.run_settings import RunSettings
from vfe.experiment.stages.adversarial.settings import AttackSettings
from vfe.experiment.stages.adversarial.stage import run_attacks
from vfe.heads import make_head


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=40, help="images attacked (default 40)")
    parser.add_argument("--n-train", type=int, default=2000)
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "attacks.json"))
    args = parser.parse_args()
    default, run_defaults = AttackSettings(), RunSettings()
    settings = replace(default, n_attack=args.n)
    train = balanced_subset(load_dataset("fashion-mnist", split="train"), args.n_train, 0, "train")
    test = balanced_subset(load_dataset("fashion-mnist", split="test"), 500, 0, "test")
    backbone = create_backbone(run_defaults.backbone.backbone, weights=run_defaults.backbone.weights,
                               image_size=args.image_size)
    X = backbone.extract(train.images, progress=False)
    models = {("linear", 0): make_head("linear").fit(X, train.labels),
              ("vfe", 0): make_head("vfe", vae_epochs=100).fit(X, train.labels)}
    started = time.perf_counter()
    results = run_attacks(settings, backbone, models, test, data_seed=0, device="cpu", progress=False)
    total = time.perf_counter() - started
    rows = []
    for (head, seed), r in results.items():
        per_image = r["seconds"] / r["n"]
        rows.append({"head": head, "n": r["n"], "seconds": r["seconds"], "seconds_per_image": round(per_image, 3),
                     "extrapolated_seconds_per_seed": round(per_image * default.n_attack, 1),
                     "samples_randomly": r["samples_randomly"], "accuracy": r["accuracy"]})
    per_seed = sum(r["extrapolated_seconds_per_seed"] for r in rows)
    summary = {"machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
               "load_average": os.getloadavg(), "image_size": args.image_size, "n": args.n, "seconds": round(total, 1),
               "default": {"n_attack": default.n_attack, "eps_linf": default.attack_eps_linf,
                           "eps_l2": default.attack_eps_l2, "steps": default.attack_steps, "n_eot": default.n_eot,
                           "replicates": run_defaults.heads.replicates},
               "extrapolated_stage_seconds": round(per_seed * run_defaults.heads.replicates, 1), "rows": rows}
    print(f"{'head':8} {'n':>4} {'s':>7} {'s/img':>6} {'s/seed @' + str(default.n_attack):>12}  random")
    for r in rows:
        print(f"{r['head']:8} {r['n']:4d} {r['seconds']:7.1f} {r['seconds_per_image']:6.3f} "
              f"{r['extrapolated_seconds_per_seed']:12.1f}  {r['samples_randomly']}")
    print(f"extrapolated stage: {summary['extrapolated_stage_seconds']:.0f} s for {run_defaults.heads.replicates} replicates "
          f"(load average {np.round(os.getloadavg(), 1).tolist()})")
    with open(args.out, "w") as f:
        json.dump(summary, f, indent=2)


if __name__ == "__main__":
    main()
