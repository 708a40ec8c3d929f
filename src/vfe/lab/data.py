"""The lab's images: any source of the core data layer, as float tensors in [0, 1].

Any source `vfe.data.load_dataset` reads works (Fashion-MNIST, digits, an IDX folder, an image
folder). `n` images are the project's one selector (`vfe.data.split.balanced_subset`: class-balanced,
seeded), so `--n-train 1000` picks the same images here as in `vfe run`, and the commands stay quick.
"""
from __future__ import annotations

import numpy as np
import torch

from vfe.data import load_dataset
from vfe.data import load_train_test as load_splits
from vfe.data.split import balanced_subset
from vfe.data.types import ImageSet


def load_images(dataset: str, split: str = "train", n: int | None = None, seed: int = 0,
                data_dir: str | None = None) -> ImageSet:
    """One split of `dataset` (a name or a path) from the core data layer; at most `n` images, drawn with `seed`."""
    return balanced_subset(load_dataset(dataset, split=split, data_dir=data_dir), n, seed, split)


def load_train_test(dataset: str, n_train: int | None = None, n_test: int | None = None, seed: int = 0,
                    data_dir: str | None = None, image_size: int | None = None) -> tuple[ImageSet, ImageSet]:
    """Train and test splits of `dataset` (a name or a path), at most `n_train` / `n_test` images each.

    An image folder without a test split gives a seeded fifth of its files as the test split
    (`vfe.data.load_train_test`); `image_size` resizes an image folder's images.
    """
    train, test = load_splits(dataset, data_dir=data_dir, seed=seed, **({"image_size": image_size} if image_size else {}))
    return balanced_subset(train, n_train, seed, "train"), balanced_subset(test, n_test, seed, "test")


def to_tensor(images: ImageSet | np.ndarray) -> torch.Tensor:
    """uint8 N x H x W x C -> float32 N x C x H x W in [0, 1]."""
    arr = images.images if isinstance(images, ImageSet) else np.asarray(images)
    if arr.dtype != np.uint8:
        raise TypeError(f"expected uint8 images, got {arr.dtype}")
    if arr.ndim == 3:
        arr = arr[..., None]
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(0, 3, 1, 2))).float().div_(255.0)


def describe(images: ImageSet) -> dict:
    """What the figures and metrics.json say about the data: source, count, image shape."""
    n, h, w, c = images.images.shape
    return {"source": images.source, "n": int(n), "shape": [int(c), int(h), int(w)],
            "classes": len(images.class_names)}
