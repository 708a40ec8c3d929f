"""The one in-memory form every data source returns."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from vfe.data.images import LazyImages

# vfe.features.cache.content_hash memoises an ImageSet's content hash in `meta` under this key
_CONTENT_HASH = "_content_hash"


@dataclass
class ImageSet:
    """Images as uint8 NHWC (C = 1 or 3), integer labels and class names.

    `images` is a NumPy array, or LazyImages for image folders too big to decode at once (indexed
    the same way; rows are decoded when read). `source` names where the data came from, for people
    and cache listings; the feature cache keys on the content itself (images and labels).
    """

    images: np.ndarray | LazyImages
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
        if isinstance(self.images, LazyImages):
            # keyed on the files' digests, so that computing a cache key never decodes the whole folder
            h = hashlib.sha256(self.images.digest().encode())
            h.update(np.ascontiguousarray(self.labels).data)
            self.meta[_CONTENT_HASH] = h.hexdigest()

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def subset(self, index: np.ndarray, tag: str | None = None) -> ImageSet:
        """A view on some rows; `tag` must say how they were chosen (it becomes part of `source`)."""
        index = np.asarray(index)
        images = self.images.take(index) if isinstance(self.images, LazyImages) else self.images[index]
        meta = {k: v for k, v in self.meta.items() if k != _CONTENT_HASH}  # the rows differ: so does the hash
        return ImageSet(images, self.labels[index], list(self.class_names),
                        source=f"{self.source}[{tag}]" if tag else self.source, meta=meta)
