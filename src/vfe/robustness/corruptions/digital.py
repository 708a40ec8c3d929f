"""Digital corruptions (brightness, contrast, saturation, elastic transform, pixelate, JPEG).

Each function takes uint8 images (N x H x W x C), its severity parameter `c` and a random
generator, and returns values in [0, 255], as the published functions do.
"""
from __future__ import annotations

import io

import cv2
import numpy as np
from PIL import Image
from scipy import ndimage

from vfe.robustness.corruptions import ops


def brightness(images: np.ndarray, c: float, rng: np.random.Generator) -> np.ndarray:
    """HSV value + c. At fixed hue and saturation every channel is proportional to the value, so
    this scales each pixel by new value / value (black becomes grey c), without the slow HSV round
    trip of the published code; a one-channel image is its own value."""
    x = images / 255.0
    value = x.max(axis=-1, keepdims=True)
    new_value = np.clip(value + c, 0, 1)
    ratio = np.divide(new_value, value, out=np.zeros_like(value), where=value > 0)
    return np.clip(np.where(value > 0, x * ratio, new_value), 0, 1) * 255


def saturate(images: np.ndarray, c: tuple, rng: np.random.Generator) -> np.ndarray:
    """HSV saturation * c[0] + c[1] on RGB images, computed in RGB.

    At fixed hue and value each channel is value - (value - channel) * new / old saturation; a
    grey pixel has hue 0 in scikit-image's HSV, so it turns red (value, value(1-s), value(1-s)).
    """
    x = images / 255.0
    value, low = x.max(axis=-1, keepdims=True), x.min(axis=-1, keepdims=True)
    sat = np.divide(value - low, value, out=np.zeros_like(value), where=value > 0)
    new_sat = np.clip(sat * c[0] + c[1], 0, 1)
    coloured = value - (value - x) * np.divide(new_sat, sat, out=np.zeros_like(sat), where=sat > 0)
    grey = np.concatenate([value, value * (1 - new_sat), value * (1 - new_sat)], axis=-1)
    return np.clip(np.where(sat > 0, coloured, grey), 0, 1) * 255


def contrast(images: np.ndarray, c: float, rng: np.random.Generator) -> np.ndarray:
    """Pull every channel towards its image mean by the factor c."""
    x = images / 255.0
    means = x.mean(axis=(1, 2), keepdims=True)
    return np.clip((x - means) * c + means, 0, 1) * 255


def elastic_transform(images: np.ndarray, c: tuple, rng: np.random.Generator) -> np.ndarray:
    """A random affine warp, then a smooth random displacement field (the published ImageNet-C form).

    c = (alpha, sigma, affine shift), in pixels of this image size: the displacement is a uniform
    field smoothed by a Gaussian of width sigma and scaled by alpha.
    """
    alpha, sigma, shift = c
    x = images.astype(np.float32) / 255.0
    n, h, w, channels = x.shape
    centre = np.float32((h, w)) // 2
    third = min(h, w) // 3
    corners = np.float32([centre + third, [centre[0] + third, centre[1] - third], centre - third])
    moved = corners + rng.uniform(-shift, shift, size=(n, 3, 2)).astype(np.float32)
    warped = np.stack([
        cv2.warpAffine(image, cv2.getAffineTransform(corners, target), (w, h),
                       borderMode=cv2.BORDER_REFLECT_101).reshape(h, w, channels)
        for image, target in zip(x, moved)])

    def displacement() -> np.ndarray:
        field = ops.gaussian_hw(rng.uniform(-1, 1, size=(n, h, w)), sigma, mode="reflect", truncate=3)
        return (field * alpha).astype(np.float32)

    dx = displacement()
    dy = displacement()
    index, rows, cols = np.meshgrid(np.arange(n), np.arange(h), np.arange(w), indexing="ij")
    coords = np.stack([index, rows + dy, cols + dx])
    out = np.stack([ndimage.map_coordinates(warped[..., k], coords, order=1, mode="reflect")
                    for k in range(channels)], axis=-1)
    return np.clip(out, 0, 1) * 255


def pixelate(images: np.ndarray, c: float, rng: np.random.Generator) -> np.ndarray:
    """Box-downsample to c times the size, box-upsample back (Pillow, as published)."""
    h, w = images.shape[1:3]
    small = (int(w * c), int(h * c))
    return _per_image_pil(images, lambda im: im.resize(small, Image.BOX).resize((w, h), Image.BOX))


def jpeg_compression(images: np.ndarray, c: int, rng: np.random.Generator) -> np.ndarray:
    """Encode and decode at JPEG quality c (Pillow, as published)."""
    def round_trip(image: Image.Image) -> Image.Image:
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=c)
        return Image.open(buffer)

    return _per_image_pil(images, round_trip)


def _per_image_pil(images: np.ndarray, op) -> np.ndarray:
    out = np.empty_like(images)
    for i, image in enumerate(images):
        pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
        out[i] = np.asarray(op(pil)).reshape(image.shape)
    return out
