"""`vfe fit --protocol reference` runs `vfe run --protocol reference`'s stage 0 (one fine-tuning implementation,
one cache): a fit of a run's replicate trains and extracts nothing, scores the run's clean accuracy, and exports
to ONNX with `vfe predict`'s classes. `--replicate` maps a fit onto a run's replicate; ensembles fit and save."""
from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
from test_save_best import _evaluate, _onnx_agrees_with_predict  # tests/experiment: this module's folder
from threads import one_thread

from vfe import api
from vfe.api import finetune_settings, fit_pipeline
from vfe.cli import main
from vfe.data import load_train_test
from vfe.errors import SettingsError
from vfe.experiment.config import FinetuneSettings, with_overrides
from vfe.experiment.replicates import replicate_seed
from vfe.experiment.run import run
from vfe.experiment.run_settings import RunSettings
from vfe.features import cache as feature_cache
from vfe.pipeline import Pipeline

N_TRAIN, N_TEST = 100, 100


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """A one-replicate reference-protocol run on digits at 32 px (one fine-tuning epoch, the linear head, the
    clean stage only): (tmp folder, run folder, results.json)."""
    tmp = tmp_path_factory.mktemp("fit-reference")
    settings = with_overrides(RunSettings(), {
        "name": "reference", "dataset": "digits", "image_size": 32, "n_train": N_TRAIN, "n_test": N_TEST,
        "heads": ["linear"], "replicates": 1, "protocol": "reference", "finetune_epochs": 1, "corruptions": [],
        "n_attack": 0, "ood": False, "runs_dir": str(tmp / "runs"), "cache_dir": str(tmp / "cache"),
        "progress": False})
    with one_thread():  # outside the autouse one-thread fixture: no worker pools, the tests' float sums
        out = run(settings, log=lambda *_: None)
    return tmp, out, json.loads((out / "results.json").read_text())


@pytest.fixture
def extractions(monkeypatch):
    """Counts the images the feature cache computes (every miss, any extractor) while a test runs."""
    computed = []
    write = feature_cache._write_shards

    def counted(features, entry, shards, bar):
        computed.extend(rows.stop - rows.start for _, rows in shards)
        return write(features, entry, shards, bar)

    monkeypatch.setattr(feature_cache, "_write_shards", counted)
    return computed


