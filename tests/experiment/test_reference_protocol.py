"""`vfe run --protocol reference --quick` end to end on grayscale and colour data: the top of the backbone
is fine-tuned first (BatchNorm above the cut in training mode, below it frozen), its weights and features
are cached, and every stage runs through the fine-tuned backbone."""
from __future__ import annotations

import json
from dataclasses import fields, replace
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from colour_data import write_colour_folder
from threadpoolctl import threadpool_limits

from vfe.backbones import create_backbone
from vfe.backbones.cut import CutModel
from vfe.cli import main
from vfe.data import load_train_test
from vfe.data.split import balanced_subset
from vfe.experiment.config import FinetuneSettings
from vfe.experiment.reference import _key, fine_tune
from vfe.features.cache import FeatureCache

TINY = ["--quick", "--protocol", "reference", "--finetune-epochs", "2", "--replicates", "1", "--heads", "linear", "vfe",
        "--head-param", "vfe.vae_epochs=10", "--corruptions", "gaussian_noise", "--severities", "3",
        "--n-attack", "8", "--attack-steps", "2", "--n-eot", "2", "--no-progress"]


@pytest.fixture(scope="module")
def reference_runs(tmp_path_factory):
    """The two runs, at one thread like every test (conftest's `_one_thread` is function-scoped, so it does not
    cover a module fixture), so that a rerun inside a test computes with the same thread count."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1):
            yield _reference_runs(tmp_path_factory.mktemp("reference"))
    finally:
        torch.set_num_threads(before)


def _reference_runs(tmp):
    folder = write_colour_folder(tmp / "photos", n_train=15, n_test=5)
    runs = {}
    for name, extra in (("gray", ["--dataset", "digits", "--image-size", "64", "--n-train", "300", "--n-test", "100"]),
                        ("colour", ["--dataset", str(folder), "--image-size", "32", "--n-train", "none",
                                    "--n-test", "none", "--finetune-batch-size", "20",
                                    "--head-param", "vfe.vae_epochs=40"])):
        assert main(["run", *TINY, *extra, "--name", name, "--runs-dir", str(tmp / "runs"),
                     "--cache-dir", str(tmp / "cache")]) == 0, name
        runs[name] = json.loads((tmp / "runs" / name / "results.json").read_text())
    return tmp, runs


@pytest.mark.slow
@pytest.mark.parametrize("name", ["gray", "colour"])
def test_every_stage_runs_through_the_fine_tuned_backbone(reference_runs, name):
    tmp, runs = reference_runs
    results = runs[name]
    ft = results["finetune"]["0"]
    assert results["setting"]["protocol"] == "reference" and ft["cut_point"] == "blocks.5.1"
    assert not ft["loaded_from_cache"] and len(ft["history"]["records"]) == 2
    # --runtime auto, the default: no runtime was measured faster at these sizes, so both parts ran on torch
    assert ft["runtime"] == {"bottom": "torch", "top": "torch"} and results["setting"]["runtime"] == "bottom torch, top torch"
    n_classes = 10 if name == "gray" else 4
    assert ft["compare_model_test_accuracy"] > 1.5 / n_classes
    for head in ("linear", "vfe"):
        assert results["clean"][head]["0"]["accuracy"] > 1.5 / n_classes
        assert "gaussian_noise" in results["corruptions"]["per_head"][head]["0"]["accuracy"]
        assert 0 <= results["adversarial"][head]["0"]["accuracy"]["pgd_linf_8/255_eot"] <= 1
        assert results["ood"]["per_head"][head]["0"]
    report = (tmp / "runs" / name / "report.md").read_text()
    assert "## Fine-tuning (reference protocol)" in report and "blocks.5.1" in report


@pytest.mark.slow
def test_a_rerun_reads_the_fine_tuned_weights_and_features_from_the_cache(reference_runs):
    tmp, runs = reference_runs
    extra = ["--dataset", "digits", "--image-size", "64", "--n-train", "300", "--n-test", "100", "--n-attack", "0",
             "--no-ood", "--compare-with", str(tmp / "runs" / "gray")]
    assert main(["run", *TINY, *extra, "--name", "again", "--runs-dir", str(tmp / "runs"),
                 "--cache-dir", str(tmp / "cache")]) == 0
    again = json.loads((tmp / "runs" / "again" / "results.json").read_text())
    first = runs["gray"]
    assert again["finetune"]["0"]["loaded_from_cache"] and again["finetune"]["0"]["weights_sha256"] == \
        first["finetune"]["0"]["weights_sha256"]
    assert again["timings"]["extract features"] < 5, again["timings"]  # every feature came from the cache
    assert again["clean"] == first["clean"]
    report = (tmp / "runs" / "again" / "report.md").read_text()
    assert "## Protocols side by side" in report and "linear · reference" in report


def test_a_compare_with_folder_without_a_run_is_refused_before_any_work(tmp_path, capsys):
    assert main(["run", *TINY, "--dataset", "digits", "--compare-with", str(tmp_path), "--runs-dir",
                 str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert "--compare-with" in err and "results.json" in err and "Traceback" not in err


@pytest.mark.slow
def test_fine_tuning_trains_the_top_with_batchnorm_in_training_mode_and_leaves_the_bottom(tmp_path):
    train, test = load_train_test("digits")
    train, test = balanced_subset(train, 200, 0, "train"), balanced_subset(test, 50, 0, "test")
    base = create_backbone("efficientnet_lite0", image_size=64, device="cpu", jit=False, precision="fp32")
    before = {k: v.clone() for k, v in base.model.state_dict().items()}
    tuned = fine_tune(FeatureCache(tmp_path), base, train, test, FinetuneSettings(protocol="reference",
                      finetune_epochs=2), seed=0, progress=False, log=lambda *_: None)
    assert all(torch.equal(v, base.model.state_dict()[k]) for k, v in before.items())  # the base is untouched
    after = tuned.backbone.model.state_dict()
    cut = CutModel(base.model, "blocks.5.1")
    bottom = {f"{k}" for k, _ in base.model.named_parameters()} - {
        n for n, p in base.model.named_parameters() if any(p is q for q in cut.top_units.parameters())}
    bottom_buffers = [k for k in before if k.startswith(("conv_stem", "bn1", "blocks.0", "blocks.4"))]
    assert all(torch.equal(after[k], before[k]) for k in [*bottom, *bottom_buffers])  # frozen, stats included
    assert not torch.equal(after["blocks.5.1.bn1.running_mean"], before["blocks.5.1.bn1.running_mean"])
    assert not torch.equal(after["conv_head.weight"], before["conv_head.weight"])
    assert tuned.backbone.fingerprint() != base.fingerprint()
    # the features stages use (cached activations -> fine-tuned top) are the fine-tuned network's own
    via_cut = tuned.features(test)
    direct = tuned.backbone.extract(test.images, progress=False)
    cos = (via_cut * direct).sum(1) / np.linalg.norm(via_cut, axis=1) / np.linalg.norm(direct, axis=1)
    assert cos.min() > 0.9999
    # the same seed fine-tunes to the same weights (the new Dense layer included), another seed does not
    again = fine_tune(FeatureCache(tmp_path / "again"), base, train, test, FinetuneSettings(
                      protocol="reference", finetune_epochs=2), seed=0, progress=False, log=lambda *_: None)
    assert again.record["weights_sha256"] == tuned.record["weights_sha256"] and not again.record["loaded_from_cache"]
    other = fine_tune(FeatureCache(tmp_path / "other"), base, train, test, FinetuneSettings(
                      protocol="reference", finetune_epochs=2), seed=1, progress=False, log=lambda *_: None)
    assert other.record["weights_sha256"] != tuned.record["weights_sha256"]


@pytest.mark.slow
def test_on_openvino_the_bottom_and_the_fine_tuned_top_run_there_faithfully(tmp_path):
    """--runtime openvino (what --runtime auto picks for EfficientNet-Lite0 at 112 px): both parts run on it,
    the features are the fine-tuned network's own within the faithfulness bar, a rerun reads the same bits."""
    train, test = load_train_test("digits")
    train, test = balanced_subset(train, 200, 0, "train"), balanced_subset(test, 50, 0, "test")
    settings = FinetuneSettings(protocol="reference", finetune_epochs=1)
    base = create_backbone("efficientnet_lite0", image_size=64, device="cpu", runtime="openvino",
                           model_dir=tmp_path / "_models")
    tuned = fine_tune(FeatureCache(tmp_path), base, train, test, settings, seed=0, progress=False,
                      log=lambda *_: None)
    assert tuned.record["runtime"] == {"bottom": "openvino", "top": "openvino"}
    via_runtime = tuned.features(test)
    direct = tuned.backbone.extract(test.images, progress=False)  # the whole fine-tuned network on torch
    assert tuned.backbone.runtime == "torch"
    cos = (via_runtime * direct).sum(1) / np.linalg.norm(via_runtime, axis=1) / np.linalg.norm(direct, axis=1)
    assert cos.min() >= 0.999
    again = fine_tune(FeatureCache(tmp_path), base, train, test, settings, seed=0, progress=False,
                      log=lambda *_: None)
    assert again.record["loaded_from_cache"] and np.array_equal(again.features(test), via_runtime)
    on_torch = create_backbone("efficientnet_lite0", image_size=64, device="cpu", runtime="torch")
    key = _key(on_torch, "blocks.5.1", "fp16", settings, train, 0)
    assert key != _key(base, "blocks.5.1", "fp16", settings, train, 0)  # fine-tuned on other activations


