"""Fixtures of the robustness tests: a few real Fashion-MNIST images and a small real backbone."""
from __future__ import annotations

import numpy as np
import pytest

from vfe.data.types import ImageSet


@pytest.fixture(scope="session")
def fashion_mnist() -> tuple[ImageSet, ImageSet]:
    """The first 600 training and 200 test images of Fashion-MNIST."""
    from vfe.data import available_fashion_mnist, load_dataset

    if available_fashion_mnist() is None:
        pytest.skip("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
    return tuple(load_dataset("fashion-mnist", split=split).subset(np.arange(n), tag=f":{n}")
                 for split, n in (("train", 600), ("test", 200)))


@pytest.fixture(scope="session")
def small_backbone():
    """EfficientNet-Lite0 with its real ImageNet weights, at 64 px to keep attacks fast."""
    import torch

    from vfe.backbones import create_backbone
    torch.manual_seed(0)
    return create_backbone("efficientnet_lite0", weights="default", image_size=64, device="cpu")


@pytest.fixture(scope="session")
def fashion_heads(fashion_mnist, small_backbone):
    """Backbone features of the Fashion-MNIST images and two heads fitted on them: {(head, seed): head}."""
    from vfe.heads import make_head

    train, test = fashion_mnist
    X_train = small_backbone.extract(train.images, progress=False)
    X_test = small_backbone.extract(test.images, progress=False)
    models = {("linear", 0): make_head("linear", random_state=0).fit(X_train, train.labels),
              ("vfe", 0): make_head("vfe", random_state=0, latent_dim=32, encoder_units=64,
                                             decoder_units=64, vae_epochs=15, epochs=15).fit(
                  X_train, train.labels)}
    return X_train, X_test, models
