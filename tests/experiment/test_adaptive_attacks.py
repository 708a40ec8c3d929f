"""Heads that adapt at test time (t3a, linear-tts) are attacked three ways, direct, by transfer from their base
and by BPDA, and scored by the worst case per image; on 8x8 digits through a flattening "backbone" (the pixels
are the features), where attacking t3a through its own adapting module understates what an attacker does."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

from vfe.backbones import create_backbone
from vfe.backbones.adapt_bn import AdaptedFeatures, AdaptedNetwork
from vfe.experiment.stages.adversarial import stage as adversarial
from vfe.experiment.stages.adversarial.settings import AttackSettings
from vfe.heads import make_head
from vfe.heads.base import SoftmaxOutput
from vfe.robustness.attacks import (
    LogProbabilities,
    StraightThroughLogProbabilities,
    attack_specs,
    make_attack,
    perturb,
    to_unit_float,
)

# one budget per attack family, so that no image is carried over from a smaller budget
SETTINGS = AttackSettings(n_attack=64, attack_eps_linf=[8 / 255], attack_eps_l2=[1.0], attack_steps=5, n_eot=2)
SPECS = attack_specs(SETTINGS.attack_eps_linf, SETTINGS.attack_eps_l2, eot=True)
KEYS = [s.key for s in SPECS]
OLD_FIELDS = {"accuracy", "correct", "n", "samples_randomly", "steps", "n_eot", "seconds"}


class Flatten(nn.Module):
    """A stand-in backbone: the image's pixels are its features."""

    def forward(self, x):
        return x.flatten(1)


def _and(*bits: str) -> str:
    """Per-image AND of correctness strings, character by character."""
    return "".join("1" if all(c == "1" for c in chars) else "0" for chars in zip(*bits, strict=True))


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    images = np.round(X / 16 * 255).astype(np.uint8).reshape(-1, 8, 8, 1)
    features = images[:1200].reshape(1200, -1).astype(np.float32) / 255
    rows = 1200 + np.random.default_rng(0).choice(len(X) - 1200, SETTINGS.n_attack, replace=False)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        heads = {name: make_head(name, epochs=10, random_state=0, **params).fit(features, y[:1200])
                 for name, params in [("linear", {}), ("t3a", {"filter_k": 20}), ("linear-tts", {})]}
    return heads, to_unit_float(images[rows]), y[rows]


