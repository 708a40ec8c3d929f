"""Every corruption by name: the 15 of the ImageNet-C / CIFAR-10-C benchmark, then the 4 extra ones.

Adding a corruption is writing its function (images, c, rng) -> [0, 255] values in a family
module, its five severities in `parameters.py`, and one line here.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

from vfe.robustness.corruptions import blur, digital, noise, weather

CorruptionFunction = Callable[[np.ndarray, object, np.random.Generator], np.ndarray]


@dataclass(frozen=True)
class Corruption:
    name: str
    family: str  # noise | blur | weather | digital, as Hendrycks & Dietterich group them
    function: CorruptionFunction
    needs_rgb: bool = False  # True: adds colour; a grey image goes through it as RGB, then back to luma


_ALL = (
    Corruption("gaussian_noise", "noise", noise.gaussian_noise),
    Corruption("shot_noise", "noise", noise.shot_noise),
    Corruption("impulse_noise", "noise", noise.impulse_noise),
    Corruption("defocus_blur", "blur", blur.defocus_blur),
    Corruption("glass_blur", "blur", blur.glass_blur),
    Corruption("motion_blur", "blur", blur.motion_blur),
    Corruption("zoom_blur", "blur", blur.zoom_blur),
    Corruption("snow", "weather", weather.snow),
    Corruption("frost", "weather", weather.frost, needs_rgb=True),
    Corruption("fog", "weather", weather.fog),
    Corruption("brightness", "weather", digital.brightness),
    Corruption("contrast", "digital", digital.contrast),
    Corruption("elastic_transform", "digital", digital.elastic_transform),
    Corruption("pixelate", "digital", digital.pixelate),
    Corruption("jpeg_compression", "digital", digital.jpeg_compression),
    # the four held-out corruptions of ImageNet-C ("validation" in imagecorruptions)
    Corruption("speckle_noise", "noise", noise.speckle_noise),
    Corruption("gaussian_blur", "blur", blur.gaussian_blur),
    Corruption("spatter", "weather", weather.spatter, needs_rgb=True),
    Corruption("saturate", "digital", digital.saturate, needs_rgb=True),
)

REGISTRY = MappingProxyType({c.name: c for c in _ALL})
BENCHMARK_CORRUPTIONS = tuple(c.name for c in _ALL[:15])
EXTRA_CORRUPTIONS = tuple(c.name for c in _ALL[15:])


def families() -> dict[str, tuple[str, ...]]:
    """{family: corruption names} in registry order (noise, blur, weather, digital)."""
    out: dict[str, list[str]] = {}
    for c in _ALL:
        out.setdefault(c.family, []).append(c.name)
    return {family: tuple(names) for family, names in out.items()}