@pytest.mark.slow
def test_lp_ft_trains_the_dense_layer_on_the_untuned_features_first(tmp_path):
    train, test = load_train_test("digits")
    train, test = balanced_subset(train, 200, 0, "train"), balanced_subset(test, 50, 0, "test")
    base = create_backbone("efficientnet_lite0", image_size=64, device="cpu", jit=False, precision="fp32")
    quiet = {"progress": False, "log": lambda *_: None}
    plain = fine_tune(FeatureCache(tmp_path), base, train, test, FinetuneSettings(
        protocol="reference", finetune_epochs=1), seed=0, **quiet)
    lpft = fine_tune(FeatureCache(tmp_path), base, train, test, FinetuneSettings(
        protocol="reference", finetune_epochs=1, finetune_lp_epochs=3), seed=0, **quiet)
    assert not lpft.record["loaded_from_cache"]  # its own cache entry, not plain fine-tuning's
    assert lpft.record["weights_sha256"] != plain.record["weights_sha256"]
    probe = lpft.record["history"]["linear_probe"]
    assert len(probe["records"]) == 3 and "linear_probe" not in plain.record["history"]
    # the probe learned on frozen features: its training loss fell, and fine-tuning started from a fitted head
    # (its first epoch's loss is below plain fine-tuning's, which starts from a random Dense layer)
    losses = [r["loss"] for r in probe["records"]]
    assert losses[-1] < losses[0]
    assert lpft.record["history"]["records"][0]["loss"] < plain.record["history"]["records"][0]["loss"]


