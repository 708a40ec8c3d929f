"""Blur corruptions (defocus, glass, motion, zoom, Gaussian), batched over the images.

Each function takes uint8 images (N x H x W x C), its severity parameter `c` and a random
generator, and returns values in [0, 255], as the published functions do.
"""
from __future__ import annotations

import cv2
import numpy as np

from vfe.robustness.corruptions import ops


def defocus_blur(images: np.ndarray, c: tuple, rng: np.random.Generator) -> np.ndarray:
    """Convolution with an anti-aliased disk of radius c[0] (reflected border, as OpenCV's default)."""
    kernel = ops.disk(radius=c[0], alias_blur=c[1])
    blurred = ops.per_plane(images / 255.0, lambda planes: cv2.filter2D(planes, -1, kernel))
    return np.clip(blurred, 0, 1) * 255


def glass_blur(images: np.ndarray, c: tuple, rng: np.random.Generator) -> np.ndarray:
    """Gaussian blur, local pixel jitter (c[2] passes, reach c[1]), Gaussian blur again."""
    sigma, delta, iterations = c
    x = np.uint8(ops.gaussian_hw(images / 255.0, sigma) * 255)
    x = _jitter_locally(x, delta, iterations, rng)
    return np.clip(ops.gaussian_hw(x / 255.0, sigma), 0, 1) * 255


def _jitter_locally(x: np.ndarray, delta: int, iterations: int, rng: np.random.Generator) -> np.ndarray:
    """The published pixel loop, for every image at once.

    The published code walks the pixels from bottom-right to top-left and, for each, writes
    `x[h, w], x[h', w'] = x[h', w'], x[h, w]` with (h', w') a random neighbour at most `delta`
    away. On an H x W x 3 array both sides are views, so this copies the neighbour's pixel into
    (h, w) instead of swapping them; that copy is what ImageNet-C and CIFAR-10-C contain, and what
    we do. Later copies read pixels earlier ones wrote, so the walk is sequential; each step here
    does it in all N images at once (on an index map of the pixels), so the Python loop runs
    H x W times per pass, not N x H x W.
    """
    n, h, w = x.shape[:3]
    source = np.arange(n * h * w)  # which original pixel now sits at each place
    image_start = np.arange(n) * (h * w)
    cols = np.arange(w - delta, delta, -1)
    for _ in range(iterations):
        for row in range(h - delta, delta, -1):
            shift = rng.integers(-delta, delta, size=(len(cols), n, 2))  # (dx, dy), drawn as published
            here = (row * w + cols)[:, None] + image_start[None, :]
            there = here + shift[..., 1] * w + shift[..., 0]
            for place, neighbour in zip(here, there):
                source[place] = source[neighbour]
    return x.reshape(n * h * w, -1)[source].reshape(x.shape)


def motion_blur(images: np.ndarray, c: tuple, rng: np.random.Generator) -> np.ndarray:
    """ImageMagick's motion blur (radius c[0], sigma c[1]) at a random angle in [-45, 45) per image."""
    angles = rng.uniform(-45, 45, size=len(images))
    return np.clip(ops.motion_blur(images.astype(np.float64), c[0], c[1], angles), 0, 255)


def zoom_blur(images: np.ndarray, c: tuple, rng: np.random.Generator) -> np.ndarray:
    """The mean of the image and its central zooms by each factor in `c`."""
    x = (images / 255.0).astype(np.float32)
    out = np.zeros_like(x)
    for factor in c:
        out += ops.clipped_zoom(x, factor)
    return np.clip((x + out) / (len(c) + 1), 0, 1) * 255


def gaussian_blur(images: np.ndarray, c: float, rng: np.random.Generator) -> np.ndarray:
    return np.clip(ops.gaussian_hw(images / 255.0, c), 0, 1) * 255
