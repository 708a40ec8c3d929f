"""The command line end to end on digits: fit -> evaluate -> predict, the cache commands, the help; Ctrl-C, a full
disk, two writers of one output, names that are not UTF-8."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image
from safetensors import SafetensorError

from vfe.cli import build_parser, main


def test_every_command_has_help_with_an_example(capsys):
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    assert {"run", "extract", "fit", "evaluate", "predict", "cache"} <= set(commands)
    for name, sub in commands.items():
        text = sub.format_help()
        assert "example" in text and f"vfe {name}" in text, name


@pytest.mark.slow
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


@pytest.mark.slow
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


def test_ctrl_c_is_one_line_and_exit_130(tmp_path, capsys, monkeypatch):
    from vfe.features.cache import FeatureCache

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(FeatureCache, "extract", interrupted)
    assert main(["extract", "digits", "--image-size", "32", "--cache-dir", str(tmp_path / "cache")]) == 130
    assert capsys.readouterr().err == "vfe extract: interrupted; rerun the same command to resume\n"
    from vfe.lab import train  # a lab run folder keeps what was written: the message says how to go on

    monkeypatch.setattr(train, "run_train", interrupted)
    assert main(["lab", "train", "--out", str(tmp_path / "lab")]) == 130
    assert capsys.readouterr().err == ("vfe lab: interrupted; its run folder keeps what was written: rerun with "
                                       "--overwrite to start over, or with --resume to continue from the last "
                                       "checkpoint\n")


@pytest.mark.slow
def test_sigint_during_extraction_leaves_nothing_half_written(tmp_path):
    """A real Ctrl-C (SIGINT) in the middle of `vfe extract`: one line, exit 130, no shard, manifest or temporary
    file in the cache; the same command then completes."""
    cache = tmp_path / "cache"
    args = ["extract", "digits", "--image-size", "96", "--cache-dir", str(cache)]
    # as from a terminal: a shell running the tests in the background may have left SIGINT ignored for its children
    shim = ("import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
            "sys.argv[0] = 'vfe'; runpy.run_module('vfe.cli', run_name='__main__')")
    child = subprocess.Popen([sys.executable, "-c", shim, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    err = b""
    while b"extract train" not in err:  # the progress bar: extraction has begun
        chunk = os.read(child.stderr.fileno(), 4096)
        assert chunk, err.decode()
        err += chunk
    time.sleep(0.5)
    child.send_signal(signal.SIGINT)
    out, rest = child.communicate(timeout=120)
    lines = (err + rest).decode().replace("\r", "\n").splitlines()
    assert child.returncode == 130 and out == b""
    assert lines[-1] == "vfe extract: interrupted; rerun the same command to resume"
    assert not any("Traceback" in line or "KeyboardInterrupt" in line for line in lines)
    left = [p.name for p in cache.rglob("*") if p.is_file()]
    assert not [name for name in left if not name.endswith(".lock")], left
    assert main(args) == 0


@pytest.mark.slow
def test_fit_on_a_full_disk_names_the_file_and_leaves_nothing(tmp_path, capsys, monkeypatch):
    from vfe import io

    out = tmp_path / "models" / "m.safetensors"

    def full_disk(tensors, path, metadata=None):
        with open(path, "wb") as f:
            f.write(b"\0" * 1000)
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(io, "save_file", full_disk)
    assert main(["fit", "digits", "--head", "linear", "--n-train", "50", "--param", "epochs=2", "--image-size", "32",
                 "--cache-dir", str(tmp_path / "cache"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]  # after the progress bars
    assert err.startswith(f"vfe fit: error: cannot write {out}: ") and "No space left on device" in err
    assert sorted(p.name for p in out.parent.iterdir()) == [".m.safetensors.lock"]  # no pipeline, no temporary


def test_a_second_fit_to_the_same_out_is_refused_naming_the_first(tmp_path, capsys):
    from vfe.rundir import claimed

    out = tmp_path / "m.safetensors"
    with claimed(out, "--out"):
        assert main(["fit", "digits", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert f"{out} is being written by pid {os.getpid()}" in err and "--wait" in err and "another --out" in err
    assert len(err.splitlines()) == 1 and not out.exists()


@pytest.mark.slow
def test_fit_overwrite_leaves_no_earlier_skipped_list(tmp_path, capsys):
    """The list of files an earlier fit skipped goes with the pipeline it replaces: it never describes a fit that
    skipped none."""
    out = tmp_path / "m.safetensors"
    out.write_bytes(b"an earlier pipeline")
    stale = tmp_path / "m.safetensors.skipped.txt"
    stale.write_text("flowers/broken.jpg: not a readable image\n")
    assert main(["fit", "digits", "--head", "linear", "--n-train", "50", "--param", "epochs=2", "--image-size", "32",
                 "--cache-dir", str(tmp_path / "cache"), "--out", str(out), "--overwrite"]) == 0
    assert out.read_bytes() != b"an earlier pipeline" and not stale.exists()


def test_skipped_files_whose_names_are_not_utf8_are_listed_escaped(tmp_path, capsys):
    folder = tmp_path / "flowers"
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("test", 2)):
        for name in ("daisy", "tulip"):
            (folder / split / name).mkdir(parents=True)
            for i in range(n):
                image = rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)
                Image.fromarray(image).save(folder / split / name / f"{i}.png")
    bad = os.fsencode(folder / "train" / "tulip") + b"/bad\xff.png"
    with open(bad, "wb") as f:
        f.write(b"not an image")
    out = tmp_path / "m.safetensors"
    with pytest.warns(RuntimeWarning, match="skipped 1 unreadable"):
        assert main(["fit", str(folder), "--head", "linear", "--param", "epochs=2", "--image-size", "32",
                     "--skip-bad", "--cache-dir", str(tmp_path / "cache"), "--out", str(out)]) == 0
    listed = (tmp_path / "m.safetensors.skipped.txt").read_text()
    assert listed.startswith(f"{folder / 'train' / 'tulip'}/bad\\xff.png: ")


def test_lab_names_no_flag_it_does_not_have(tmp_path, capsys):
    """`vfe lab` has no --skip-bad: an unreadable image is reported without advising it."""
    folder = tmp_path / "flowers"
    for name in ("daisy", "tulip"):
        (folder / name).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(np.full((16, 16), 40 * i, np.uint8)).save(folder / name / f"{i}.png")
    (folder / "tulip" / "broken.png").write_bytes(b"not an image")
    assert main(["lab", "train", "--dataset", str(folder), "--out", str(tmp_path / "run"), "--epochs", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "broken.png" in err and "--skip-bad" in err and "pass --skip-bad" not in err
    assert "`vfe lab` trains on every image of the folder: it has no --skip-bad" in err
    assert len(err.splitlines()) == 1


def test_predict_prints_names_that_are_not_utf8_escaped(tmp_path, capsys, monkeypatch):
    from vfe import api

    name = os.fsdecode(os.fsencode(tmp_path) + b"/bad\xff.png")
    monkeypatch.setattr(api, "predict_files", lambda *args, **kwargs: iter([(name, [("daisy", 0.9)])]))
    assert main(["predict", "model.safetensors", name]) == 0
    assert capsys.readouterr().out == f"{tmp_path}/bad\\xff.png\tdaisy 0.9000\n"
