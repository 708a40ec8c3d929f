"""AugMix views of uint8 images (Hendrycks et al., ICLR 2020): chains of operations mixed with the original.

Training on a corruption the benchmark tests would turn its robustness test into an in-distribution one, so
AugMix keeps only operations that do not overlap ImageNet-C: autocontrast, equalize, posterize, rotate,
solarize, shear and translate (it drops contrast, color, brightness and sharpness). Levels and mixing follow
the reference implementation (google-research/augmix, augmentations.py and cifar.py): each op draws its level
uniformly in [0.1, severity] on a 0-10 scale; `width` chains of `depth` ops (1 to 3 at random when -1) are
mixed with Dirichlet(alpha) weights, and the mix with the original with a Beta(alpha, alpha) weight. The
mixing is done in float and rounded back to uint8, since views go through the backbone's preprocessing.

Every draw for view k of row i comes from a generator seeded by (seed, k, i), so a view is reproducible
whatever batches it is made in.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, ImageOps

# part of every cached view's key: bump it whenever an operation's output changes
AUGMIX_VERSION = "1"
DEFAULT_VIEWS = 2  # views per training image: (clean, view 1, view 2) is AugMix's consistency triple

Operation = Callable[[Image.Image, float, np.random.Generator], Image.Image]


def _level(severity: float, maxval: float, rng: np.random.Generator) -> float:
    """A level drawn uniformly in [0.1, severity] on AugMix's 0-10 scale, as a fraction of maxval."""
    return rng.uniform(0.1, severity) * maxval / 10


def _signed(value: float, rng: np.random.Generator) -> float:
    return -value if rng.uniform() > 0.5 else value


def _affine(image: Image.Image, matrix: tuple[float, ...]) -> Image.Image:
    return image.transform(image.size, Image.Transform.AFFINE, matrix, resample=Image.Resampling.BILINEAR)


def autocontrast(image, severity, rng):
    return ImageOps.autocontrast(image)


def equalize(image, severity, rng):
    return ImageOps.equalize(image)


def posterize(image, severity, rng):
    return ImageOps.posterize(image, 4 - int(_level(severity, 4, rng)))


def rotate(image, severity, rng):
    return image.rotate(_signed(int(_level(severity, 30, rng)), rng), resample=Image.Resampling.BILINEAR)


def solarize(image, severity, rng):
    return ImageOps.solarize(image, 256 - int(_level(severity, 256, rng)))


def shear_x(image, severity, rng):
    return _affine(image, (1, _signed(_level(severity, 0.3, rng), rng), 0, 0, 1, 0))


def shear_y(image, severity, rng):
    return _affine(image, (1, 0, 0, _signed(_level(severity, 0.3, rng), rng), 1, 0))


def translate_x(image, severity, rng):
    return _affine(image, (1, 0, _signed(int(_level(severity, image.width / 3, rng)), rng), 0, 1, 0))


def translate_y(image, severity, rng):
    return _affine(image, (1, 0, 0, 0, 1, _signed(int(_level(severity, image.height / 3, rng)), rng)))


OPERATIONS: dict[str, Operation] = {op.__name__: op for op in (
    autocontrast, equalize, posterize, rotate, solarize, shear_x, shear_y, translate_x, translate_y)}


@dataclass(frozen=True)
class AugMix:
    """One AugMix recipe; the reference's defaults (severity 3, width 3, depth 1-3, alpha 1)."""

    severity: float = 3.0  # operation strength, 1-10
    width: int = 3  # chains mixed together
    depth: int = -1  # operations per chain; -1: 1 to 3 at random
    alpha: float = 1.0  # Dirichlet and Beta concentration

    def __post_init__(self):
        if not 1 <= self.severity <= 10:
            raise ValueError(f"AugMix severity must be between 1 and 10, got {self.severity}")
        if self.width < 1 or not (self.depth == -1 or self.depth >= 1):
            raise ValueError(f"AugMix width must be >= 1 and depth >= 1 (or -1), got {self.width}, {self.depth}")
        if not self.alpha > 0:
            raise ValueError(f"AugMix alpha must be positive, got {self.alpha}")

    def key(self) -> str:
        """Everything that fixes a view's pixels but the seed and view index (for cache keys)."""
        settings = ",".join(f"{k}={v}" for k, v in asdict(self).items())
        return f"augmix:{settings}:ops={','.join(OPERATIONS)}:v{AUGMIX_VERSION}"

    def mix(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One AugMix view of one uint8 image (H x W, H x W x 1 or H x W x 3), same shape and dtype."""
        pil = Image.fromarray(image[..., 0] if image.ndim == 3 and image.shape[-1] == 1 else image)
        weights = rng.dirichlet([self.alpha] * self.width)
        skip = rng.beta(self.alpha, self.alpha)
        names = list(OPERATIONS)
        original = np.asarray(pil, np.float64)
        mixed = np.zeros_like(original)
        for weight in weights:
            chain = pil
            for _ in range(self.depth if self.depth > 0 else int(rng.integers(1, 4))):
                chain = OPERATIONS[names[rng.integers(len(names))]](chain, self.severity, rng)
            mixed += weight * np.asarray(chain, np.float64)
        out = (1 - skip) * original + skip * mixed
        return np.clip(np.rint(out), 0, 255).astype(np.uint8).reshape(image.shape)


def augmix_images(images: np.ndarray, recipe: AugMix, seed: int, view: int, first_row: int = 0) -> np.ndarray:
    """View `view` of each image of a uint8 batch (N x H x W [x C]) whose first row is `first_row` of its set."""
    return np.stack([recipe.mix(image, np.random.default_rng([seed, view, first_row + i]))
                     for i, image in enumerate(images)]) if len(images) else images.copy()
