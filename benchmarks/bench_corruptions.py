"""Corruption speed: images per second of `vfe.robustness.corruptions.corrupt`, all 19 corruptions x
5 severities, against bethgelab's `imagecorruptions` looping over the same images one at a time.

Three settings, each corruption timed over its five severities:
  28 px   Fashion-MNIST test images, grey, CIFAR-10-C values: what the experiment runs.
  32 px   the same images padded to 32 px and made RGB (imagecorruptions rejects images under
          32 px), ImageNet-C values, ours and the reference on identical input.
  224 px  skimage photos (RGB), ImageNet-C values, ours and the reference on identical input.
The reference runs through `imagecorruptions_reference()` (pkg_resources, skimage and NumPy shims)
on fewer images; the ratio is ours / reference images per second, measured in the same run, each
the best of --repeats timings.
It also writes the example grids results/corruption_grid.png (224 px) and corruption_grid_28px.png.

    python benchmarks/bench_corruptions.py                   # about 6 minutes on 2 cores
    python benchmarks/bench_corruptions.py --quick           # a smaller check

Prints a table and writes benchmarks/results/corruptions.json.
"""
from __future__ import annotations

import argparse
import os
import platform
import time
from functools import partial
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from skimage import data
from tqdm import tqdm

from vfe.data import load_dataset
from vfe.io import write_json
from vfe.plotting import save_figure
from vfe.robustness.corruptions import REGISTRY, SEVERITIES, corrupt, corruption_grid
from vfe.robustness.corruptions.reference import imagecorruptions_reference

RESULTS = Path(__file__).parent / "results"


