"""Small real images and small backbones shared by the backbone tests (kept at <= 64 px: fast on 2 cores)."""
from __future__ import annotations

import numpy as np
import pytest
import skimage.data
import torch
from skimage.transform import resize

from vfe.backbones import create_backbone


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: on a 2-core machine shared with other jobs, OpenMP teams of 2 wait on
    each other at every barrier (measured 5-20x slower for these small batches)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def photos() -> np.ndarray:
    """12 uint8 RGB 48x48 crops of scikit-image photos (a cat, coffee, a rocket, an astronaut)."""
    crops = []
    for name in ("chelsea", "coffee", "rocket", "astronaut"):
        image = getattr(skimage.data, name)()
        h, w = image.shape[:2]
        for top, left in ((0, 0), (h // 4, w // 4), (h // 2, w // 3)):
            side = min(h - top, w - left, h // 2)
            crop = resize(image[top:top + side, left:left + side], (48, 48), anti_aliasing=True)
            crops.append((crop * 255).round().astype(np.uint8))
    return np.stack(crops)


@pytest.fixture(scope="session")
def lite0_small():
    """The packaged ImageNet EfficientNet-Lite0 at 64 px, eager fp32 (no trace, no precision check)."""
    return create_backbone("efficientnet_lite0", image_size=64, device="cpu", jit=False, precision="fp32")
