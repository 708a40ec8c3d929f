"""A backbone cut in two (vfe.backbones.cut): bottom then top computes the network's own pooled features,
the reference's cut is where the docs say, and cut-point activations are stored faithfully."""
from __future__ import annotations

import numpy as np
import pytest
import timm
import torch

from vfe.backbones.cut import (
    REFERENCE_TRAINABLE_FRACTION,
    CutActivations,
    CutModel,
    TopFeatures,
    faithful_storage,
    reference_cut,
    units,
)
from vfe.errors import SettingsError


def _model(arch: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = timm.create_model(arch, pretrained=False).eval()
    for m in model.modules():  # non-trivial running statistics, so a BatchNorm left out would show
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    return model


@pytest.mark.parametrize("arch", ["efficientnet_lite0", "densenet121", "resnet18"])
def test_bottom_then_top_is_the_models_own_pooled_features_at_every_cut(arch):
    model = _model(arch)
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        expected = model.forward_head(model.forward_features(x), pre_logits=True)
        names = [n for n, _ in units(model)[1]]
        for point in (names[1], names[len(names) // 2], names[-1]):
            cut = CutModel(model, point)
            assert torch.allclose(cut.top(cut.bottom(x)), expected, atol=1e-5), point


def test_the_reference_cut_is_densenet121_layer_200_and_the_same_parameter_share_elsewhere():
    dense = _model("densenet121")
    assert reference_cut(dense, "densenet121") == "features.denseblock3.denselayer9"
    assert CutModel(dense, "features.denseblock3.denselayer9").trainable_fraction == pytest.approx(0.697, abs=0.001)
    lite0 = _model("efficientnet_lite0")
    point = reference_cut(lite0, "efficientnet_lite0")
    assert point == "blocks.5.1"
    fraction = CutModel(lite0, point).trainable_fraction
    # no other layer boundary comes closer to the reference's share of trainable parameters
    others = [CutModel(lite0, n).trainable_fraction for n, _ in units(lite0)[1][1:]]
    assert min(abs(f - REFERENCE_TRAINABLE_FRACTION) for f in others) == pytest.approx(
        abs(fraction - REFERENCE_TRAINABLE_FRACTION))


def test_a_bad_cut_point_or_an_unsupported_family_says_what_to_do():
    lite0 = _model("efficientnet_lite0")
    with pytest.raises(SettingsError, match="blocks.5.1"):
        CutModel(lite0, "blocks.99")
    with pytest.raises(SettingsError, match="--protocol frozen"):
        units(timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32))


def test_cached_activations_then_the_top_give_the_backbones_features(lite0_small, photos):
    cut = CutModel(lite0_small.model, "blocks.5.1")
    storage, cosine = faithful_storage(lite0_small, cut)
    assert storage == "fp16" and cosine >= 0.999
    bottom = CutActivations(lite0_small, cut, storage)
    activations = np.concatenate(list(bottom.iter_features(photos)))
    assert activations.dtype == np.float16 and activations.shape == (len(photos), int(np.prod(bottom.shape)))
    features = np.concatenate(list(TopFeatures(lite0_small, cut, bottom.shape).iter_features([activations])))
    expected = lite0_small.extract(photos, progress=False)
    cosines = (features * expected).sum(1) / np.linalg.norm(features, axis=1) / np.linalg.norm(expected, axis=1)
    assert cosines.min() > 0.9999
    fp32 = CutActivations(lite0_small, cut, "fp32")
    assert fp32.fingerprint() != bottom.fingerprint()  # the storage type is part of the cache key
    assert np.concatenate(list(fp32.iter_features(photos[:2]))).dtype == np.float32
