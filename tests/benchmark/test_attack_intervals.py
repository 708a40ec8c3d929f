"""The adversarial stage end to end on 8x8 digits through a flattening "backbone": per-image correctness
agrees with the recorded accuracies, the intervals come out per head and attack, EOT really attacks a
sampling head, and the L2 attack stays inside its ball."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

from vfe.benchmark import adversarial
from vfe.benchmark.config import AttackSettings, EngineSettings
from vfe.data.types import ImageSet
from vfe.heads import make_head
from vfe.robustness.stats import correctness

EPS_L2 = 1.0
SETTINGS = AttackSettings(n_attack=40, attack_eps_linf=[8 / 255], attack_eps_l2=[EPS_L2], attack_steps=5, n_eot=4)


class Flatten(nn.Module):
    """A stand-in backbone: the image's pixels are its features."""

    def forward(self, x):
        return x.flatten(1)


@pytest.fixture(scope="module")
def attacked():
    """run_stage on a linear (deterministic) and a vfe (sampling) head, two seeds each, with every
    attack model and every perturbation the stage made recorded on the way."""
    X, y = load_digits(return_X_y=True)
    images = np.round(X / 16 * 255).astype(np.uint8).reshape(-1, 8, 8)
    train, test = slice(0, 1200), slice(1200, None)
    features = images[train].reshape(1200, -1).astype(np.float32) / 255
    models = {}
    with torch.random.fork_rng():
        torch.manual_seed(0)
        for seed in (0, 1):
            models[("linear", seed)] = make_head("linear", epochs=10, random_state=seed).fit(features, y[train])
            models[("vfe", seed)] = make_head("vfe", latent_dim=8, encoder_units=32, decoder_units=32, vae_epochs=10,
                                              epochs=10, recon_weight=10.0, random_state=seed).fit(features, y[train])
    test_set = ImageSet(images[test], y[test], [str(c) for c in range(10)])
    ctx = SimpleNamespace(prepared=SimpleNamespace(backbone=Flatten(), test=test_set), models=models, data_seed=0,
                          device="cpu", progress=False, cluster=EngineSettings())
    attacks, perturbations = [], []
    real_make, real_perturb = adversarial.make_attack, adversarial.perturb

    def make_attack(spec, model, steps):
        attacks.append((spec, model.n_samples))
        return real_make(spec, model, steps)

    def perturb(attack, images, labels, batch_size):
        out = real_perturb(attack, images, labels, batch_size)
        perturbations.append((attacks[-1][0], images.clone(), out.clone()))
        return out

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(adversarial, "make_attack", make_attack)
        mp.setattr(adversarial, "perturb", perturb)
        out = adversarial.run_stage(SETTINGS, ctx)
    return out, attacks, perturbations


def test_per_image_correctness_agrees_with_the_accuracies(attacked):
    out, _, _ = attacked
    for head, per_seed in out["adversarial"].items():
        for seed, r in per_seed.items():
            assert set(r["correct"]) == set(r["accuracy"]) and "clean" in r["correct"]
            for key, bits in r["correct"].items():
                c = correctness(bits)
                assert len(c) == r["n"] == SETTINGS.n_attack and set(np.unique(c)) <= {0, 1}
                assert c.mean() == pytest.approx(r["accuracy"][key], abs=1e-12), (head, seed, key)


def test_intervals_per_head_and_attack_hold_the_mean_over_seeds(attacked):
    out, _, _ = attacked
    intervals = out["adversarial_intervals"]
    assert set(intervals) == {"linear", "vfe"}
    for head, per_key in intervals.items():
        per_seed = out["adversarial"][head]
        assert set(per_key) == set(per_seed["0"]["accuracy"])
        for key, iv in per_key.items():
            mean = np.mean([r["accuracy"][key] for r in per_seed.values()])
            assert iv["mean"] == pytest.approx(mean)
            assert (iv["n_images"], iv["n_seeds"]) == (SETTINGS.n_attack, 2)
            assert 0 <= iv["low"] <= iv["mean"] <= iv["high"] <= 1
    clean = intervals["linear"]["clean"]
    assert clean["mean"] > 0.5 and clean["high"] - clean["low"] > 0.05  # 40 images: several points wide


def test_eot_attacks_the_sampling_head_and_reuses_the_plain_attack_for_a_deterministic_one(attacked):
    out, attacks, _ = attacked
    eot_runs = [n for spec, n in attacks if spec.eot]
    plain_runs = [n for spec, n in attacks if not spec.eot]
    # 2 vfe seeds x 2 EOT attacks (L-inf and L2), each with the head averaged over n_eot draws per step
    assert eot_runs == [SETTINGS.n_eot] * 4
    assert set(plain_runs) == {None}
    assert out["adversarial"]["vfe"]["0"]["samples_randomly"]
    for seed in ("0", "1"):
        linear = out["adversarial"]["linear"][seed]
        assert not linear["samples_randomly"]
        assert linear["correct"]["pgd_l2_1_eot"] == linear["correct"]["pgd_l2_1"]


def test_the_l2_attack_stays_within_its_radius_and_linf_within_its_box(attacked):
    _, _, perturbations = attacked
    l2 = [(x, adv) for spec, x, adv in perturbations if spec.norm == "l2"]
    linf = [(spec.eps, x, adv) for spec, x, adv in perturbations if spec.norm == "linf"]
    assert l2 and linf
    for x, adv in l2:
        norms = (adv - x).flatten(1).norm(dim=1)
        assert norms.max().item() <= EPS_L2 + 1e-5
        assert norms.max().item() > EPS_L2 / 2  # it did move
        assert adv.min() >= 0 and adv.max() <= 1
    for eps, x, adv in linf:
        assert (adv - x).abs().max().item() <= eps + 1e-6


