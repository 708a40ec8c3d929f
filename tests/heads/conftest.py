"""Real backbone features for the heads' tests: scikit-learn's digits through EfficientNet-Lite0."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits


@pytest.fixture(scope="session")
def digit_backbone_features() -> dict[str, np.ndarray]:
    """EfficientNet-Lite0 (packaged ImageNet weights, 64 px) features of the 1,797 digits: 1,000 for
    training, 797 for testing, plus the test images' features under zoom blur at severity 5 (a real
    corruption that costs the linear head about 35 points). Keys: X_train, y_train, X_test, y_test, X_zoom."""
    from vfe.backbones import create_backbone
    from vfe.robustness.corruptions import corrupt

    digits = load_digits()
    images = (digits.images * (255 / 16)).round().astype(np.uint8)
    order = np.random.default_rng(0).permutation(len(images))
    train, test = order[:1000], order[1000:]
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        backbone = create_backbone("efficientnet_lite0", weights="default", image_size=64, device="cpu")
        X = backbone.extract(images, progress=False)
        X_zoom = backbone.extract(corrupt(images[test], "zoom_blur", 5, seed=0), progress=False)
    finally:
        torch.set_num_threads(before)
    return {"X_train": X[train], "y_train": digits.target[train], "X_test": X[test],
            "y_test": digits.target[test], "X_zoom": X_zoom}
