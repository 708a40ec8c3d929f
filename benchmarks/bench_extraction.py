"""Feature-extraction speed: vfe's fast path against plain timm eager fp32, measured in the same run.

Both sides take the same uint8 Fashion-MNIST test images (28 x 28, resized by the backbone's own
preprocessing) and return pooled features. The baseline is what one writes with timm by hand:
eager fp32, NCHW, batch 32, preprocessing inline. vfe runs `Backbone.extract` with the settings in
vfe.backbones.registry (layout, precision, batch size, tracing, threads, preprocessing overlapped
in a background thread). Rounds alternate baseline and vfe, so the ratio of each round compares
like with like on a machine shared with other jobs; the table gives medians and the ratio's range.

    python benchmarks/bench_extraction.py               # the table: lite0 at 112 and 224 px, densenet121 at 224
    python benchmarks/bench_extraction.py --quick       # fewer images, one round
    python benchmarks/bench_extraction.py --sweep       # threads x prefetch, then layout x precision x jit,
                                                        # then batch: the measurement behind registry.SETTINGS
    python benchmarks/bench_extraction.py --scaling     # time and peak RSS vs images (1k/10k/70k) and size
    python benchmarks/bench_extraction.py --faithfulness  # bf16 vs fp32 features: cosine and downstream accuracy
    python benchmarks/bench_extraction.py --thread-modes   # 1 thread + prefetch vs all cores, each fixed
    python benchmarks/bench_extraction.py --profile     # operator time of vfe's path (torch.profiler)
    python benchmarks/bench_extraction.py --runtimes    # vfe on torch vs ONNX Runtime vs OpenVINO, same run
    python benchmarks/bench_extraction.py --runtimes --keras-python /tmp/tf/bin/python   # + the Keras reference
    python benchmarks/bench_extraction.py --cut-parts   # the reference protocol's bottom and top, torch vs auto

Faithfulness is the smallest per-image cosine between vfe's features and the baseline's fp32 ones.
EfficientNet-Lite0 runs with its packaged ImageNet weights; DenseNet121 with random weights (no
ImageNet weights ship offline), so its cosine says less - it is marked as such.

--faithfulness applies the issue's whole bar for reduced precision: features of real (Fashion-MNIST)
images extracted in fp32 and in bf16, the smallest cosine, and the linear head's test accuracy on each
(trained on that precision's features), which must agree within 0.2 points.

--runtimes runs `Backbone.extract` with runtime="torch" (today's vfe path), "onnxruntime" and "openvino"
(vfe.backbones.runtimes), each with its default precision, in turn in each round. It reports wall-clock
img/s and images per CPU-second (the process's CPU time, every thread counted: robust to what else the
shared machine runs), and the smallest cosine to eager fp32 torch features of the same images. With
--keras-python PATH (a Python with tensorflow-cpu: `python -m venv /tmp/tf && /tmp/tf/bin/pip install
tensorflow-cpu`, about a minute), DenseNet121's rounds also time the reference Keras pipeline
(keras_reference.py, kept running in that interpreter), and "x Keras" is the ratio within each round.

--cut-parts times the reference protocol's two parts (vfe.backbones.cut) for EfficientNet-Lite0 at 112 px,
its cut at blocks.5.1, as `vfe run --protocol reference` runs them: the frozen bottom (uint8 images ->
float16 activations, `CutActivations`) and the top (activations -> pooled features, `TopFeatures`), each on
torch and on the runtime --runtime auto picks, in turn in each round, at one intra-op thread (as each of the
corruption stage's two workers runs) and at two. The min cosine compares the pooled features through both
parts on each side.

Writes benchmarks/results/extraction.json (sections "table", "sweep", "scaling", "faithfulness",
"pipelines", "profile", "runtimes", "cut_parts", each replaced
only by the run that measures it) and benchmarks/results/scaling.png.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from vfe.backbones import create_backbone
from vfe.backbones.engine import intra_op_threads
from vfe.backbones.precision import FAITHFUL_COSINE, min_cosine
from vfe.backbones.preprocess import preprocess_uint8
from vfe.io import read_json, write_json

RESULTS = Path(__file__).parent / "results"
CASES = [  # (backbone, weights, image size, images measured per round)
    ("efficientnet_lite0", "default", 112, 512),
    ("efficientnet_lite0", "default", 224, 192),
    ("densenet121", "none", 224, 128),
]
BASELINE_BATCH = 32


# ---------------------------------------------------------------------------------------------- inputs

def fashion_mnist(n: int, split: str = "test") -> tuple[np.ndarray, str]:
    """n uint8 Fashion-MNIST images (N x 28 x 28 x 1), or scikit-learn digits when it is not installed."""
    from vfe.data import load_dataset

    try:
        if split == "all":
            train, test = load_dataset("fashion-mnist", "train"), load_dataset("fashion-mnist", "test")
            images = np.concatenate([train.images, test.images])
        else:
            images = load_dataset("fashion-mnist", split).images
        name = "fashion-mnist"
    except FileNotFoundError:
        images, name = load_dataset("digits", "train").images, "digits (fashion-mnist not installed)"
    reps = -(-n // len(images))
    return np.concatenate([images] * reps)[:n], name


def matmul_peak(dtype: torch.dtype, size: int = 2048, repeats: int = 20) -> float:
    """GFLOP/s of the best of `repeats` size x size matrix products (the machine's practical peak; the
    best of many, since a shared machine's single timings vary by 2-4x, bf16 most)."""
    a, b = torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype)
    torch.mm(a, b)
    best = min(_seconds(lambda: torch.mm(a, b)) for _ in range(repeats))
    return 2 * size**3 / best / 1e9


