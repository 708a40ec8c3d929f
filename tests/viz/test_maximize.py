"""Inputs that maximise a channel: the ascent raises the channel's activation, and the regularisers
keep the images smoother than unregularised ascent does."""
from __future__ import annotations

import pytest
import torch

from vfe.io import read_json
from vfe.lab.models import build_model, save_model
from vfe.viz.config import AscentConfig
from vfe.viz.maximize import maximize_channels, run_maximize
from vfe.viz.network import load_network


def _total_variation(images: torch.Tensor) -> float:
    return float((images[..., 1:, :] - images[..., :-1, :]).abs().mean()
                 + (images[..., :, 1:] - images[..., :, :-1]).abs().mean())


@pytest.mark.slow
def test_ascent_raises_each_channel_and_regularisers_keep_images_smooth():
    network = load_network("efficientnet_lite0", image_size=64)
    channels = [0, 5, 11]
    regularised = AscentConfig(steps=24, size=64)
    images, start, end = maximize_channels(network, "blocks.2", channels, regularised)
    assert images.shape == (3, 3, 64, 64) and images.min() >= 0 and images.max() <= 1
    assert (end > start + 0.5).all(), (start, end)
    raw = AscentConfig(steps=24, size=64, l2_decay=0.0, blur_every=0, jitter=0)
    raw_images, _, _ = maximize_channels(network, "blocks.2", channels, raw)
    assert _total_variation(images) < 0.8 * _total_variation(raw_images)


def test_a_dense_layer_of_a_model_trained_here_can_be_maximised(tmp_path):
    save_model(build_model("dense-ae", seed=0, latent_dim=4), tmp_path / "ae")
    network = load_network(str(tmp_path / "ae"))
    images, start, end = maximize_channels(network, "code", [0, 3], AscentConfig(steps=10, jitter=1))
    assert images.shape == (2, 1, 28, 28) and (end > start).all()
    with pytest.raises(ValueError, match="channel 9"):
        maximize_channels(network, "code", [9], AscentConfig(steps=1))


def test_the_command_writes_the_grid_and_the_activations(small_cnn_dir, tmp_path):
    run = run_maximize(str(small_cnn_dir), layer="features.3", n_channels=4, config=AscentConfig(steps=6),
                       out=tmp_path / "m", progress=False)
    rows = read_json(run.dir / "metrics.json")["channels"]
    assert [r["channel"] for r in rows] == [0, 1, 2, 3]
    assert all(r["activation at end"] > r["activation at start"] for r in rows)
    assert (run.dir / "maximize.png").exists()
