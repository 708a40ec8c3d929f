"""`vfe viz` on the command line: help with runnable examples, listing layers, one command end to end."""
from __future__ import annotations

import re

from vfe.cli import build_parser, main


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
