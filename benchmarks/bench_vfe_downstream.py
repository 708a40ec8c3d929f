"""VFE training re-based on what users keep: reference-style 2000-epoch training against vfe's default,
compared by wall time to fit and by the downstream numbers (clean and corruption accuracy).

Two `vfe run`s of the frozen protocol with only the VFE head, sharing one feature cache (so the images
are extracted once and both runs read the same features), attacks and OOD skipped:

  reference   the reference's recipe: the feature VAE trained for a fixed 2000 epochs (Adam 1e-3, batch 128,
              fp32, no early stopping), `--head-param vfe.vae_epochs=2000 --head-param vfe.vae_patience=null
              --head-param vfe.vae_precision=fp32`; one seed (`--reference-seeds`), as the reference ran it once
  vfe         vfe's default (the main job's): at most 100 epochs, early stopping on the validation loss,
              bf16 autocast where the CPU has it natively; three seeds, for the spread

Everything after the VAE (the latent classifier, its epochs and early stopping) is the same in both, so the
comparison is of VAE training alone. The time is each head's whole fit as `vfe run` records it
(results.json "fit_seconds": VAE plus classifier). "Matches" means vfe's mean over seeds is no further below
the reference's number than twice vfe's seed standard deviation.

    python benchmarks/bench_vfe_downstream.py                        # 2000 reference epochs: about 50 min here
    python benchmarks/bench_vfe_downstream.py --quick                # digits, 100 reference epochs: a check
    python benchmarks/bench_vfe_downstream.py --cache-dir caches/frozen   # reuse an existing feature cache

Prints a table and writes benchmarks/results/vfe_downstream.json.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench_run import vfe_run

from vfe.io import read_json, write_json

COMMON = ["--protocol", "frozen", "--heads", "vfe", "--n-attack", "0", "--no-ood"]
QUICK = ["--quick", "--dataset", "digits"]
RUN_NAMES = ("vfe-default", "vfe-reference")


def reference_args(epochs: int) -> list[str]:
    pairs = [f"vfe.vae_epochs={epochs}", "vfe.vae_patience=null", "vfe.vae_precision=fp32"]
    return [arg for pair in pairs for arg in ("--head-param", pair)]


def run(name: str, args: list[str], cache: str, runs: str) -> tuple[dict, float]:
    """One `vfe run` in a child process: its results.json and wall seconds."""
    print(f"\n$ vfe run --name {name} {' '.join(args)}", flush=True)
    wall = vfe_run(["--name", name, "--cache-dir", cache, "--runs-dir", runs, *args],
                   Path(runs) / f"{name}.log")
    return read_json(Path(runs) / name / "results.json"), wall


def per_seed(results: dict) -> dict[str, dict[str, float]]:
    """{seed: {"fit_seconds", "vae_epochs", "clean", "corruption"}} of the VFE head."""
    seeds = [str(s) for s in results["setting"]["seeds"]]
    corruption = results["corruptions"]["per_head"]["vfe"]
    out = {}
    for i, seed in enumerate(seeds):
        history = results["histories"].get(f"vfe/seed{seed}") or {}
        out[seed] = {"fit_seconds": results["fit_seconds"]["vfe"][i],
                     "vae_epochs": len((history.get("vae") or {}).get("records", [])) or None,
                     "clean": results["clean"]["vfe"][seed]["accuracy"],
                     "corruption": corruption[seed]["mean_accuracy"]}
    return out


def summary(rows: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Mean and standard deviation (0 for one seed) over seeds of every measured quantity."""
    out = {}
    for key in ("fit_seconds", "clean", "corruption"):
        values = [r[key] for r in rows.values()]
        out[key] = {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                    "values": values}
    return out


def compare(reference: dict, vfe: dict) -> dict:
    """Speed-up of vfe's fit over the reference's, and whether vfe's downstream numbers match."""
    out = {"speedup": reference["fit_seconds"]["mean"] / vfe["fit_seconds"]["mean"]}
    for key in ("clean", "corruption"):
        gap = vfe[key]["mean"] - reference[key]["mean"]
        out[key] = {"gap": gap, "allowed": 2 * vfe[key]["std"], "matches": gap >= -2 * vfe[key]["std"]}
    return out


