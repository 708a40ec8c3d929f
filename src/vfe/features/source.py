"""Where a run's features come from: one call, `features(images, transform, transform_key, desc)`.

Every stage that needs features of some images (the test set under a corruption, an OOD set, corrupted
training images) asks the run's source, so the stages do not know which protocol produced them:
  * `BackboneFeatures`: images -> backbone -> pooled features (the frozen protocol), cached;
  * `CutFeatures`: images -> frozen bottom -> activations at the cut (cached) -> fine-tuned top -> pooled
    features (cached under the fine-tuned backbone's fingerprint). The bottom runs once per image,
    whatever top is later put on it.
"""
from __future__ import annotations

from typing import Protocol

import numpy as np

from vfe.backbones.backbone import Backbone
from vfe.backbones.cut import CutActivations, TopFeatures
from vfe.data.types import ImageSet
from vfe.features.cache import FeatureCache, FeatureSet, ImageTransform, entry_rows


class FeatureSource(Protocol):
    """Pooled features of (transformed) images through the run's backbone."""

    def __call__(self, data: ImageSet, transform: ImageTransform | None = None, transform_key: str | None = None,
                 desc: str | None = None) -> np.ndarray: ...


class BackboneFeatures:
    """Pooled features of images through `backbone`, via the cache."""

    def __init__(self, cache: FeatureCache, backbone: Backbone, progress: bool = True):
        self.cache = cache
        self.backbone = backbone
        self.progress = progress

    def __call__(self, data: ImageSet, transform: ImageTransform | None = None, transform_key: str | None = None,
                 desc: str | None = None) -> np.ndarray:
        return self.cache.extract(self.backbone, data, transform=transform, transform_key=transform_key,
                                  progress=self.progress, desc=desc).array()


class CutFeatures:
    """Pooled features through a cut backbone: cached activations at the cut, then `top` on them."""

    def __init__(self, cache: FeatureCache, bottom: CutActivations, top: TopFeatures, progress: bool = True):
        self.cache = cache
        self.bottom = bottom
        self.top = top
        self.progress = progress

    @property
    def backbone(self) -> Backbone:
        return self.top.backbone

    def activations(self, data: ImageSet, transform: ImageTransform | None = None,
                    transform_key: str | None = None, desc: str | None = None) -> FeatureSet:
        return self.cache.extract(self.bottom, data, transform=transform, transform_key=transform_key,
                                  progress=self.progress, desc=f"{desc or data.source} (to the cut)")

    def __call__(self, data: ImageSet, transform: ImageTransform | None = None, transform_key: str | None = None,
                 desc: str | None = None) -> np.ndarray:
        rows = entry_rows(self.activations(data, transform, transform_key, desc))
        return self.cache.extract(self.top, rows, progress=self.progress,
                                  desc=f"{desc or data.source} (top)").array()
