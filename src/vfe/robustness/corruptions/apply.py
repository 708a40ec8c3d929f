"""`corrupt`: one corruption at one severity on a batch of uint8 images, reproducibly."""
from __future__ import annotations

import cv2
import numpy as np

from vfe.robustness.corruptions.parameters import SEVERITIES, parameter_set, severity_parameters
from vfe.robustness.corruptions.registry import REGISTRY

# images go through a corruption this many values at a time: its float64 temporaries (4 MB) stay
# in cache, which makes the elementwise corruptions up to 2x faster at 224 px than whole batches,
# while a chunk still holds hundreds of small images for the per-pixel loops (glass blur) to share
CHUNK_VALUES = 1 << 19


def corrupt(images: np.ndarray, name: str, severity: int, seed: int = 0, params: str = "auto") -> np.ndarray:
    """`images` (uint8, N x H x W or N x H x W x C with C = 1 or 3) under corruption `name`.

    `params` picks the published severity table: "cifar" (CIFAR-10-C), "imagenet" (ImageNet-C)
    or "auto" (CIFAR-10-C up to a 64-px long side, ImageNet-C above). The same seed gives the same
    output (chunks of CHUNK_VALUES values go through in turn, drawing from one generator). Grey
    images stay grey: a corruption that adds colour sees them as RGB and its result is turned back
    into luma (ITU-R BT.601, as OpenCV and Pillow).
    """
    batch = _as_nhwc(images)
    if name not in REGISTRY:
        raise ValueError(f"corrupt: unknown corruption {name!r}; known: {', '.join(REGISTRY)}")
    if severity not in SEVERITIES:
        raise ValueError(f"corrupt: severity must be one of {SEVERITIES}, got {severity!r}")
    n, h, w, channels = batch.shape
    pset = parameter_set(params, max(h, w))
    if n == 0:
        return images.copy()
    corruption = REGISTRY[name]
    c = severity_parameters(pset, name, severity, max(h, w))
    as_rgb = channels == 1 and corruption.needs_rgb
    x = np.repeat(batch, 3, axis=-1) if as_rgb else batch
    rng = np.random.default_rng(seed)
    step = max(1, CHUNK_VALUES // x[0].size)
    out = np.empty_like(x)
    for start in range(0, n, step):
        chunk = corruption.function(x[start:start + step], c, rng)
        out[start:start + step] = np.clip(chunk, 0, 255).astype(np.uint8)  # truncates, as published
    if as_rgb:
        out = cv2.cvtColor(out.reshape(n * h, w, 3), cv2.COLOR_RGB2GRAY)
    return out.reshape(images.shape)


def _as_nhwc(images: np.ndarray) -> np.ndarray:
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
        raise TypeError(f"corrupt: images must be a uint8 numpy array, got "
                        f"{getattr(images, 'dtype', type(images).__name__)}")
    if images.ndim == 3:
        return images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"corrupt: images must be N x H x W or N x H x W x C with C in (1, 3), "
                         f"got shape {images.shape}")
    return images
