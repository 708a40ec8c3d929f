"""Activation maps: hooks capture the named layers and stop the forward pass there; real backbones
(efficientnet_lite0, packaged ImageNet weights) are seen through the same preprocessing they classify with."""
from __future__ import annotations

import pytest
import torch
from PIL import Image

from vfe.io import read_json
from vfe.viz.activations import activation_maps, run_activations
from vfe.viz.hooks import capture, run_until
from vfe.viz.images import load_image
from vfe.viz.network import load_network


def test_the_viz_path_classifies_chelsea_as_a_cat(efficientnet):
    x01, description = load_image("chelsea")
    assert x01.shape[:2] == (1, 3) and 0 <= x01.min() and x01.max() <= 1 and "chelsea" in description
    with torch.no_grad():
        logits = efficientnet.module(efficientnet.prepare(x01))
    assert int(logits.argmax()) == 285  # ImageNet "Egyptian cat": weights and preprocessing are right


def test_maps_of_named_layers_have_their_shapes(efficientnet):
    x01, _ = load_image("chelsea")
    maps = activation_maps(efficientnet, x01, ["conv_stem", "blocks.1", "blocks.3"])
    assert {k: tuple(v.shape) for k, v in maps.items()} == {
        "conv_stem": (32, 112, 112), "blocks.1": (24, 56, 56), "blocks.3": (80, 14, 14)}
    # the maps follow the photo's structure: neighbouring positions agree far more than on white noise
    noise_maps = activation_maps(efficientnet, torch.rand_like(x01), ["conv_stem", "blocks.1"])
    for layer in ("conv_stem", "blocks.1"):
        assert _neighbour_correlation(maps[layer]) > _neighbour_correlation(noise_maps[layer]) + 0.3, layer


def _neighbour_correlation(maps: torch.Tensor) -> float:
    """Mean over channels of the correlation between horizontally adjacent positions."""
    a = maps - maps.mean((1, 2), keepdim=True)
    return float(((a[:, :, :-1] * a[:, :, 1:]).sum((1, 2)) / a.pow(2).sum((1, 2)).clamp_min(1e-12)).mean())


def test_the_forward_pass_stops_after_the_last_wanted_layer(small_cnn_dir):
    network = load_network(str(small_cnn_dir))
    later = []
    handle = network.module.classifier.register_forward_hook(lambda *_: later.append(1))
    out = run_until(network, torch.rand(2, 1, 28, 28), ["features.0", "features.3", "features.0"])
    handle.remove()
    assert set(out) == {"features.0", "features.3"} and not later
    assert out["features.3"].shape == (2, 32, 14, 14)


def test_unknown_layers_are_named_with_close_matches(small_cnn_dir, efficientnet):
    network = load_network(str(small_cnn_dir))
    with pytest.raises(ValueError, match="no layer named 'features.99'"), capture(network.module, ["features.99"]):
        pass
    with pytest.raises(ValueError, match=r"close: .*blocks\.1"):
        efficientnet.layer("blocks1")


def test_images_come_from_files_photos_or_data_sets(tmp_path):
    Image.new("L", (20, 10), color=128).save(tmp_path / "grey.png")
    x, _ = load_image(str(tmp_path / "grey.png"))
    assert x.shape == (1, 1, 10, 20) and torch.allclose(x, torch.full_like(x, 128 / 255))
    x, description = load_image("fashion-mnist:3")
    assert x.shape == (1, 1, 28, 28) and "test image 3" in description
    with pytest.raises(FileNotFoundError, match="DATASET:INDEX"):
        load_image("no-such-thing")


@pytest.mark.slow
def test_the_command_writes_one_grid_per_layer(small_cnn_dir, tmp_path):
    run = run_activations(str(small_cnn_dir), image="fashion-mnist:0", n_channels=8, out=tmp_path / "a")
    layers = read_json(run.dir / "metrics.json")["layers"]
    assert [entry["layer"] for entry in layers] == ["features.0", "features.3", "features.6"]
    for entry in layers:
        assert (run.dir / f"activations_{entry['layer']}.png").exists()
    assert (run.dir / "input.png").exists() and "activations_features.0.png" in (run.dir / "index.html").read_text()
