"""Head fitting and extraction on a quiet machine and beside busy processes: vfe's old thread handling vs the new.

Each measurement runs in a fresh child process (OpenMP reads its wait policy once, when torch loads):
  old  vfe before issue #13 item 3: torch imported before vfe (GNU libgomp's default wait: spin 300,000
       times at a barrier, then sleep), fits with torch's thread count (one per core), extraction's
       threads capped by the cores only. Reproduced here by replacing vfe.hardware.free_cores with
       usable_cores and the fit thread choice with torch's count.
  new  vfe as shipped: `import vfe` first (OMP_WAIT_POLICY=PASSIVE), thread counts from free_cores, feature
       heads fitted with one thread.
A child extracts `--images` Fashion-MNIST test images with EfficientNet-Lite0 at 112 px (packaged ImageNet
weights; after a warm-up extraction that traces the network and times the two pipelines), then fits the
linear head and the VFE head (fixed epochs, no early stopping) on 10,000 x 1280 cached Fashion-MNIST
features (`--synthetic`: Gaussian clusters of the same shape). Scenarios: the quiet machine, then beside
two competing processes at nice 19, each a pure-Python loop or a single-threaded NumPy matrix-product
loop, started in this benchmark's session or each in a session of its own. The distinction matters on
Linux with autogroup scheduling (/proc/sys/kernel/sched_autogroup_enabled): nice weighs a process only
against others of its session, so a nice-19 job that another user started in their own shell takes a core
share as large as ours.

    python benchmarks/bench_busy.py                  # all scenarios, old vs new, 2 rounds
    python benchmarks/bench_busy.py --threads        # feature heads with 1 vs 2 threads, quiet machine
    python benchmarks/bench_busy.py --quick          # one round, fewer epochs, the own-session scenario

Prints a table and writes benchmarks/results/busy.json ("table" or "threads").
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Deliberately no torch or vfe import at module level: a child decides whether torch or vfe loads first.

RESULTS = Path(__file__).parent / "results"
COMPETITORS = {
    "spin": "while True: pass",
    "matmul": "import numpy as np\na = np.random.rand(384, 384)\nwhile True:\n    a @ a",
}
SCENARIOS = {  # name: (competitor kind, own session?)
    "quiet": (None, False),
    "2 x spin, nice 19, same session": ("spin", False),
    "2 x spin, nice 19, own sessions": ("spin", True),
    "2 x matmul, nice 19, own sessions": ("matmul", True),
}
CONFIGS = ("old", "new")
ABLATION = ("passive wait only", "thread counts only")
THREAD_CONFIGS = ("fit 1 thread", "fit 2 threads")
PHASES = ("extract", "linear", "vfe")


# -- the child: one configuration, timed ----------------------------------------------------------------


def child(config: str, data_path: str, phases: list[str], epochs: dict) -> dict:
    """Time `phases` under `config`; returns seconds, the thread counts chosen and the load seen per phase."""
    old_policy = config in ("old", "thread counts only")
    old_threads = config in ("old", "passive wait only")
    # whichever loads first decides libgomp's wait policy: torch first keeps its default (spin, then sleep),
    # vfe first sets OMP_WAIT_POLICY=PASSIVE before torch loads
    importlib.import_module("torch" if old_policy else "vfe")
    import numpy as np
    import torch

    import vfe.backbones.engine
    import vfe.heads.base
    from vfe import hardware
    from vfe.backbones import create_backbone
    from vfe.heads.linear import LinearHead
    from vfe.heads.vfe import VFEHead

    estimate = hardware.free_cores  # reported in every configuration
    if old_threads:
        hardware.free_cores = hardware.usable_cores
        vfe.backbones.engine.free_cores = hardware.usable_cores
        hardware.fit_threads_for = lambda requested=None, limit=None: torch.get_num_threads()
    if config == "fit 2 threads":
        vfe.heads.base.FEATURE_HEAD_THREADS = None
    data = np.load(data_path)
    out = {"config": config, "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset (libgomp default)"),
           "torch_threads": torch.get_num_threads(), "phases": {}}
    for phase in phases:
        seen = {"load_average": round(os.getloadavg()[0], 2), "runnable_elsewhere": hardware.runnable_elsewhere(),
                "free_cores": estimate()}
        if phase == "extract":
            backbone = create_backbone("efficientnet_lite0", image_size=112, device="cpu")
            backbone.extract(data["warmup_images"], progress=False)  # trace, check, time both pipelines
            start = time.perf_counter()
            backbone.extract(data["images"], progress=False)
            seconds = time.perf_counter() - start
            threads = {"threads": backbone.threads, "prefetch": backbone.prefetch}
        else:
            head = (LinearHead(epochs=epochs["linear"], patience=None) if phase == "linear" else
                    VFEHead(vae_epochs=epochs["vae"], vae_patience=None, epochs=epochs["classifier"], patience=None))
            limit = vfe.heads.base.FEATURE_HEAD_THREADS
            threads = {"threads": hardware.fit_threads_for(limit=limit)}
            start = time.perf_counter()
            head.fit(data["X"], data["y"])
            seconds = time.perf_counter() - start
        out["phases"][phase] = {"seconds": round(seconds, 3), **threads, **seen}
    return out


# -- the parent: data, competitors, rounds ----------------------------------------------------------------


def prepare(args, folder: Path) -> tuple[Path, str]:
    """Features (cached Fashion-MNIST through the default backbone, or Gaussian clusters) and images, saved
    for the children."""
    import numpy as np

    from vfe.backbones import create_backbone
    from vfe.data import load_dataset
    from vfe.data.split import balanced_subset
    from vfe.features.cache import FeatureCache

    test = load_dataset("fashion-mnist", "test")
    images = np.asarray(test.images[:args.images + 256])
    if args.synthetic:
        rng = np.random.default_rng(0)
        y = rng.integers(0, 10, args.n_features)
        centres = rng.normal(0.0, 1.0, (10, 1280)).astype(np.float32)
        X = np.maximum(centres[y] + rng.normal(0.0, 1.5, (len(y), 1280)).astype(np.float32), 0.0)
        source = f"Gaussian clusters, {len(y)} x 1280, 10 classes"
    else:
        train_set = balanced_subset(load_dataset("fashion-mnist", "train"), args.n_features, 0, "train")
        backbone = create_backbone("efficientnet_lite0", image_size=112, device="cpu")
        X = FeatureCache().extract(backbone, train_set, progress=False).array()
        y = train_set.labels
        source = f"Fashion-MNIST training features, EfficientNet-Lite0 112 px, {X.shape[0]} x {X.shape[1]}"
    path = folder / "data.npz"
    np.savez(path, X=X.astype(np.float32), y=y.astype(np.int64), images=images[256:], warmup_images=images[:256])
    return path, source


def start_competitors(kind: str, own_session: bool, n: int) -> list[subprocess.Popen]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return [subprocess.Popen(["nice", "-n", "19", sys.executable, "-c", COMPETITORS[kind]], env=env,
                             start_new_session=own_session, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for _ in range(n)]


def stop(processes: list[subprocess.Popen]) -> None:
    for p in processes:
        p.kill()
    for p in processes:
        p.wait()


def run_child(config: str, data_path: Path, phases: list[str], epochs: dict) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}  # the child's config decides it
    spec = json.dumps({"config": config, "data": str(data_path), "phases": phases, "epochs": epochs})
    done = subprocess.run([sys.executable, __file__, "--child", spec], env=env, capture_output=True, text=True,
                          check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


QUIET_LOAD = 0.5  # a quiet run starts once the 1-minute load average is below this


def wait_for_quiet(max_seconds: float) -> float:
    """Wait (at most `max_seconds`) until no other task is runnable in 10 samples over a second and the 1-minute
    load average is below QUIET_LOAD; returns the seconds waited. The load average matters: vfe reads it when it
    chooses its threads, and right after the previous child it still holds that child's load for a minute (which
    a quiet machine would not show). This machine is shared: a 'quiet' baseline is only as quiet as the others'
    jobs allow."""
    from vfe.hardware import runnable_elsewhere

    start = time.monotonic()
    while time.monotonic() - start < max_seconds:
        samples = []
        for _ in range(10):
            samples.append(runnable_elsewhere(samples=1) or 0.0)
            time.sleep(0.1)
        if max(samples) == 0 and os.getloadavg()[0] < QUIET_LOAD:
            break
        time.sleep(2.0)
    return round(time.monotonic() - start, 1)


def run_scenarios(args, data_path: Path, configs: tuple, scenarios: list[str], phases: list[str]) -> list[dict]:
    epochs = {"linear": args.linear_epochs, "vae": args.vae_epochs, "classifier": args.classifier_epochs}
    records = []
    for scenario in scenarios:
        kind, own_session = SCENARIOS[scenario]
        competitors = start_competitors(kind, own_session, args.competitors) if kind else []
        try:
            if competitors:
                time.sleep(args.settle)
            for r in range(args.rounds):
                for config in (configs if r % 2 == 0 else configs[::-1]):
                    waited = wait_for_quiet(args.quiet_wait) if kind is None else None
                    record = {"scenario": scenario, "round": r, **run_child(config, data_path, phases, epochs)}
                    if waited is not None:
                        record["waited_for_quiet_s"] = waited
                    records.append(record)
                    print(f"  {scenario:36} {config:20} " + "  ".join(
                        f"{p} {v['seconds']:6.2f} s ({v['threads']} thr, load {v['load_average']:.1f})"
                        for p, v in record["phases"].items()), flush=True)
        finally:
            stop(competitors)
    return records


def summarise(records: list[dict], configs: tuple, phases: list[str]) -> list[dict]:
    """Per busy scenario, phase and configuration: seconds quiet (the best round: the machine is shared, and
    the least disturbed round is the closest to quiet) and busy (the median round), and their ratio."""
    def seconds(scenario, config, phase):
        return [r["phases"][phase]["seconds"] for r in records
                if r["scenario"] == scenario and r["config"] == config and phase in r["phases"]]

    rows = []
    busy = [s for s in dict.fromkeys(r["scenario"] for r in records) if s != "quiet"]
    for scenario in busy:
        for phase in phases:
            for config in configs:
                quiet, loaded = seconds("quiet", config, phase), seconds(scenario, config, phase)
                if not quiet or not loaded:
                    continue
                q, b = min(quiet), statistics.median(loaded)
                rows.append({"scenario": scenario, "phase": phase, "config": config, "quiet_s": round(q, 2),
                             "quiet_range": [min(quiet), max(quiet)], "busy_s": round(b, 2),
                             "busy_range": [min(loaded), max(loaded)], "slowdown": round(b / q, 2)})
    return rows


def print_table(rows: list[dict]) -> None:
    print(f"\n{'scenario':36} {'phase':8} {'config':20} {'quiet s':>8} {'busy s':>8} {'slowdown':>9}")
    for r in rows:
        print(f"{r['scenario']:36} {r['phase']:8} {r['config']:20} {r['quiet_s']:8.2f} {r['busy_s']:8.2f} "
              f"{r['slowdown']:8.2f}x")


def print_threads(records: list[dict]) -> list[dict]:
    rows = []
    for phase in ("linear", "vfe"):
        times = {c: [r["phases"][phase]["seconds"] for r in records if r["config"] == c] for c in THREAD_CONFIGS}
        one, two = statistics.median(times[THREAD_CONFIGS[0]]), statistics.median(times[THREAD_CONFIGS[1]])
        rows.append({"phase": phase, "one_thread_s": round(one, 2), "two_threads_s": round(two, 2),
                     "one_thread_runs": times[THREAD_CONFIGS[0]], "two_threads_runs": times[THREAD_CONFIGS[1]],
                     "two_over_one_speedup": round(one / two, 2)})
    print(f"\n{'phase':8} {'1 thread s':>11} {'2 threads s':>12} {'speed-up of 2':>14}")
    for r in rows:
        print(f"{r['phase']:8} {r['one_thread_s']:11.2f} {r['two_threads_s']:12.2f} {r['two_over_one_speedup']:13.2f}x")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--images", type=int, default=512, help="images in the timed extraction")
    ap.add_argument("--n-features", type=int, default=10000, help="rows of the feature matrix the heads fit")
    ap.add_argument("--synthetic", action="store_true", help="Gaussian clusters instead of cached real features")
    ap.add_argument("--linear-epochs", type=int, default=5)
    ap.add_argument("--vae-epochs", type=int, default=5)
    ap.add_argument("--classifier-epochs", type=int, default=3)
    ap.add_argument("--competitors", type=int, default=2)
    ap.add_argument("--settle", type=float, default=5.0, help="seconds between starting competitors and timing")
    ap.add_argument("--quiet-wait", type=float, default=120.0, help="wait at most this long for a quiet machine")
    ap.add_argument("--scenarios", nargs="+", choices=list(SCENARIOS), default=list(SCENARIOS))
    ap.add_argument("--ablation", action="store_true", help="also: the passive wait alone, the thread counts alone")
    ap.add_argument("--threads", action="store_true", help="feature heads with 1 vs 2 threads on the quiet machine")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        spec = json.loads(args.child)
        print(json.dumps(child(spec["config"], spec["data"], spec["phases"], spec["epochs"])))
        return
    if args.quick:
        args.rounds, args.linear_epochs, args.vae_epochs, args.classifier_epochs = 1, 2, 2, 1
        args.scenarios = ["quiet", "2 x spin, nice 19, own sessions"]

    from vfe.io import read_json, write_json

    out = RESULTS / "busy.json"
    results = read_json(out) if out.exists() else {}
    autogroup = Path("/proc/sys/kernel/sched_autogroup_enabled")
    autogroup = autogroup.read_text().strip() if autogroup.exists() else "unknown"
    machine = {"cpu_count": os.cpu_count(), "machine": platform.machine(), "autogroup": autogroup,
               "load_average_start": [round(v, 2) for v in os.getloadavg()], "date": time.strftime("%Y-%m-%d %H:%M"),
               "command": " ".join(["python", *sys.argv])}
    with tempfile.TemporaryDirectory() as folder:
        data_path, source = prepare(args, Path(folder))
        setting = {"features": source, "images": args.images, "rounds": args.rounds, "competitors": args.competitors,
                   "settle_s": args.settle, "epochs": {"linear": args.linear_epochs, "vae": args.vae_epochs,
                                                       "classifier": args.classifier_epochs}}
        print(f"{source}; {args.images} images to extract; load average {machine['load_average_start']}")
        if args.threads:
            records = run_scenarios(args, data_path, THREAD_CONFIGS, ["quiet"], ["linear", "vfe"])
            rows = print_threads(records)
            results["threads"] = {"machine": machine, "setting": setting, "rows": rows, "runs": records}
        else:
            configs = CONFIGS + (ABLATION if args.ablation else ())
            records = run_scenarios(args, data_path, configs, args.scenarios, list(PHASES))
            rows = summarise(records, configs, list(PHASES))
            print_table(rows)
            results["table"] = {"machine": machine, "setting": setting, "rows": rows, "runs": records}
    machine["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    write_json(out, results)
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
