"""Test-time BatchNorm adaptation on real images, grayscale (digits) and colour (scikit-image photo crops):
the mixing rule against a hand computation, its limits (N -> inf: the frozen network; N = 0: training-mode
BatchNorm), nothing written into the model, its own cache entries, and BatchNorm below a cut adapting too."""
from __future__ import annotations

import copy
import math
import re
import runpy
from pathlib import Path

import numpy as np
import pytest
import torch
from colour_data import colour_splits
from timm.layers import BatchNormAct2d, FrozenBatchNormAct2d
from torch import nn

from vfe.backbones import create_backbone
from vfe.backbones.adapt_bn import (
    AdaptedFeatures,
    AdaptedNetwork,
    adapted_batchnorm,
    batch_rows,
    batchnorm_layers,
)
from vfe.data import load_train_test
from vfe.data.split import balanced_subset
from vfe.errors import SettingsError
from vfe.experiment.config import FinetuneSettings
from vfe.experiment.reference import fine_tune
from vfe.features.cache import FeatureCache, cache_key
from vfe.robustness.attacks import to_unit_float


@pytest.fixture(scope="module")
def digits():
    train, test = load_train_test("digits")
    return balanced_subset(train, 100, 0, "train"), balanced_subset(test, 40, 0, "test")


@pytest.fixture(scope="module")
def colour():
    return colour_splits(n_train=2, n_test=6)["test"][0]  # 24 RGB 32 x 32 crops, class by class


@pytest.fixture(scope="module")
def lite0_32():
    return create_backbone("efficientnet_lite0", image_size=32, device="cpu", jit=False, precision="fp32")


def _images(name, digits, colour):
    return digits[1].images if name == "digits" else colour


