"""A fine-tuning of the reference protocol alone, and beside a one-thread process extracting corrupted test sets'
activations at the cut at low priority: nice 19, or SCHED_IDLE (what `vfe.experiment.background` uses).

The question: can `vfe run` use the CPU that fine-tuning leaves idle (its two intra-op threads reach about 175 %)
without slowing the fine-tuning down? The competitor runs `cache.extract` on the frozen bottom, exactly as the
background process does, into its own cache; what it finished during the fine-tuning is counted in images.
Setting: `make run`'s (Fashion-MNIST, EfficientNet-Lite0 at 112 px, 10,000 training images, 3 epochs, OpenVINO
bottom), the training images' activations cached before the first timing, so every timing is training alone.

    python benchmarks/bench_background.py              # 1 round: alone, nice 19, SCHED_IDLE
    python benchmarks/bench_background.py --rounds 2

Prints a table and writes benchmarks/results/background.json.
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

OUT = Path(__file__).parent / "results" / "background.json"
N_TEST = 2000  # images per corrupted set


PRIORITIES = {"nice 19": lambda: os.nice(19),
              "SCHED_IDLE": lambda: os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))}


def competitor(priority: str, cache_dir: str, out_dir: str) -> None:
    """The child: at `priority`, the run's frozen bottom at one thread, every corrupted test set into `out_dir`'s
    cache in turn."""
    PRIORITIES[priority]()
    import torch

    torch.set_num_threads(1)
    from vfe.experiment.config import BackboneSettings, DataSettings, FinetuneSettings
    from vfe.experiment.prepare import load_shared
    from vfe.experiment.stages.corruptions.stage import corruption_transform
    from vfe.features.cache import FeatureCache
    from vfe.features.source import BackboneFeatures
    from vfe.robustness.corruptions import BENCHMARK_CORRUPTIONS

    shared = load_shared(DataSettings(n_test=N_TEST), BackboneSettings(), cache_dir, log=lambda *_: None,
                         finetune=FinetuneSettings(protocol="reference"))
    source = BackboneFeatures(FeatureCache(out_dir), shared.bottom[0], progress=False)
    Path(out_dir, "ready").touch()
    for name in BENCHMARK_CORRUPTIONS:
        for severity in range(1, 6):
            transform, key = corruption_transform(name, severity, 0, "auto")
            source(shared.test, transform=transform, transform_key=key)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--competitor", nargs=3, metavar=("PRIORITY", "CACHE", "OUT"), help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    if args.competitor:
        competitor(*args.competitor)
        return

    import glob

    from vfe.experiment.config import BackboneSettings, DataSettings, FinetuneSettings
    from vfe.experiment.prepare import load_shared, replicate_train
    from vfe.experiment.reference import fine_tune
    from vfe.io import write_json

    tmp = tempfile.mkdtemp(prefix="vfe-bench-background-")
    cache_dir = f"{tmp}/cache"
    settings = FinetuneSettings(protocol="reference")
    shared = load_shared(DataSettings(), BackboneSettings(), cache_dir, log=lambda *_: None, finetune=settings)
    train = replicate_train(shared, 10000, 1)

    def fine_tuning() -> tuple[float, float]:
        for f in glob.glob(f"{cache_dir}/_models/finetuned-*"):
            os.remove(f)  # trained again, not loaded
        wall, cpu = time.perf_counter(), time.process_time()
        fine_tune(shared.cache, shared.backbone, train, shared.test, settings, 1, progress=False,
                  log=lambda *_: None, bottom=shared.bottom)
        return time.perf_counter() - wall, time.process_time() - cpu

    fine_tuning()  # the training images' activations into the cache; the runtimes compiled
    rows: dict[str, list[dict]] = {}
    for _ in range(args.rounds):
        wall, cpu = fine_tuning()
        rows.setdefault("alone", []).append({"seconds": round(wall, 1), "cpu_percent": round(100 * cpu / wall, 1)})
        for name in PRIORITIES:
            out = tempfile.mkdtemp(dir=tmp)
            child = subprocess.Popen([sys.executable, __file__, "--competitor", name, cache_dir, out])
            while not Path(out, "ready").exists():  # its imports and compilation are not what is measured
                time.sleep(0.5)
            before = len(glob.glob(f"{out}/*/manifest.json"))
            wall, cpu = fine_tuning()
            sets = len(glob.glob(f"{out}/*/manifest.json")) - before
            child.terminate()
            child.wait()
            rows.setdefault(name, []).append({"seconds": round(wall, 1), "cpu_percent": round(100 * cpu / wall, 1),
                                              "competitor_images": sets * N_TEST})
    alone = min(r["seconds"] for r in rows["alone"])
    print(f"\n{'fine-tuning':12} {'seconds (best)':>15} {'vs alone':>9} {'its CPU %':>10} {'competitor images':>18}")
    for name, runs in rows.items():
        best = min(runs, key=lambda r: r["seconds"])
        print(f"{name:12} {best['seconds']:15.1f} {best['seconds'] / alone:8.2f}x {best['cpu_percent']:10.1f} "
              f"{best.get('competitor_images', '-'):>18}")
    write_json(args.out, {"rows": rows, "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                                                     "date": time.strftime("%Y-%m-%d %H:%M")},
                          "setting": "Fashion-MNIST, efficientnet_lite0 at 112 px, 10,000 training images, "
                                     "3 epochs; competitor: corrupted sets of 2,000 test images to the cut"})


if __name__ == "__main__":
    main()
