"""The adversarial stage end to end on 8x8 digits through a flattening "backbone": per-image correctness
agrees with the recorded accuracies, the intervals come out per head and attack over replicates, EOT really
attacks a sampling head, and the L2 attack stays inside its ball. Then the report's reading of attacks, on
hand-made results: every verdict with its paired interval, EOT sentences only for heads that sample, and the
attack that set an adaptively attacked head's worst case named beside it."""
from __future__ import annotations

import math
import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from threads import one_thread
from torch import nn

from vfe.data.split import balanced_index
from vfe.data.types import ImageSet
from vfe.experiment.config import EngineSettings
from vfe.experiment.stages.adversarial import stage as adversarial
from vfe.experiment.stages.adversarial.settings import AttackSettings
from vfe.heads import make_head
from vfe.robustness.stats import correctness

BOOTSTRAP = "paired bootstrap over replicates and images"

EPS_L2 = 1.0
SETTINGS = AttackSettings(n_attack=40, attack_eps_linf=[8 / 255], attack_eps_l2=[EPS_L2], attack_steps=5, n_eot=4)


class Flatten(nn.Module):
    """A stand-in backbone: the image's pixels are its features."""

    def forward(self, x):
        return x.flatten(1)


@pytest.fixture(scope="module")
def attacked():
    """run_stage on a linear (deterministic) and a vfe (sampling) head in two replicates (each with its own seed,
    so its own attacked images), with every attack model and every perturbation the stage made recorded."""
    X, y = load_digits(return_X_y=True)
    images = np.round(X / 16 * 255).astype(np.uint8).reshape(-1, 8, 8)
    train, test = slice(0, 1200), slice(1200, None)
    features = images[train].reshape(1200, -1).astype(np.float32) / 255
    models = {}
    with torch.random.fork_rng():
        torch.manual_seed(0)
        for r in (0, 1):
            models[("linear", r)] = make_head("linear", epochs=10, random_state=r).fit(features, y[train])
            models[("vfe", r)] = make_head("vfe", latent_dim=8, encoder_units=32, decoder_units=32, vae_epochs=10,
                                           epochs=10, recon_weight=10.0, random_state=r).fit(features, y[train])
    test_set = ImageSet(images[test], y[test], [str(c) for c in range(10)])
    draws = [SimpleNamespace(backbone=Flatten(), test=test_set, seed=seed) for seed in (11, 12)]
    ctx = SimpleNamespace(replicates=draws, models=models, device="cpu", progress=False, cluster=EngineSettings(),
                          models_of=lambda r: {k: m for k, m in models.items() if k[1] == r}, adapted={})
    attacks, perturbations = [], []
    real_make, real_perturb = adversarial.make_attack, adversarial.perturb

    def make_attack(spec, model, steps):
        attacks.append((spec, model.n_samples))
        return real_make(spec, model, steps)

    def perturb(attack, images, labels, batch_size):
        out = real_perturb(attack, images, labels, batch_size)
        perturbations.append((attacks[-1][0], images.clone(), out.clone()))
        return out

    # one thread: the attacks run here, one after another, where the recording spies see them (with two threads
    # the stage would send them to worker processes, which cannot hold this stand-in backbone)
    with one_thread(), pytest.MonkeyPatch.context() as mp:
        mp.setattr(adversarial, "make_attack", make_attack)
        mp.setattr(adversarial, "perturb", perturb)
        out = adversarial.run_stage(SETTINGS, ctx)
    return out, attacks, perturbations


@pytest.mark.slow
def test_per_image_correctness_agrees_with_the_accuracies(attacked):
    out, _, _ = attacked
    for head, per_replicate in out["adversarial"].items():
        for replicate, r in per_replicate.items():
            assert set(r["correct"]) == set(r["accuracy"]) and "clean" in r["correct"]
            for key, bits in r["correct"].items():
                c = correctness(bits)
                assert len(c) == r["n"] == SETTINGS.n_attack and set(np.unique(c)) <= {0, 1}
                assert c.mean() == pytest.approx(r["accuracy"][key], abs=1e-12), (head, replicate, key)


