"""The frost photographs of ImageNet-C, read from the installed `imagecorruptions` package.

The photos ship with hendrycks/robustness and with bethgelab's `imagecorruptions` (both Apache
License 2.0). They are found on disk without importing `imagecorruptions`, whose import needs
`pkg_resources` (setuptools).
"""
from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import cv2
import numpy as np

FROST_FILES = ("frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg", "frost6.jpg")
FROST_CHOICES = 5  # the published code draws np.random.randint(5): frost6.jpg is never used


def frost_folder() -> Path:
    spec = importlib.util.find_spec("imagecorruptions")
    folder = Path(next(iter(spec.submodule_search_locations))) / "frost" if spec else None
    if folder is None or not all((folder / f).is_file() for f in FROST_FILES[:FROST_CHOICES]):
        raise FileNotFoundError("the frost corruption needs the ImageNet-C frost photos, which ship with the "
                                "'imagecorruptions' package: pip install imagecorruptions==1.1.2")
    return folder


@functools.cache
def frost_textures(scale: float) -> tuple[np.ndarray, ...]:
    """The frost photos the published code chooses from, as RGB uint8, resized by `scale`."""
    textures = []
    for name in FROST_FILES[:FROST_CHOICES]:
        bgr = cv2.imread(str(frost_folder() / name))
        if scale != 1:
            bgr = cv2.resize(bgr, (0, 0), fx=scale, fy=scale)  # bilinear, as the CIFAR-10-C code
        textures.append(np.ascontiguousarray(bgr[..., ::-1]))
    return tuple(textures)
