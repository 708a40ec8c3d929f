"""An ImageSet from arrays a user already holds (NumPy arrays or CPU tensors)."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from vfe.data.types import ImageSet


def from_arrays(images, labels, class_names: Sequence[str] | None = None, source: str = "arrays") -> ImageSet:
    """Images N x H x W or N x H x W x C (C = 1 or 3) of 0..255 integers, and integer labels.

    Without `class_names` the classes are named by their numbers 0..max(label). Floats are refused
    rather than guessed at (0..1 or 0..255?): scale them yourself, e.g. (x * 255).round().astype(np.uint8).
    """
    images, labels = np.asarray(images), np.asarray(labels)
    if images.dtype != np.uint8:
        if images.dtype.kind not in "iu":
            raise TypeError(f"images must be uint8 (or integers in 0..255), got {images.dtype}; scale floats "
                            "yourself, e.g. (x * 255).round().astype(np.uint8)")
        if images.size and (images.min() < 0 or images.max() > 255):
            raise ValueError(f"images must lie in 0..255, got {images.min()}..{images.max()}")
        images = images.astype(np.uint8)
    if images.ndim == 4 and images.shape[1] in (1, 3) and images.shape[-1] not in (1, 3):
        raise ValueError(f"images of shape {images.shape} look channels-first (N x C x H x W); give "
                         "N x H x W x C, e.g. images.transpose(0, 2, 3, 1)")
    if labels.ndim != 1 or (labels.size and labels.dtype.kind not in "iu"):
        raise TypeError(f"labels must be a 1-D array of integers, got {labels.dtype} of shape {labels.shape}")
    labels = labels.astype(np.int64)
    if class_names is None:
        class_names = [str(i) for i in range(int(labels.max(initial=-1)) + 1)]
    if labels.size and (labels.min() < 0 or labels.max() >= len(class_names)):
        raise ValueError(f"labels span {labels.min()}..{labels.max()} but there are {len(class_names)} "
                         "class names")
    return ImageSet(images, labels, list(class_names), source=source)
