"""The one in-memory form every data source returns."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class ImageSet:
    """Images as uint8 NHWC (C = 1 or 3), integer labels and class names.

    `source` names where the data came from; it is part of the feature-cache key, so two
    different data sets never share cached features.
    """

    images: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    source: str = "arrays"
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.images.dtype != np.uint8:
            raise TypeError(f"{self.source}: images must be uint8, got {self.images.dtype}")
        if self.images.ndim == 3:
            self.images = self.images[..., None]
        if self.images.ndim != 4 or self.images.shape[-1] not in (1, 3):
            raise ValueError(f"{self.source}: images must be N x H x W x C with C in (1, 3), "
                             f"got shape {self.images.shape}")
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if len(self.images) != len(self.labels):
            raise ValueError(f"{self.source}: {len(self.images)} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def subset(self, index: np.ndarray, tag: str | None = None) -> "ImageSet":
        """A view on some rows; `tag` must say how they were chosen, since it enters cache keys."""
        index = np.asarray(index)
        meta = {k: v for k, v in self.meta.items() if k != "_content_hash"}  # memoised hash is the parent's
        return ImageSet(self.images[index], self.labels[index], list(self.class_names),
                        source=f"{self.source}[{tag}]" if tag else self.source, meta=meta)
