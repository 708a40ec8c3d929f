"""Does a second run land inside the first run's intervals? The main job twice, each from an empty cache.

Run 1 is `vfe run` as `make run` runs it (default threads); run 2 is the same command with one thread for
torch and the BLAS/OpenMP pools (OMP_NUM_THREADS=1, MKL_NUM_THREADS=1), so a thread-count-dependent
computation shows. For every headline number of run 1 (each head's mean over replicates of every summary
metric, and the compare model's accuracy under the reference protocol) the table gives run 1's 95 % interval
over replicates (Student t on the replicates' values; attacks: the run's bootstrap over replicates and
images), run 2's mean, whether it lies inside, and whether the two runs' per-replicate numbers are bitwise
equal.

    python benchmarks/bench_reproduce.py                      # the main job (reference protocol), ~2 x 30 min
    python benchmarks/bench_reproduce.py --setting frozen     # make run-frozen's job
    python benchmarks/bench_reproduce.py --quick              # vfe run --quick, ~2 x 3 min
    python benchmarks/bench_reproduce.py --compare runs/a runs/b   # two finished run folders, run elsewhere
    python benchmarks/bench_reproduce.py --compare benchmarks/results/readme/reference.json runs/b  # the README's run

Prints the table and writes benchmarks/results/reproduce.json (one entry per setting; others are kept).
"""
from __future__ import annotations

import argparse
import math
import platform
import tempfile
from pathlib import Path

from bench_run import vfe_run
from scipy import stats

from vfe.io import read_json, write_json
from vfe.robustness.stats import exact_bound_at_the_edge

SETTINGS = {"main": ["--protocol", "reference"], "frozen": ["--protocol", "frozen"]}
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def t_interval(mean: float, std: float, n: int, level: float = 0.95) -> tuple[float, float]:
    """mean ± t_{(1+level)/2, n-1} std / sqrt(n); the point itself for one replicate."""
    if n < 2:
        return mean, mean
    half = stats.t.ppf(0.5 + level / 2, n - 1) * std / math.sqrt(n)
    return mean - half, mean + half


def per_replicate(results: dict, sections: tuple[str, ...]) -> dict[str, dict[str, dict]]:
    """{head: {replicate: {section: numbers}}}: what "bitwise equal" compares, for the `sections` both runs hold
    (a trimmed results file, as the README's, keeps the summary but not every per-replicate corruption row)."""
    out = {}
    for head, reps in results["clean"].items():
        rows = {"clean": reps,
                "corruptions": {r: v.get("accuracy") for r, v in
                                results.get("corruptions", {}).get("per_head", {}).get(head, {}).items()},
                "attacks": {r: v.get("accuracy") for r, v in results.get("adversarial", {}).get(head, {}).items()}}
        out[head] = {r: {s: rows[s].get(r) for s in sections} for r in reps}
    return out


def compared_sections(first: dict, second: dict) -> tuple[str, ...]:
    """The per-replicate sections both runs hold: clean always; corruption rows and attacks where both kept them."""
    held = {"corruptions": lambda r: "per_head" in r.get("corruptions", {}), "attacks": lambda r: "adversarial" in r}
    return ("clean", *(s for s, has in held.items() if has(first) and has(second)))


def compare(first: dict, second: dict) -> list[dict]:
    """One row per head x headline metric of run 1: its interval, run 2's mean, inside or not."""
    rows = []
    table1, table2 = first["summary"]["table"], second["summary"]["table"]
    intervals = first.get("adversarial_intervals") or {}
    for head, metrics in table1.items():
        for metric, stat in metrics.items():
            other = table2.get(head, {}).get(metric)
            if other is None or stat.get("mean") is None or not math.isfinite(stat["mean"]):
                continue
            boot = intervals.get(head, {}).get(metric.removeprefix("adv:")) if metric.startswith("adv:") else None
            low, high = _bootstrap(boot) if boot else t_interval(stat["mean"], stat["std"], stat["n"])
            edge = bool(boot) and (low, high) != (boot["low"], boot["high"])
            rows.append({"head": head, "metric": metric, "run1_mean": stat["mean"], "low": low, "high": high,
                         "interval": ("bootstrap, exact bound at the edge" if edge else "bootstrap") if boot else "t",
                         "run2_mean": other["mean"],
                         "inside": bool(low - 1e-12 <= other["mean"] <= high + 1e-12)})
    acc1 = [v["compare_model_test_accuracy"] for v in (first.get("finetune") or {}).values()]
    acc2 = [v["compare_model_test_accuracy"] for v in (second.get("finetune") or {}).values()]
    if len(acc1) > 1 and acc2:
        mean1, mean2 = sum(acc1) / len(acc1), sum(acc2) / len(acc2)
        std1 = math.sqrt(sum((a - mean1) ** 2 for a in acc1) / (len(acc1) - 1))
        low, high = t_interval(mean1, std1, len(acc1))
        rows.append({"head": "compare model", "metric": "clean_accuracy", "run1_mean": mean1, "low": low,
                     "high": high, "interval": "t", "run2_mean": mean2, "inside": bool(low <= mean2 <= high)})
    return rows


