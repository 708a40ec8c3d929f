"""Images for the lab, from the core data layer, as float tensors in [0, 1].

Any source `vfe.data.load_dataset` reads works (Fashion-MNIST, digits, an IDX folder, an image
folder); `n` takes a repeatable random subset so the commands stay quick on a small CPU.
"""
from __future__ import annotations

import numpy as np
import torch

from vfe.data.types import ImageSet


def load_images(dataset: str, split: str = "train", n: int | None = None, seed: int = 0,
                data_dir: str | None = None) -> ImageSet:
    """One split of `dataset` (a name or a path) from the core data layer; at most `n` images, drawn with `seed`."""
    from vfe.data import load_dataset

    return subset(load_dataset(dataset, split=split, data_dir=data_dir), n, seed)


def load_train_test(dataset: str, n_train: int | None = None, n_test: int | None = None, seed: int = 0,
                    data_dir: str | None = None, image_size: int | None = None) -> tuple[ImageSet, ImageSet]:
    """Train and test splits of `dataset` (a name or a path), at most `n_train` / `n_test` images each.

    An image folder without a test split gives a seeded fifth of its files as the test split
    (`vfe.data.load_train_test`); `image_size` resizes an image folder's images.
    """
    from vfe.data import load_train_test as load_splits

    train, test = load_splits(dataset, data_dir=data_dir, seed=seed, **({"image_size": image_size} if image_size else {}))
    return subset(train, n_train, seed), subset(test, n_test, seed)


def subset(images: ImageSet, n: int | None, seed: int) -> ImageSet:
    """A random subset of `n` images (all of them when n is None or not smaller than the set)."""
    if n is None or n >= len(images):
        return images
    if n < 1:
        raise ValueError(f"subset size must be >= 1, got {n}")
    index = np.sort(np.random.default_rng(seed).permutation(len(images))[:n])
    return images.subset(index, tag=f"random{n}-seed{seed}")


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
