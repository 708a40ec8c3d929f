"""Heads trained on AugMix views: the Jensen-Shannon term, the views' cache entries, the heads on real grey and
colour data (fit, predict, save and load), what results.json says they saw, and `vfe run` with them."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from colour_data import CLASS_NAMES, write_colour_folder
from threads import one_thread
from torch import nn

from vfe.api import fit_pipeline
from vfe.backbones import create_backbone
from vfe.cli import main
from vfe.data import load_train_test
from vfe.errors import SettingsError
from vfe.experiment import augment
from vfe.experiment.augment import augmentation_record, augmix_features, training_record
from vfe.experiment.config import with_overrides
from vfe.experiment.run_settings import RunSettings, check
from vfe.experiment.sweep import run_sweep
from vfe.features.cache import FeatureCache
from vfe.features.source import BackboneFeatures
from vfe.heads import AutoencoderHead, LinearHead, VFEHead, expand_heads, head_class_of, make_head, params_for
from vfe.heads.augmix import AugMixLinearHead
from vfe.heads.registry import is_augmented, is_augmix
from vfe.heads.views import jensen_shannon, views_loss
from vfe.pipeline import Pipeline
from vfe.robustness.augmix import OPERATIONS, AugMix
from vfe.robustness.corruptions.registry import REGISTRY, families

AUGMIX_HEADS = ["linear-augmix", "linear-augmix-js", "vfe-augmix", "vfe-augmix-js"]
SMALL_VFE = {"encoder_units": 64, "latent_dim": 16, "decoder_units": 64, "vae_epochs": 40, "vae_batch_size": 256,
             "vae_lr": 3e-3, "vae_patience": 10, "epochs": 30, "batch_size": 256, "lr": 2e-2}


def small(name: str) -> dict:
    return SMALL_VFE if name.startswith("vfe") else {"epochs": 40, "lr": 3e-3}


@pytest.fixture(scope="module", name="one_thread")
def _module_one_thread():
    """conftest's `_one_thread` is function-scoped: module fixtures extract at one thread here too."""
    with one_thread():
        yield


def views_of(features, data, seed: int) -> dict:
    """Clean features of `data` and those of two AugMix views of each image (n x 2 x d)."""
    return {"X": features(data), "views": augmix_features(features, data, views=2, seed=seed)[0], "y": data.labels}


@pytest.fixture(scope="module")
def digits(one_thread, tmp_path_factory):
    """600 training and the 360 test digits through EfficientNet-Lite0 (ImageNet weights, 64 px), with views."""
    train, test = load_train_test("digits")
    backbone = create_backbone("efficientnet_lite0", weights="default", image_size=64, device="cpu")
    features = BackboneFeatures(FeatureCache(tmp_path_factory.mktemp("cache")), backbone, progress=False)
    return {"backbone": backbone, "test_images": test.images,
            "train": views_of(features, train.subset(np.arange(600), tag=":600"), seed=0),
            "test": views_of(features, test, seed=1)}


@pytest.fixture(scope="module")
def fitted(digits) -> dict:
    train = digits["train"]
    return {name: make_head(name, random_state=0, **small(name)).fit(train["X"], train["y"], X_aug=train["views"])
            for name in AUGMIX_HEADS}


def test_jensen_shannon_of_a_hand_computed_case():
    logits = torch.log(torch.tensor([[[0.5, 0.5]], [[0.9, 0.1]], [[0.1, 0.9]]]))
    # the mixture is (0.5, 0.5); KL((0.5, 0.5) || M) = 0 and the other two are equal by symmetry
    kl = 0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5)
    assert float(jensen_shannon(*logits)) == pytest.approx(2 * kl / 3, rel=1e-6)
    same = torch.randn(5, 4)
    assert float(jensen_shannon(same, same.clone(), same + 3.0)) == pytest.approx(0.0, abs=1e-6)  # softmax shift
    batch = torch.cat([logits, logits.flip(0)], 1)  # two rows, the same three distributions: the same mean
    assert float(jensen_shannon(*batch)) == pytest.approx(2 * kl / 3, rel=1e-6)