def photos(side: int, n: int) -> np.ndarray:
    """n RGB photos from skimage.data (astronaut, chelsea, coffee, rocket, repeated), centre-cropped
    to squares and resized to side x side."""
    out = []
    for photo in (data.astronaut(), data.chelsea(), data.coffee(), data.rocket()):
        h, w = photo.shape[:2]
        s = min(h, w)
        square = photo[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
        out.append(np.asarray(Image.fromarray(square).resize((side, side), Image.BILINEAR)))
    return np.stack([out[i % len(out)] for i in range(n)])


def best_per_second(run, images: int, repeats: int) -> float:
    """Images per second of `run()` (all five severities on `images` images), best of `repeats`:
    on a shared machine the fastest run is the least disturbed one."""
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        seconds.append(time.perf_counter() - start)
    return len(SEVERITIES) * images / min(seconds)


def run_ours(images: np.ndarray, name: str, params: str) -> None:
    for severity in SEVERITIES:
        corrupt(images, name, severity, seed=severity, params=params)


def run_reference(module, images: np.ndarray, name: str) -> None:
    np.random.seed(0)
    for severity in SEVERITIES:
        for image in images:
            module.corrupt(image, severity=severity, corruption_name=name)


def measure(setting: str, images: np.ndarray, params: str, reference_images: np.ndarray | None, module,
            repeats: int) -> list:
    rows = []
    for name in tqdm(REGISTRY, desc=setting):
        row = {"setting": setting, "corruption": name, "images": len(images), "params": params,
               "ours_images_per_s": best_per_second(partial(run_ours, images, name, params), len(images),
                                                    repeats)}
        if reference_images is not None:
            row["reference_images"] = len(reference_images)
            row["reference_images_per_s"] = best_per_second(partial(run_reference, module, reference_images, name),
                                                            len(reference_images), repeats)
            row["speedup"] = row["ours_images_per_s"] / row["reference_images_per_s"]
        rows.append(row)
    return rows


def summary(rows: list[dict]) -> dict:
    """Per setting: seconds for all 19 x 5 on its images, and the slowest corruption."""
    out = {}
    for setting in dict.fromkeys(r["setting"] for r in rows):
        mine = [r for r in rows if r["setting"] == setting]
        slowest = min(mine, key=lambda r: r["ours_images_per_s"])
        out[setting] = {"images": mine[0]["images"],
                        "seconds_all_19x5": sum(len(SEVERITIES) * r["images"] / r["ours_images_per_s"] for r in mine),
                        "slowest": slowest["corruption"],
                        "slowest_images_per_s": slowest["ours_images_per_s"]}
        if "speedup" in mine[0]:
            out[setting]["median_speedup"] = float(np.median([r["speedup"] for r in mine]))
    return out


def print_table(rows: list[dict], totals: dict) -> None:
    settings = list(totals)
    print(f"{'corruption':18s}" + "".join(f" | {s:>28s}" for s in settings))
    print(f"{'':18s}" + " | ours img/s  ref img/s  ratio" * len(settings))
    for name in REGISTRY:
        line = f"{name:18s}"
        for setting in settings:
            r = next(r for r in rows if r["setting"] == setting and r["corruption"] == name)
            ref = f"{r['reference_images_per_s']:9.1f} {r['speedup']:6.1f}x" if "speedup" in r else " " * 17
            line += f" | {r['ours_images_per_s']:10.1f} {ref}"
        print(line)
    for setting, t in totals.items():
        extra = f", median speed-up {t['median_speedup']:.1f}x" if "median_speedup" in t else ""
        print(f"{setting}: all 19 x 5 on {t['images']} images in {t['seconds_all_19x5']:.1f} s; slowest "
              f"{t['slowest']} ({t['slowest_images_per_s']:.0f} img/s){extra}")


def write_grids(grey_image: np.ndarray) -> list[str]:
    paths = [save_figure(corruption_grid(photos(224, 2)[1], cell_inches=1.6), RESULTS / "corruption_grid.png"),
             save_figure(corruption_grid(grey_image, cell_inches=1.0), RESULTS / "corruption_grid_28px.png")]
    return [str(p) for p in paths]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n28", type=int, default=2000, help="Fashion-MNIST test images at 28 px")
    parser.add_argument("--n224", type=int, default=32, help="photos at 224 px")
    parser.add_argument("--n-reference32", type=int, default=100, help="images imagecorruptions gets at 32 px")
    parser.add_argument("--n-reference224", type=int, default=4, help="images imagecorruptions gets at 224 px")
    parser.add_argument("--repeats", type=int, default=2, help="time every measurement this often, keep the best")
    parser.add_argument("--quick", action="store_true", help="200 / 8 images, reference on 20 / 2, one repeat")
    args = parser.parse_args()
    if args.quick:
        args.n28, args.n224, args.n_reference32, args.n_reference224, args.repeats = 200, 8, 20, 2, 1

    load_before = os.getloadavg()
    grey = load_dataset("fashion-mnist", "test").images[:args.n28]
    rgb32 = np.repeat(np.pad(grey, ((0, 0), (2, 2), (2, 2), (0, 0))), 3, axis=-1)
    rgb224 = photos(224, args.n224)
    rows = measure("28px grey cifar", grey, "cifar", None, None, args.repeats)
    with imagecorruptions_reference() as module:
        rows += measure("32px rgb imagenet", rgb32, "imagenet", rgb32[:args.n_reference32], module, args.repeats)
        rows += measure("224px rgb imagenet", rgb224, "imagenet", rgb224[:args.n_reference224], module,
                        args.repeats)
    totals = summary(rows)
    print_table(rows, totals)
    grids = write_grids(grey[0])
    write_json(RESULTS / "corruptions.json", {
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "python": platform.python_version(), "numpy": np.__version__, "opencv": cv2.__version__,
                    "opencv_threads": cv2.getNumThreads(), "cpus": os.cpu_count(),
                    "load_average_1_5_15min": {"before": load_before, "after": os.getloadavg()}},
        "settings": {"n28": args.n28, "n224": args.n224, "n_reference32": args.n_reference32,
                     "n_reference224": args.n_reference224, "repeats_best_of": args.repeats,
                     "severities": list(SEVERITIES)},
        "rows": rows, "summary": totals, "grids": grids})
    print(f"wrote {RESULTS / 'corruptions.json'} and {', '.join(grids)}")


if __name__ == "__main__":
    main()
