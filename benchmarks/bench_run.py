"""The whole experiment: wall time per stage and peak memory (RSS) of `vfe run`, from an empty cache.

Each setting runs `vfe run` in a fresh process with a fresh, temporary feature cache, so nothing is
reused from earlier runs; its run folder is temporary too unless --runs-dir keeps it. Reported:
the stage times and the peak RSS that `vfe run` records in its results.json (up to the report),
the peak RSS of the whole child process as the kernel saw it (report included), and, for the
corruption stage, images per second per corruption (each corruption is 5 severities x n_test images,
corrupted, extracted by the backbone and evaluated by every head) and the slowest one.

Settings:
  main        `vfe run` exactly as `make run` runs it: the reference protocol (fine-tuned top), linear vs VFE,
              3 replicates, all stages; with --runs-dir and a frozen run there, it is compared with it
  frozen      `make run-frozen`: the same on the frozen ImageNet backbone
  all-heads   the corruption goal: every feature head on 2000 test images at the default size
              (heads fitted on 2000 training images, one replicate; attacks and OOD skipped)
  quick       `vfe run --quick`

    python benchmarks/bench_run.py                       # main + all-heads
    python benchmarks/bench_run.py --settings quick      # a check in 2 minutes
    python benchmarks/bench_run.py --settings frozen main --runs-dir runs   # keep the runs, as make run-frozen
                                                                            # then make run write them
    ... --keep-cache caches        # keep each setting's feature cache (caches/frozen, caches/reference)

Prints a table and writes benchmarks/results/run.json (a setting measured again replaces its entry;
the others are kept).
"""
from __future__ import annotations

import argparse
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from vfe.io import read_json, write_json

RUN_NAMES = {"main": "reference", "frozen": "frozen"}  # the folders `make run` and `make run-frozen` write
SETTINGS = {
    "main": ["--protocol", "reference"],
    "frozen": ["--protocol", "frozen"],
    "all-heads": ["--heads", "all", "--n-train", "2000", "--replicates", "1", "--n-attack", "0", "--no-ood"],
    "quick": ["--quick"],
}


def run_setting(setting: str, extra: list[str], runs_dir: str | None, keep_cache: str | None) -> dict:
    """One `vfe run` in a child process; its results plus the child's wall time and peak RSS."""
    name = RUN_NAMES.get(setting, setting)
    with tempfile.TemporaryDirectory(prefix=f"vfe-bench-{name}-") as tmp:
        runs = runs_dir or f"{tmp}/runs"
        cache = f"{keep_cache}/{name}" if keep_cache else f"{tmp}/cache"
        if setting == "main" and (Path(runs) / "frozen" / "results.json").exists():
            extra = [*extra, "--compare-with", f"{runs}/frozen"]  # as make run does
        print(f"\n$ vfe run {' '.join(['--name', name, *extra])}   (fresh cache; run folder {runs}/{name})",
              flush=True)
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        load_before = os.getloadavg()  # a shared machine: the load says how far the wall time can be trusted
        wall = vfe_run(["--name", name, "--cache-dir", cache, "--runs-dir", runs, *extra], Path(tmp) / "log.txt")
        child_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB, max over all children
        results = read_json(Path(runs) / name / "results.json")
    setting = results["setting"]
    n_test = setting.get("n_test") or results["config"]["n_test"]
    n_severities = len(results["config"]["severities"])
    per_corruption = {c: {"seconds": s, "images_per_second": round(n_test * n_severities / s, 1)}
                      for c, s in results.get("corruption_seconds", {}).items()}
    slowest = min(per_corruption, key=lambda c: per_corruption[c]["images_per_second"]) if per_corruption else None
    return {"args": extra, "wall_seconds": round(wall, 1), "timings": results["timings"],
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
            "peak_rss_mb_run": results["peak_rss_mb"],
            "peak_rss_mb_after_stage": results.get("peak_rss_mb_after_stage", {}),
            "cpu_percent_per_stage": results.get("cpu_percent_per_stage", {}),
            "background": results.get("background", []),
            # the children's maximum is only this child's when it exceeds every earlier child's
            "peak_rss_mb_process": round(child_peak / 1024, 1) if child_peak > before else None,
            "heads": setting["heads"], "n_test": n_test, "corruptions": per_corruption,
            "slowest_corruption": slowest}


