"""Weather corruptions (snow, frost, fog, spatter), batched over the images.

Each function takes uint8 images (N x H x W x C), its severity parameter `c` and a random
generator, and returns values in [0, 255], as the published functions do. Frost and spatter
add colour and are given RGB images; snow and fog also work on one channel.
"""
from __future__ import annotations

import cv2
import numpy as np

from vfe.robustness.corruptions import ops
from vfe.robustness.corruptions.textures import FROST_CHOICES, frost_textures

WATER_RGB = np.float32([175, 238, 238]) / np.float32(255)  # pale turquoise
MUD_RGB = np.float32([63, 42, 20]) / np.float32(255)
EMBOSS = np.float32([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]])


def snow(images: np.ndarray, c: tuple, rng: np.random.Generator) -> np.ndarray:
    """Zoomed, thresholded, motion-blurred noise falling on a whitened image."""
    mean, std, zoom, threshold, radius, sigma, image_weight = c
    x = images.astype(np.float32) / 255.0
    n, h, w, channels = x.shape
    flakes = ops.clipped_zoom(rng.normal(size=(n, h, w), loc=mean, scale=std), zoom)
    flakes[flakes < threshold] = 0
    flakes = ops.motion_blur(np.clip(flakes, 0, 1), radius, sigma, rng.uniform(-135, -45, size=n))
    flakes = (np.round(flakes * 255).astype(np.uint8) / 255.0)[..., None]
    grey = x if channels == 1 else cv2.cvtColor(x.reshape(n * h, w, 3), cv2.COLOR_RGB2GRAY).reshape(n, h, w, 1)
    x = image_weight * x + (1 - image_weight) * np.maximum(x, grey * 1.5 + 0.5)
    return np.clip(x + flakes + np.rot90(flakes, k=2, axes=(1, 2)), 0, 1) * 255


def frost(images: np.ndarray, c: tuple, rng: np.random.Generator) -> np.ndarray:
    """A random crop of a random frost photo blended over each (RGB) image."""
    image_weight, frost_weight, texture_scale = c
    textures = frost_textures(round(texture_scale, 6))
    n, h, w = images.shape[:3]
    which = rng.integers(FROST_CHOICES, size=n)
    sizes = np.array([t.shape[:2] for t in textures])[which]
    tops, lefts = rng.integers(0, sizes[:, 0] - h), rng.integers(0, sizes[:, 1] - w)
    crops = np.stack([textures[k][t:t + h, s:s + w] for k, t, s in zip(which, tops, lefts)])
    return np.clip(image_weight * images + frost_weight * crops, 0, 255)


def fog(images: np.ndarray, c: tuple, rng: np.random.Generator) -> np.ndarray:
    """A plasma fractal added to each image, the result rescaled to the image's brightest value.

    The fractal's size is the next power of two of the long side (32 for CIFAR, 256 for 224-px
    ImageNet, as published; `imagecorruptions` uses the same rule at other sizes).
    """
    strength, wibble_decay = c
    n, h, w = images.shape[:3]
    x = images / 255.0
    max_val = x.max(axis=(1, 2, 3), keepdims=True)
    mapsize = 1 << (max(h, w) - 1).bit_length()
    x = x + strength * ops.plasma_fractal(n, mapsize, wibble_decay, rng)[:, :h, :w, None]
    return np.clip(x * max_val / (max_val + strength), 0, 1) * 255


def spatter(images: np.ndarray, c: tuple, rng: np.random.Generator) -> np.ndarray:
    """Water drops (embossed, turquoise) or, at the top severities, mud splashes on each RGB image."""
    mean, std, sigma, threshold, intensity, mud = c
    x = images.astype(np.float32) / 255.0
    liquid = ops.gaussian_hw(rng.normal(size=x.shape[:3], loc=mean, scale=std), sigma)
    liquid[liquid < threshold] = 0
    if mud:
        splash = ops.gaussian_hw(np.where(liquid > threshold, 1, 0).astype(np.float32), intensity)
        splash[splash < 0.8] = 0
        splash = splash[..., None]
        return np.clip(x * (1 - splash) + MUD_RGB * splash, 0, 1) * 255
    # the published code casts liquid * 255 to uint8 unclipped (values above 1 wrap); we saturate
    layer = np.clip(liquid * 255, 0, 255).astype(np.uint8)
    drops = layer * np.stack([_drop_relief(plane) for plane in layer])
    peak = drops.max(axis=(1, 2), keepdims=True)
    drops = np.divide(drops, peak, out=np.zeros_like(drops), where=peak > 0) * np.float32(intensity)
    return np.clip(x + drops[..., None] * WATER_RGB, 0, 1) * 255


def _drop_relief(layer: np.ndarray) -> np.ndarray:
    """The published embossed shading of one liquid layer: distance to the drop edges, equalised."""
    dist = cv2.distanceTransform(255 - cv2.Canny(layer, 50, 150), cv2.DIST_L2, 5)
    _, dist = cv2.threshold(dist, 20, 20, cv2.THRESH_TRUNC)
    dist = cv2.equalizeHist(cv2.blur(dist, (3, 3)).astype(np.uint8))
    return cv2.blur(cv2.filter2D(dist, cv2.CV_8U, EMBOSS), (3, 3)).astype(np.float32)
