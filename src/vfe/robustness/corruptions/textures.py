"""The frost photographs of ImageNet-C, shipped with vfe (see frost/NOTICE.md: Apache License 2.0).

They are vfe's own package data, so the frost corruption needs neither the `imagecorruptions`
package (whose import needs `pkg_resources`) nor a network.
"""
from __future__ import annotations

import functools
from pathlib import Path

import cv2
import numpy as np

FROST_FILES = ("frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg", "frost6.jpg")
FROST_CHOICES = 5  # the published code draws np.random.randint(5): frost6.jpg is never used


def frost_folder() -> Path:
    folder = Path(__file__).with_name("frost")
    missing = [f for f in FROST_FILES[:FROST_CHOICES] if not (folder / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder}: the frost photos {', '.join(missing)} are missing from this vfe "
                                "installation; reinstall vfe")
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
