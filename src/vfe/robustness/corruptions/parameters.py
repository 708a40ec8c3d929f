"""The published severity parameters of the 19 corruptions, for CIFAR-10-C and for ImageNet-C.

Source: D. Hendrycks and T. Dietterich, "Benchmarking Neural Network Robustness to Common
Corruptions and Perturbations", ICLR 2019; code at https://github.com/hendrycks/robustness,
files `ImageNet-C/create_c/make_cifar_c.py` (the "cifar" set, written for 32 x 32 images) and
`ImageNet-C/create_c/make_imagenet_c.py` (the "imagenet" set, written for 224 x 224 images).
Every entry below is transcribed from those files, one tuple per severity 1..5, in the order the
published functions read them (`c[0]`, `c[1]`, ...). bethgelab's `imagecorruptions` package uses
the ImageNet-C values except for `elastic_transform`, which it rewrote; we keep the published one.

Two parameters are tied to the image size in the published code and are scaled here by
`image side / reference side` (the long side), so that a corruption looks the same at every size:
`elastic_transform`, whose published values are already multiples of the image size (`IMSIZE * ...`
for CIFAR, `244 * ...` for 224-px ImageNet), and the frost texture, which the CIFAR code shrinks
by 0.2 for 32-px images and the ImageNet code uses unscaled for 224-px images (Tiny ImageNet-C uses
0.3 at 64 px: the published scale grows with the image).
"""
from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

SEVERITIES = (1, 2, 3, 4, 5)
PARAMETER_SET_NAMES = ("cifar", "imagenet")
AUTO_MAX_CIFAR_SIDE = 64  # params="auto": CIFAR-10-C values up to this long side, ImageNet-C above


def _zooms(stop: float, step: float) -> tuple[float, ...]:
    """The published `np.arange(1, stop, step)` zoom factors (float steps: numpy decides the count)."""
    return tuple(float(z) for z in np.arange(1, stop, step))


@dataclass(frozen=True)
class ParameterSet:
    """One published parameter table: {corruption: (severity-1 params, ..., severity-5 params)}."""

    name: str
    source: str
    reference_side: int  # the image side the published code was written for
    frost_texture_scale: float  # resize factor of the frost photos at `reference_side`
    table: MappingProxyType


CIFAR = ParameterSet(
    name="cifar",
    source="hendrycks/robustness ImageNet-C/create_c/make_cifar_c.py (CIFAR-10-C)",
    reference_side=32,
    frost_texture_scale=0.2,
    table=MappingProxyType({
        "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),
        "shot_noise": (500, 250, 100, 75, 50),
        "impulse_noise": (0.01, 0.02, 0.03, 0.05, 0.07),
        # (radius, alias_blur)
        "defocus_blur": ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)),
        # (sigma, max_delta, iterations)
        "glass_blur": ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)),
        # (radius, sigma) of ImageMagick's MotionBlurImage
        "motion_blur": ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)),
        "zoom_blur": (_zooms(1.06, 0.01), _zooms(1.11, 0.01), _zooms(1.16, 0.01), _zooms(1.21, 0.01),
                      _zooms(1.26, 0.01)),
        # (mean, std, zoom, threshold, blur radius, blur sigma, image weight)
        "snow": ((0.1, 0.2, 1, 0.6, 8, 3, 0.95),
                 (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
                 (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
                 (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
                 (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8)),
        # (image weight, frost weight)
        "frost": ((1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)),
        # (fog strength, wibble decay)
        "fog": ((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)),
        "brightness": (0.05, 0.1, 0.15, 0.2, 0.3),
        "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),
        # (alpha, sigma, affine shift) in pixels of a 32-px image (IMSIZE = 32)
        "elastic_transform": ((32 * 0, 32 * 0, 32 * 0.08),
                              (32 * 0.05, 32 * 0.2, 32 * 0.07),
                              (32 * 0.08, 32 * 0.06, 32 * 0.06),
                              (32 * 0.1, 32 * 0.04, 32 * 0.05),
                              (32 * 0.1, 32 * 0.03, 32 * 0.03)),
        "pixelate": (0.95, 0.9, 0.85, 0.75, 0.65),
        "jpeg_compression": (80, 65, 58, 50, 40),
        "speckle_noise": (0.06, 0.1, 0.12, 0.16, 0.2),
        "gaussian_blur": (0.4, 0.6, 0.7, 0.8, 1),
        # (mean, std, blur sigma, threshold, intensity, mud?)
        "spatter": ((0.62, 0.1, 0.7, 0.7, 0.5, 0),
                    (0.65, 0.1, 0.8, 0.7, 0.5, 0),
                    (0.65, 0.3, 1, 0.69, 0.5, 0),
                    (0.65, 0.1, 0.7, 0.69, 0.6, 1),
                    (0.65, 0.1, 0.5, 0.68, 0.6, 1)),
        # (saturation factor, saturation offset)
        "saturate": ((0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2)),
    }),
)