def _bootstrap(boot: dict) -> tuple[float, float]:
    """A stored attack interval, its open side widened where every image fell or stood, as vfe now computes it
    (`vfe.robustness.stats.exact_bound_at_the_edge`): a run written before that rule gets the same interval."""
    n = boot["n_images"] * boot["n_replicates"]
    return exact_bound_at_the_edge(round(boot["mean"] * n), n, boot["low"], boot["high"], boot["level"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--setting", choices=list(SETTINGS), default="main")
    ap.add_argument("--quick", action="store_true", help="vfe run --quick (small sizes; a check, not the claim)")
    ap.add_argument("--compare", nargs=2, metavar=("RUN1", "RUN2"),
                    help="compare two finished runs (run folders, or results files such as the README's "
                         "benchmarks/results/readme/reference.json) instead of running (e.g. run 2 started with "
                         "OMP_NUM_THREADS=1 beside other work)")
    ap.add_argument("--entry", help="the key of this comparison in --out (default: the setting, e.g. main)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "reproduce.json"))
    args = ap.parse_args()
    extra = [*SETTINGS[args.setting], *(["--quick"] if args.quick else []), "--no-progress"]
    runs, walls = [], []
    if args.compare:
        runs = [read_json(Path(path) if Path(path).is_file() else Path(path) / "results.json") for path in args.compare]
        walls = [r["timings"]["total"] for r in runs]
    else:
        with tempfile.TemporaryDirectory(prefix="vfe-reproduce-") as tmp:
            for i, env in enumerate(({}, ONE_THREAD), start=1):
                name = f"run{i}"
                print(f"$ {' '.join(f'{k}={v}' for k, v in env.items())} vfe run {' '.join(extra)}   (empty cache)",
                      flush=True)
                walls.append(vfe_run(["--name", name, "--runs-dir", f"{tmp}/runs", "--cache-dir",
                                      f"{tmp}/cache{i}", *extra], Path(tmp) / f"{name}.log", env))
                runs.append(read_json(Path(tmp) / "runs" / name / "results.json"))
    rows = compare(*runs)
    sections = compared_sections(*runs)
    bitwise = per_replicate(runs[0], sections) == per_replicate(runs[1], sections)
    summaries_equal = runs[0]["summary"]["table"] == runs[1]["summary"]["table"]
    inside = sum(r["inside"] for r in rows)
    print(f"\n{'head':14} {'metric':34} {'run 1 [95 % interval]':>30} {'run 2':>9}  inside")
    for r in rows:
        print(f"{r['head']:14} {r['metric']:34} {r['run1_mean']:9.4f} [{r['low']:8.4f}, {r['high']:8.4f}] "
              f"{r['run2_mean']:9.4f}  {'yes' if r['inside'] else 'NO'}")
    print(f"\n{inside} of {len(rows)} headline numbers of run 2 lie inside run 1's intervals; per-replicate numbers "
          f"({', '.join(sections)}) bitwise equal: {bitwise}; summary tables equal: {summaries_equal}; wall {walls[0] / 60:.1f} + {walls[1] / 60:.1f} min")
    key = args.entry or f"{args.setting}{'-quick' if args.quick else ''}"
    command = (f"python benchmarks/bench_reproduce.py --compare {' '.join(args.compare)}" if args.compare else
               f"python benchmarks/bench_reproduce.py --setting {args.setting}{' --quick' if args.quick else ''}")
    previous = read_json(args.out) if Path(args.out).exists() else {}
    write_json(args.out, {**previous, key: {
        "command": command,
        "run2_env": None if args.compare else ONE_THREAD, "machine": f"{platform.machine()}, {platform.node()}",
        "wall_seconds": [round(w, 1) for w in walls], "inside": inside, "total": len(rows),
        "bitwise_equal_per_replicate": bitwise, "bitwise_sections": list(sections),
        "summary_tables_equal": summaries_equal,
        "threads_run1": runs[0]["setting"].get("threads"), "threads_run2": runs[1]["setting"].get("threads"),
        "rows": rows}})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