def vfe_run(args: list[str], log_path: Path, env: dict[str, str] | None = None) -> float:
    """`vfe run ARGS` in a child process (with `env` added to this process's environment), its output (stage
    lines, progress bars) to `log_path` and shown if it fails; returns its wall seconds."""
    cmd = [str(Path(sys.executable).with_name("vfe")), "run", *args]
    start = time.perf_counter()
    with open(log_path, "w+") as log:
        done = subprocess.run(cmd, check=False, stdout=log, stderr=subprocess.STDOUT,
                              env={**os.environ, **(env or {})})
        wall = time.perf_counter() - start
        if done.returncode:
            log.seek(0)
            sys.exit(f"{' '.join(cmd)} failed:\n{log.read()[-4000:]}")
    return wall


def print_table(rows: dict[str, dict]) -> None:
    for name, r in rows.items():
        print(f"\n== {name}: {' '.join(r['args']) or '(defaults)'}; heads {', '.join(r['heads'])}")
        print(f"{'stage':58} {'seconds':>9} {'CPU %':>6} {'peak RSS MB so far':>19}")
        for stage, seconds in r["timings"].items():
            rss = r["peak_rss_mb_after_stage"].get(stage)
            cpu = r.get("cpu_percent_per_stage", {}).get(stage)
            print(f"{stage:58} {seconds:9.1f} {cpu if cpu is not None else '':>6} {rss if rss is not None else '':>19}")
        proc = f"{r['peak_rss_mb_process']:.0f} MB" if r["peak_rss_mb_process"] else "n/a"
        print(f"peak RSS: {r['peak_rss_mb_run']:.0f} MB up to the report, {proc} for the whole process")
        for window in r.get("background", []):
            print(f"background during {window['window']}: {window['ready']} of {window['entries']} cache entries "
                  f"done, {window['cpu_seconds']:.0f} CPU-s in {window['seconds']:.0f} s")
        if r["corruptions"]:
            rates = sorted(r["corruptions"].items(), key=lambda kv: kv[1]["images_per_second"])
            print(f"corruption images/s (n_test {r['n_test']} x 5 severities; slowest first): "
                  + ", ".join(f"{c} {v['images_per_second']:.0f}" for c, v in rates))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=["main", "all-heads"])
    ap.add_argument("--runs-dir", help="keep the run folders here (default: a temporary folder, deleted)")
    ap.add_argument("--keep-cache", metavar="DIR", help="write each setting's fresh feature cache to DIR/NAME and keep "
                    "it (for later runs to reuse); DIR/NAME must not exist yet")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "run.json"))
    args = ap.parse_args()
    if args.keep_cache:
        taken = [n for n in args.settings if (Path(args.keep_cache) / RUN_NAMES.get(n, n)).exists()]
        if taken:
            ap.error(f"--keep-cache: {', '.join(f'{args.keep_cache}/{RUN_NAMES.get(n, n)}' for n in taken)} already "
                     "exists; a timed run starts from an empty cache: give another folder or remove it")
    rows = {name: run_setting(name, SETTINGS[name], args.runs_dir, args.keep_cache) for name in args.settings}
    print_table(rows)
    machine = {"cpus": os.cpu_count(), "platform": platform.platform(), "date": time.strftime("%Y-%m-%d %H:%M")}
    # settings measured earlier stay in the file; each keeps the machine and date it was measured on
    previous = read_json(args.out)["settings"] if Path(args.out).exists() else {}
    write_json(args.out, {"settings": {**previous, **{k: {**v, "machine": machine} for k, v in rows.items()}}})
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