def flops_per_image(model: torch.nn.Module, size: int) -> float:
    """Forward FLOPs of the pooled-feature network for one image (multiply-add = 2 FLOPs)."""
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model.forward_head(model.forward_features(torch.zeros(1, 3, size, size)), pre_logits=True)
    return float(counter.get_total_flops())


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# ---------------------------------------------------------------------------------------------- the two sides

def eager_features(model: torch.nn.Module, images: np.ndarray, cfg: dict) -> np.ndarray:
    """The baseline: plain timm eager fp32, NCHW, batch 32, preprocessing inline."""
    out = []
    with torch.inference_mode():
        for i in range(0, len(images), BASELINE_BATCH):
            x = preprocess_uint8(images[i:i + BASELINE_BATCH], cfg)
            out.append(model.forward_head(model.forward_features(x), pre_logits=True).numpy())
    return np.concatenate(out)


def plain_copy(backbone) -> torch.nn.Module:
    """The backbone's network with the same weights, back in timm's default NCHW layout."""
    return copy.deepcopy(backbone.model).to(memory_format=torch.contiguous_format).eval()


def measure(backbone, images: np.ndarray, rounds: int, baseline) -> dict:
    """img/s of the baseline (torch's threads, then 1 thread) and backbone.extract, in turn in each of
    `rounds` rounds, after a warm-up."""
    n = len(images)
    # a trace, its check and the JIT's profiling runs happen on the first batches of a shape
    warmup = _seconds(lambda: backbone.extract(images[:3 * backbone.settings.batch_size], progress=False))
    fast, base, base1, features = [], [], [], None
    for _ in range(rounds):
        base.append(n / _seconds(lambda: baseline(images)))
        with intra_op_threads(1):
            base1.append(n / _seconds(lambda: baseline(images)))
        start = time.perf_counter()
        features = backbone.extract(images, progress=False)
        fast.append(n / (time.perf_counter() - start))
    ratios = [f / b for f, b in zip(fast, base)]
    return {"images": n, "rounds": rounds, "warmup_s": round(warmup, 2),
            "img_s": round(statistics.median(fast), 1), "img_s_range": [round(min(fast), 1), round(max(fast), 1)],
            "eager_img_s": round(statistics.median(base), 1),
            "eager_img_s_range": [round(min(base), 1), round(max(base), 1)],
            "eager_1_thread_img_s": round(statistics.median(base1), 1),
            "ratio": round(statistics.median(ratios), 2), "ratio_range": [round(min(ratios), 2), round(max(ratios), 2)],
            "ratio_vs_eager_1_thread": round(statistics.median(f / b for f, b in zip(fast, base1)), 2),
            "_features": features}


def settings_label(backbone) -> str:
    s = backbone.settings
    return (f"b{s.batch_size} {'NHWC' if s.channels_last else 'NCHW'} {backbone.precision}"
            f"{' jit' if s.jit else ''} t{backbone.threads}{' prefetch' if backbone.prefetch else ''}"
            f"{' (timed at run time)' if s.prefetch is None and backbone._thread_mode.rates else ''}")


# ---------------------------------------------------------------------------------------------- the table

def run_table(args, peaks: dict) -> list[dict]:
    rows = []
    for name, weights, size, n in _cases(args):
        images, source = fashion_mnist(args.images or n)
        backbone = create_backbone(name, weights=weights, image_size=size, device="cpu")
        model = plain_copy(backbone)
        gflop = flops_per_image(model, size) / 1e9
        reference = eager_features(model, images, backbone.data_config)
        def baseline(x, m=model, c=backbone.data_config):
            return eager_features(m, x, c)

        result = measure(backbone, images, args.rounds, baseline)
        cosine = min_cosine(result.pop("_features"), reference)
        peak = peaks["bf16" if backbone.precision == "bf16" else "fp32"]
        row = {"backbone": name, "weights": "ImageNet (packaged)" if weights == "default" else "random",
               "image_size": size, "data": source, "settings": settings_label(backbone),
               "precision_check": backbone.precision_check, **result, "min_cosine_vs_fp32": round(cosine, 6),
               "faithful": cosine >= FAITHFUL_COSINE, "gflop_per_image": round(gflop, 3),
               "gflop_s": round(gflop * result["img_s"], 1), "eager_gflop_s": round(gflop * result["eager_img_s"], 1),
               "peak_gflop_s": round(peak, 1), "fraction_of_peak": round(gflop * result["img_s"] / peak, 3)}
        rows.append(row)
        _print_row(row)
    return rows


