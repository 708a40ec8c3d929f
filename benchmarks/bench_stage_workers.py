"""The run's fit and attack stages, one job after another in this process against worker processes
(`vfe.experiment.processes`: two jobs at once, one thread each): seconds, CPU utilisation and whether the results
are bit for bit the same.

Each round fits the heads of 2 replicates (linear and vfe, each replicate its own class-balanced training subset
and seed) and attacks them (every replicate its own test images), twice: "here" as `vfe run` did before worker
processes (one job after another: fits at one thread each, the heads' own rule; attacks at the process's two
intra-op threads, `one_by_one`), then "workers" (`fit_replicates` / `attack_draws` with `local_workers()`
workers, each job at one thread). "identical": the fitted heads' probabilities, and each attack's per-image
results (which can differ by an image: the attacks' backward sums follow the thread count). Rounds alternate the order, so a
change in the machine's load hits both. The main job's backbone (EfficientNet-Lite0, packaged ImageNet weights,
112 px, frozen) on Fashion-MNIST. CPU utilisation is this process's CPU seconds and its jobs' in
the worker processes (`vfe.experiment.timer.cpu_seconds`) over the wall seconds: 200 % is both cores busy.

    python benchmarks/bench_stage_workers.py            # 3,000 training images, 48 attacked, the run's attacks
    python benchmarks/bench_stage_workers.py --quick    # a check in a minute or two

Prints a table and writes benchmarks/results/stage_workers.json.
"""
from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from vfe import defaults
from vfe.backbones import create_backbone
from vfe.data import load_train_test
from vfe.data.split import balanced_index
from vfe.experiment.config import HeadSettings
from vfe.experiment.fit import TrainingDraw, fit_replicates
from vfe.experiment.processes import local_workers, start_early
from vfe.experiment.stages.adversarial.settings import AttackSettings
from vfe.experiment.stages.adversarial.stage import AttackDraw, attack_draws, attack_one
from vfe.experiment.timer import cpu_seconds
from vfe.io import write_json
from vfe.robustness.attacks import attack_specs, to_unit_float

RESULTS = Path(__file__).parent / "results"
HEADS = ["linear", "vfe"]
SEEDS = [11, 22]  # one per replicate


def timed(fn):
    cpu0, start = cpu_seconds(), time.perf_counter()
    out = fn()
    wall = time.perf_counter() - start
    return out, {"seconds": round(wall, 2), "cpu_percent": round(100 * (cpu_seconds() - cpu0) / wall, 1)}


def one_by_one(settings: AttackSettings, jobs: list[AttackDraw]) -> dict:
    """The attack stage as it ran before worker processes: each head after the other in this process, at its
    intra-op threads (two on the project machine)."""
    specs = attack_specs(settings.attack_eps_linf, settings.attack_eps_l2, eot=True)
    out = {}
    for job in jobs:
        rows = balanced_index(job.test.labels, settings.n_attack, job.seed)
        images, labels = to_unit_float(np.asarray(job.test.images)[rows]), np.asarray(job.test.labels)[rows]
        for key, model in job.models.items():
            out[key] = attack_one(job.backbone, model, images, labels, specs, settings, job.seed, "cpu")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes: a check in a minute or two")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", type=Path, default=RESULTS / "stage_workers.json")
    args = ap.parse_args()
    n_train, n_attack, vae_epochs = (600, 16, 5) if args.quick else (3000, 48, 30)
    attacks = (AttackSettings(n_attack=n_attack, attack_eps_linf=[1 / 255], attack_eps_l2=[0.5], attack_steps=3,
                              n_eot=3) if args.quick else AttackSettings(n_attack=n_attack))  # the run's defaults
    heads = HeadSettings(heads=HEADS, head_params={"vfe": {"vae_epochs": vae_epochs}})

    load_before = [round(x, 2) for x in os.getloadavg()]
    workers = local_workers("cpu")
    start_early(workers)  # as vfe run does: the fork server imports while the features are extracted
    train, test = load_train_test("fashion-mnist")
    backbone = create_backbone(defaults.BACKBONE, image_size=defaults.IMAGE_SIZE, device="cpu")
    labels = np.asarray(train.labels)
    rows = [balanced_index(labels, n_train, seed) for seed in SEEDS]
    union = np.unique(np.concatenate(rows))
    X = dict(zip(union.tolist(), backbone.extract(np.asarray(train.images)[union], progress=False)))
    draws = [TrainingDraw(r, seed, np.stack([X[i] for i in idx.tolist()]), labels[idx])
             for r, (seed, idx) in enumerate(zip(SEEDS, rows))]

    def fits(mode: str):
        return fit_replicates(heads, HEADS, draws, progress=False, workers=1 if mode == "here" else workers)[0]

    def attack(mode: str, models: dict):
        jobs = [AttackDraw(backbone, {k: m for k, m in models.items() if k[1] == r}, test, seed)
                for r, seed in enumerate(SEEDS)]
        if mode == "workers":
            return attack_draws(attacks, jobs, "cpu", progress=False, workers=workers)
        return one_by_one(attacks, jobs)

    rounds = []
    for k in range(args.rounds):
        got, row = {}, {}
        for mode in (("here", "workers") if k % 2 == 0 else ("workers", "here")):
            models, row[f"fit {mode}"] = timed(lambda mode=mode: fits(mode))
            got[mode] = models, *timed(lambda mode=mode, models=models: attack(mode, models))
            row[f"attack {mode}"] = got[mode][2]
        probe = draws[0].X[:200]
        row["fits identical"] = all(np.array_equal(got["here"][0][key].predict_proba(probe),
                                                   got["workers"][0][key].predict_proba(probe))
                                    for key in got["here"][0])
        row["attacks identical"] = all(got["here"][1][key]["correct"] == got["workers"][1][key]["correct"]
                                       for key in got["here"][1])
        rounds.append(row)
        print(f"round {k + 1}: {row}", flush=True)

    table = {}
    for stage in ("fit", "attack"):
        here = float(np.median([r[f"{stage} here"]["seconds"] for r in rounds]))
        there = float(np.median([r[f"{stage} workers"]["seconds"] for r in rounds]))
        table[stage] = {"here_s": here, "workers_s": there, "speedup": round(here / there, 2),
                        "here_cpu_percent": float(np.median([r[f"{stage} here"]["cpu_percent"] for r in rounds])),
                        "workers_cpu_percent": float(np.median([r[f"{stage} workers"]["cpu_percent"]
                                                                for r in rounds])),
                        "identical": all(r[f"{'fits' if stage == 'fit' else 'attacks'} identical"] for r in rounds)}
    print(f"\n| stage (2 replicates x {', '.join(HEADS)}) | here (s) | CPU % | workers (s) | CPU % | speed-up | "
          "results bit-identical |\n| --- | ---: | ---: | ---: | ---: | ---: | --- |")
    for stage, t in table.items():
        print(f"| {stage} | {t['here_s']:.1f} | {t['here_cpu_percent']:.0f} | {t['workers_s']:.1f} | "
              f"{t['workers_cpu_percent']:.0f} | **{t['speedup']:.2f}x** | {'yes' if t['identical'] else 'NO'} |")
    write_json(args.out, {"table": table, "rounds": rounds, "workers": workers, "threads": torch.get_num_threads(),
                          "n_train": n_train, "n_attack": n_attack, "vae_epochs": vae_epochs, "quick": args.quick,
                          "load_average_before": load_before,
                          "machine": f"{platform.machine()}, {os.cpu_count()} CPUs"})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
