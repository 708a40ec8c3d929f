"""One fine-tuning implementation, two named recipes: FinetuneHead (`vfe fit --head finetune`, keras-guide by
default) and stage 0 of the reference protocol (`fine_tune`, the reference recipe and its AugMix-JS option), on
grayscale digits and colour photos at 32 px."""
from __future__ import annotations

from dataclasses import FrozenInstanceError, replace
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from colour_data import colour_splits
from sklearn.datasets import load_digits
from torch import nn

from vfe.backbones import create_backbone
from vfe.backbones.cut import CutModel
from vfe.data.split import balanced_index
from vfe.data.types import ImageSet
from vfe.experiment import reference
from vfe.experiment.config import FinetuneSettings
from vfe.experiment.reference import _key, fine_tune, recipe_of
from vfe.features.cache import FeatureCache
from vfe.heads import FinetuneHead, finetune, head_class
from vfe.heads.finetune import RECIPES, CompareModel, fit_on_augmix, top_block_parameters
from vfe.training import TrainConfig

QUIET = {"progress": False, "log": lambda *_: None}


def _digits(n: int, offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
    digits = load_digits()
    images = (digits.images * (255 / 16)).round().astype(np.uint8)
    order = np.random.default_rng(0).permutation(len(images))[offset:offset + n]
    return images[order], digits.target[order]


@pytest.fixture(scope="module")
def digit_images():
    """200 training and 100 test digits as uint8 8x8 images (the backbone resizes them)."""
    return (*_digits(200), *_digits(100, 200))


def _image_set(colour: bool, n: int, offset: int = 0) -> ImageSet:
    if colour:
        images, labels = colour_splits(n_train=n // 4, n_test=0, seed=offset)["train"]
        return ImageSet(images, labels, ["astronaut", "chelsea", "coffee", "rocket"])
    images, labels = _digits(n, offset)
    return ImageSet(images[..., None], labels, [str(d) for d in range(10)])


def _lite0(**kwargs):
    return create_backbone("efficientnet_lite0", image_size=32, device="cpu", jit=False, **kwargs)


# -- the two named recipes ----------------------------------------------------------------------------------

def test_two_named_recipes_and_who_uses_which():
    ref, guide = RECIPES["reference"], RECIPES["keras-guide"]
    assert (ref.top, ref.batchnorm, ref.bn_momentum, ref.dropout, ref.lr, ref.batch_size, ref.patience,
            ref.head_epochs, ref.augment, ref.augmix) == ("cut", "train", 0.01, 0.3, 1e-3, 100, None, 0, False, False)
    assert (guide.top, guide.batchnorm, guide.lr, guide.head_epochs, guide.augment, guide.flip, guide.rotation,
            guide.zoom) == ("blocks", "inference", 1e-4, 30, True, True, 10.0, 0.1)
    with pytest.raises(FrozenInstanceError):
        ref.lr = 1.0
    assert recipe_of(FinetuneSettings()) == ref  # the run's stage 0 with its default settings is the named recipe
    assert recipe_of(FinetuneSettings(finetune_augmix=True, finetune_lp_epochs=2)) == replace(
        ref, augmix=True, head_epochs=2)
    assert FinetuneHead().resolved_recipe() == guide  # `vfe fit --head finetune` keeps the Keras guide's
    assert FinetuneHead(recipe="reference", epochs=2, patience=0).resolved_recipe() == replace(ref, epochs=2)
    assert FinetuneHead(two_stage=False).resolved_recipe().head_epochs == 0
    with pytest.raises(ValueError, match="two_stage=True needs head_epochs"):
        FinetuneHead(recipe="reference", two_stage=True).resolved_recipe()


def test_each_recipe_sets_the_batchnorm_mode_it_names():
    cut = CutModel(_lite0(weights="none").model, "blocks.5.1")
    for name, top_trains in (("reference", True), ("keras-guide", False)):
        model = CompareModel(cut, (192, 1, 1), 3, 1280, RECIPES[name]).train()
        assert not any(m.training for m in model.cut.bottom.modules())
        assert all(m.training == top_trains for m in model.cut.top_units.modules()), name
        assert model.head.training  # Dropout trains in both


@pytest.mark.parametrize("recipe", ["reference", "keras-guide"])
@pytest.mark.parametrize("colour", [False, True], ids=["gray", "colour"])
def test_each_recipe_trains_what_it_names_and_nothing_else(recipe, colour):
    data = _image_set(colour, 40)
    head = FinetuneHead(recipe=recipe, image_size=32, epochs=1, head_epochs=1, max_images=None, batch_size=20,
                        device="cpu").fit(data.images, data.labels)
    before = _lite0().model.state_dict()
    after = head.module_.backbone.model.state_dict()
    top = ("blocks.6", "conv_head", "bn2", *(("blocks.5.1", "blocks.5.2", "blocks.5.3") if recipe == "reference" else ()))
    changed = {k for k, v in before.items() if k in after and not torch.equal(v, after[k])}
    assert changed and all(k.startswith(top) for k in changed), sorted(changed)[:5]
    stats = {k for k in changed if "running_" in k}
    if recipe == "reference":  # BatchNorm above the cut in training mode: its running statistics move
        assert "blocks.5.1.bn1.running_mean" in stats
    else:  # every BatchNorm in inference mode
        assert not stats
    assert len(head.history_["finetune"]["records"]) == 1 and len(head.history_["head"]["records"]) == 1
    assert head.predict_proba(data.images).shape == (40, len(data.class_names))


@pytest.mark.slow
def test_finetune_learns_and_round_trips(digit_images):
    X_train, y_train, X_test, y_test = digit_images
    head = FinetuneHead(image_size=64, unfreeze_blocks=1, head_epochs=15, epochs=1, flip=False, device="cpu")
    head.fit(X_train, y_train)
    assert head.score(X_test, y_test) > 0.5  # chance is 0.1
    tensors, meta = head.export_state()
    loaded = head_class(meta["head"]).from_state(tensors, meta)
    np.testing.assert_array_equal(loaded.predict_proba(X_test), head.predict_proba(X_test))
    x01 = torch.from_numpy(X_test[:, None].astype(np.float32) / 255)
    with torch.no_grad():
        probs = head.probability_module()(x01).numpy()
    np.testing.assert_allclose(probs, head.predict_proba(X_test), atol=1e-5)


def test_top_blocks_are_timm_parameter_groups():
    model = _lite0(weights="none").model
    assert top_block_parameters(model, 0) == []
    top = {id(p) for p in top_block_parameters(model, 1)}
    names = {n for n, p in model.named_parameters() if id(p) in top}
    assert names and all(n.startswith(("blocks.6.", "conv_head.", "bn2.")) for n in names)
    assert not any(n.startswith("classifier") for n in names)
    with pytest.raises(ValueError, match="unfreeze_blocks must be in"):
        top_block_parameters(model, 99)


def test_images_not_features_are_required(digit_images):
    X_train, y_train, _, _ = digit_images
    with pytest.raises(TypeError, match="uint8"):
        FinetuneHead().fit(X_train.astype(np.float32), y_train)
    with pytest.raises(ValueError, match="200 images but 3 labels"):
        FinetuneHead().fit(X_train, y_train[:3])


def test_max_images_picks_the_projects_balanced_subset(digit_images):
    X_train, y_train, _, _ = digit_images
    images, labels = FinetuneHead(max_images=50, random_state=3)._subset(X_train, y_train)
    index = balanced_index(y_train, 50, 3)
    np.testing.assert_array_equal(labels, y_train[index])
    np.testing.assert_array_equal(images, X_train[index])
    assert FinetuneHead(max_images=None)._subset(X_train, y_train)[1] is y_train


# -- the reference recipe in stage 0, and its AugMix-JS option ----------------------------------------------

@pytest.mark.parametrize("colour", [False, True], ids=["gray", "colour"])
def test_stage_0_is_the_reference_recipe(tmp_path, monkeypatch, colour):
    """What the pre-refactor stage 0 did, as properties: the Dense layer drawn from the run's seed (the global
    RNG untouched), exactly `finetune_epochs` epochs, BatchNorm running statistics moving above the cut only
    with Keras's momentum."""
    train, test = _image_set(colour, 40), _image_set(colour, 20, 40)
    base = _lite0(precision="fp32")
    before = {k: v.clone() for k, v in base.model.state_dict().items()}
    built = []

    def recording(*args, **kwargs):
        built.append(CompareModel(*args, **kwargs))
        built.append(built[-1].head[1].weight.detach().clone())
        return built[0]

    monkeypatch.setattr(reference, "CompareModel", recording)
    rng = torch.random.get_rng_state()
    tuned = fine_tune(FeatureCache(tmp_path), base, train, test, FinetuneSettings(
        protocol="reference", finetune_epochs=3, finetune_lr=0.5), seed=4, **QUIET)  # a loss that rises too
    assert torch.equal(torch.random.get_rng_state(), rng)
    assert len(tuned.record["history"]["records"]) == 3 and not tuned.record["history"]["stopped_early"]
    after = tuned.backbone.model.state_dict()
    assert torch.equal(after["blocks.5.0.bn1.running_mean"], before["blocks.5.0.bn1.running_mean"])
    assert not torch.equal(after["blocks.5.1.bn1.running_mean"], before["blocks.5.1.bn1.running_mean"])
    assert built[0].cut.top_units[0].bn1.momentum == 0.01  # Keras's 0.99
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(4)
        expected = nn.Linear(base.feature_dim, train.num_classes)
    assert torch.equal(built[1], expected.weight)  # the Dense initialisation is the seed's


class _StubCompareModel(nn.Module):
    """What the reference recipe touches of a CompareModel: a top with a BatchNorm, the Dense head, the cut."""

    def __init__(self):
        super().__init__()
        self.cut = SimpleNamespace(top_units=nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)), point="blocks.6.0")
        self.head = nn.Linear(4, 3)