def _with_stats(layer: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    c = layer.running_mean.numel()
    layer.running_mean.copy_(torch.randn(c, generator=g))
    layer.running_var.copy_(torch.rand(c, generator=g) + 0.5)
    layer.weight.data.copy_(torch.randn(c, generator=g))
    layer.bias.data.copy_(torch.randn(c, generator=g))
    return layer.eval()


def _layer(kind: str) -> nn.Module:
    return _with_stats({"BatchNorm2d": lambda: nn.BatchNorm2d(3),
                        "BatchNormAct2d": lambda: BatchNormAct2d(3, act_layer=nn.ReLU),
                        "FrozenBatchNormAct2d": lambda: FrozenBatchNormAct2d(3, act_layer=nn.ReLU)}[kind]())


def _by_hand(layer: nn.Module, x: torch.Tensor, prior: float, held_constant: bool = False) -> torch.Tensor:
    """The layer's output with the mixed statistics, written out (then ReLU for the Act layers); with
    `held_constant` the statistics detached, what batch_norm alone would differentiate."""
    w = prior / (prior + len(x))
    mean = w * layer.running_mean + (1 - w) * x.mean((0, 2, 3))
    var = w * layer.running_var + (1 - w) * ((x - x.mean((0, 2, 3), keepdim=True)) ** 2).mean((0, 2, 3))
    if held_constant:
        mean, var = mean.detach(), var.detach()
    out = (x - mean[:, None, None]) / torch.sqrt(var[:, None, None] + layer.eps) * layer.weight[:, None, None] \
        + layer.bias[:, None, None]
    return out if type(layer) is nn.BatchNorm2d else out.relu()


@pytest.mark.parametrize("kind", ["BatchNorm2d", "BatchNormAct2d", "FrozenBatchNormAct2d"])
@pytest.mark.parametrize("prior", [0.0, 8.0])
def test_a_batchnorm_layer_normalises_with_the_mixed_statistics(colour, kind, prior):
    """Real colour pixels through one BatchNorm layer, against the rule computed by hand."""
    layer = _layer(kind)
    x = torch.from_numpy(colour[:6]).permute(0, 3, 1, 2).float() / 255  # 6 images: n = 6
    want = _by_hand(layer, x, prior)
    source = layer.running_mean.clone(), layer.running_var.clone()
    with adapted_batchnorm(layer, prior) as layers:
        got = layer(x)
    assert layers == [layer]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(got, layer(x), atol=1e-2)  # outside the block: the source statistics again
    assert torch.equal(layer.running_mean, source[0]) and torch.equal(layer.running_var, source[1])


def test_prior_zero_is_batchnorm_in_training_mode_on_a_batch_of_digits(digits):
    """N = 0: exactly what BatchNorm computes in training mode (TENT's baseline), on real grayscale pixels."""
    layer = _with_stats(nn.BatchNorm2d(1))
    x = torch.from_numpy(digits[1].images[:16]).permute(0, 3, 1, 2).float() / 255
    with adapted_batchnorm(layer, 0.0):
        got = layer(x)
    torch.testing.assert_close(got, copy.deepcopy(layer).train()(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["digits", "colour"])
def test_an_infinite_prior_gives_the_plain_features(lite0_32, digits, colour, name):
    images = _images(name, digits, colour)
    plain = lite0_32.extract(images, progress=False)
    np.testing.assert_allclose(AdaptedFeatures(lite0_32, 8, math.inf).extract(images), plain, rtol=1e-4, atol=1e-4)
    # a huge finite prior runs the mixing itself: N/(N+n) within 1e-8 of 1
    np.testing.assert_allclose(AdaptedFeatures(lite0_32, 8, 1e9).extract(images), plain, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("name", ["digits", "colour"])
def test_prior_zero_is_the_network_with_batchnorm_in_training_mode(lite0_32, digits, colour, name):
    """One batch (B >= its size) through the adapted backbone = the network with every BatchNorm layer
    computing the batch's statistics; and not the plain features."""
    images = _images(name, digits, colour)[:16]
    got = AdaptedFeatures(lite0_32, 16, 0.0).extract(images)
    model = copy.deepcopy(lite0_32.model)
    for m in batchnorm_layers(model):
        m.train()
    with torch.no_grad():
        want = model.forward_head(model.forward_features(lite0_32.preprocess(images)), pre_logits=True).numpy()
    # float32 rounding of the statistics (summed in another order), amplified over 49 layers: < 1e-3 of the scale
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-3 * np.abs(want).max())
    assert np.abs(got - lite0_32.extract(images, progress=False)).max() > 0.1


@pytest.mark.parametrize("kind", ["BatchNorm2d", "BatchNormAct2d", "FrozenBatchNormAct2d"])
@pytest.mark.parametrize("prior", [0.0, 8.0])
def test_the_gradient_goes_through_the_batch_statistics(colour, kind, prior):
    """What an attack on a "+bn" head differentiates: the hand-written mixed normalisation's gradient (autograd
    through the batch mean and variance), not the one with the statistics held constant."""
    layer = _layer(kind)
    x = (torch.from_numpy(colour[:6]).permute(0, 3, 1, 2).float() / 255).requires_grad_()
    # a loss close to the outputs' sum, which the batch mean nearly cancels: held-constant statistics miss that
    weights = 1 + 0.1 * torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    want, = torch.autograd.grad((_by_hand(layer, x, prior) * weights).sum(), x)
    constant, = torch.autograd.grad((_by_hand(layer, x, prior, held_constant=True) * weights).sum(), x)
    with adapted_batchnorm(layer, prior):
        got, = torch.autograd.grad((layer(x) * weights).sum(), x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    assert (got - constant).abs().max() > 0.1 * want.abs().max()  # the statistics' part is not negligible


@pytest.mark.parametrize("name", ["digits", "colour"])
def test_the_float_network_gives_the_cached_features_in_the_images_order(lite0_32, digits, colour, name):
    """AdaptedNetwork (attacks: float images, one block) = AdaptedFeatures (the cache: uint8 images), batch for
    batch, and row i of its output belongs to image i whatever the shuffled batching did."""
    images = _images(name, digits, colour)[:20]
    extractor = AdaptedFeatures(lite0_32, 8, 16.0)
    with torch.no_grad():
        got = AdaptedNetwork(extractor)(to_unit_float(images)).numpy()
    want = extractor.extract(images)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * np.abs(want).max())
    assert np.abs(want[1:] - want[:-1]).max() > 0.1  # rows differ, so a misplaced row would show


def test_the_weights_and_running_statistics_are_untouched(lite0_32, digits, colour):
    before = {k: v.clone() for k, v in lite0_32.model.state_dict().items()}
    buffers = [m.running_mean for m in batchnorm_layers(lite0_32.model)]
    plain = lite0_32.extract(colour, progress=False)
    for prior in (0.0, 16.0):
        AdaptedFeatures(lite0_32, 8, prior).extract(colour)
        AdaptedFeatures(lite0_32, 8, prior).extract(digits[1].images)
    after = lite0_32.model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())
    assert all(a is b for a, b in zip(buffers, [m.running_mean for m in batchnorm_layers(lite0_32.model)]))
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in lite0_32.model.modules())
    np.testing.assert_array_equal(lite0_32.extract(colour, progress=False), plain)


