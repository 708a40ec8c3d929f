"""FinetuneHead: top blocks of a pretrained backbone trained with the head, on images (digits at 64 px)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from vfe.backbones import create_backbone
from vfe.data.split import balanced_index
from vfe.heads import FinetuneHead, head_class
from vfe.heads.finetune import top_block_parameters


@pytest.fixture(scope="module")
def digit_images():
    """200 training and 100 test digits as uint8 8x8 images (the backbone resizes them to 64 px)."""
    digits = load_digits()
    images = (digits.images * (255 / 16)).round().astype(np.uint8)
    order = np.random.default_rng(0).permutation(len(images))
    train, test = order[:200], order[200:300]
    return images[train], digits.target[train], images[test], digits.target[test]


@pytest.mark.slow
def test_finetune_learns_keeps_batchnorm_statistics_and_round_trips(digit_images):
    X_train, y_train, X_test, y_test = digit_images
    head = FinetuneHead(image_size=64, unfreeze_blocks=1, head_epochs=15, epochs=1, flip=False, device="cpu")
    head.fit(X_train, y_train)
    assert head.score(X_test, y_test) > 0.5  # chance is 0.1
    assert len(head.history_["finetune"]["records"]) == 1 and head.history_["head"]["records"]

    pretrained = create_backbone("efficientnet_lite0", image_size=64, device="cpu", jit=False).model.state_dict()
    tuned = head.module_.backbone.model.state_dict()
    for name, value in pretrained.items():
        if "running_" in name or not name.startswith(("blocks.6", "conv_head", "bn2")):
            torch.testing.assert_close(tuned[name], value, rtol=0, atol=0, msg=f"{name} should not change")
    assert not torch.equal(tuned["conv_head.weight"], pretrained["conv_head.weight"])

    tensors, meta = head.export_state()
    loaded = head_class(meta["head"]).from_state(tensors, meta)
    np.testing.assert_array_equal(loaded.predict_proba(X_test), head.predict_proba(X_test))
    x01 = torch.from_numpy(X_test[:, None].astype(np.float32) / 255)
    with torch.no_grad():
        probs = head.probability_module()(x01).numpy()
    np.testing.assert_allclose(probs, head.predict_proba(X_test), atol=1e-5)


def test_top_blocks_are_timm_parameter_groups():
    model = create_backbone("efficientnet_lite0", weights="none", image_size=64, jit=False).model
    assert top_block_parameters(model, 0) == []
    top = {id(p) for p in top_block_parameters(model, 1)}
    names = {n for n, p in model.named_parameters() if id(p) in top}
    assert names and all(n.startswith(("blocks.6.", "conv_head.", "bn2.")) for n in names)
    assert not any(n.startswith("classifier") for n in names)
    with pytest.raises(ValueError, match="unfreeze_blocks must be in"):
        top_block_parameters(model, 99)


def test_images_not_features_are_required(digit_images):
    X_train, y_train, _, _ = digit_images
    with pytest.raises(TypeError, match="uint8"):
        FinetuneHead().fit(X_train.astype(np.float32), y_train)
    with pytest.raises(ValueError, match="200 images but 3 labels"):
        FinetuneHead().fit(X_train, y_train[:3])


def test_max_images_picks_the_projects_balanced_subset(digit_images):
    X_train, y_train, _, _ = digit_images
    images, labels = FinetuneHead(max_images=50, random_state=3)._subset(X_train, y_train)
    index = balanced_index(y_train, 50, 3)
    np.testing.assert_array_equal(labels, y_train[index])
    np.testing.assert_array_equal(images, X_train[index])
    assert FinetuneHead(max_images=None)._subset(X_train, y_train)[1] is y_train
