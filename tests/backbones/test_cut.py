"""A backbone cut in two (vfe.backbones.cut): bottom then top computes the network's own pooled features,
the reference's cut is where the docs say, and cut-point activations are stored faithfully."""
from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from sklearn.datasets import load_digits

from vfe.backbones import create_backbone
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


def test_both_parts_run_on_openvino_faithfully_and_are_named_in_the_cache_key(tmp_path, lite0_small, photos):
    """The reference protocol's parts on the base backbone's runtime: features within the faithfulness bar of
    the torch path on colour photos and grey digits, the same bits on a second pass, a key of their own."""
    base = create_backbone("efficientnet_lite0", image_size=64, device="cpu", runtime="openvino",
                           model_dir=tmp_path)
    assert base.runtime == "openvino" and base.precision == "fp32"
    cut = CutModel(base.model, "blocks.5.1")
    bottom = CutActivations(base, cut, "fp16", model_dir=tmp_path)
    top = TopFeatures(base, cut, bottom.shape, base.runtime, base.precision, model_dir=tmp_path)
    assert (bottom.runtime, top.runtime) == ("openvino", "openvino")
    assert bottom.runtime_check["used"] and bottom.runtime_check["min_cosine"] >= 0.999
    torch_cut = CutModel(lite0_small.model, "blocks.5.1")
    torch_bottom = CutActivations(lite0_small, torch_cut, "fp16")
    torch_top = TopFeatures(lite0_small, torch_cut, bottom.shape)
    assert torch_bottom.runtime == torch_top.runtime == "torch" and torch_bottom.runtime_check is None
    grey = np.stack([load_digits().images[i].astype(np.uint8) * 16 for i in range(12)])  # 8x8, 0-240
    for images in (photos, grey):
        features = np.concatenate(list(top.iter_features(list(bottom.iter_features(images)))))
        expected = np.concatenate(list(torch_top.iter_features(list(torch_bottom.iter_features(images)))))
        cosines = (features * expected).sum(1) / np.linalg.norm(features, axis=1) / np.linalg.norm(expected, axis=1)
        assert cosines.min() >= 0.999
        again = np.concatenate(list(top.iter_features(list(bottom.iter_features(images)))))
        assert np.array_equal(features, again)
    assert bottom.fingerprint().endswith(":bottom=openvino") and top.fingerprint().endswith(":top=openvino")
    assert bottom.fingerprint() != torch_bottom.fingerprint() and top.fingerprint() != torch_top.fingerprint()
    parts = sorted(p.name.split("-")[2] for p in tmp_path.glob("*.onnx") if p.name.count("-") == 3)
    assert parts == ["bottom_blocks_5_1", "top_blocks_5_1"]  # beside the whole network, exported for `extract`


def test_a_part_not_faithful_on_the_runtime_stays_on_torch_and_says_why(tmp_path, monkeypatch, photos):
    base = create_backbone("efficientnet_lite0", image_size=64, device="cpu", runtime="openvino",
                           model_dir=tmp_path)
    monkeypatch.setattr("vfe.backbones.runtimes.FAITHFUL_COSINE", 1.5)  # no runtime can meet it
    cut = CutModel(base.model, "blocks.5.1")
    bottom = CutActivations(base, cut, "fp32", model_dir=tmp_path)
    assert bottom.runtime == "torch" and not bottom.runtime_check["used"]
    assert "not faithful" in bottom.runtime_check["reason"]
    assert bottom.fingerprint().endswith(":bottom=torch")  # the base's own key names openvino; this part did not
    top = TopFeatures(base, cut, bottom.shape, "openvino", "fp32", model_dir=tmp_path)
    assert top.runtime == "torch" and ":top=" not in top.fingerprint()
    assert np.concatenate(list(bottom.iter_features(photos[:2]))).shape[0] == 2