def _iv(mean, low, high):
    return {"mean": mean, "low": low, "high": high, "n_images": 100, "n_seeds": 3, "level": 0.95}


def hand_made_results(with_intervals: bool = True) -> dict:
    """vfe beats linear under the naive PGD by clearly separated intervals, but not under EOT."""
    naive, eot = "adv:pgd_linf_8/255", "adv:pgd_linf_8/255_eot"
    better = {"n": 3, "mean_diff": 0.3, "std_diff": 0.01, "p_value": 0.001, "exceeds_spread": True,
              "verdict": "better than baseline"}
    results = {
        "summary": {"baseline": "linear", "vs_baseline": {"vfe": {naive: better, eot: dict(better, mean_diff=0.02)}},
                    "table": {"vfe": {naive: {"mean": 0.4, "std": 0.01, "n": 3},
                                      eot: {"mean": 0.12, "std": 0.01, "n": 3}},
                              "linear": {naive: {"mean": 0.1, "std": 0.0, "n": 3},
                                         eot: {"mean": 0.1, "std": 0.0, "n": 3}}}},
        "adversarial": {"vfe": {"0": {"samples_randomly": True}}, "linear": {"0": {"samples_randomly": False}}}}
    if with_intervals:
        results["adversarial_intervals"] = {
            "vfe": {"clean": _iv(0.9, 0.85, 0.95), "pgd_linf_8/255": _iv(0.4, 0.3, 0.5),
                    "pgd_linf_8/255_eot": _iv(0.12, 0.06, 0.19)},
            "linear": {"clean": _iv(0.8, 0.72, 0.87), "pgd_linf_8/255": _iv(0.1, 0.05, 0.16),
                       "pgd_linf_8/255_eot": _iv(0.1, 0.05, 0.16)}}
    return results


def test_the_narrative_quotes_attack_intervals_and_judges_by_their_overlap():
    from vfe.report.narrative import what_this_says

    paired, other = (b.items for b in what_this_says(hand_made_results()))
    text = "\n".join(paired + other)
    assert ("PGD L∞ ε=8/255: vfe 40.0 % [30.0, 50.0] (90.0 % before attack) against linear 10.0 % [5.0, 16.0] "
            "(80.0 % before attack) (95 % intervals over images and seeds; intervals do not overlap)") in text
    assert ("PGD L∞ ε=8/255, EOT: vfe 12.0 % [6.0, 19.0] (90.0 % before attack) against linear 10.0 % [5.0, 16.0] "
            "(80.0 % before attack) (95 % intervals over images and seeds; within the interval)") in text
    # the seed verdict said "better" under EOT too; the intervals say the advantage does not survive
    assert "does not survive EOT (12.0 % [6.0, 19.0] against 10.0 % [5.0, 16.0], no clear difference)" in text
    assert "better on 1 (PGD L∞ ε=8/255)" in text and "±" not in "\n".join(paired[:2])
    assert "EOT takes its accuracy under PGD L∞ ε=8/255 from 40.0 % [30.0, 50.0] to 12.0 % [6.0, 19.0]" in text


def test_without_intervals_the_narrative_keeps_the_seed_spread():
    from vfe.report.narrative import what_this_says

    paired, other = (b.items for b in what_this_says(hand_made_results(with_intervals=False)))
    assert "adversarial accuracy, PGD L∞ ε=8/255: +30.0 ± 1.0 points (better than baseline)" in paired
    assert "survives EOT" in "\n".join(paired) and "%" in other[0] and "[" not in other[0]


def test_the_narrative_quotes_the_largest_budget_at_which_some_head_is_above_zero():
    """With a 16/255 attack at which both heads are at 0 %, the bullets stay at 8/255: 0 against 0 tells nothing."""
    from vfe.report.narrative import what_this_says

    results = hand_made_results(with_intervals=False)
    zero = {"n": 3, "mean_diff": 0.0, "std_diff": 0.0, "p_value": None, "exceeds_spread": False,
            "verdict": "no clear difference"}
    for key in ("adv:pgd_linf_16/255", "adv:pgd_linf_16/255_eot"):
        results["summary"]["vs_baseline"]["vfe"][key] = zero
        for head in ("vfe", "linear"):
            results["summary"]["table"][head][key] = {"mean": 0.0, "std": 0.0, "n": 3}
    paired, _ = (b.items for b in what_this_says(results))
    quoted = [item for item in paired if item.startswith("adversarial accuracy")]
    assert quoted and all("8/255" in item for item in quoted), quoted
    results["summary"]["table"]["linear"]["adv:pgd_linf_16/255"]["mean"] = 0.01  # now 16/255 tells heads apart
    paired, _ = (b.items for b in what_this_says(results))
    assert any("16/255" in item for item in paired if item.startswith("adversarial accuracy"))


def test_the_section_table_shows_each_attack_with_its_interval_beside_the_clean_accuracy():
    from vfe.report.sections import _interval_table

    table = _interval_table(hand_made_results())
    assert table.rows == [  # heads in the results' order
        ["vfe", "PGD L∞ ε=8/255", "40.0 [30.0, 50.0]", "90.0 [85.0, 95.0]", "100 × 3"],
        ["vfe", "PGD L∞ ε=8/255, EOT", "12.0 [6.0, 19.0]", "90.0 [85.0, 95.0]", "100 × 3"],
        ["linear", "PGD L∞ ε=8/255", "10.0 [5.0, 16.0]", "80.0 [72.0, 87.0]", "100 × 3"]]  # EOT = plain for it
    assert "clean accuracy" in table.header[3] and "95 %" in table.header[2]
    assert "sampling error" in _interval_table(hand_made_results(with_intervals=False)).text