@pytest.mark.parametrize("colour", [False, True], ids=["gray", "colour"])
def test_the_fine_tuning_settings_reach_the_training_loop(monkeypatch, colour):
    train = _image_set(colour, 20)
    seen = []

    def recording_fit(net, X, y, val, config, parameters=None):
        seen.append((net, X, config))
        return SimpleNamespace(to_dict=lambda: {"records": []})

    monkeypatch.setattr(finetune, "fit_classifier", recording_fit)
    base = SimpleNamespace(device=torch.device("cpu"), normalise=lambda x: x)
    A = np.zeros((len(train), 4), np.float32)
    model = _StubCompareModel()
    reference._train(model, None, None, base, train, A, FinetuneSettings(), 5, False)
    net, X, config = seen[-1]
    assert net is model and X is A and model.cut.top_units[1].momentum == 0.01  # Keras's 0.99
    assert (config.epochs, config.batch_size, config.lr, config.patience, config.seed) == (3, 100, 1e-3, None, 5)
    custom = FinetuneSettings(finetune_epochs=7, finetune_batch_size=20, finetune_lr=1e-4, finetune_augment=True)
    reference._train(_StubCompareModel(), None, None, base, train, A, custom, 5, False)
    net, X, config = seen[-1]
    assert (config.epochs, config.batch_size, config.lr) == (7, 20, 1e-4)
    # augmented: the uint8 images themselves (N x C x H x W), flipped and turned in training, through the bottom
    assert isinstance(net, finetune.FromImages) and net.input.augment is not None
    np.testing.assert_array_equal(X, np.moveaxis(train.images, -1, 1))
    assert X.shape[1] == (3 if colour else 1) and X.dtype == np.uint8


