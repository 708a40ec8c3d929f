"""Input images for the viz tools: an image file, a scikit-image sample photo, or a data-set image."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vfe.data import load_dataset

SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "cat", "camera", "coins", "horse")


def load_image(spec: str, data_dir: str | None = None) -> tuple[torch.Tensor, str]:
    """1 x C x H x W float in [0, 1] and a description. `spec`: a file path; a scikit-image photo
    name (chelsea, coffee, astronaut, ...); or DATASET:INDEX, e.g. fashion-mnist:0 (its test split)."""
    path = Path(spec)
    if path.is_file():
        with Image.open(path) as im:
            arr = np.asarray(im.convert("L" if im.mode in ("L", "I;16", "1") else "RGB"))
        return _to_tensor(arr), str(path)
    if ":" in spec and not path.exists():
        dataset, _, index = spec.rpartition(":")
        if index.isdigit():
            kwargs = {"data_dir": data_dir} if data_dir else {}
            images = load_dataset(dataset, split="test", **kwargs)
            i = int(index)
            if i >= len(images):
                raise ValueError(f"{spec}: the {dataset} test split has {len(images)} images")
            return _to_tensor(images.images[i]), f"{dataset} test image {i} ({images.class_names[images.labels[i]]})"
    if spec in SKIMAGE_PHOTOS:
        import skimage.data  # heavy (about a second), and only for the sample photos

        return _to_tensor(getattr(skimage.data, spec)()), f"skimage.data.{spec}"
    raise FileNotFoundError(f"image {spec!r}: not a file, not a scikit-image photo ({', '.join(SKIMAGE_PHOTOS)}) "
                            "and not DATASET:INDEX (e.g. fashion-mnist:0)")


def _to_tensor(arr: np.ndarray) -> torch.Tensor:
    if arr.ndim == 2:
        arr = arr[..., None]
    arr = arr[..., :3]
    if arr.dtype != np.uint8:
        arr = np.clip(arr, 0, 255).astype(np.uint8)
    return torch.tensor(arr.transpose(2, 0, 1), dtype=torch.float32)[None] / 255.0