@pytest.mark.slow
def test_intervals_per_head_and_attack_hold_the_mean_over_replicates(attacked):
    out, _, _ = attacked
    intervals = out["adversarial_intervals"]
    assert set(intervals) == {"linear", "vfe"}
    for head, per_key in intervals.items():
        per_replicate = out["adversarial"][head]
        assert set(per_key) == set(per_replicate["0"]["accuracy"])
        for key, iv in per_key.items():
            mean = np.mean([r["accuracy"][key] for r in per_replicate.values()])
            assert iv["mean"] == pytest.approx(mean)
            assert (iv["n_images"], iv["n_replicates"]) == (SETTINGS.n_attack, 2)
            assert 0 <= iv["low"] <= iv["mean"] <= iv["high"] <= 1
    clean = intervals["linear"]["clean"]
    assert clean["mean"] > 0.5 and clean["high"] - clean["low"] > 0.05  # 40 images: several points wide


@pytest.mark.slow
def test_eot_attacks_the_sampling_head_and_reuses_the_plain_attack_for_a_deterministic_one(attacked):
    out, attacks, _ = attacked
    eot_runs = [n for spec, n in attacks if spec.eot]
    plain_runs = [n for spec, n in attacks if not spec.eot]
    # 2 vfe replicates x 2 EOT attacks (L-inf and L2), each with the head averaged over n_eot draws per step
    assert eot_runs == [SETTINGS.n_eot] * 4
    assert set(plain_runs) == {None}
    assert out["adversarial"]["vfe"]["0"]["samples_randomly"]
    for replicate in ("0", "1"):
        linear = out["adversarial"]["linear"][replicate]
        assert not linear["samples_randomly"]
        assert linear["correct"]["pgd_l2_1_eot"] == linear["correct"]["pgd_l2_1"]


@pytest.mark.slow
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
    return {"mean": mean, "low": low, "high": high, "n_images": 100, "n_replicates": 3, "level": 0.95}


def _boot(mean_diff, low, high, verdict):
    """A comparison as the summary stores a paired bootstrap's."""
    return {"n": 3, "n_replicates": 3, "n_images": 100, "mean_diff": mean_diff, "low": low, "high": high,
            "level": 0.95, "test": BOOTSTRAP, "verdict": verdict}


def _rows(**right: int) -> dict:
    """Three replicates of 100 attacked images each, right on the first `right[key]` of them under `key`."""
    return {str(r): {"accuracy": {k: n / 100 for k, n in right.items()},
                     "correct": {k: "1" * n + "0" * (100 - n) for k, n in right.items()}} for r in range(3)}


NAIVE, EOT = "adv:pgd_linf_8/255", "adv:pgd_linf_8/255_eot"


def hand_made_results(with_intervals: bool = True) -> dict:
    """vfe (samples) beats linear under the naive PGD by a paired interval that excludes 0, but not under EOT; det
    (deterministic: its EOT number is a copy) beats linear under both."""
    better = _boot(0.3, 0.2, 0.4, "better than baseline")
    results = {
        "summary": {"baseline": "linear",
                    "vs_baseline": {"vfe": {NAIVE: better, EOT: _boot(0.02, -0.05, 0.09, "no difference shown")},
                                    "det": {NAIVE: better, EOT: better}},
                    "table": {"vfe": {NAIVE: {"mean": 0.4, "std": 0.01, "n": 3}, EOT: {"mean": 0.12, "std": 0.01, "n": 3}},
                              "det": {NAIVE: {"mean": 0.4, "std": 0.01, "n": 3}, EOT: {"mean": 0.4, "std": 0.01, "n": 3}},
                              "linear": {NAIVE: {"mean": 0.1, "std": 0.0, "n": 3}, EOT: {"mean": 0.1, "std": 0.0, "n": 3}}}},
        "adversarial": {
            "vfe": {r: {**row, "samples_randomly": True} for r, row in
                    _rows(**{"clean": 90, "pgd_linf_8/255": 40, "pgd_linf_8/255_eot": 12}).items()},
            "det": {r: {**row, "samples_randomly": False} for r, row in
                    _rows(**{"clean": 90, "pgd_linf_8/255": 40, "pgd_linf_8/255_eot": 40}).items()},
            "linear": {r: {**row, "samples_randomly": False} for r, row in
                       _rows(**{"clean": 80, "pgd_linf_8/255": 10, "pgd_linf_8/255_eot": 10}).items()}}}
    if with_intervals:
        results["adversarial_intervals"] = {
            "vfe": {"clean": _iv(0.9, 0.85, 0.95), "pgd_linf_8/255": _iv(0.4, 0.3, 0.5),
                    "pgd_linf_8/255_eot": _iv(0.12, 0.06, 0.19)},
            "linear": {"clean": _iv(0.8, 0.72, 0.87), "pgd_linf_8/255": _iv(0.1, 0.05, 0.16),
                       "pgd_linf_8/255_eot": _iv(0.1, 0.05, 0.16)}}
    return results