def test_batches_mix_the_classes_and_never_leave_a_small_remainder(digits):
    labels = np.sort(digits[1].labels)  # a test set listed class by class
    batches = batch_rows(len(labels), 16)
    assert sorted(np.concatenate(batches).tolist()) == list(range(len(labels)))  # every image once
    assert [len(b) for b in batches] == [14, 13, 13]  # 40 images, at most 16: three near-equal batches
    assert all(len(np.unique(labels[b])) >= 5 for b in batches)


def test_adapted_features_have_their_own_cache_entries(tmp_path, lite0_32, digits):
    test = digits[1]
    cache = FeatureCache(tmp_path)
    plain = cache.extract(lite0_32, test, progress=False)
    variants = {(b, n): AdaptedFeatures(lite0_32, b, n) for b, n in ((16, 0.0), (8, 0.0), (16, 16.0))}
    keys = {cache_key(e.fingerprint(), test) for e in variants.values()} | {plain.key}
    assert len(keys) == 4  # plain, and each batch size and prior apart
    entry = cache.extract(variants[(16, 16.0)], test, progress=False)
    assert "adapted BatchNorm, batch size 16, prior 16" in entry.manifest["backbone"]
    assert lite0_32.fingerprint() in entry.manifest["backbone"]
    assert np.abs(entry.array() - plain.array()).max() > 0.01
    np.testing.assert_array_equal(cache.extract(variants[(16, 16.0)], test, progress=False).array(), entry.array())


def test_batchnorm_below_the_cut_adapts_too_under_the_reference_protocol(tmp_path, digits):
    """The fine-tuned backbone's adapted features run the whole network: with N = 0 they equal the fine-tuned
    network with every BatchNorm computing batch statistics, not only those above the cut."""
    train, test = digits
    base = create_backbone("efficientnet_lite0", image_size=32, device="cpu", jit=False, precision="fp32")
    tuned = fine_tune(FeatureCache(tmp_path), base, train, test, FinetuneSettings(protocol="reference",
                      finetune_epochs=1), seed=0, progress=False, log=lambda *_: None)
    images = test.images[:16]
    got = AdaptedFeatures(tuned.backbone, 16, 0.0).extract(images)
    assert got.shape == (16, base.feature_dim)

    def with_batch_statistics(where: nn.Module) -> np.ndarray:
        model = copy.deepcopy(tuned.backbone.model)
        names = {id(m) for m in batchnorm_layers(where)}
        for original, m in zip(tuned.backbone.model.modules(), model.modules()):
            if id(original) in names:
                m.train()
        with torch.no_grad():
            return model.forward_head(model.forward_features(tuned.backbone.preprocess(images)), pre_logits=True).numpy()

    top = tuned.features.top.cut.top_units
    want = with_batch_statistics(tuned.backbone.model)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-3 * np.abs(want).max())  # float32 rounding, as above
    assert np.abs(got - with_batch_statistics(top)).max() > 0.01


def test_settings_out_of_range_are_refused_in_one_line(lite0_32):
    with pytest.raises(SettingsError, match="batch size"):
        AdaptedFeatures(lite0_32, 0, 16.0)
    with pytest.raises(SettingsError, match="prior"):
        AdaptedFeatures(lite0_32, 16, -1.0)


@pytest.mark.slow
def test_the_documented_example_runs(tmp_path, capsys):
    doc = Path(__file__).parents[2] / "docs" / "test_time_bn.md"
    example = tmp_path / "test_time_bn_example.py"
    example.write_text(re.findall(r"```python\n(.*?)```", doc.read_text(), re.DOTALL)[0])
    runpy.run_path(str(example))
    scores = {line.split(":")[0]: [float(v) for v in re.findall(r"\d\.\d{3}", line)]
              for line in capsys.readouterr().out.splitlines()}
    assert list(scores) == ["none", "gaussian_noise", "contrast"] and all(len(v) == 3 for v in scores.values())
    print(scores)  # the example's numbers, shown by `pytest -rP`
    frozen, adapted, _ = scores["contrast"]
    assert adapted > frozen + 0.05  # a contrast change is what per-batch statistics undo best
    assert all(v[2] < 0.3 for v in scores.values())  # a head fitted on plain features is lost on adapted ones
