"""The numbers behind the lab's figures: the traversal grid's layout, the latent projection, the examples."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from vfe.lab.figures import examples, project_latents, traversal
from vfe.lab.models import build_model


def test_vae_traversal_decodes_a_grid_over_the_prior_with_the_other_dims_at_zero():
    model = build_model("vae", seed=0, latent_dim=4).eval()
    images, values = traversal(model, dims=(2, 0), n=25, span=2.5)
    assert images.shape == (625, 1, 28, 28)
    np.testing.assert_allclose(values, np.linspace(-2.5, 2.5, 25))
    for row, col in [(0, 0), (0, 24), (24, 0), (7, 13)]:
        z = torch.zeros(1, 4)
        z[0, 2] = float(values[col])  # columns run left to right over dims[0]
        z[0, 0] = float(values[::-1][row])  # rows run top (+span) to bottom (-span) over dims[1]
        torch.testing.assert_close(images[row * 25 + col], model.decode(z)[0])


def test_plain_autoencoder_traversal_is_in_standard_deviations_around_the_mean_code():
    model = build_model("dense-ae", seed=0, latent_dim=3).eval()
    reference = torch.rand(50, 1, 28, 28)
    codes = model.encode_all(reference)
    images, _ = traversal(model, dims=(0, 1), n=5, span=2.0, reference=reference)
    z = codes.mean(0, keepdim=True).clone()
    z[0, 0] += 2.0 * codes[:, 0].std()  # last column
    z[0, 1] += 2.0 * codes[:, 1].std()  # top row
    torch.testing.assert_close(images[4], model.decode(z)[0])
    with pytest.raises(ValueError, match="reference"):
        traversal(model)
    with pytest.raises(ValueError, match="two different latent dimensions"):
        traversal(model, dims=(1, 1), reference=reference)


def test_latents_are_projected_to_two_dimensions():
    rng = np.random.default_rng(0)
    codes = rng.normal(size=(200, 6)) * np.array([5, 3, 1, 1, 1, 1])
    points, labels = project_latents(codes, "pca")
    assert points.shape == (200, 2) and labels[0].startswith("PC1")
    assert points[:, 0].var() > points[:, 1].var() > 1.5  # the two widest directions
    same, axes = project_latents(codes[:, :2])
    assert same is not None and np.array_equal(same, codes[:, :2]) and axes == ("z[0]", "z[1]")
    with pytest.raises(ValueError, match="projection"):
        project_latents(codes, "umap")


def test_examples_take_the_classes_in_turn():
    labels = np.array([3, 3, 1, 0, 1, 2, 0, 3])
    assert examples(labels, n=4).tolist() == [3, 2, 5, 0]  # the first 0, 1, 2 and 3
    assert sorted(examples(labels, n=8).tolist()) == list(range(8))