def _augmix_settings(**kwargs) -> FinetuneSettings:
    return FinetuneSettings(protocol="reference", finetune_epochs=2, finetune_batch_size=20, **kwargs)


@pytest.mark.slow
@pytest.mark.parametrize("colour", [False, True], ids=["gray", "colour"])
def test_augmix_js_fine_tuning_is_its_own_reproducible_cached_training(tmp_path, colour):
    train, test = _image_set(colour, 40), _image_set(colour, 12, 40)
    base = _lite0(precision="fp32")

    def run(folder, **kwargs):
        return fine_tune(FeatureCache(tmp_path / folder), base, train, test, _augmix_settings(**kwargs), seed=0,
                         **QUIET).record

    plain, js = run("a"), run("a", finetune_augmix=True)
    assert js["weights_sha256"] != plain["weights_sha256"] and not js["loaded_from_cache"]
    assert all("js" in r for r in js["history"]["records"]) and len(js["history"]["records"]) == 2
    entries = {p.name for p in (tmp_path / "a").iterdir()}
    assert len(entries) == 2 + 1 + 4  # clean train and test activations, the weights, 2 views x 2 epochs
    again = run("a", finetune_augmix=True)
    assert again["loaded_from_cache"] and again["weights_sha256"] == js["weights_sha256"]
    elsewhere = run("b", finetune_augmix=True)  # the views and the training are drawn from the seed alone
    assert elsewhere["weights_sha256"] == js["weights_sha256"] and not elsewhere["loaded_from_cache"]
    no_js = run("a", finetune_augmix=True, finetune_js_weight=0.0)
    assert no_js["weights_sha256"] != js["weights_sha256"]  # the Jensen-Shannon term is in the loss
    assert {p.name for p in (tmp_path / "a").iterdir()} == entries  # its views came from the cache
    lpft = run("a", finetune_augmix=True, finetune_lp_epochs=2)  # LP-FT composes: the head first, then AugMix-JS
    assert len(lpft["history"]["linear_probe"]["records"]) == 2 and "js" in lpft["history"]["records"][0]
    assert lpft["weights_sha256"] != js["weights_sha256"]