def test_the_fine_tuned_weights_key_changes_with_every_setting_and_input():
    """A setting that left the key unchanged would load weights trained with another value from the cache."""
    train = balanced_subset(load_train_test("digits")[0], 30, 0, "train")
    base = SimpleNamespace(fingerprint=lambda: "efficientnet_lite0:imagenet:64")
    settings = FinetuneSettings(protocol="reference")
    key = _key(base, "blocks.5.1", "float16", settings, train, 0)
    assert _key(base, "blocks.5.1", "float16", FinetuneSettings(protocol="reference"), train, 0) == key
    assert _key(base, "blocks.5.1", "float16", replace(settings, protocol="frozen"), train, 0) == key
    changed = {"cut_point": "blocks.6.0", "finetune_epochs": 4, "finetune_batch_size": 50, "finetune_lr": 1e-4,
               "finetune_augment": True, "finetune_lp_epochs": 2, "finetune_augmix": True}
    # a new field is tested too; the Jensen-Shannon weight counts only with AugMix on (tests/heads/test_finetune.py)
    assert set(changed) == {f.name for f in fields(FinetuneSettings)} - {"protocol", "finetune_js_weight"}
    for name, value in changed.items():
        assert _key(base, "blocks.5.1", "float16", replace(settings, **{name: value}), train, 0) != key, name
    other_base = SimpleNamespace(fingerprint=lambda: "efficientnet_lite0:imagenet:96")
    other_train = balanced_subset(load_train_test("digits")[0], 30, 1, "train")
    for other in (_key(other_base, "blocks.5.1", "float16", settings, train, 0),
                  _key(base, "blocks.6.0", "float16", settings, train, 0),
                  _key(base, "blocks.5.1", "float32", settings, train, 0),
                  _key(base, "blocks.5.1", "float16", settings, other_train, 0),
                  _key(base, "blocks.5.1", "float16", settings, train, 1)):
        assert other != key


def test_a_given_cut_point_is_where_the_trainable_top_starts(tmp_path):
    train, test = load_train_test("digits")
    train, test = balanced_subset(train, 60, 0, "train"), balanced_subset(test, 20, 0, "test")
    base = create_backbone("efficientnet_lite0", image_size=32, device="cpu", jit=False, precision="fp32")
    before = {k: v.clone() for k, v in base.model.state_dict().items()}
    tuned = fine_tune(FeatureCache(tmp_path), base, train, test, FinetuneSettings(
        protocol="reference", finetune_epochs=1, cut_point="blocks.6.0"), seed=0, progress=False, log=lambda *_: None)
    assert tuned.record["cut_point"] == "blocks.6.0"
    after = tuned.backbone.model.state_dict()
    assert torch.equal(after["blocks.5.1.bn1.running_mean"], before["blocks.5.1.bn1.running_mean"])  # below the cut
    assert not torch.equal(after["blocks.6.0.bn1.running_mean"], before["blocks.6.0.bn1.running_mean"])