def _said(results: dict) -> tuple[list[str], list[str]]:
    from vfe.report.narrative import what_this_says

    blocks = what_this_says(results)
    return [i for b in blocks[:-1] for i in b.items], blocks[-1].items


def test_the_narrative_quotes_each_attack_verdict_with_its_paired_interval():
    paired, other = _said(hand_made_results())
    text = "\n".join(paired + other)
    assert ("PGD L∞ ε=8/255: vfe 40.0 % [30.0, 50.0] (90.0 % before attack) against linear 10.0 % [5.0, 16.0] "
            "(80.0 % before attack) (mean [95 % interval over replicates and images]); vfe − linear +30.0 points "
            f"[20.0, 40.0], {BOOTSTRAP} (better than baseline)") in text
    assert ("PGD L∞ ε=8/255, EOT: vfe 12.0 % [6.0, 19.0] (90.0 % before attack) against linear 10.0 % [5.0, 16.0] "
            "(80.0 % before attack) (mean [95 % interval over replicates and images]); vfe − linear +2.0 points "
            f"[−5.0, 9.0], {BOOTSTRAP} (no difference shown)") in text
    assert (f"vfe's advantage under PGD L∞ ε=8/255 (+30.0 points [20.0, 40.0], {BOOTSTRAP}; better than baseline) "
            f"does not survive EOT (+2.0 points [−5.0, 9.0], {BOOTSTRAP}; no difference shown)") in text
    assert "better on 1 (PGD L∞ ε=8/255 +30.0 points [20.0, 40.0] under the naive attack only, not under EOT)" in text
    # det is deterministic: its EOT row is a copy of the plain attack's, neither quoted nor counted twice
    assert "Over 1 metric, 1 paired interval excludes 0" in text and "det is better on 1 (PGD L∞ ε=8/255 +30.0 " \
        "points [20.0, 40.0])." in text
    assert not any(i.startswith("adversarial accuracy, PGD L∞ ε=8/255, EOT: det") for i in paired)
    assert "intervals do not overlap" not in text and "within the interval" not in text and "spread" not in text
    # every better / worse the narrative says comes with a paired interval in the same sentence
    for sentence in paired + other:
        if "better" in sentence or "worse" in sentence:
            assert re.search(r"\[[−\d.]+, [−\d.]+\]", sentence), sentence


def test_eot_sentences_only_for_heads_that_sample():
    """det's EOT number is a copy of its plain attack: "survives EOT" would be a claim no attack tested."""
    paired, other = _said(hand_made_results())
    det = [i for i in paired if i.startswith("det") or "det:" in i or "det's" in i]
    assert not any("EOT" in i and "survive" in i for i in det), det
    assert not any(i.startswith("det:") for i in other)  # no "EOT takes its accuracy" line for det either
    unsaid = hand_made_results()  # results that do not say whether det samples: no EOT claim either
    for row in unsaid["adversarial"]["det"].values():
        del row["samples_randomly"]
    paired_unsaid, other_unsaid = _said(unsaid)
    assert not any(("survive" in i or "EOT takes" in i) and "det" in i for i in paired_unsaid + other_unsaid)
    # vfe's own EOT gap: EOT - naive on the same replicates and images, 28 of 100 images lost in each replicate,
    # so the paired bootstrap interval is -0.28 +/- 1.96 sqrt(0.28 * 0.72 / 300) = [-0.331, -0.229]
    eot = next(i for i in other if i.startswith("vfe: EOT takes its accuracy under PGD L∞ ε=8/255 from 40.0 % "
                                                "[30.0, 50.0] to 12.0 % [6.0, 19.0]"))
    low, high = (float(x.replace("−", "-")) for x in re.search(r"EOT − naive −28\.0 points \[([−\d.]+), ([−\d.]+)\]",
                                                              eot).groups())
    assert low == pytest.approx(-28.0 - 100 * 1.96 * math.sqrt(0.28 * 0.72 / 300), abs=1.2)
    assert high == pytest.approx(-28.0 + 100 * 1.96 * math.sqrt(0.28 * 0.72 / 300), abs=1.2)
    assert f"{BOOTSTRAP}: EOT removes accuracy the naive attack left" in eot