def _print_row(r: dict) -> None:
    weights = "ImageNet" if r["weights"].startswith("ImageNet") else "random*"
    print(f"{r['backbone']:19} {r['image_size']:>4} {weights:8} {r['settings']:34} {r['eager_img_s']:>8.1f} "
          f"{r['eager_1_thread_img_s']:>8.1f} {r['img_s']:>8.1f} {r['ratio']:>5.2f}x "
          f"[{r['ratio_range'][0]:.2f}-{r['ratio_range'][1]:.2f}] {r['min_cosine_vs_fp32']:>8.5f} "
          f"{r['gflop_s']:>7.1f} {100 * r['fraction_of_peak']:>5.1f}%", flush=True)


TABLE_HEADER = (f"{'backbone':19} {'px':>4} {'weights':8} {'vfe settings':34} {'eager/s':>8} {'eager1/s':>8} "
                f"{'vfe/s':>8} {'ratio [range]':>17} {'min cos':>8} {'GFLOP/s':>7} {'%peak':>6}")


# ---------------------------------------------------------------------------------------------- the sweep

def run_sweep(args) -> list[dict]:
    """Per case - stage 1: threads x prefetch; stage 2: layout x precision x jit; stage 3: batch size.
    Each stage starts from the fastest faithful setting of the one before; ratios are to the eager
    baseline timed in the same round."""
    return [row for name, weights, size, n in _cases(args) for row in sweep_case(args, name, weights, size, n)]


def sweep_case(args, name: str, weights: str, size: int, n: int) -> list[dict]:
    images, source = fashion_mnist(args.images or n)
    probe = create_backbone(name, weights=weights, image_size=size, device="cpu", precision="fp32", jit=False)
    model, cfg = plain_copy(probe), probe.data_config
    reference = eager_features(model, images, cfg)
    print(f"\n{name} {size} px ({'ImageNet' if weights == 'default' else 'random'} weights, {len(images)} "
          f"{source} images)", flush=True)
    rows = []

    def stage(number: int, candidates: list[dict]) -> dict:
        """Time every candidate once per round, in turn (so drift in the machine's load hits all alike)."""
        backbones = [create_backbone(name, weights=weights, image_size=size, device="cpu", **c) for c in candidates]
        for bb in backbones:  # trace, trace check and the JIT's profiling runs
            bb.extract(images[:3 * bb.settings.batch_size], progress=False)
        times, features = [[] for _ in backbones], [None] * len(backbones)
        for _ in range(args.rounds):
            base = _seconds(lambda: eager_features(model, images, cfg))
            for i, bb in enumerate(backbones):
                start = time.perf_counter()
                features[i] = bb.extract(images, progress=False)
                times[i].append((time.perf_counter() - start) / base)
        found = []
        for bb, t, f in zip(backbones, times, features):
            cosine = min_cosine(f, reference)
            row = {"backbone": name, "image_size": size, "stage": number, "settings": asdict(bb.settings),
                   "label": settings_label(bb), "ratio_vs_eager": round(1 / statistics.median(t), 2),
                   "ratio_range": [round(1 / max(t), 2), round(1 / min(t), 2)],
                   "min_cosine_vs_fp32": round(cosine, 6), "faithful": cosine >= FAITHFUL_COSINE}
            print(f"  stage {number}  {row['label']:38} {row['ratio_vs_eager']:6.2f}x eager "
                  f"[{row['ratio_range'][0]:.2f}-{row['ratio_range'][1]:.2f}]  cos {cosine:.5f}"
                  f"{'' if row['faithful'] else '  (not faithful)'}", flush=True)
            found.append(row)
        rows.extend(found)
        return max((r for r in found if r["faithful"]), key=lambda r: r["ratio_vs_eager"])["settings"]

    cores = os.cpu_count() or 1
    chosen = stage(1, [{"batch_size": 32, "channels_last": True, "jit": True, "precision": "fp32", "threads": t,
                        "prefetch": p} for t in sorted({max(1, cores - 1), cores}) for p in (False, True)])
    chosen = stage(2, [{**chosen, "channels_last": cl, "jit": jit, "precision": p}
                       for cl in (False, True) for jit in (False, True) for p in ("fp32", "bf16")])
    chosen = stage(3, [{**chosen, "batch_size": b} for b in (8, 16, 32, 64)])
    print(f"  -> {chosen}", flush=True)
    return rows