def print_table(reference: dict, vfe: dict, result: dict, epochs: int) -> None:
    print(f"\n{'recipe':44} {'fit s / seed':>13} {'clean %':>15} {'corruption %':>15}")
    for name, s in ((f"reference: {epochs} epochs, fp32, 1 seed", reference), ("vfe default, 3 seeds", vfe)):
        cells = [f"{100 * s[k]['mean']:.2f} ± {100 * s[k]['std']:.2f}" for k in ("clean", "corruption")]
        print(f"{name:44} {s['fit_seconds']['mean']:13.1f} {cells[0]:>15} {cells[1]:>15}")
    c = result
    print(f"\nspeed-up {c['speedup']:.1f}x (goal 20x: {'met' if c['speedup'] >= 20 else 'missed'}); "
          + "; ".join(f"{k} gap {100 * c[k]['gap']:+.2f} points (allowed -{100 * c[k]['allowed']:.2f}: "
                      f"{'matches' if c[k]['matches'] else 'does not match'})" for k in ("clean", "corruption")))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reference-epochs", type=int, default=2000)
    ap.add_argument("--reference-seeds", nargs="+", default=["0"])
    ap.add_argument("--seeds", nargs="+", default=["0", "1", "2"], help="vfe's seeds")
    ap.add_argument("--cache-dir", help="feature cache to use (default: a fresh temporary one)")
    ap.add_argument("--runs-dir", help="keep the two run folders here (default: temporary)")
    ap.add_argument("--quick", action="store_true", help="vfe run --quick on digits, 100 reference epochs")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "vfe_downstream.json"))
    args = ap.parse_args()
    if args.quick:
        args.reference_epochs = min(args.reference_epochs, 100)
    taken = [f"{args.runs_dir}/{name}" for name in RUN_NAMES if args.runs_dir and (Path(args.runs_dir) / name).exists()]
    if taken:  # before an hour of training, not after it
        ap.error(f"--runs-dir: {', '.join(taken)} already exist(s); give another folder or remove them")
    common = COMMON + (QUICK if args.quick else [])
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="vfe-downstream-") as tmp:
        cache, runs = args.cache_dir or f"{tmp}/cache", args.runs_dir or f"{tmp}/runs"
        Path(runs).mkdir(parents=True, exist_ok=True)
        # vfe first: it pays the feature extraction (train, test, corruptions), the reference then reads it
        vfe_results, vfe_wall = run(RUN_NAMES[0], [*common, "--seeds", *args.seeds], cache, runs)
        ref_results, ref_wall = run(RUN_NAMES[1], [*common, "--seeds", *args.reference_seeds,
                                                      *reference_args(args.reference_epochs)], cache, runs)
    vfe_rows, ref_rows = per_seed(vfe_results), per_seed(ref_results)
    vfe, reference = summary(vfe_rows), summary(ref_rows)
    result = compare(reference, vfe)
    print_table(reference, vfe, result, args.reference_epochs)
    write_json(args.out, {
        "setting": {"command": " ".join(["python", *sys.argv]), "common_args": common,
                    "reference_args": reference_args(args.reference_epochs), "dataset": vfe_results["setting"]["dataset"],
                    "n_train": vfe_results["setting"]["n_train"], "n_test": vfe_results["setting"]["n_test"],
                    "backbone": vfe_results["setting"]["backbone"], "date": time.strftime("%Y-%m-%d %H:%M"),
                    "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
                    "load_average_before": [round(x, 2) for x in load_before],
                    "load_average_after": [round(x, 2) for x in os.getloadavg()]},
        "reference": {"per_seed": ref_rows, "summary": reference, "wall_seconds": round(ref_wall, 1)},
        "vfe": {"per_seed": vfe_rows, "summary": vfe, "wall_seconds": round(vfe_wall, 1)},
        "comparison": result})
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
