"""The command line end to end on digits: fit -> evaluate -> predict, the cache commands, the help."""
from __future__ import annotations

import numpy as np
from PIL import Image

from vfe.cli import build_parser, main


def test_every_command_has_help_with_an_example(capsys):
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    assert {"run", "extract", "fit", "evaluate", "predict", "cache"} <= set(commands)
    for name, sub in commands.items():
        text = sub.format_help()
        assert "example" in text and f"vfe {name}" in text, name


def test_fit_evaluate_predict_and_cache(tmp_path, capsys):
    out = tmp_path / "digits-linear.safetensors"
    common = ["--image-size", "32", "--cache-dir", str(tmp_path / "cache")]
    assert main(["fit", "digits", "--head", "linear", "--n-train", "400", "--param", "epochs=40",
                 "--param", "lr=0.003", "--out", str(out), *common]) == 0
    assert out.exists() and "training accuracy" in capsys.readouterr().out

    assert main(["fit", "digits", "--head", "linear", "--n-train", "400", "--out", str(out), *common]) == 2
    assert "exists" in capsys.readouterr().err  # a user's file is never overwritten silently

    assert main(["evaluate", str(out), "digits", "--cache-dir", str(tmp_path / "cache")]) == 0
    metrics = capsys.readouterr().out
    accuracy = float(metrics.split('"accuracy":')[1].split(",")[0])
    assert accuracy > 0.6  # frozen ImageNet features of 8x8 digits at 32 px, 400 labels; chance 0.1

    image = np.kron(np.eye(8, dtype=np.uint8) * 255, np.ones((4, 4), np.uint8))
    Image.fromarray(image).save(tmp_path / "x.png")
    assert main(["predict", str(out), str(tmp_path / "x.png"), "--top", "2"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(str(tmp_path / "x.png")) and len(line.split("\t")) == 3

    assert main(["cache", "ls", "--cache-dir", str(tmp_path / "cache")]) == 0
    listing = capsys.readouterr().out.strip().splitlines()
    assert len(listing) == 2  # train and test features of one backbone
    key = listing[0].split()[0]
    assert main(["cache", "rm", key[:8], "--cache-dir", str(tmp_path / "cache")]) == 0
    assert "removed 1 entry" in capsys.readouterr().out


def test_bad_input_is_a_clear_error_not_a_traceback(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path / "nope.safetensors"), "digits"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["fit", "digits", "--out", str(tmp_path / "x.safetensors"), "--param", "novalue"]) == 2
    assert "--param expects KEY=VALUE" in capsys.readouterr().err
    assert main(["fit", "digits", "--out", str(tmp_path / "x.safetensors"), "--param", "latent_dimm=3"]) == 2
    err = capsys.readouterr().err
    assert "latent_dimm" in err and "latent_dim" in err and len(err.strip().splitlines()) == 1


def test_unreadable_images_stop_extraction_unless_skipped(tmp_path, capsys):
    folder = tmp_path / "flowers"
    rng = np.random.default_rng(0)
    for name in ("daisy", "tulip"):
        (folder / name).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(folder / name / f"{i}.png")
    (folder / "tulip" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    args = ["extract", str(folder), "--image-size", "32", "--cache-dir", str(tmp_path / "cache")]
    assert main(args) == 2
    assert "broken.jpg" in capsys.readouterr().err
    assert main([*args, "--skip-bad"]) == 0
    assert "features" in capsys.readouterr().out


def test_fit_finetune_saves_a_pipeline_that_evaluates_and_predicts(tmp_path, capsys):
    """`vfe fit --head finetune` trains the top block on images; the file holds the fine-tuned backbone."""
    out = tmp_path / "digits-ft.safetensors"
    cache = ["--cache-dir", str(tmp_path / "cache")]
    assert main(["fit", "digits", "--head", "finetune", "--n-train", "200", "--image-size", "32", "--param",
                 "epochs=1", "--param", "head_epochs=20", "--param", "augment=false", *cache,
                 "--out", str(out)]) == 0
    train_accuracy = float(capsys.readouterr().out.split("training accuracy ")[1].rstrip(")\n"))
    assert train_accuracy > 0.5
    from vfe.pipeline import Pipeline, read_metadata

    assert read_metadata(out)["backbone"]["weights_kind"] == "finetuned"
    assert main(["evaluate", str(out), "digits", "--n-test", "100", *cache]) == 0
    assert float(capsys.readouterr().out.split('"accuracy":')[1].split(",")[0]) > 0.4  # chance 0.1
    pipe = Pipeline.load(out)
    from vfe.backbones import create_backbone

    pretrained = create_backbone(image_size=32)
    changed = [k for k, v in pretrained.model.state_dict().items()
               if not np.array_equal(v.numpy(), pipe.backbone.model.state_dict()[k].numpy())]
    assert changed and all(k.startswith(("blocks.6", "conv_head", "bn2")) for k in changed)