@pytest.fixture(scope="module")
def attacked(digits):
    """attack_one on each head, with every (attack model, images in, adversarial images out) recorded."""
    heads, images, labels = digits
    calls = []

    def recording_make(spec, model, steps):
        attack = make_attack(spec, model, steps)
        calls.append({"spec": spec, "model": model})
        return attack

    def recording_perturb(attack, x, target, batch_size):
        out = perturb(attack, x, target, batch_size)
        calls[-1].update(x=x.clone(), adv=out.clone())
        return out

    results, recorded = {}, {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(adversarial, "make_attack", recording_make)
        mp.setattr(adversarial, "perturb", recording_perturb)
        for name, head in heads.items():
            calls.clear()
            results[name] = adversarial.attack_one(Flatten(), head, images, labels, SPECS, SETTINGS, 0, "cpu")
            recorded[name] = list(calls)
    return results, recorded


@pytest.mark.slow
def test_only_the_heads_that_adapt_are_attacked_three_ways(digits, attacked):
    heads, _, _ = digits
    results, recorded = attacked
    assert [adversarial.model_adapts(h) for h in heads.values()] == [False, True, True]
    for name in ("t3a", "linear-tts"):
        r = results[name]
        assert set(r) == OLD_FIELDS | {"per_attack", "per_attack_correct", "strongest", "seconds_per_attack"}
        assert list(r["seconds_per_attack"]) == ["direct", "transfer", "bpda"]
        # per attack FGSM, PGD L-inf, PGD L2 (EOT is the plain attack for a deterministic head)
        models = [c["model"] for c in recorded[name]]
        assert [type(m) for m in models] == [LogProbabilities] * 6 + [StraightThroughLogProbabilities] * 3
        assert models[0].head is not models[3].head and isinstance(models[3].head, SoftmaxOutput)  # its base
        assert models[6].adaptive is models[0].head and models[6].base is models[3].head


@pytest.mark.slow
def test_the_worst_case_is_the_per_image_and_over_the_attacks(attacked):
    results, _ = attacked
    for name in ("t3a", "linear-tts"):
        r = results[name]
        assert set(r["per_attack"]) == set(r["per_attack_correct"]) == set(r["strongest"]) == set(KEYS)
        for key in KEYS:
            bits = r["per_attack_correct"][key]
            assert r["correct"][key] == _and(bits["direct"], bits["transfer"], bits["bpda"]), (name, key)
            assert r["accuracy"][key] == pytest.approx(r["correct"][key].count("1") / r["n"], abs=1e-12)
            for attack, acc in r["per_attack"][key].items():
                assert acc == pytest.approx(bits[attack].count("1") / r["n"], abs=1e-12)
                assert r["accuracy"][key] <= acc
            # the strongest single attack: the lowest accuracy, ties to the first of direct, transfer, bpda
            lowest = min(r["per_attack"][key].values())
            assert r["strongest"][key] == next(a for a in ("direct", "transfer", "bpda")
                                               if r["per_attack"][key][a] == lowest)


def test_hand_made_correctness_is_combined_per_image_and_the_strongest_is_named(digits, monkeypatch):
    """Three attacks that each leave 3 of 4 images standing, on different images: 1 of 4 survives all."""
    heads, images, labels = digits
    made = {"direct": "1101", "transfer": "1011", "bpda": "0111"}  # for pgd_linf; tie: direct named
    made_l2 = {"direct": "1100", "transfer": "1000", "bpda": "1110"}  # for pgd_l2: transfer alone is lowest

    def hand_made(featurize, model, images, labels, target, clean, specs, settings, data_seed, models, batch,
                  settled, random_head, bar, name, advance):
        attack = name.rsplit(" ", 1)[-1]
        return {s.key: np.array([c == "1" for c in (made_l2 if s.norm == "l2" else made)[attack]]) for s in specs}

    monkeypatch.setattr(adversarial, "_attack_path", hand_made)
    specs = attack_specs([8 / 255], [1.0], eot=False)[1:]  # pgd_linf_8/255, pgd_l2_1
    r = adversarial.attack_one(Flatten(), heads["t3a"], images[:4], labels[:4], specs, SETTINGS, 0, "cpu")
    assert r["correct"]["pgd_linf_8/255"] == "0001" and r["accuracy"]["pgd_linf_8/255"] == 0.25
    assert r["per_attack"]["pgd_linf_8/255"] == {"direct": 0.75, "transfer": 0.75, "bpda": 0.75}
    assert r["per_attack_correct"]["pgd_linf_8/255"] == made
    assert r["correct"]["pgd_l2_1"] == "1000" and r["accuracy"]["pgd_l2_1"] == 0.25
    assert r["strongest"] == {"pgd_linf_8/255": "direct", "pgd_l2_1": "transfer"}


@pytest.mark.slow
def test_transfer_from_the_base_beats_the_direct_attack_on_t3a(digits, attacked):
    """On these digits the direct attack, through T3A's adapting templates, leaves far more images standing
    than images crafted on its own Dense layer; scored by T3A's prediction on the attacked images together."""
    heads, images, labels = digits
    results, recorded = attacked
    r = results["t3a"]
    per = r["per_attack"]["pgd_l2_1"]
    assert per["transfer"] < per["direct"] - 0.05, per
    assert r["accuracy"]["pgd_l2_1"] <= per["transfer"] < r["accuracy"]["clean"]
    # the transfer images are the base's adversarial images, and their score is t3a's predict on all of them
    t3a, clean = heads["t3a"], images.flatten(1).numpy()
    call = next(c for c in recorded["t3a"] if c["spec"].key == "pgd_l2_1" and isinstance(c["model"], LogProbabilities)
                and isinstance(c["model"].head, SoftmaxOutput))
    with torch.no_grad():
        base_wrong = t3a.base_probability_module()(torch.from_numpy(clean)).argmax(1).numpy() != labels
    todo = np.flatnonzero(~((t3a.predict(clean) != labels) & base_wrong))  # all but those wrong already
    assert torch.equal(call["x"], images[todo])
    features = clean.copy()
    features[todo] = call["adv"].flatten(1).numpy()
    right = t3a.predict(features) == labels
    assert r["per_attack_correct"]["pgd_l2_1"]["transfer"] == "".join("1" if c else "0" for c in right)


@pytest.mark.slow
def test_a_head_that_does_not_adapt_keeps_todays_result(digits, attacked):
    """linear: the direct attack alone, today's fields, and each image's correctness as computed here from the
    same attack (one budget: PGD attacks the images the head gets right, FGSM all of them)."""
    heads, images, labels = digits
    results, recorded = attacked
    r, head = results["linear"], heads["linear"]
    assert set(r) == OLD_FIELDS
    calls = recorded["linear"]
    assert [c["model"].head for c in calls] == [calls[0]["model"].head] * 3
    clean = head.predict(images.flatten(1).numpy()) == labels
    target = torch.from_numpy(np.searchsorted(head.classes_, labels))
    model = LogProbabilities(Flatten(), head.probability_module().eval())
    for spec, call in zip((s for s in SPECS if not s.eot), calls, strict=True):
        todo = np.arange(len(images)) if spec.method == "fgsm" else np.flatnonzero(clean)
        with torch.random.fork_rng():
            torch.manual_seed(0)
            adv = perturb(make_attack(spec, model, SETTINGS.attack_steps), images[todo], target[todo], 16)
        assert call["spec"] == spec and torch.equal(call["x"], images[todo]) and torch.equal(call["adv"], adv)
        features = images.flatten(1).numpy().copy()
        features[todo] = adv.flatten(1).numpy()
        right = head.predict(features) == labels
        assert r["correct"][spec.key] == "".join("1" if c else "0" for c in right), spec.key
        assert r["correct"][spec.key + "_eot" if spec.method == "pgd" else spec.key] == r["correct"][spec.key]
    # and the direct attack of an adapting head is this same attack on it
    direct = adversarial.attack_one(Flatten(), heads["t3a"], images, labels, SPECS, SETTINGS, 0, "cpu",
                                    adapts=False)
    assert set(direct) == OLD_FIELDS
    assert {k: v["direct"] for k, v in results["t3a"]["per_attack_correct"].items()} == \
        {k: v for k, v in direct["correct"].items() if k != "clean"}


def test_images_settled_at_a_smaller_budget_keep_their_adversarial_version_at_the_larger(digits, monkeypatch):
    """linear, PGD L-inf at 2/255 then 8/255: the larger budget attacks only the images still standing, and an
    image broken at 2/255 keeps that adversarial version (it lies inside the 8/255 box too)."""
    heads, images, labels = digits
    head = heads["linear"]
    calls = []

    def recording_perturb(attack, x, target, batch_size):
        out = perturb(attack, x, target, batch_size)
        calls.append((x.clone(), out.clone()))
        return out

    monkeypatch.setattr(adversarial, "perturb", recording_perturb)
    specs = [s for s in attack_specs([2 / 255, 8 / 255], [], eot=False) if s.method == "pgd"]
    r = adversarial.attack_one(Flatten(), head, images, labels, specs, SETTINGS, 0, "cpu")
    clean = images.flatten(1).numpy()
    small = np.flatnonzero(head.predict(clean) == labels)  # the 2/255 attack: every image the head gets right
    (x_small, adv_small), (x_large, adv_large) = calls
    assert torch.equal(x_small, images[small])
    features = clean.copy()
    features[small] = adv_small.flatten(1).numpy()
    right_small = head.predict(features) == labels
    assert r["correct"]["pgd_linf_2/255"] == "".join("1" if c else "0" for c in right_small)
    standing = np.flatnonzero(right_small)
    assert 0 < len(standing) < len(small) and torch.equal(x_large, images[standing])
    features[standing] = adv_large.flatten(1).numpy()
    right_large = head.predict(features) == labels
    assert r["correct"]["pgd_linf_8/255"] == "".join("1" if c else "0" for c in right_large)


class _AlternatingDraws(nn.Module):
    """A sampling head's probability module, scripted: the draws that decide whether an image is settled (called
    without n_samples) alternate between all-wrong and all-right; the attack's calls get a fixed wrong answer."""

    def __init__(self, target: torch.Tensor):
        super().__init__()
        self.target, self.calls = target, 0

    def forward(self, features, n_samples=None):
        if n_samples is None:
            self.calls += 1
        right = n_samples is None and self.calls % 2 == 0
        classes = self.target if right else (self.target + 1) % 10
        logits = 10 * nn.functional.one_hot(classes[: len(features)], 10).float() + 0 * features[:, :10]
        return torch.softmax(logits, 1)


def test_a_sampling_head_is_settled_only_when_every_one_of_n_eot_draws_is_wrong(digits, monkeypatch):
    """The head's prediction is wrong on every image and one draw in two is right: with n_eot = 2 draws per
    check no image is ever settled, so every PGD budget attacks all 64 images (one draw would settle them all)."""
    _, images, labels = digits
    target = torch.from_numpy(labels)
    module = _AlternatingDraws(target)
    model = SimpleNamespace(classes_=np.arange(10), probability_module=lambda: module,
                            predict=lambda features: (labels[: len(features)] + 1) % 10)
    attacked = []

    def recording_perturb(attack, x, target, batch_size):
        attacked.append(len(x))
        return x

    monkeypatch.setattr(adversarial, "perturb", recording_perturb)
    specs = [s for s in attack_specs([2 / 255, 8 / 255], [], eot=True) if s.method == "pgd"]
    r = adversarial.attack_one(Flatten(), model, images, labels, specs, SETTINGS, 0, "cpu", adapts=False)
    assert r["samples_randomly"] and attacked == [len(images)] * 4


@pytest.mark.slow
def test_a_bn_head_without_adaptation_is_attacked_as_its_twin_three_times(digits):
    """A "+bn" head on a backbone whose BatchNorm does not adapt (prior N = inf: the plain network) is its twin:
    FGSM (no random start) direct through the adapted network on the whole batch, by transfer from the twin and
    by BPDA must each break exactly the images the twin's own attack breaks. Lite0 at 32 px on the digits."""
    _, images, labels = digits
    backbone = create_backbone("efficientnet_lite0", image_size=32, device="cpu", jit=False, precision="fp32")
    images, labels = images[:24], labels[:24]
    train = np.asarray(load_digits().images[:600] / 16 * 255, np.uint8)[..., None]
    with torch.random.fork_rng():
        torch.manual_seed(0)
        twin = make_head("linear", epochs=10, random_state=0).fit(backbone.extract(train, progress=False),
                                                                  load_digits().target[:600])
    specs = attack_specs([2 / 255], [], eot=False)[:1]  # FGSM: no random start
    plain = adversarial.attack_one(backbone, twin, images, labels, specs, SETTINGS, 0, "cpu")
    adapted = AdaptedNetwork(AdaptedFeatures(backbone, 8, math.inf))
    bn = adversarial.attack_one(backbone, twin, images, labels, specs, SETTINGS, 0, "cpu", adapted=adapted,
                                twin=twin)
    assert bn["correct"]["clean"] == plain["correct"]["clean"]
    assert bn["per_attack_correct"]["fgsm_linf_2/255"] == dict.fromkeys(("direct", "transfer", "bpda"),
                                                                        plain["correct"]["fgsm_linf_2/255"])
    assert plain["accuracy"]["fgsm_linf_2/255"] < plain["accuracy"]["clean"]  # the attack does something
