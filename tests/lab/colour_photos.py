"""A small colour class-folder data set cut from scikit-image's shipped photos (no download needed).

Shared by the lab's and the viz's colour tests (viz may use the lab, never the reverse).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import skimage.data
from PIL import Image

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")


def write_colour_folder(root: Path, per_class: int = 20, side: int = 32, seed: int = 0) -> Path:
    """`root/<photo>/<i>.png`: `per_class` random `side` x `side` RGB crops of each photo, one class per photo."""
    rng = np.random.default_rng(seed)
    for name in PHOTOS:
        photo = getattr(skimage.data, name)()
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(per_class):
            top, left = (int(rng.integers(0, s - side + 1)) for s in photo.shape[:2])
            Image.fromarray(photo[top:top + side, left:left + side]).save(folder / f"{i}.png")
    return root
