"""Noise corruptions: per-pixel random draws, the published formulas applied to the whole batch.

Each function takes uint8 images (N x H x W x C), its severity parameter `c` and a random
generator, and returns values in [0, 255] (float), as the published functions do.
"""
from __future__ import annotations

import numpy as np
from skimage.util import random_noise


def gaussian_noise(images: np.ndarray, c: float, rng: np.random.Generator) -> np.ndarray:
    x = images / 255.0
    return np.clip(x + rng.normal(size=x.shape, scale=c), 0, 1) * 255


def shot_noise(images: np.ndarray, c: float, rng: np.random.Generator) -> np.ndarray:
    """Poisson photon noise: `c` photons at full intensity."""
    x = images / 255.0
    return np.clip(rng.poisson(x * c) / float(c), 0, 1) * 255


def impulse_noise(images: np.ndarray, c: float, rng: np.random.Generator) -> np.ndarray:
    """Salt and pepper on a fraction `c` of the values (scikit-image, as published)."""
    return np.clip(random_noise(images / 255.0, mode="s&p", amount=c, rng=rng), 0, 1) * 255


def speckle_noise(images: np.ndarray, c: float, rng: np.random.Generator) -> np.ndarray:
    """Multiplicative Gaussian noise."""
    x = images / 255.0
    return np.clip(x + x * rng.normal(size=x.shape, scale=c), 0, 1) * 255