# ---------------------------------------------------------------------------------------------- scaling

def scaling_child(n: int, size: int) -> None:
    """One scaling point in a fresh process (so its peak RSS is its own): prints one JSON line."""
    from vfe.data.types import ImageSet
    from vfe.features import FeatureCache

    images, source = fashion_mnist(n, split="all")
    data = ImageSet(images, np.zeros(len(images), np.int64), ["?"], source=source)
    backbone = create_backbone("efficientnet_lite0", image_size=size, device="cpu")
    before_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with tempfile.TemporaryDirectory() as root:
        start = time.perf_counter()
        FeatureCache(root).extract(backbone, data, progress=False)
        seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"images": n, "image_size": size, "seconds": round(seconds, 2),
                      "img_s": round(n / seconds, 1), "peak_rss_mb": round(peak_mb, 1),
                      "rss_before_extract_mb": round(before_mb, 1), "settings": settings_label(backbone),
                      "source_mb": round(images.nbytes / 2**20, 1)}))


def run_scaling(args) -> dict:
    points = [(n, 64) for n in args.scaling_images] + [(1000, s) for s in (112, 224)]
    rows = []
    for n, size in points:
        cmd = [sys.executable, __file__, "--scaling-child", str(n), str(size)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        row = json.loads(done.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(f"  {n:>6} images at {size:>3} px: {row['seconds']:8.1f} s  {row['img_s']:7.1f} img/s  "
              f"peak RSS {row['peak_rss_mb']:7.1f} MB (before extraction {row['rss_before_extract_mb']:.1f} MB, "
              f"source images {row['source_mb']:.1f} MB)", flush=True)
    plot_scaling(rows, RESULTS / "scaling.png")
    return {"points": rows, "plot": "benchmarks/results/scaling.png"}


def plot_scaling(rows: list[dict], path: Path) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_n = sorted((r for r in rows if r["image_size"] == 64), key=lambda r: r["images"])
    by_size = sorted((r for r in rows if r["images"] == 1000), key=lambda r: r["image_size"])
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    n = [r["images"] for r in by_n]
    left.loglog(n, [r["seconds"] for r in by_n], "o-", color="C0", label="extraction time (s, incl. warm-up)")
    left.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    left.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    left.set_xlabel("images (Fashion-MNIST, resized to 64 px)")
    left.set_ylabel("seconds", color="C0")
    memory = left.twinx()
    memory.plot(n, [r["peak_rss_mb"] for r in by_n], "s--", color="C3", label="peak RSS (MB)")
    memory.plot(n, [r["rss_before_extract_mb"] for r in by_n], ":", color="C3", alpha=0.6,
                label="RSS before extraction (MB)")
    memory.set_ylabel("MB", color="C3")
    memory.set_ylim(bottom=0)
    left.set_title("time and peak memory vs number of images")
    handles = [h for ax in (left, memory) for h in ax.get_legend_handles_labels()[0]]
    memory.legend(handles, [h.get_label() for h in handles], loc="lower right", fontsize=8)
    sizes = [r["image_size"] for r in by_size]
    right.plot(sizes, [r["img_s"] for r in by_size], "o-")
    right.set_xticks(sizes)
    right.set_xlabel("input size (px)")
    right.set_ylabel("images / s")
    right.set_title("throughput vs input size (1000 images)")
    fig.suptitle(f"EfficientNet-Lite0 feature extraction through FeatureCache, {by_n[0]['settings']}, "
                 f"{os.cpu_count()} cores", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


# ---------------------------------------------------------------------------------------------- faithfulness

FAITHFUL_ACCURACY_POINTS = 0.2
FAITHFULNESS_CASES = [("efficientnet_lite0", "default", 112), ("densenet121", "none", 224)]


def run_faithfulness(args) -> list[dict]:
    """fp32 vs bf16 features of the same images: min / median cosine and the linear head's accuracy."""
    from vfe.data import load_dataset
    from vfe.data.split import balanced_subset
    from vfe.heads.linear import LinearHead

    train = balanced_subset(load_dataset("fashion-mnist", "train"), args.faithfulness_images, 0, "train")
    test = balanced_subset(load_dataset("fashion-mnist", "test"), args.faithfulness_images, 0, "test")
    rows = []
    for name, weights, size in FAITHFULNESS_CASES:
        feats, accuracy, heads = {}, {}, {}
        for precision in ("fp32", "bf16"):
            backbone = create_backbone(name, weights=weights, image_size=size, device="cpu", precision=precision)
            feats[precision] = [backbone.extract(s, progress=True, desc=f"{name} {size}px {precision}")
                                for s in (train, test)]
            heads[precision] = LinearHead(random_state=0).fit(feats[precision][0], train.labels)
            accuracy[precision] = float(heads[precision].score(feats[precision][1], test.labels))
        cosines = torch.nn.functional.cosine_similarity(torch.from_numpy(feats["bf16"][1]).double(),
                                                        torch.from_numpy(feats["fp32"][1]).double(), dim=1)
        # the fp32-trained head on bf16 test features: how many decisions rounding alone changes
        changed = float((heads["fp32"].predict(feats["bf16"][1]) != heads["fp32"].predict(feats["fp32"][1])).mean())
        delta = 100 * (accuracy["bf16"] - accuracy["fp32"])
        row = {"backbone": name, "weights": "ImageNet (packaged)" if weights == "default" else "random",
               "image_size": size, "train_images": len(train), "test_images": len(test),
               "min_cosine": round(float(cosines.min()), 6), "median_cosine": round(float(cosines.median()), 6),
               "accuracy_fp32": accuracy["fp32"], "accuracy_bf16": accuracy["bf16"],
               "accuracy_delta_points": round(delta, 2), "decisions_changed": changed,
               "faithful": bool(cosines.min() >= FAITHFUL_COSINE and abs(delta) <= FAITHFUL_ACCURACY_POINTS)}
        rows.append(row)
        print(f"{name:20} {size:>4} {row['weights']:20} min cos {row['min_cosine']:.5f} (median "
              f"{row['median_cosine']:.5f})  acc fp32 {100 * accuracy['fp32']:.2f} % "
              f"bf16 {100 * accuracy['bf16']:.2f} % "
              f"({delta:+.2f} pts)  decisions changed {100 * changed:.2f} %  -> "
              f"{'faithful' if row['faithful'] else 'NOT faithful'}", flush=True)
    return rows


# ---------------------------------------------------------------------------------------------- pipelines

PIPELINES = {"1 network thread + prefetch thread": {"threads": 1, "prefetch": True},
             "all cores to the network, no prefetch": {"threads": os.cpu_count(), "prefetch": False}}


def run_pipelines(args) -> list[dict]:
    """The two pipelines engine.ThreadModeChoice picks between, each fixed, timed in turn in each round
    (the load of the moment decides which wins; the JSON keeps the load average)."""
    rows = []
    for name, weights, size, n in (CASES[0], CASES[2]):
        images, _ = fashion_mnist(args.images or 4 * n)
        backbones = {label: create_backbone(name, weights=weights, image_size=size, device="cpu", **kw)
                     for label, kw in PIPELINES.items()}
        for backbone in backbones.values():
            backbone.extract(images[:3 * backbone.settings.batch_size], progress=False)  # trace + profile runs
        rates: dict[str, list[float]] = {label: [] for label in backbones}
        for _ in range(args.rounds):
            for label, backbone in backbones.items():
                rates[label].append(len(images) / _seconds(lambda b=backbone, x=images: b.extract(x, progress=False)))
        for label, values in rates.items():
            rows.append({"backbone": name, "image_size": size, "pipeline": label, "images": len(images),
                         "img_s": round(statistics.median(values), 1), "img_s_all": [round(v, 1) for v in values],
                         "load_average": [round(v, 2) for v in os.getloadavg()]})
            print(f"{name:20} {size:>4} {label:40} {rows[-1]['img_s']:8.1f} img/s  {rows[-1]['img_s_all']}  "
                  f"load {rows[-1]['load_average'][0]}", flush=True)
    return rows


# ---------------------------------------------------------------------------------------------- runtimes

RUNTIME_SIDES = ("torch", "onnxruntime", "openvino")
# the reference Keras DenseNet121 pipeline as measured on this machine before (batch 100, oneDNN): used only
# when no --keras-python is given; with it, the pipeline is timed in the same rounds (keras_reference.py)
KERAS_REFERENCE_IMG_S = 38.0


class KerasReference:
    """benchmarks/keras_reference.py in a TensorFlow interpreter, kept running: built and warmed up once, then
    timed on request, so its rounds interleave with vfe's."""

    def __init__(self, python: str, images: np.ndarray, size: int):
        self._folder = tempfile.TemporaryDirectory(prefix="vfe-keras-")
        path = Path(self._folder.name) / "images.npy"
        np.save(path, images)
        self.process = subprocess.Popen([python, str(Path(__file__).with_name("keras_reference.py")), str(path),
                                         "--size", str(size)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        text=True)
        self.info = self._read()

    def _read(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            raise SystemExit(f"--keras-python: {self.process.args[0]} ended without an answer (is tensorflow-cpu "
                             "installed there?)")
        return json.loads(line)

    def time(self) -> dict:
        self.process.stdin.write("time\n")
        self.process.stdin.flush()
        return self._read()

    def close(self) -> None:
        self.process.stdin.write("quit\n")
        self.process.stdin.close()
        self.process.wait(timeout=60)
        self._folder.cleanup()


def run_runtimes(args) -> list[dict]:
    """vfe's extraction on each runtime, timed in turn within each round, against eager fp32 features; with
    --keras-python, DenseNet121's reference Keras pipeline timed in the same rounds."""
    rows = []
    for name, weights, size, n in _cases(args):
        images, source = fashion_mnist(args.images or n)
        sides = {r: create_backbone(name, weights=weights, image_size=size, device="cpu", runtime=r)
                 for r in RUNTIME_SIDES}
        torch_side = sides["torch"]
        reference = eager_features(plain_copy(torch_side), images, torch_side.data_config)
        warm = np.resize(images, (15 * torch_side.settings.batch_size, *images.shape[1:]))
        for bb in sides.values():  # trace / compile for both thread modes (ThreadModeChoice times 3 + 2 x 6 batches)
            bb.extract(warm, progress=False)
        keras = KerasReference(args.keras_python, images, size) if args.keras_python and name == "densenet121" \
            else None
        wall: dict[str, list[float]] = {r: [] for r in sides}
        cpu: dict[str, list[float]] = {r: [] for r in sides}
        keras_wall, keras_cpu = [], []
        features = {}
        for _ in range(args.rounds):
            for r, bb in sides.items():
                w, c = time.perf_counter(), time.process_time()
                features[r] = bb.extract(images, progress=False)
                wall[r].append(len(images) / (time.perf_counter() - w))
                cpu[r].append(len(images) / (time.process_time() - c))
            if keras is not None:
                timed_keras = keras.time()
                keras_wall.append(len(images) / timed_keras["seconds"])
                keras_cpu.append(len(images) / timed_keras["cpu_seconds"])
        if keras is not None:
            keras.close()
            rows.append({"backbone": name, "weights": "random", "image_size": size, "data": source,
                         "images": len(images), "rounds": args.rounds, "runtime_asked": "keras (reference)",
                         "runtime": f"tensorflow {keras.info['tensorflow']}", "precision": "fp32",
                         "img_s": round(statistics.median(keras_wall), 1), "img_s_all": [round(v, 1) for v in keras_wall],
                         "img_per_cpu_s": round(statistics.median(keras_cpu), 1),
                         "ratio_vs_vfe_torch": round(statistics.median(a / b for a, b in zip(keras_wall, wall["torch"])), 2),
                         "keras_measured": True, "load_average": [round(v, 2) for v in os.getloadavg()]})
            print(f"{name:19} {size:>4} {'keras':12} {rows[-1]['runtime']:17} {rows[-1]['img_s']:8.1f} "
                  f"{rows[-1]['img_per_cpu_s']:9.1f} {rows[-1]['ratio_vs_vfe_torch']:6.2f}x", flush=True)
        for r, bb in sides.items():
            cosine = min_cosine(features[r], reference)
            if name != "densenet121":
                vs_keras = None
            elif keras is not None:  # per round, against the Keras pipeline timed in that round
                vs_keras = round(statistics.median(a / b for a, b in zip(wall[r], keras_wall)), 2)
            else:
                vs_keras = round(statistics.median(wall[r]) / KERAS_REFERENCE_IMG_S, 2)
            row = {"backbone": name, "weights": "ImageNet (packaged)" if weights == "default" else "random",
                   "image_size": size, "data": source, "images": len(images), "rounds": args.rounds,
                   "runtime_asked": r, "runtime": bb.runtime, "precision": bb.precision,
                   "runtime_check": bb.runtime_check,
                   "img_s": round(statistics.median(wall[r]), 1), "img_s_all": [round(v, 1) for v in wall[r]],
                   "img_per_cpu_s": round(statistics.median(cpu[r]), 1),
                   "img_per_cpu_s_all": [round(v, 1) for v in cpu[r]],
                   "ratio_vs_vfe_torch": round(statistics.median(a / b for a, b in zip(wall[r], wall["torch"])), 2),
                   "cpu_ratio_vs_vfe_torch": round(statistics.median(a / b for a, b in zip(cpu[r], cpu["torch"])), 2),
                   "ratio_vs_keras_reference": vs_keras, "keras_measured": keras is not None,
                   "min_cosine_vs_fp32": round(cosine, 6), "faithful": cosine >= FAITHFUL_COSINE,
                   "load_average": [round(v, 2) for v in os.getloadavg()]}
            rows.append(row)
            shown = f"{vs_keras:5.2f}x" if vs_keras else "    -"
            print(f"{name:19} {size:>4} {r:12} {bb.runtime + ' ' + bb.precision:17} {row['img_s']:8.1f} "
                  f"{row['img_per_cpu_s']:9.1f} {row['ratio_vs_vfe_torch']:6.2f}x {row['cpu_ratio_vs_vfe_torch']:6.2f}x "
                  f"{shown} {cosine:9.6f}", flush=True)
    return rows


def run_cut_parts(args) -> list[dict]:
    """The reference protocol's bottom and top on torch and on the runtime `auto` picks, timed in turn."""
    from vfe.backbones.cut import CutActivations, CutModel, TopFeatures, reference_cut

    images, source = fashion_mnist(args.images or 512)
    rows = []
    with tempfile.TemporaryDirectory() as models:
        sides = {}
        for runtime in ("torch", "auto"):
            bb = create_backbone("efficientnet_lite0", image_size=112, device="cpu", runtime=runtime, model_dir=models)
            cut = CutModel(bb.model, reference_cut(bb.model, bb.arch))
            bottom = CutActivations(bb, cut, "fp16", model_dir=models)
            sides[runtime] = (bottom, TopFeatures(bb, cut, bottom.shape, bb.runtime, bb.precision, model_dir=models))
        for threads in (1, 2):
            seconds = {(r, part): [] for r in sides for part in ("bottom", "top")}
            with intra_op_threads(threads):
                for bottom, top in sides.values():  # compile for this thread count, untimed
                    list(top.iter_features(list(bottom.iter_features(images[:64]))))
                features = {}
                for _ in range(args.rounds):
                    for r, (bottom, top) in sides.items():
                        started = time.perf_counter()
                        activations = list(bottom.iter_features(images))
                        seconds[(r, "bottom")].append(time.perf_counter() - started)
                        started = time.perf_counter()
                        features[r] = np.concatenate(list(top.iter_features(activations)))
                        seconds[(r, "top")].append(time.perf_counter() - started)
            cosine = min_cosine(features["auto"], features["torch"])
            for part in ("bottom", "top"):
                rates = {r: [len(images) / t for t in seconds[(r, part)]] for r in sides}
                ratio = statistics.median(a / b for a, b in zip(rates["auto"], rates["torch"]))
                ran = sides["auto"][0 if part == "bottom" else 1].runtime
                rows.append({"backbone": "efficientnet_lite0", "image_size": 112, "cut": sides["torch"][0].cut.point,
                             "part": part, "threads": threads, "data": source, "images": len(images),
                             "rounds": args.rounds, "auto_ran_on": ran,
                             "torch_img_s": round(statistics.median(rates["torch"]), 1),
                             "auto_img_s": round(statistics.median(rates["auto"]), 1), "ratio": round(ratio, 2),
                             "min_cosine_pooled": round(cosine, 6),
                             "load_average": [round(v, 2) for v in os.getloadavg()]})
                r = rows[-1]
                print(f"{part:7} {threads:>7} {r['torch_img_s']:9.1f} {ran:>9} {r['auto_img_s']:9.1f} "
                      f"{r['ratio']:6.2f}x {cosine:9.6f}", flush=True)
    return rows


RUNTIME_HEADER = (f"{'backbone':19} {'px':>4} {'asked':12} {'ran on':17} {'img/s':>8} {'img/cpu-s':>9} "
                  f"{'x vfe':>7} {'x vfe cpu':>7} {'xKeras':>6} {'min cos':>9}")


# ---------------------------------------------------------------------------------------------- profile

def run_profile(args) -> list[dict]:
    """Where vfe's extraction time goes: torch.profiler over a few batches of each case (vfe's own path,
    trace included), operators grouped by self CPU time."""
    from torch.profiler import ProfilerActivity, profile

    rows = []
    for name, weights, size, _ in (CASES[0], CASES[2]):
        images, _ = fashion_mnist(128)
        backbone = create_backbone(name, weights=weights, image_size=size, device="cpu")
        backbone.extract(images[:3 * backbone.settings.batch_size], progress=False)  # trace + profile runs
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            backbone.extract(images, progress=False)
        events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
        total = sum(e.self_cpu_time_total for e in events)
        top = [{"op": e.key, "self_ms": round(e.self_cpu_time_total / 1e3, 1),
                "share": round(e.self_cpu_time_total / total, 3), "calls": e.count} for e in events[:8]]
        rows.append({"backbone": name, "image_size": size, "precision": backbone.precision, "images": len(images),
                     "total_self_ms": round(total / 1e3, 1), "top": top})
        print(f"\n{name} {size} px {backbone.precision}, {len(images)} images: "
              f"{total / 1e6:.2f} s of operator time (all threads)")
        for t in top:
            print(f"  {t['op'][:60]:60} {t['self_ms']:9.1f} ms {100 * t['share']:5.1f} %  x{t['calls']}")
    return rows


# ---------------------------------------------------------------------------------------------- main

def _cases(args):
    return CASES[::2] if args.quick else CASES


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="lite0 at 112 and densenet121 only, 64 images, 1 round")
    ap.add_argument("--images", type=int, default=None, help="images per round for every case")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--sweep", action="store_true", help="measure the settings grid instead of the table")
    ap.add_argument("--scaling", action="store_true", help="measure time and memory vs images and size instead")
    ap.add_argument("--scaling-images", type=lambda s: [int(v) for v in s.split(",")], default=[1000, 10000, 70000])
    ap.add_argument("--profile", action="store_true", help="operator time of vfe's path (torch.profiler)")
    ap.add_argument("--thread-modes", action="store_true", help="time the two pipelines ThreadModeChoice picks from")
    ap.add_argument("--faithfulness", action="store_true", help="bf16 vs fp32: cosine and downstream accuracy")
    ap.add_argument("--runtimes", action="store_true", help="vfe on torch vs onnxruntime vs openvino")
    ap.add_argument("--cut-parts", action="store_true", help="the reference protocol's bottom and top, torch vs auto")
    ap.add_argument("--keras-python", metavar="PATH", help="with --runtimes: a Python with tensorflow-cpu; "
                    "DenseNet121's reference Keras pipeline is timed in the same rounds (keras_reference.py)")
    ap.add_argument("--faithfulness-images", type=int, default=2000, help="training and test images each")
    ap.add_argument("--scaling-child", nargs=2, type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.keras_python and not (args.runtimes and Path(args.keras_python).is_file()):
        ap.error(f"--keras-python {args.keras_python}: needs --runtimes and an existing Python interpreter (make one: "
                 "python -m venv /tmp/tf && /tmp/tf/bin/pip install tensorflow-cpu)")
    if args.scaling_child:
        scaling_child(*args.scaling_child)
        return
    if args.quick:
        args.images, args.rounds = args.images or 64, 1
        args.scaling_images = [1000, 5000]

    out = RESULTS / "extraction.json"
    results = read_json(out) if out.exists() else {}
    machine = {"cpu_count": os.cpu_count(), "machine": platform.machine(), "torch": torch.__version__,
               "threads": torch.get_num_threads(), "load_average_start": [round(v, 2) for v in os.getloadavg()],
               "date": time.strftime("%Y-%m-%d %H:%M"), "command": " ".join(["python", *sys.argv])}
    if args.profile:
        results["profile"] = {"machine": machine, "rows": run_profile(args)}
    elif args.thread_modes:
        print("the two extraction pipelines, each fixed (images/s, median of rounds):")
        results["pipelines"] = {"machine": machine, "rows": run_pipelines(args)}
    elif args.faithfulness:
        print(f"bf16 vs fp32 features (bar: min cosine >= {FAITHFUL_COSINE}, accuracy within "
              f"{FAITHFUL_ACCURACY_POINTS} points):")
        results["faithfulness"] = {"machine": machine, "rows": run_faithfulness(args)}
    elif args.runtimes:
        print(f"vfe's extraction on each runtime ({os.cpu_count()} cores, load average "
              f"{machine['load_average_start']}); x vfe = over runtime torch in the same round:\n{RUNTIME_HEADER}")
        results["runtimes"] = {"machine": machine, "rows": run_runtimes(args)}
    elif args.cut_parts:
        print(f"the reference protocol's parts, EfficientNet-Lite0 at 112 px (img/s, median of {args.rounds} rounds; "
              f"x = auto over torch in the same round):\n{'part':7} {'threads':>7} {'torch':>9} {'auto ran':>9} "
              f"{'auto':>9} {'x':>7} {'min cos':>9}")
        results["cut_parts"] = {"machine": machine, "rows": run_cut_parts(args)}
    elif args.sweep:
        results["sweep"] = {"machine": machine, "rows": run_sweep(args)}
    elif args.scaling:
        print("scaling (EfficientNet-Lite0 through FeatureCache, one process per point):")
        results["scaling"] = {"machine": machine, **run_scaling(args)}
    else:
        peaks = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
        print(f"matmul peak: fp32 {peaks['fp32']:.0f} GFLOP/s, bf16 {peaks['bf16']:.0f} GFLOP/s "
              f"({os.cpu_count()} cores, load average {machine['load_average_start']})\n")
        print(TABLE_HEADER)
        rows = run_table(args, peaks)
        print("\n* random weights: DenseNet121's faithfulness is checked on random weights only (no ImageNet "
              "weights offline).\n  eager = torch's default threads, eager1 = the same with 1 thread; "
              "ratio = vfe / eager in the same round, range over rounds.")
        results["table"] = {"machine": machine, "peak_gflop_s": {k: round(v, 1) for k, v in peaks.items()},
                            "baseline": "timm eager fp32 NCHW batch 32, preprocessing inline", "rows": rows}
    machine["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    write_json(out, results)
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