IMAGENET = ParameterSet(
    name="imagenet",
    source="hendrycks/robustness ImageNet-C/create_c/make_imagenet_c.py (ImageNet-C)",
    reference_side=224,
    frost_texture_scale=1.0,
    table=MappingProxyType({
        "gaussian_noise": (0.08, 0.12, 0.18, 0.26, 0.38),
        "shot_noise": (60, 25, 12, 5, 3),
        "impulse_noise": (0.03, 0.06, 0.09, 0.17, 0.27),
        "defocus_blur": ((3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)),
        "glass_blur": ((0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2)),
        "motion_blur": ((10, 3), (15, 5), (15, 8), (15, 12), (20, 15)),
        "zoom_blur": (_zooms(1.11, 0.01), _zooms(1.16, 0.01), _zooms(1.21, 0.02), _zooms(1.26, 0.02),
                      _zooms(1.31, 0.03)),
        "snow": ((0.1, 0.3, 3, 0.5, 10, 4, 0.8),
                 (0.2, 0.3, 2, 0.5, 12, 4, 0.7),
                 (0.55, 0.3, 4, 0.9, 12, 8, 0.7),
                 (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65),
                 (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55)),
        "frost": ((1, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75)),
        "fog": ((1.5, 2), (2, 2), (2.5, 1.7), (2.5, 1.5), (3, 1.4)),
        "brightness": (0.1, 0.2, 0.3, 0.4, 0.5),
        "contrast": (0.4, 0.3, 0.2, 0.1, 0.05),
        # in pixels of a 224-px image; "244 should have been 224, but ultimately nothing is incorrect"
        "elastic_transform": ((244 * 2, 244 * 0.7, 244 * 0.1),
                              (244 * 2, 244 * 0.08, 244 * 0.2),
                              (244 * 0.05, 244 * 0.01, 244 * 0.02),
                              (244 * 0.07, 244 * 0.01, 244 * 0.02),
                              (244 * 0.12, 244 * 0.01, 244 * 0.02)),
        "pixelate": (0.6, 0.5, 0.4, 0.3, 0.25),
        "jpeg_compression": (25, 18, 15, 10, 7),
        "speckle_noise": (0.15, 0.2, 0.35, 0.45, 0.6),
        "gaussian_blur": (1, 2, 3, 4, 6),
        "spatter": ((0.65, 0.3, 4, 0.69, 0.6, 0),
                    (0.65, 0.3, 3, 0.68, 0.6, 0),
                    (0.65, 0.3, 2, 0.68, 0.5, 0),
                    (0.65, 0.3, 1, 0.65, 1.5, 1),
                    (0.67, 0.4, 1, 0.65, 1.5, 1)),
        "saturate": ((0.3, 0), (0.1, 0), (2, 0), (5, 0.1), (20, 0.2)),
    }),
)

PARAMETER_SETS = MappingProxyType({"cifar": CIFAR, "imagenet": IMAGENET})


def parameter_set(params: str, image_side: int) -> ParameterSet:
    """The table `params` names; "auto" picks CIFAR-10-C's for small images, ImageNet-C's otherwise."""
    if params == "auto":
        params = "cifar" if image_side <= AUTO_MAX_CIFAR_SIDE else "imagenet"
    if params not in PARAMETER_SETS:
        raise ValueError(f"params={params!r}: expected 'auto' or one of {list(PARAMETER_SETS)}")
    return PARAMETER_SETS[params]


def severity_parameters(pset: ParameterSet, name: str, severity: int, image_side: int):
    """The published parameters of `name` at `severity`, the size-tied ones scaled to `image_side`."""
    c = pset.table[name][severity - 1]
    scale = image_side / pset.reference_side
    if name == "elastic_transform":
        return tuple(v * scale for v in c)
    if name == "frost":
        return (*c, pset.frost_texture_scale * scale)
    return c
