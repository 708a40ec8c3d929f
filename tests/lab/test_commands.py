"""Each `vfe lab` command end to end on a small Fashion-MNIST subset (and on colour photos): its figures,
numbers and page.

The sizes are tiny (a few hundred images, a few epochs), so the numbers checked are the ones
that must hold even then: the trained model beats doing nothing, the bytes add up.
"""
from __future__ import annotations

import dataclasses
import math
import re
import subprocess
import sys

import pytest
import torch
from PIL import Image

from vfe.cli import build_parser, main
from vfe.io import read_json
from vfe.lab.compression import run_compress
from vfe.lab.denoising import run_denoise
from vfe.lab.features import run_features
from vfe.lab.inpainting import run_inpaint
from vfe.lab.models import load_model
from vfe.lab.pretraining import run_pretrain
from vfe.lab.train import run_train
from vfe.lab.traverse import run_traverse


def _assert_figures(run_dir, names):
    page = (run_dir / "index.html").read_text()
    for name in names:
        with Image.open(run_dir / name) as im:
            assert im.format == "PNG" and min(im.size) > 100, name
        assert f"src='{name}'" in page, name
    assert (run_dir / "run.json").exists()
    return read_json(run_dir / "metrics.json")


@pytest.mark.slow
def test_train_writes_model_checkpoints_history_and_figures_and_never_overwrites(tiny_settings, tmp_path):
    settings = dataclasses.replace(tiny_settings, epochs=8)  # a dense VAE: cheap epochs
    out = tmp_path / "vae"
    run_train("vae", settings, out=out)
    metrics = _assert_figures(out, ["reconstructions.png", "loss_curves.png", "latent.png", "traversal.png"])
    assert metrics["test_mse"] < metrics["mean_image_mse"]
    assert len(read_json(out / "history.json")["records"]) == settings.epochs
    assert list((out / "checkpoints").glob("best-e*.model.safetensors"))
    assert load_model(out).config.variational

    with pytest.raises(FileExistsError, match="--overwrite"):
        run_train("vae", settings, out=out)
    longer = dataclasses.replace(settings, epochs=settings.epochs + 2)
    run_train("vae", longer, out=out, resume=True)  # continues from the last checkpoint
    assert read_json(out / "metrics.json")["epochs_run"] == settings.epochs + 2

    grid = run_traverse(out, out=tmp_path / "traverse", dims=(1, 0), n=9)
    assert read_json(grid.dir / "metrics.json")["dims"] == [1, 0]
    _assert_figures(grid.dir, ["traversal.png"])


@pytest.mark.slow
def test_compress_reports_error_and_bytes_per_code_size(tiny_settings, tmp_path):
    settings = dataclasses.replace(tiny_settings, epochs=10)
    run = run_compress(settings, out=tmp_path / "c", model="dense-ae", code_sizes=(16, 2), code_dtype="float16")
    metrics = _assert_figures(run.dir, ["compression.png", "reconstructions.png"])
    small, large = metrics["scores"]
    assert (small["code_size"], large["code_size"]) == (2, 16)
    assert small["raw_bytes"] == 784 and small["code_bytes"] == 4 and large["code_bytes"] == 32
    assert large["bytes_saved_per_image"] == 784 - 32
    assert large["mse"] < small["mse"] < metrics["mean_image_mse"]


@pytest.mark.slow
def test_features_compares_the_code_with_raw_pixels(tiny_settings, tmp_path):
    run = run_features(tiny_settings, out=tmp_path / "f", model="conv-ae", latent_dim=16)
    probes = _assert_figures(run.dir, ["accuracy.png", "latent.png"])["probes"]
    assert set(probes) == {"raw pixels (784)", "PCA of pixels (16)", "conv-ae code (16)"}
    assert all(0.3 < p["accuracy"] <= 1 for p in probes.values())  # ten classes: chance is 0.1