def test_without_intervals_the_heads_show_mean_and_std_and_the_verdict_its_paired_interval():
    paired, _ = _said(hand_made_results(with_intervals=False))
    assert ("adversarial accuracy, PGD L∞ ε=8/255: vfe 40.0 ± 1.0 % against linear 10.0 ± 0.0 % (mean ± std over "
            f"replicates); vfe − linear +30.0 points [20.0, 40.0], {BOOTSTRAP} (better than baseline)") in paired
    assert "does not survive EOT" in "\n".join(paired)


def test_a_verdict_without_a_paired_interval_is_not_repeated():
    """Results from before the paired tests said "better" when two mean ± std ranges did not overlap: with no
    interval behind it, the report says no difference was shown."""
    results = hand_made_results()
    results["summary"]["vs_baseline"]["vfe"][NAIVE] = {"n": 3, "mean_diff": 0.3, "std_diff": 0.01,
                                                        "exceeds_spread": True, "verdict": "better than baseline"}
    paired, _ = _said(results)
    line = next(i for i in paired if i.startswith("adversarial accuracy, PGD L∞ ε=8/255:"))
    assert line.endswith("+30.0 points (no interval in these results), paired test (no difference shown)")
    assert not any("vfe's advantage" in i for i in paired)


def test_the_narrative_quotes_the_largest_budget_at_which_some_head_is_above_zero():
    """With a 16/255 attack at which both heads are at 0 %, the bullets stay at 8/255: 0 against 0 tells nothing."""
    results = hand_made_results(with_intervals=False)
    zero = _boot(0.0, 0.0, 0.0, "no difference shown")
    for key in ("adv:pgd_linf_16/255", "adv:pgd_linf_16/255_eot"):
        results["summary"]["vs_baseline"]["vfe"][key] = zero
        for head in ("vfe", "linear"):
            results["summary"]["table"][head][key] = {"mean": 0.0, "std": 0.0, "n": 3}
    paired, _ = _said(results)
    quoted = [item for item in paired if item.startswith("adversarial accuracy")]
    assert quoted and all("8/255" in item for item in quoted), quoted
    results["summary"]["table"]["linear"]["adv:pgd_linf_16/255"]["mean"] = 0.01  # now 16/255 tells heads apart
    paired, _ = _said(results)
    assert any("16/255" in item for item in paired if item.startswith("adversarial accuracy"))


def adaptive_results() -> dict:
    """t3a adapts at test time: directly attacked it keeps 60 of 100 images per replicate (linear: 10), but the
    transfer attack (replicates 0 and 1) or BPDA (replicate 2) leaves it 10, the worst case it is judged by."""
    results = hand_made_results()
    worst = _rows(**{"clean": 90, "pgd_linf_8/255": 10, "pgd_linf_8/255_eot": 10})
    for r, row in worst.items():
        strongest = "bpda" if r == "2" else "transfer"
        row.update(samples_randomly=False,
                   per_attack={k: {"direct": 0.6, "transfer": 0.1, "bpda": 0.12} for k in ("pgd_linf_8/255",
                                                                                         "pgd_linf_8/255_eot")},
                   per_attack_correct={k: {"direct": "1" * 60 + "0" * 40} for k in ("pgd_linf_8/255",
                                                                                    "pgd_linf_8/255_eot")},
                   strongest={k: strongest for k in ("pgd_linf_8/255", "pgd_linf_8/255_eot")})
    results["adversarial"]["t3a"] = worst
    results["summary"]["table"]["t3a"] = {k: {"mean": 0.1, "std": 0.0, "n": 3} for k in (NAIVE, EOT)}
    results["summary"]["vs_baseline"]["t3a"] = {k: _boot(0.0, 0.0, 0.0, "no difference shown") for k in (NAIVE, EOT)}
    return results