def test_the_loss_draws_two_different_views_of_each_row_and_adds_the_weighted_term():
    seen = []

    class Recording(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(1, 3)

        def forward(self, x):
            seen.append(x[:, 0].clone())
            return self.linear(x)

    module = Recording()
    x, y = torch.zeros(50, 1), torch.arange(50) % 3
    views = torch.arange(1.0, 4.0).repeat(50, 1)[..., None]  # view k of every row holds the value k + 1
    losses = {}
    for weight in (0.0, 5.0):
        torch.manual_seed(0)
        losses[weight], metrics = views_loss(weight)(module, (x, views, y))
    clean, first, second = seen[0].split(50)
    assert torch.all(clean == 0) and torch.all(first != second) and set(first.tolist()) == {1.0, 2.0, 3.0}
    logits = module.linear(seen[0][:, None]).split(50)
    assert float(losses[0.0].detach()) == pytest.approx(float(nn.functional.cross_entropy(torch.cat(logits), y.repeat(3)).detach()))
    js = float(jensen_shannon(*logits).detach())
    assert float((losses[5.0] - losses[0.0]).detach()) == pytest.approx(5 * js, rel=1e-3)  # float32 difference of two losses
    assert metrics["js"] == pytest.approx(js, rel=1e-5)
    seen.clear()
    views_loss(1.0)(module, (x, views[:, :1], y))  # one view: it is both members of the triple
    assert torch.equal(seen[0][50:100], seen[0][100:])
    loss, _ = views_loss(1.0)(module, (x, y))  # the held-out rows: cross-entropy on the clean rows alone
    assert float(loss) == pytest.approx(float(nn.functional.cross_entropy(module.linear(x), y)))


@pytest.mark.slow
@pytest.mark.parametrize("name", AUGMIX_HEADS)
def test_heads_fit_predict_and_round_trip_on_grey_digits(name, fitted, digits, tmp_path):
    head, test = fitted[name], digits["test"]
    assert isinstance(head, AugMixLinearHead if name.startswith("linear") else VFEHead)
    assert head.js_weight == (12.0 if name.endswith("-js") else 0.0)
    assert head.score(test["X"], test["y"]) > 0.5  # 600 labels of 8 x 8 digits, small models; chance is 0.1
    records = (head.history_ if name.startswith("linear") else head.history_["classifier"])["records"]
    assert all("js" in r for r in records)  # stage 2 trained on (clean, view, view) triples
    pipe = Pipeline(digits["backbone"], head, [str(d) for d in range(10)])
    loaded = Pipeline.load(pipe.save(tmp_path / f"{name}.safetensors"), device="cpu")
    assert loaded.head.js_weight == head.js_weight
    images = digits["test_images"][:50]
    np.testing.assert_allclose(loaded.predict_proba(images), pipe.predict_proba(images), atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["linear", "vfe"])
def test_the_consistency_term_makes_predictions_on_unseen_views_agree(family, fitted, digits):
    test = digits["test"]

    def disagreement(head) -> float:
        probs = [head.predict_proba(x) for x in (test["X"], test["views"][:, 0], test["views"][:, 1])]
        return float(jensen_shannon(*(torch.from_numpy(p).clamp_min(1e-12).log() for p in probs)))

    plain, consistent = fitted[f"{family}-augmix"], fitted[f"{family}-augmix-js"]
    assert disagreement(consistent) < 0.9 * disagreement(plain)
    if family == "linear":  # the sampled VFE pays for it in accuracy: see docs/robust_heads.md
        assert consistent.score(test["X"], test["y"]) > plain.score(test["X"], test["y"]) - 0.05


@pytest.mark.slow
def test_a_colour_image_folder_trains_the_heads(one_thread, tmp_path):
    train, test = load_train_test(write_colour_folder(tmp_path / "photos", n_train=15, n_test=5))
    backbone = create_backbone("efficientnet_lite0", weights="default", image_size=64, device="cpu")
    features = BackboneFeatures(FeatureCache(tmp_path / "cache"), backbone, progress=False)
    X, views = features(train), augmix_features(features, train, views=2)[0]
    assert views.shape == (60, 2, X.shape[1]) and not np.allclose(views[:, 0], X)
    for name in ("linear-augmix-js", "vfe-augmix-js"):
        params = {**small(name), "epochs": 100} if name.startswith("linear") else {**SMALL_VFE, "vae_batch_size": 32}
        head = make_head(name, random_state=0, **params).fit(X, train.labels, X_aug=views)
        pipe = Pipeline(backbone, head, list(CLASS_NAMES))
        assert np.mean(pipe.predict(test.images) == test.labels) > 0.5  # 4 photos, chance 0.25
        loaded = Pipeline.load(pipe.save(tmp_path / f"{name}.safetensors"), device="cpu")
        np.testing.assert_allclose(loaded.predict_proba(test.images), pipe.predict_proba(test.images), atol=1e-6)


def test_views_are_cached_per_view_and_more_views_reuse_the_first(tmp_path, monkeypatch):
    train = load_train_test("digits")[0].subset(np.arange(40), tag=":40")
    backbone = create_backbone("efficientnet_lite0", weights="none", image_size=32, jit=False)
    features = BackboneFeatures(FeatureCache(tmp_path / "cache"), backbone, progress=False)
    made = []

    def recording(images, recipe, seed, view, first_row=0):
        made.append((recipe.severity, view, len(images)))
        return real(images, recipe, seed, view, first_row)

    real = augment.augmix_images
    monkeypatch.setattr(augment, "augmix_images", recording)
    two, record = augmix_features(features, train, views=2, seed=5)
    assert two.shape == (40, 2, backbone.feature_dim) and not np.allclose(two[:, 0], two[:, 1])
    assert made == [(3.0, 0, 40), (3.0, 1, 40)]
    assert record == {"operations": list(OPERATIONS), "views": 2, "seed": 5, "severity": 3.0, "width": 3,
                      "depth": -1, "alpha": 1.0, "train_corruptions": [], "held_out_families": list(families())}
    made.clear()
    three, _ = augmix_features(features, train, views=3, seed=5)
    assert made == [(3.0, 2, 40)] and np.array_equal(three[:, :2], two)  # only the new view is extracted
    made.clear()
    stronger, _ = augmix_features(features, train, views=1, seed=5, recipe=AugMix(severity=8))
    assert made == [(8.0, 0, 40)] and not np.allclose(stronger[:, 0], two[:, 0])  # the recipe is in the key
    with pytest.raises(ValueError, match="--augmix-views must be at least 1"):
        augmix_features(features, train, views=0)


def test_results_say_what_each_augmented_head_saw():
    noise = augmentation_record("noise", (1, 3, 5))
    views = augment.augmix_record(AugMix(), 2, 0)
    both = training_record(["linear", "vfe-aug", "linear-augmix-js"], noise, views)
    assert both["seen_by_head"] == {"vfe-aug": list(families()["noise"]), "linear-augmix-js": []}
    assert both["train_corruptions"] == list(families()["noise"]) and both["augmix"] == views  # the report's column
    alone = training_record(["linear", "linear-augmix", "vfe-augmix-js"], None, views)
    assert alone["seen_by_head"] == {"linear-augmix": [], "vfe-augmix-js": []}
    assert alone["train_corruptions"] == [] and set(alone["held_out_families"]) == set(families())
    assert training_record(["linear", "vfe"], None, None) is None


def test_registry_entries_inherit_their_base_heads_parameters():
    assert all(is_augmix(n) and not is_augmented(n) for n in AUGMIX_HEADS) and not is_augmix("vfe-aug")
    assert set(AUGMIX_HEADS) <= set(expand_heads(["all"]))
    assert head_class_of("linear-augmix") is AugMixLinearHead and head_class_of("vfe-augmix-js") is VFEHead
    given = {"vfe": {"latent_dim": 8}, "linear": {"epochs": 3}}
    assert params_for("vfe-augmix-js", given) == {"latent_dim": 8}
    assert make_head("linear-augmix-js", **params_for("linear-augmix-js", given)).get_params()["epochs"] == 3


def test_without_views_the_linear_augmix_head_is_the_linear_head(digits_features):
    X_train, X_test, y_train, _ = digits_features
    plain = LinearHead(epochs=5, random_state=1).fit(X_train, y_train)
    augmix = make_head("linear-augmix-js", epochs=5, random_state=1).fit(X_train, y_train)
    np.testing.assert_array_equal(augmix.predict_proba(X_test), plain.predict_proba(X_test))


def test_bad_views_are_refused(digits_features):
    X, _, y, _ = digits_features
    views = np.stack([X, X], axis=1)
    with pytest.raises(ValueError, match=r"row-aligned with X \(one augmented view per training image \(or n x K"):
        AugMixLinearHead(epochs=1).fit(X, y, X_aug=views[:-1])
    with pytest.raises(ValueError, match=r"row-aligned with X \(one augmented view per training image\)"):
        AutoencoderHead(ae_epochs=1, epochs=1).fit(X, y, X_aug=views)  # the denoising AE pairs one view per row
    with pytest.raises(TypeError, match="LinearHead does not train on augmented"):
        LinearHead(epochs=1).fit(X, y, X_aug=views)
    with pytest.raises(ValueError, match="js_weight must be >= 0"):
        AugMixLinearHead(js_weight=-1.0, epochs=1).fit(X, y, X_aug=views)


@pytest.mark.slow
def test_a_quick_run_with_an_augmix_head_marks_every_corruption_held_out(tmp_path):
    corruptions = ["gaussian_noise", "defocus_blur", "fog", "contrast"]
    assert main(["run", "--quick", "--dataset", "digits", "--image-size", "32", "--n-train", "200", "--n-test", "100",
                 "--heads", "linear", "linear-augmix-js", "--replicates", "1", "--augmix-views", "2",
                 "--corruptions", *corruptions, "--severities", "3", "--n-attack", "0", "--no-ood", "--no-progress",
                 "--name", "augmix", "--runs-dir", str(tmp_path / "runs"), "--cache-dir", str(tmp_path / "cache")]) == 0
    results = json.loads((tmp_path / "runs" / "augmix" / "results.json").read_text())
    augmentation = results["augmentation"]
    assert augmentation["seen_by_head"] == {"linear-augmix-js": []} and augmentation["train_corruptions"] == []
    assert set(augmentation["held_out_families"]) == {REGISTRY[c].family for c in REGISTRY}
    assert augmentation["augmix"]["views"] == 2 and augmentation["augmix"]["operations"] == list(OPERATIONS)
    assert set(results["corruptions"]["per_head"]["linear-augmix-js"]["0"]["accuracy"]) == set(corruptions)
    assert results["clean"]["linear-augmix-js"]["0"]["accuracy"] > 0.5
    assert "features of AugMix views (2 per training image)" in results["timings"]
    report = (tmp_path / "runs" / "augmix" / "report.md").read_text()
    rows = [line for line in report.splitlines() if line.startswith(("| gaussian noise |", "| fog |"))]
    assert rows and all("| held out |" in row for row in rows)


@pytest.mark.slow
def test_vfe_fit_makes_the_views_for_an_augmix_head(tmp_path):
    pipe, accuracy = fit_pipeline("digits", head="linear-augmix-js", head_params={"epochs": 20, "lr": 3e-3},
                                  image_size=32, n_train=200, cache_dir=str(tmp_path), progress=False,
                                  augmix_views=3)
    assert pipe.head.js_weight == 12.0 and accuracy > 0.5
    transforms = sorted(e["transform"] or "" for e in FeatureCache(tmp_path).entries())
    assert transforms[0] == "" and [t.rsplit(":", 1)[1] for t in transforms[1:]] == ["view0", "view1", "view2"]
    assert all(t.startswith(AugMix().key()) for t in transforms[1:])


def test_a_sweep_gives_the_views_to_augmix_heads_only(digits_features, tmp_path):
    X_train, X_test, y_train, y_test = digits_features
    rng = np.random.default_rng(0)
    views = np.clip(X_train[:, None] + rng.normal(0, 0.2, (len(X_train), 2, X_train.shape[1])), 0, 1)
    grid = {"heads": {"linear": {"epochs": 5}, "linear-augmix-js": {"epochs": 5, "js_weight": [0.0, 12.0]}}}
    with pytest.raises(ValueError, match=r"\['linear-augmix-js'\] train on AugMix views: pass X_views"):
        run_sweep(grid, X_train, y_train, X_test, y_test, tmp_path, progress=False)
    cells = run_sweep(grid, X_train, y_train, X_test, y_test, tmp_path, progress=False,
                      X_views=views.astype(np.float32))
    assert [(c["head"], c["params"].get("js_weight")) for c in cells] == [
        ("linear", None), ("linear-augmix-js", 0.0), ("linear-augmix-js", 12.0)]
    assert all(c["metrics"]["accuracy"] > 0.5 for c in cells)


def test_a_run_refuses_fewer_than_one_view_before_any_work(tmp_path):
    settings = with_overrides(RunSettings(), {"runs_dir": str(tmp_path), "heads": ["linear-augmix"], "augmix_views": 0})
    with pytest.raises(SettingsError, match="--augmix-views must be at least 1, got 0"):
        check(settings)