@pytest.mark.slow
def test_a_fit_of_a_runs_replicate_trains_and_extracts_nothing_and_scores_its_clean_accuracy(
        reference_run, extractions, capsys):
    tmp, _, results = reference_run
    out = tmp / "replicate0.safetensors"
    capsys.readouterr()
    assert main(["fit", "digits", "--head", "linear", "--protocol", "reference", "--finetune-epochs", "1",
                 "--n-train", str(N_TRAIN), "--image-size", "32", "--replicate", "0", "--cache-dir",
                 str(tmp / "cache"), "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert "loaded from the cache" in said and "compare model training accuracy" in said
    assert extractions == []  # fine-tuned weights, cut activations and features: all the run's
    pipe = Pipeline.load(out)
    assert pipe.backbone.weights.identity == f"finetuned:{results['finetune']['0']['weights_sha256']}"
    got = _evaluate(capsys, out, "digits", "--n-test", N_TEST, "--cache-dir", tmp / "fresh")
    ran = results["clean"]["linear"]["0"]
    assert got["accuracy"] == ran["accuracy"]
    # the run fed the top the float16 activations cached at the cut; the pipeline runs the network in float32
    assert abs(got["nll"] - ran["nll"]) <= 1e-4 and abs(got["ece"] - ran["ece"]) <= 1e-4


@pytest.mark.slow
def test_a_reference_protocol_pipeline_exports_with_predicts_classes(reference_run, capsys, tmp_path):
    tmp, _, _ = reference_run
    pipe, _ = fit_pipeline("digits", head="linear", protocol="reference", finetune={"finetune_epochs": 1},
                           n_train=N_TRAIN, image_size=32, cache_dir=str(tmp / "cache"), replicate=0,
                           progress=False, log=lambda *_: None)
    path = pipe.save(tmp_path / "reference.safetensors")
    images = load_train_test("digits")[1].images[:40]
    _onnx_agrees_with_predict(capsys, tmp_path, path, images, ["8", "8", "1"])
    exported = ort.InferenceSession(str(tmp_path / "best.onnx")).run(None, {"images": images})[0]
    assert np.abs(exported - pipe.predict_proba(images)).max() < 1e-4  # the file holds the fitted pipeline whole


@pytest.mark.slow
def test_other_fine_tuning_settings_fine_tune_again(reference_run, extractions, tmp_path):
    """The cache key holds the settings: a fit with two epochs trains its own top, the run's cache untouched."""
    tmp, _, results = reference_run
    lines = []
    pipe, _ = fit_pipeline("digits", head="linear", protocol="reference",
                           finetune=FinetuneSettings(protocol="frozen", finetune_epochs=2, finetune_batch_size=50),
                           n_train=N_TRAIN, image_size=32, cache_dir=str(tmp / "cache"),
                           seed=replicate_seed(0, 0), progress=False, log=lines.append)
    assert any(" fine-tuned; " in line for line in lines)
    assert pipe.backbone.weights.identity != f"finetuned:{results['finetune']['0']['weights_sha256']}"
    assert sum(extractions) == N_TRAIN  # the new top's features of the training images; the cut's are the run's


def test_image_heads_and_fine_tuning_settings_without_the_protocol_are_one_line_before_any_work(
        monkeypatch, tmp_path, capsys):
    def fail(*args, **kwargs):
        raise AssertionError("data read before the arguments were checked")

    monkeypatch.setattr(api, "_load_split", fail)
    out = str(tmp_path / "m.safetensors")
    for argv, said in ((["--head", "finetune", "--protocol", "reference"], "--head finetune fine-tunes the backbone"),
                       (["--finetune-epochs", "2"], "--finetune-epochs: fine-tuning settings apply to --protocol"),
                       (["--protocol", "reference", "--finetune-epochs", "0"], "--finetune-epochs and"),
                       (["--replicate", "-1"], "--replicate must be >= 0")):
        assert main(["fit", "digits", *argv, "--out", out]) == 2
        err = capsys.readouterr().err
        assert said in err and err.count("\n") == 1, err
    with pytest.raises(SystemExit):  # argparse's choices
        main(["fit", "digits", "--protocol", "fine-tuned", "--out", out])
    assert "invalid choice" in capsys.readouterr().err


def test_the_fine_tuning_defaults_are_the_runs():
    assert finetune_settings("reference") == RunSettings(finetune=FinetuneSettings(protocol="reference")).finetune
    assert finetune_settings("reference", {"finetune_lr": 1e-4}).finetune_lr == 1e-4
    with pytest.raises(SettingsError, match="unknown setting"):
        finetune_settings("reference", {"epochs": 2})


class _Drawn(Exception):
    pass


def test_replicate_r_is_seeded_as_a_runs_replicate_r(monkeypatch):
    """--seed D --replicate R: the split of an image folder by D (the run's --data-seed), the training subset and
    everything after it by replicate_seed(D, R); without --replicate, --seed seeds the subset and the split is 0's."""
    seen = {}
    loader = api.load_train_test

    def load(*args, seed=0, **kwargs):
        seen["split"] = seed
        return loader(*args, seed=seed, **kwargs)

    def subset(pool, n, seed, tag):
        seen["subset"] = seed
        raise _Drawn

    monkeypatch.setattr(api, "load_train_test", load)
    monkeypatch.setattr(api, "balanced_subset", subset)
    for kwargs, expected in (({"seed": 7, "replicate": 2}, (7, replicate_seed(7, 2))),
                             ({"seed": replicate_seed(0, 1)}, (0, replicate_seed(0, 1)))):
        with pytest.raises(_Drawn):
            fit_pipeline("digits", head="linear", n_train=50, **kwargs)
        assert (seen["split"], seen["subset"]) == expected


@pytest.mark.parametrize("head, params", [("linear-ens", {"n_members": 2, "base_params": {"epochs": 3}}),
                                          ("vfe-ens", {"n_members": 2, "base_params": {"vae_epochs": 2, "epochs": 2,
                                                                                       "latent_dim": 8}})])
def test_an_ensemble_fits_saves_and_predicts_the_same_after_loading(head, params, tmp_path, capsys):
    out = tmp_path / f"{head}.safetensors"
    argv = ["fit", "digits", "--head", head, *[f"--param={k}={json.dumps(v)}" for k, v in params.items()],
            "--backbone", "test_resnet", "--weights", "none", "--image-size", "32", "--n-train", "100",
            "--cache-dir", str(tmp_path / "cache"), "--out", str(out)]
    assert main(argv) == 0
    loaded = Pipeline.load(out, device="cpu")
    assert type(loaded.head).__name__ == "SeedEnsemble" and len(loaded.head.members_) == 2
    pipe, _ = fit_pipeline("digits", head=head, head_params=params, backbone="test_resnet", weights="none",
                           image_size=32, n_train=100, cache_dir=str(tmp_path / "cache"), progress=False)
    images = load_train_test("digits")[1].images[:20]
    assert np.array_equal(loaded.predict_proba(images), pipe.predict_proba(images))