def test_augmix_epochs_see_their_own_two_views_and_the_clean_rows():
    """View k of every row is filled with k: epoch e must train on views 2e and 2e + 1."""
    seen = []

    class Probe(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(1, 2)

        def forward(self, x):
            if self.training:
                seen.append(x[:, 0].reshape(3, -1).mean(1).tolist())
            return self.linear(x)

    X = np.full((8, 1), -1.0, np.float32)
    views = np.broadcast_to(np.arange(6, dtype=np.float32)[None, :, None], (8, 6, 1)).copy()
    probe = Probe()
    config = TrainConfig(epochs=3, batch_size=4, patience=None)
    history = fit_on_augmix(probe, X, views, np.array([0, 1] * 4), config, 12.0, list(probe.parameters()))
    assert seen == [[-1, 0, 1]] * 2 + [[-1, 2, 3]] * 2 + [[-1, 4, 5]] * 2
    assert len(history.records) == 3


def test_the_plain_key_ignores_the_augmix_settings_and_the_augmix_key_does_not():
    train = _image_set(False, 20)
    base = type("Base", (), {"fingerprint": lambda self: "efficientnet_lite0:imagenet:64"})()
    plain = FinetuneSettings(protocol="reference")
    key = _key(base, "blocks.5.1", "fp16", plain, train, 0)
    assert _key(base, "blocks.5.1", "fp16", replace(plain, finetune_js_weight=3.0), train, 0) == key
    on = replace(plain, finetune_augmix=True)
    keys = {_key(base, "blocks.5.1", "fp16", s, train, 0)
            for s in (on, replace(on, finetune_js_weight=3.0), replace(on, finetune_lp_epochs=1))}
    assert len(keys) == 3 and key not in keys
