"""The helpers of the published corruption code, the per-image ones in batched form.

A batched helper takes N x H x W or N x H x W x C arrays and gives each image the result the
per-image original gives it, so the corruptions can be checked against the published code.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import cv2
import numpy as np
from scipy import ndimage

OPENCV_MAX_CHANNELS = 128  # OpenCV 5 rejects images with more channels (CV_CN_MAX)
PACKED_PLANE_PIXELS = 64 * 64  # planes up to this size are filtered many to an OpenCV call


def gaussian_hw(x: np.ndarray, sigma: float, mode: str = "nearest", truncate: float = 4.0) -> np.ndarray:
    """`skimage.filters.gaussian(image, sigma, channel_axis=-1)` (same defaults) on every image."""
    return ndimage.gaussian_filter(x, (0, sigma, sigma) + (0,) * (x.ndim - 3), mode=mode, truncate=truncate)


def per_plane(x: np.ndarray, op: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Apply a per-channel OpenCV filter to every image plane of an N x H x W x C batch.

    Small planes go many to a call, stacked as channels (the per-call cost dominates there);
    large ones one by one, which keeps each in cache.
    """
    n, h, w, c = x.shape
    if h * w > PACKED_PLANE_PIXELS:
        out = np.empty_like(x)
        for i, k in np.ndindex(n, c):
            out[i, ..., k] = op(np.ascontiguousarray(x[i, ..., k]))
        return out
    planes = x.transpose(1, 2, 0, 3).reshape(h, w, n * c)
    out = [op(np.ascontiguousarray(planes[..., i:i + OPENCV_MAX_CHANNELS])).reshape(h, w, -1)
           for i in range(0, n * c, OPENCV_MAX_CHANNELS)]
    return np.concatenate(out, axis=2).reshape(h, w, n, c).transpose(2, 0, 1, 3)


def disk(radius: float, alias_blur: float = 0.1, dtype=np.float32) -> np.ndarray:
    """The published defocus kernel: an aliased disk, normalised, then slightly Gaussian-blurred."""
    if radius <= 8:
        span, ksize = np.arange(-8, 8 + 1), (3, 3)
    else:
        span, ksize = np.arange(-radius, radius + 1), (5, 5)
    xx, yy = np.meshgrid(span, span)
    aliased = np.array((xx ** 2 + yy ** 2) <= radius ** 2, dtype=dtype)
    aliased /= np.sum(aliased)
    return cv2.GaussianBlur(aliased, ksize=ksize, sigmaX=alias_blur)


def _linear_zoom(x: np.ndarray, factor: float, axis: int) -> np.ndarray:
    """`scipy.ndimage.zoom(..., order=1)` along one axis: output size round(n * factor), corners aligned."""
    n = x.shape[axis]
    size = round(n * factor)  # Python rounding, as scipy.ndimage.zoom
    coords = np.arange(size) * ((n - 1) / (size - 1)) if size > 1 else np.zeros(1)
    lo = np.minimum(np.floor(coords).astype(np.intp), n - 1)
    hi = np.minimum(lo + 1, n - 1)
    shape = [1] * x.ndim
    shape[axis] = size
    frac = (coords - lo).reshape(shape).astype(x.dtype, copy=False)
    return x.take(lo, axis=axis) * (1 - frac) + x.take(hi, axis=axis) * frac


def clipped_zoom(x: np.ndarray, factor: float) -> np.ndarray:
    """Zoom into the centre of every image by `factor`, keeping H x W (the published `clipped_zoom`)."""
    h, w = x.shape[1:3]
    ch, cw = int(np.ceil(h / factor)), int(np.ceil(w / factor))
    top, left = (h - ch) // 2, (w - cw) // 2
    zoomed = _linear_zoom(_linear_zoom(x[:, top:top + ch, left:left + cw], factor, 1), factor, 2)
    trim_top, trim_left = (zoomed.shape[1] - h) // 2, (zoomed.shape[2] - w) // 2
    return zoomed[:, trim_top:trim_top + h, trim_left:trim_left + w]


def motion_kernel(radius: int, sigma: float, angle: float, image_hw: tuple[int, int]) -> np.ndarray:
    """ImageMagick's MotionBlurImage as a correlation kernel (anchor at the centre).

    `imagecorruptions` ports it to numpy as a weighted sum of edge-clamped shifts; the same sum is
    this sparse kernel under OpenCV's replicated border. Like the port, the trail stops where a
    shift would leave the image.
    """
    width = 2 * radius + 1
    weights = np.exp(-np.arange(width) ** 2 / (2 * sigma ** 2)) / (np.sqrt(2 * np.pi) * sigma)
    weights /= weights.sum()
    point = (width * np.sin(np.deg2rad(angle)), width * np.cos(np.deg2rad(angle)))
    hypot = math.hypot(*point)
    offsets = []
    for i in range(width):
        dy = math.ceil(i * point[0] / hypot - 0.5)
        dx = math.ceil(i * point[1] / hypot - 0.5)
        if abs(dy) >= image_hw[0] or abs(dx) >= image_hw[1]:
            break
        offsets.append((dy, dx, weights[i]))
    reach = max(max(abs(dy), abs(dx)) for dy, dx, _ in offsets)
    kernel = np.zeros((2 * reach + 1, 2 * reach + 1))
    for dy, dx, weight in offsets:
        kernel[reach + dy, reach + dx] += weight
    return kernel


def motion_blur(x: np.ndarray, radius: int, sigma: float, angles: np.ndarray) -> np.ndarray:
    """Blur image i of an N x H x W [x C] float batch along `angles[i]` (degrees)."""
    out = np.empty_like(x)
    for i, angle in enumerate(angles):
        kernel = motion_kernel(radius, sigma, float(angle), x.shape[1:3])
        blurred = cv2.filter2D(x[i], -1, kernel, borderType=cv2.BORDER_REPLICATE)
        out[i] = blurred.reshape(out[i].shape)
    return out


def plasma_fractal(n: int, mapsize: int, wibbledecay: float, rng: np.random.Generator) -> np.ndarray:
    """N diamond-square height maps in [0, 1] (the published `plasma_fractal`, batched)."""
    if mapsize & (mapsize - 1):
        raise ValueError(f"plasma_fractal: mapsize must be a power of two, got {mapsize}")
    maps = np.empty((n, mapsize, mapsize))
    maps[:, 0, 0] = 0
    step, wibble = mapsize, 100.0

    def wibbled_mean(total: np.ndarray) -> np.ndarray:
        return total / 4 + wibble * rng.uniform(-wibble, wibble, total.shape)

    while step >= 2:
        half = step // 2
        corners = maps[:, 0::step, 0::step]
        squares = corners + np.roll(corners, -1, axis=1)
        squares += np.roll(squares, -1, axis=2)
        maps[:, half::step, half::step] = wibbled_mean(squares)
        centres, corners = maps[:, half::step, half::step], maps[:, 0::step, 0::step]
        left = (centres + np.roll(centres, 1, axis=1)) + (corners + np.roll(corners, -1, axis=2))
        maps[:, 0::step, half::step] = wibbled_mean(left)
        top = (centres + np.roll(centres, 1, axis=2)) + (corners + np.roll(corners, -1, axis=1))
        maps[:, half::step, 0::step] = wibbled_mean(top)
        step //= 2
        wibble /= wibbledecay
    maps -= maps.min(axis=(1, 2), keepdims=True)
    return maps / maps.max(axis=(1, 2), keepdims=True)
