"""`vfe viz` on the command line: help with runnable examples, listing layers, commands end to end on
grayscale and on colour images."""
from __future__ import annotations

import math
import re

import pytest

from vfe.cli import build_parser, main
from vfe.io import read_json
from vfe.lab.models import build_model, save_model
from vfe.viz.small_cnn import load_small_cnn


def test_viz_help_shows_runnable_examples():
    viz = build_parser()._subparsers._group_actions[0].choices["viz"]
    assert "vfe viz activations" in viz.format_help()
    commands = viz._subparsers._group_actions[0].choices
    assert set(commands) == {"activations", "maximize", "small-cnn"}
    for name, sub in commands.items():
        assert re.search(rf"^\s+vfe viz {name}\b", sub.format_help().split("example:")[1], re.MULTILINE), name


def test_list_layers_and_activations_from_the_command_line(small_cnn_dir, tmp_path, capsys):
    assert main(["viz", "activations", "--model", str(small_cnn_dir), "--list-layers"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert "features.0\tConv2d" in listed and "classifier.2\tLinear" in listed
    out = tmp_path / "act"
    args = ["viz", "activations", "--model", str(small_cnn_dir), "--image", "fashion-mnist:1",
            "--layers", "features.3", "--n-channels", "4", "--out", str(out)]
    assert main(args) == 0 and (out / "activations_features.3.png").exists()
    assert main(args) == 2 and "--overwrite" in capsys.readouterr().err
    assert main([*args, "--overwrite"]) == 0


@pytest.mark.slow
def test_small_cnn_activations_and_maximize_on_colour_images(colour_folder, tmp_path):
    cnn = tmp_path / "cnn"
    assert main(["viz", "small-cnn", "--dataset", str(colour_folder), "--variants", "plain", "--n-train", "0",
                 "--n-test", "0", "--epochs", "2", "--batch-size", "16", "--patience", "0", "--no-progress",
                 "--out", str(cnn)]) == 0
    (row,) = read_json(cnn / "metrics.json")["variants"]
    assert 0 <= row["test_accuracy"] <= 1 and math.isfinite(row["train_accuracy"])
    assert (cnn / "plain" / "history.png").exists()
    model = load_small_cnn(cnn / "plain")
    assert model.config.input_shape == (3, 32, 32) and model.config.n_classes == 4

    image = next((colour_folder / "chelsea").glob("*.png"))
    act = tmp_path / "act"
    assert main(["viz", "activations", "--model", str(cnn / "plain"), "--image", str(image),
                 "--layers", "features.0", "features.3", "--n-channels", "4", "--out", str(act)]) == 0
    layers = read_json(act / "metrics.json")["layers"]
    assert [(e["channels"], e["height"]) for e in layers] == [(16, 32), (32, 16)]
    assert all(math.isfinite(e["mean"]) for e in layers)
    assert (act / "input.png").exists() and (act / "activations_features.3.png").exists()

    mx = tmp_path / "max"
    assert main(["viz", "maximize", "--model", str(cnn / "plain"), "--layer", "features.3", "--n-channels", "3",
                 "--steps", "4", "--no-progress", "--out", str(mx)]) == 0
    rows = read_json(mx / "metrics.json")["channels"]
    assert len(rows) == 3 and all(math.isfinite(r["activation at end"]) for r in rows)
    assert (mx / "maximize.png").exists()


def test_activations_of_a_colour_autoencoder_on_a_photo(tmp_path):
    """A lab autoencoder for RGB 32 x 32 images looks at a 512 x 512 photo, resized to its input."""
    save_model(build_model("conv-ae", seed=0, input_shape=(3, 32, 32)), tmp_path / "ae")
    out = tmp_path / "act"
    assert main(["viz", "activations", "--model", str(tmp_path / "ae"), "--image", "astronaut",
                 "--n-channels", "4", "--out", str(out)]) == 0
    layers = read_json(out / "metrics.json")["layers"]
    assert [(e["layer"], e["channels"], e["height"]) for e in layers] == [("body.0", 32, 16), ("body.2", 64, 8)]
