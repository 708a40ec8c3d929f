"""Classifiers started from an autoencoder's encoder: what is copied, what is frozen, which images."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from vfe.data.split import balanced_index
from vfe.lab import pretraining
from vfe.lab.common import load_data
from vfe.lab.config import LabSettings
from vfe.lab.models import build_model
from vfe.lab.pretraining import EncoderClassifier, fit_classifier_from


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


@pytest.mark.slow
def test_the_labelled_images_are_the_projects_balanced_subset(colour_folder, tmp_path, monkeypatch):
    settings = LabSettings(dataset=str(colour_folder), n_train=None, n_test=None, epochs=1, batch_size=16,
                           patience=None, progress=False)
    seen = []

    def spy(source, x, y, *args, **kwargs):
        seen.append((x, y))
        return fit_classifier_from(source, x, y, *args, **kwargs)

    monkeypatch.setattr(pretraining, "fit_classifier_from", spy)
    pretraining.run_pretrain(settings, out=tmp_path / "p", label_counts=(6, 10), seeds=(0, 1), steps=1)
    data = load_data(settings)
    expected = [data.train.labels[balanced_index(data.train.labels, n, seed)]
                for n in (6, 10) for seed in (0, 1) for _ in pretraining.ARMS]
    assert [y.tolist() for _, y in seen] == [e.tolist() for e in expected]
    for (x, _), n, seed in zip(seen[::3], (6, 6, 10, 10), (0, 1, 0, 1), strict=True):
        torch.testing.assert_close(x, data.x_train[balanced_index(data.train.labels, n, seed)])
    assert seen[0][0].shape[1:] == (3, 32, 32)
