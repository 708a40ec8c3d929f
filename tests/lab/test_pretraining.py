"""Classifiers started from an autoencoder's encoder: what is copied, what is frozen, what is balanced."""
from __future__ import annotations

import numpy as np
import torch

from vfe.lab.models import build_model
from vfe.lab.pretraining import EncoderClassifier, fit_classifier_from, labelled_subset


def test_the_classifier_starts_from_a_copy_of_the_encoder_body():
    ae = build_model("conv-ae", seed=0)
    clf = EncoderClassifier(ae, n_classes=10)
    assert clf(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    for a, b in zip(ae.body.parameters(), clf.body.parameters(), strict=True):
        assert torch.equal(a, b) and a.data_ptr() != b.data_ptr()  # same values, not shared


def test_frozen_arm_trains_only_the_new_layer_and_every_arm_starts_the_head_alike():
    ae = build_model("dense-ae", seed=0)
    torch.manual_seed(0)
    x, y = torch.rand(40, 1, 28, 28), np.arange(40) % 4
    frozen = fit_classifier_from(ae, x, y, 4, steps=5, batch_size=16, lr=1e-2, seed=3, freeze_body=True)
    tuned = fit_classifier_from(ae, x, y, 4, steps=5, batch_size=16, lr=1e-2, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(ae.body.parameters(), frozen.body.parameters(), strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(ae.body.parameters(), tuned.body.parameters(), strict=True))
    untrained = [fit_classifier_from(ae, x, y, 4, steps=0, batch_size=16, lr=1e-2, seed=3).head.weight
                 for _ in range(2)]
    assert torch.equal(*untrained)


def test_labelled_subsets_are_class_balanced_and_repeatable():
    labels = np.repeat(np.arange(10), 50)
    idx = labelled_subset(labels, 30, seed=0)
    assert np.bincount(labels[idx], minlength=10).tolist() == [3] * 10
    assert np.array_equal(idx, labelled_subset(labels, 30, seed=0))
    assert not np.array_equal(idx, labelled_subset(labels, 30, seed=1))
