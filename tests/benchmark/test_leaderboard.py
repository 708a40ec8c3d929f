"""The leaderboard on a hand-made run: held-out corruptions per head, relative mCE normalised on the same set, the
t interval over seeds, the attack column, the ranking - each against numbers computed here by hand."""
from __future__ import annotations

import math

import pytest

from vfe.benchmark.leaderboard import leaderboard, ranked_attack, t_interval
from vfe.report import build_document
from vfe.report.to_markdown import to_markdown

# accuracies [seed][corruption][severity]; two benchmark corruptions, "gaussian_noise" seen by the augmented head
CLEAN = {"linear": [0.90, 0.92, 0.91], "vfe-aug": [0.89, 0.91, 0.90]}
CORR = {"linear": [{"gaussian_noise": [0.5, 0.3], "fog": [0.8, 0.6]},
                   {"gaussian_noise": [0.6, 0.4], "fog": [0.82, 0.62]},
                   {"gaussian_noise": [0.55, 0.35], "fog": [0.81, 0.61]}],
        "vfe-aug": [{"gaussian_noise": [0.85, 0.8], "fog": [0.84, 0.7]},
                    {"gaussian_noise": [0.86, 0.82], "fog": [0.85, 0.72]},
                    {"gaussian_noise": [0.85, 0.81], "fog": [0.86, 0.74]}]}


def _results() -> dict:
    clean = {h: {str(s): {"accuracy": a, "nll": 0.3, "ece": 0.05 + s / 100} for s, a in enumerate(v)}
             for h, v in CLEAN.items()}
    per_head = {h: {str(s): {"accuracy": {c: {"1": v[0], "3": v[1]} for c, v in table.items()}}
                    for s, table in enumerate(seeds)} for h, seeds in CORR.items()}
    adversarial = {h: {str(s): {"accuracy": {"pgd_linf_2/255_eot": 0.2 + s / 100, "pgd_linf_8/255_eot": 0.01,
                                             "fgsm_linf_8/255": 0.1}} for s in range(3)} for h in CLEAN}
    return {"setting": {"protocol": "frozen"}, "clean": clean,
            "corruptions": {"per_head": per_head, "benchmark_corruptions": ["gaussian_noise", "fog"]},
            "augmentation": {"train_family": "noise", "train_corruptions": ["gaussian_noise", "shot_noise"],
                             "held_out_families": ["blur", "weather"]},
            "adversarial": adversarial,
            "adversarial_intervals": {h: {"pgd_linf_2/255_eot": {"low": 0.1, "high": 0.3}} for h in CLEAN},
            "fit_seconds": {"linear": [1.0, 2.0, 3.0], "vfe-aug": [10.0, 12.0, 14.0]}}


def _by_head(board):
    return {r["head"]: r for r in board}


def test_relative_mce_uses_only_the_corruptions_a_head_did_not_see():
    board = _by_head(leaderboard(_results(), {"linear": False, "vfe-aug": True}))
    aug, lin = board["vfe-aug"], board["linear"]
    assert aug["seen_corruptions"] == ["gaussian_noise", "shot_noise"] and aug["held_out_corruptions"] == ["fog"]
    assert lin["held_out_corruptions"] == ["gaussian_noise", "fog"]
    rel = []
    for s in range(3):  # fog only: (sum of the head's error increase) / (the linear head's), same seed
        head = sum((1 - a) - (1 - CLEAN["vfe-aug"][s]) for a in CORR["vfe-aug"][s]["fog"])
        base = sum((1 - a) - (1 - CLEAN["linear"][s]) for a in CORR["linear"][s]["fog"])
        rel.append(head / base)
    assert aug["held_out_relative_mCE"]["mean"] == pytest.approx(sum(rel) / 3)
    mean = sum(rel) / 3
    sd = math.sqrt(sum((r - mean) ** 2 for r in rel) / 2)
    half = 4.302652729911275 * sd / math.sqrt(3)  # t(0.975, 2 degrees of freedom)
    assert aug["held_out_relative_mCE_interval"] == pytest.approx([mean - half, mean + half])
    assert aug["held_out_accuracy"]["mean"] == pytest.approx(sum(sum(CORR["vfe-aug"][s]["fog"]) / 2
                                                                 for s in range(3)) / 3)
    assert aug["linear_held_out_accuracy"]["mean"] == pytest.approx(sum(sum(CORR["linear"][s]["fog"]) / 2
                                                                        for s in range(3)) / 3)
    assert lin["held_out_relative_mCE"]["mean"] == pytest.approx(1.0) and not lin["separates_from_linear"]
    assert aug["separates_from_linear"] == (mean + half < 1.0)
    assert aug["clean_diff_vs_linear"]["mean"] == pytest.approx(-0.01)
    assert aug["fit_seconds"]["mean"] == pytest.approx(12.0)


def test_without_augmentation_every_benchmark_corruption_counts():
    board = _by_head(leaderboard(_results(), {"linear": False, "vfe-aug": False}))
    assert board["vfe-aug"]["held_out_corruptions"] == ["gaussian_noise", "fog"]


def test_ranked_by_held_out_relative_mce_with_the_smallest_eot_budget_as_the_attack():
    board = leaderboard(_results(), {"linear": False, "vfe-aug": True})
    assert [r["head"] for r in board] == ["vfe-aug", "linear"]
    assert board[0]["attack"] == "pgd_linf_2/255_eot" and board[0]["attack_interval"] == [0.1, 0.3]
    assert board[0]["attack_accuracy"]["mean"] == pytest.approx(0.21)
    assert ranked_attack(["fgsm_linf_1/255", "pgd_linf_8/255_eot", "pgd_linf_2/255_eot", "pgd_l2_0.5"]) == \
        "pgd_linf_2/255_eot"
    assert ranked_attack(["fgsm_linf_1/255", "pgd_linf_2/255"]) == "pgd_linf_2/255"
    assert t_interval([0.5]) is None


def test_the_report_shows_the_leaderboard_with_held_out_counts():
    results = _results()
    results["leaderboard"] = leaderboard(results, {"linear": False, "vfe-aug": True})
    md = to_markdown(build_document(results))
    assert "## Leaderboard" in md
    line = next(ln for ln in md.splitlines() if ln.startswith("| vfe-aug · frozen"))
    assert "(1 of 2)" in line and "saw gaussian_noise, shot_noise" in md