def test_an_adaptive_heads_accuracy_names_the_strongest_attack_and_a_direct_only_gain_is_not_robustness():
    paired, _ = _said(adaptive_results())
    t3a = [i for i in paired if "t3a" in i]
    assert any(i.startswith("adversarial accuracy, PGD L∞ ε=8/255: t3a 10.0 ± 0.0 % (worst case per image over "
                            "its attacks; strongest single attack: transfer in replicates 0, 1; bpda in replicate 2) "
                            "against linear") for i in t3a), t3a
    # direct attack alone: +50 points in every replicate, 0.5 +/- 1.96 sqrt(0.25 / 300) = [0.443, 0.557]
    removed = next(i for i in t3a if "t3a's advantage under the direct" in i)
    low, high = (float(x) for x in re.search(r"\+50\.0 points \[([\d.]+), ([\d.]+)\]", removed).groups())
    assert low == pytest.approx(50 - 100 * 1.96 * math.sqrt(0.25 / 300), abs=1.2) and high < 60
    assert ("removed by its worst case over attacks (strongest single attack: transfer in replicates 0, 1; bpda in "
            f"replicate 2), ±0.0 points [0.0, 0.0], {BOOTSTRAP} (no difference shown): it is not robustness") in removed


def test_the_section_tables_show_intervals_with_replicates_and_the_eot_gap_with_its_paired_interval():
    from types import SimpleNamespace

    from vfe.experiment.stages.adversarial.section import _adaptive_table, _eot_gap_table, _interval_table

    table = _interval_table(hand_made_results())
    assert table.rows == [  # heads in the results' order
        ["vfe", "PGD L∞ ε=8/255", "40.0 [30.0, 50.0]", "90.0 [85.0, 95.0]", "100 × 3"],
        ["vfe", "PGD L∞ ε=8/255, EOT", "12.0 [6.0, 19.0]", "90.0 [85.0, 95.0]", "100 × 3"],
        ["linear", "PGD L∞ ε=8/255", "10.0 [5.0, 16.0]", "80.0 [72.0, 87.0]", "100 × 3"]]  # EOT = plain for it
    assert "clean accuracy" in table.header[3] and "95 %" in table.header[2] and "replicates" in table.header[4]
    assert "two-stage bootstrap" in table.caption
    assert "per-image correctness" in _interval_table(hand_made_results(with_intervals=False)).text

    gap = _eot_gap_table(SimpleNamespace(results=hand_made_results()))
    assert [row[:4] for row in gap.rows] == [["vfe", "PGD L∞ ε=8/255", "40.0 ± 0.0", "12.0 ± 0.0"]]  # samplers only
    assert gap.rows[0][4].startswith("+28.0 [") and gap.rows[0][5] == BOOTSTRAP

    adaptive = _adaptive_table(adaptive_results(), ["t3a"])
    assert adaptive.header[2:5] == ["direct (%)", "transfer (%)", "bpda (%)"]
    assert adaptive.rows[0] == ["t3a", "PGD L∞ ε=8/255", "60.0 ± 0.0", "10.0 ± 0.0", "12.0 ± 0.0", "10.0 ± 0.0",
                                "transfer in replicates 0, 1; bpda in replicate 2"]


@pytest.mark.slow
def test_each_replicate_attacks_its_own_seeded_images_and_every_head_the_same(attacked):
    out, _, _ = attacked
    labels = load_digits().target[1200:]
    for replicate, seed in (("0", 11), ("1", 12)):
        rows = balanced_index(labels, SETTINGS.n_attack, seed).tolist()
        assert out["adversarial"]["linear"][replicate]["images"] == rows
        assert out["adversarial"]["vfe"][replicate]["images"] == rows
    assert out["adversarial"]["linear"]["0"]["images"] != out["adversarial"]["linear"]["1"]["images"]


@pytest.mark.slow
def test_the_eot_attack_of_a_sampling_head_starts_from_the_clean_images_not_the_plain_attacks(attacked):
    """EOT and plain PGD are separate attacks: each attacks every image not settled on the clean images."""
    _, _, perturbations = attacked
    eot = [(spec, x) for spec, x, _ in perturbations if spec.eot]
    assert len(eot) == 4
    for spec, x in eot:
        plain = [x0 for s, x0, _ in perturbations if (s.method, s.norm, s.eps, s.eot) == (spec.method, spec.norm,
                                                                                          spec.eps, False)]
        assert any(torch.equal(x, x0) for x0 in plain), spec.key
