"""Which float precision feature extraction runs in.

Reduced precision (bf16 on a CPU that computes it natively, fp16 on CUDA) runs 2-3x faster, but
whether a network's features survive it depends on the network and its weights: measured here,
DenseNet121's features keep a cosine of 0.99999 to fp32 in bf16 (random weights), EfficientNet-
Lite0's with its ImageNet weights only 0.990-0.997 on photos at 112-224 px. So `precision='auto'`
takes reduced precision only when the backbone passes a check on real photos (scikit-image's
sample images) with the weights it has loaded - the criterion the benchmark reports too.
"""
from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import torch

from vfe.hardware import cpu_has_native_bf16

FAITHFUL_COSINE = 0.999  # every check photo's features must keep at least this cosine to fp32
CHECK_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera", "coins", "moon", "page")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def reduced_precision_for(device: torch.device) -> str | None:
    """The reduced precision this device runs fast ('bf16' / 'fp16'), or None."""
    if device.type == "cuda":
        return "fp16"  # fp16 keeps 3 more mantissa bits than bf16; autocast keeps reductions in fp32
    if device.type == "cpu" and cpu_has_native_bf16():
        return "bf16"
    return None


def autocast_for(device: torch.device, precision: str):
    """The autocast context of a precision ('fp32' needs none)."""
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device.type, dtype=_DTYPES[precision])


def min_cosine(features: torch.Tensor | np.ndarray, reference: torch.Tensor | np.ndarray) -> float:
    """Smallest per-image cosine similarity between two feature batches (computed in float64)."""
    a = torch.as_tensor(features).double().flatten(1)
    b = torch.as_tensor(reference).double().flatten(1)
    return float(torch.nn.functional.cosine_similarity(a, b, dim=1, eps=1e-12).min())


def check_photos() -> list[torch.Tensor]:
    """scikit-image's sample photos as float [0, 1] tensors 1 x 3 x H x W (grayscale ones replicated)."""
    import skimage.data

    out = []
    for name in CHECK_PHOTOS:
        image = getattr(skimage.data, name)()
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=-1)
        out.append(torch.from_numpy(np.ascontiguousarray(image[..., :3])).permute(2, 0, 1)[None].float() / 255)
    return out