@pytest.mark.slow
def test_denoise_raises_psnr_above_the_noisy_input(tiny_settings, tmp_path):
    settings = dataclasses.replace(tiny_settings, n_train=400, epochs=6)
    run = run_denoise(settings, out=tmp_path / "d", noise_factor=0.4)
    psnr = _assert_figures(run.dir, ["denoising.png", "loss_curves.png"])["psnr_db"]
    assert psnr["denoised"]["mean"] > psnr["noisy"]["mean"] + 2


@pytest.mark.slow
def test_inpaint_restores_the_square_better_than_leaving_it_blank(tiny_settings, tmp_path):
    run = run_inpaint(tiny_settings, out=tmp_path / "i", mask_size=10)
    psnr = _assert_figures(run.dir, ["inpainting.png", "loss_curves.png"])["psnr_in_square_db"]
    assert psnr["restored"] > psnr["masked (zeros)"]


@pytest.mark.slow
def test_pretrain_compares_both_initialisations_at_each_label_count(tiny_settings, tmp_path):
    run = run_pretrain(tiny_settings, out=tmp_path / "p", label_counts=(20, 60), seeds=(0, 1), steps=15)
    metrics = _assert_figures(run.dir, ["pretraining.png"])
    assert [(r["labels"], r["seed"], r["init"]) for r in metrics["runs"]] == [
        (n, s, init) for n in (20, 60) for s in (0, 1) for init in ("pretrained", "frozen", "random")]
    assert all(0 <= r["test_accuracy"] <= 1 for r in metrics["runs"])
    assert [s["labels"] for s in metrics["summary"]] == [20, 60]


def test_lab_help_shows_runnable_examples(capsys):
    lab = build_parser()._subparsers._group_actions[0].choices["lab"]
    assert "vfe lab train --model conv-vae" in lab.format_help()
    commands = lab._subparsers._group_actions[0].choices
    assert set(commands) == {"train", "compress", "features", "denoise", "inpaint", "pretrain", "traverse"}
    for name, sub in commands.items():
        examples = sub.format_help().split("example:")[1]
        assert re.search(rf"^\s+vfe lab {name}\b", examples, re.MULTILINE) or name == "traverse", name


def test_cli_refuses_to_overwrite_a_run_folder(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.json").write_text("{}")
    code = main(["lab", "denoise", "--out", str(tmp_path / "run"), "--n-train", "50", "--epochs", "1"])
    assert code == 2 and "--overwrite" in capsys.readouterr().err
    assert (tmp_path / "run" / "metrics.json").read_text() == "{}"


@pytest.mark.slow
def test_train_on_colour_images_from_the_command_line(colour_folder, tmp_path):
    out = tmp_path / "colour"
    assert main(["lab", "train", "--model", "conv-ae", "--dataset", str(colour_folder), "--n-train", "0",
                 "--n-test", "0", "--epochs", "2", "--batch-size", "16", "--patience", "0", "--no-progress",
                 "--out", str(out)]) == 0
    metrics = _assert_figures(out, ["reconstructions.png", "loss_curves.png", "latent.png", "traversal.png"])
    assert metrics["data"]["train"]["shape"] == [3, 32, 32] and metrics["data"]["train"]["classes"] == 4
    assert metrics["data"]["train"]["n"] + metrics["data"]["test"]["n"] == 80
    assert metrics["epochs_run"] == 2 and all(math.isfinite(metrics[k]) for k in ("test_mse", "test_psnr"))
    model = load_model(out)
    assert model.config.input_shape == (3, 32, 32)
    x = torch.rand(2, 3, 32, 32)
    recon = model.reconstruct(x)
    assert recon.shape == x.shape and torch.isfinite(recon).all()
    with Image.open(out / "reconstructions.png") as im:
        assert im.mode in ("RGB", "RGBA")


def test_importing_the_command_lines_stays_light():
    """`vfe --help` builds both parsers: neither may import torch, matplotlib or scikit-learn to do it."""
    code = ("import sys, vfe.lab.cli, vfe.viz.cli; "
            "print(sorted(m for m in ('torch', 'matplotlib', 'sklearn', 'skimage') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
