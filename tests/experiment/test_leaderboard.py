"""The leaderboard on hand-made runs: held-out corruptions per head, the summed headline normalised on the
same set (and its fallbacks where the linear head does not degrade), paired verdicts against the linear head,
the attack column, the ranking - each against numbers computed here by hand - and once end to end on colour
photo crops, where the linear head does not degrade on some corruption."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from colour_data import write_colour_folder

from vfe.experiment.config import with_overrides
from vfe.experiment.leaderboard import leaderboard, ranked_attack
from vfe.experiment.run import run
from vfe.experiment.run_settings import RunSettings
from vfe.experiment.stages.sections import SECTIONS
from vfe.report import build_document
from vfe.report.to_markdown import to_markdown

T_975_2DF = 4.302652729911275  # Student t, 0.975 quantile, 2 degrees of freedom (3 replicates)

# accuracies [replicate][corruption][severity 1, 3]; two benchmark corruptions, vfe-aug saw "gaussian_noise"
CLEAN = {"linear": [0.90, 0.92, 0.91], "vfe-aug": [0.89, 0.93, 0.88]}
CORR = {"linear": [{"gaussian_noise": [0.5, 0.3], "fog": [0.8, 0.6]},
                   {"gaussian_noise": [0.6, 0.4], "fog": [0.82, 0.62]},
                   {"gaussian_noise": [0.55, 0.35], "fog": [0.81, 0.61]}],
        "vfe-aug": [{"gaussian_noise": [0.85, 0.8], "fog": [0.84, 0.7]},
                    {"gaussian_noise": [0.86, 0.82], "fog": [0.85, 0.72]},
                    {"gaussian_noise": [0.85, 0.81], "fog": [0.86, 0.74]}]}


def make_results(clean: dict, corr: dict, bench: list[str], adversarial: dict | None = None) -> dict:
    """A results dict in results.json's layout from compact tables (severities 1 and 3)."""
    return {"setting": {"protocol": "frozen", "replicates": len(clean["linear"])},
            "clean": {h: {str(r): {"accuracy": a, "nll": 0.3, "ece": 0.05 + r / 100} for r, a in enumerate(v)}
                      for h, v in clean.items()},
            "corruptions": {"benchmark_corruptions": bench, "per_head": {
                h: {str(r): {"accuracy": {c: {"1": v[0], "3": v[1]} for c, v in t.items()}}
                    for r, t in enumerate(reps)} for h, reps in corr.items()}},
            "adversarial": adversarial or {}, "fit_seconds": {h: [1.0] * len(v) for h, v in clean.items()}}


def _results() -> dict:
    adversarial = {h: {str(r): {"accuracy": {"pgd_linf_2/255_eot": 0.2 + r / 100, "pgd_linf_8/255_eot": 0.01,
                                             "fgsm_linf_8/255": 0.1}} for r in range(3)} for h in CLEAN}
    results = make_results(CLEAN, CORR, ["gaussian_noise", "fog"], adversarial)
    results["augmentation"] = {"train_family": "noise", "train_corruptions": ["gaussian_noise", "shot_noise"],
                               "held_out_families": ["blur", "weather"]}
    results["fit_seconds"] = {"linear": [1.0, 2.0, 3.0], "vfe-aug": [10.0, 12.0, 14.0]}
    return results


def _by_head(board):
    return {r["head"]: r for r in board}


def degradation(accuracies: dict, clean: float, names) -> float:
    """Sum over the named corruptions and both severities of (error - clean error), written out."""
    total = 0.0
    for c in names:
        for a in accuracies[c]:
            total += (1 - a) - (1 - clean)
    return total


def paired_t(diffs: list[float], higher_is_better: bool) -> tuple[float, float, str]:
    mean = sum(diffs) / len(diffs)
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1))
    half = T_975_2DF * sd / math.sqrt(len(diffs))
    low, high = mean - half, mean + half
    verdict = "no difference shown" if low <= 0 <= high else \
        ("better than baseline" if (low > 0) == higher_is_better else "worse than baseline")
    return low, high, verdict


def _md(results: dict) -> str:
    return to_markdown(build_document(results, SECTIONS))


def _table_line(md: str, head: str) -> list[str]:
    line = next(ln for ln in md.splitlines() if ln.startswith(f"| {head} · "))
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_the_headline_uses_only_the_corruptions_a_head_did_not_see():
    board = _by_head(leaderboard(_results(), {"linear": False, "vfe-aug": True}))
    aug, lin = board["vfe-aug"], board["linear"]
    assert aug["seen_corruptions"] == ["gaussian_noise", "shot_noise"]
    assert aug["held_out_corruptions"] == ["fog"]
    assert lin["held_out_corruptions"] == ["gaussian_noise", "fog"] and aug["n_benchmark_corruptions"] == 2
    assert aug["headline_metric"] == "summed_relative_mCE"  # the linear head degrades everywhere here
    rel = [degradation(CORR["vfe-aug"][r], CLEAN["vfe-aug"][r], ["fog"])
           / degradation(CORR["linear"][r], CLEAN["linear"][r], ["fog"]) for r in range(3)]
    assert [aug["headline_by_replicate"][str(r)] for r in range(3)] == pytest.approx(rel)
    assert aug["headline"]["mean"] == pytest.approx(sum(rel) / 3)
    # one corruption: the summed ratio is the classic one; the linear head degrades on it: both are shown
    assert aug["held_out_relative_mCE"]["mean"] == pytest.approx(sum(rel) / 3)
    low, high, verdict = paired_t([v - 1.0 for v in rel], higher_is_better=False)
    cmp = aug["headline_vs_linear"]
    assert (cmp["low"], cmp["high"]) == pytest.approx((low, high)) and cmp["verdict"] == verdict == \
        "better than baseline"
    assert cmp["test"] == "paired t over replicates"
    assert aug["held_out_accuracy"]["mean"] == pytest.approx(sum(sum(CORR["vfe-aug"][r]["fog"]) / 2
                                                                 for r in range(3)) / 3)
    assert aug["linear_held_out_accuracy"]["mean"] == pytest.approx(sum(sum(CORR["linear"][r]["fog"]) / 2
                                                                        for r in range(3)) / 3)
    assert aug["linear_summed_degradation"]["1"] == pytest.approx(
        (0.18 - 0.08) + (0.38 - 0.08))  # linear, replicate 1, fog: errors 0.18, 0.38 over clean error 0.08
    assert lin["headline"]["mean"] == pytest.approx(1.0) and lin["headline_vs_linear"] is None
    assert aug["fit_seconds"]["mean"] == pytest.approx(12.0)


def test_clean_accuracy_is_compared_paired_by_replicate():
    aug = _by_head(leaderboard(_results(), {"linear": False, "vfe-aug": True}))["vfe-aug"]
    diffs = [a - b for a, b in zip(CLEAN["vfe-aug"], CLEAN["linear"], strict=True)]  # -0.01, +0.01, -0.03
    low, high, verdict = paired_t(diffs, higher_is_better=True)
    cmp = aug["clean_vs_linear"]
    assert cmp["mean_diff"] == pytest.approx(-0.01)
    assert (cmp["low"], cmp["high"]) == pytest.approx((low, high))
    assert cmp["verdict"] == verdict == "no difference shown"
    assert "separates_from_linear" not in aug


def test_without_augmentation_every_benchmark_corruption_counts():
    board = _by_head(leaderboard(_results(), {"linear": False, "vfe-aug": False}))
    assert board["vfe-aug"]["held_out_corruptions"] == ["gaussian_noise", "fog"]


def test_ranked_by_the_headline_with_the_smallest_eot_budget_as_the_attack():
    board = leaderboard(_results(), {"linear": False, "vfe-aug": True})
    assert [r["head"] for r in board] == ["vfe-aug", "linear"]
    assert board[0]["attack"] == "pgd_linf_2/255_eot"
    assert board[0]["attack_accuracy"]["mean"] == pytest.approx(0.21)
    # no per-image correctness stored: the paired t over the replicates' accuracies, here identical: no interval
    paired = board[0]["attack_vs_linear"]
    assert paired["test"] == "paired t over replicates" and paired["mean_diff"] == pytest.approx(0.0)
    assert paired["verdict"] == "no difference shown"
    assert ranked_attack(["fgsm_linf_1/255", "pgd_linf_8/255_eot", "pgd_linf_2/255_eot", "pgd_l2_0.5"]) == \
        "pgd_linf_2/255_eot"
    assert ranked_attack(["fgsm_linf_1/255", "pgd_linf_2/255"]) == "pgd_linf_2/255"


def test_the_report_shows_the_leaderboard_with_held_out_counts_and_paired_verdicts():
    results = _results()
    results["leaderboard"] = leaderboard(results, {"linear": False, "vfe-aug": True})
    md = _md(results)
    assert "## Leaderboard" in md and "separates" not in md
    cells = _table_line(md, "vfe-aug")
    assert "(1 of 2)" in cells[2] and "saw gaussian_noise, shot_noise" in md
    assert cells[3].startswith(f"{100 * results['leaderboard'][0]['headline']['mean']:.1f} ±")
    assert "· better than baseline, −" in cells[3] and "[−" in cells[3]
    assert "· no difference shown, −1.0 [" in cells[1]
    assert "paired t" in md and "paired bootstrap" in md
    assert _table_line(md, "linear")[3] == "100.0 ± 0.0 · baseline"


# an easy task: replicate 0's linear head gains accuracy under brightness (no degradation), degrades overall
EASY_CLEAN = {"linear": [0.80, 0.82, 0.78], "vfe": [0.80, 0.81, 0.79]}
EASY_CORR = {"linear": [{"fog": [0.70, 0.50], "brightness": [0.85, 0.80]},
                        {"fog": [0.72, 0.52], "brightness": [0.80, 0.78]},
                        {"fog": [0.70, 0.48], "brightness": [0.76, 0.70]}],
             "vfe": [{"fog": [0.75, 0.60], "brightness": [0.80, 0.80]},
                     {"fog": [0.76, 0.62], "brightness": [0.81, 0.79]},
                     {"fog": [0.74, 0.58], "brightness": [0.78, 0.74]}]}


def test_a_corruption_the_linear_head_does_not_degrade_on_leaves_the_headline_defined():
    assert degradation(EASY_CORR["linear"][0], 0.80, ["brightness"]) < 0  # errors 0.15, 0.20 vs clean 0.20
    results = make_results(EASY_CLEAN, EASY_CORR, ["fog", "brightness"])
    board = leaderboard(results, {})
    rows = _by_head(board)
    names = ["fog", "brightness"]
    expected = [degradation(EASY_CORR["vfe"][r], EASY_CLEAN["vfe"][r], names)
                / degradation(EASY_CORR["linear"][r], EASY_CLEAN["linear"][r], names) for r in range(3)]
    vfe = rows["vfe"]
    assert vfe["headline_metric"] == "summed_relative_mCE"
    assert [vfe["headline_by_replicate"][str(r)] for r in range(3)] == pytest.approx(expected)
    # replicate 0 by hand: vfe (0.05 + 0.20 + 0.00 + 0.00) / linear (0.10 + 0.30 - 0.05 + 0.00)
    assert expected[0] == pytest.approx(0.25 / 0.35)
    assert vfe["held_out_relative_mCE"] is None and rows["linear"]["held_out_relative_mCE"] is None
    assert [r["head"] for r in board] == ["vfe", "linear"]  # every expected value is below 1
    low, high, verdict = paired_t([v - 1.0 for v in expected], higher_is_better=False)
    assert (vfe["headline_vs_linear"]["low"], vfe["headline_vs_linear"]["high"]) == pytest.approx((low, high))
    assert vfe["headline_vs_linear"]["verdict"] == verdict

    results["leaderboard"] = board
    md = _md(results)
    for head in ("vfe", "linear"):
        cells = _table_line(md, head)
        assert cells[3] != "–" and not cells[3].startswith("–")
        assert cells[4].startswith("undefined")
    assert _table_line(md, "vfe")[3].startswith(f"{100 * sum(expected) / 3:.1f} ±")
    assert "held-out relative mCE, summed (%)" in md and "FALLBACK" not in md


def test_where_the_linear_head_does_not_degrade_overall_the_whole_run_falls_back_to_summed_mce():
    # replicate 1: on fog alone (vfe-aug's held-out set) the linear head gains accuracy; on both it degrades.
    # One kind for every row of the run, so the linear head's own row falls back too.
    corr = {"linear": [dict(t) for t in CORR["linear"]], "vfe-aug": CORR["vfe-aug"]}
    corr["linear"][1] = {"gaussian_noise": [0.3, 0.2], "fog": [0.93, 0.92]}
    assert degradation(corr["linear"][1], CLEAN["linear"][1], ["fog"]) <= 0
    assert degradation(corr["linear"][1], CLEAN["linear"][1], ["gaussian_noise", "fog"]) > 0
    results = make_results(CLEAN, corr, ["gaussian_noise", "fog"])
    results["augmentation"] = {"train_family": "noise", "train_corruptions": ["gaussian_noise"],
                               "held_out_families": ["weather"]}
    board = leaderboard(results, {"vfe-aug": True})
    rows = _by_head(board)
    assert {r["headline_metric"] for r in board} == {"summed_mCE"}

    def summed_error(accuracies, names):
        return sum(1 - a for c in names for a in accuracies[c])

    expected = [summed_error(corr["vfe-aug"][r], ["fog"]) / summed_error(corr["linear"][r], ["fog"])
                for r in range(3)]
    assert [rows["vfe-aug"]["headline_by_replicate"][str(r)] for r in range(3)] == pytest.approx(expected)
    assert expected[1] == pytest.approx((0.15 + 0.28) / (0.07 + 0.08))
    assert rows["linear"]["headline"]["mean"] == pytest.approx(1.0)
    low, high, verdict = paired_t([v - 1.0 for v in expected], higher_is_better=False)
    cmp = rows["vfe-aug"]["headline_vs_linear"]
    assert (cmp["low"], cmp["high"]) == pytest.approx((low, high)) and cmp["verdict"] == verdict
    assert rows["vfe-aug"]["linear_summed_degradation"]["1"] <= 0

    results["leaderboard"] = board
    md = _md(results)
    assert "held-out mCE, summed (%) (fallback)" in md and "FALLBACK" in md and "in 1 of 3 replicates" in md
    assert all(_table_line(md, h)[3] != "–" for h in ("vfe-aug", "linear"))


def test_a_linear_head_without_any_error_under_corruption_falls_back_to_the_plain_corruption_error():
    corr = {"linear": [dict(t) for t in EASY_CORR["linear"]], "vfe": EASY_CORR["vfe"]}
    clean = {"linear": [1.0, 0.82, 0.78], "vfe": EASY_CLEAN["vfe"]}
    corr["linear"][0] = {"fog": [1.0, 1.0], "brightness": [1.0, 1.0]}
    rows = _by_head(leaderboard(make_results(clean, corr, ["fog", "brightness"]), {}))
    assert rows["vfe"]["headline_metric"] == "corruption_error"
    names = ("fog", "brightness")
    expected = [sum(1 - a for c in names for a in EASY_CORR["vfe"][r][c]) / 4 for r in range(3)]
    assert [rows["vfe"]["headline_by_replicate"][str(r)] for r in range(3)] == pytest.approx(expected)
    linear = [0.0] + [sum(1 - a for c in names for a in corr["linear"][r][c]) / 4 for r in (1, 2)]
    assert rows["linear"]["headline"]["mean"] == pytest.approx(sum(linear) / 3)
    diffs = [a - b for a, b in zip(expected, linear, strict=True)]
    assert rows["vfe"]["headline_vs_linear"]["mean_diff"] == pytest.approx(sum(diffs) / 3)


def _bits(correct) -> str:
    return "".join("1" if c else "0" for c in correct)


def test_the_attack_column_is_paired_per_replicate_and_names_the_strongest_attack():
    # 40 attacked images per replicate; the linear head's accuracy swings from 10 % to 70 % across replicates,
    # and t3a gets right every image the linear head does plus 10 more: an unpaired comparison of the
    # per-replicate accuracies cannot tell them apart, the paired one can (each difference is exactly +0.25)
    key = "pgd_linf_1/255_eot"
    linear_right = {"0": 4, "1": 28, "2": 16}
    adversarial = {"linear": {}, "t3a": {}}
    for r, n in linear_right.items():
        base = [i < n for i in range(40)]
        head = [i < n + 10 for i in range(40)]
        other = [False] * 40  # another attack's correctness: must not be the one read
        adversarial["linear"][r] = {"accuracy": {key: n / 40, "pgd_linf_8/255": 0.0},
                                    "correct": {key: _bits(base), "pgd_linf_8/255": _bits(other)}}
        adversarial["t3a"][r] = {"accuracy": {key: (n + 10) / 40, "pgd_linf_8/255": 0.0},
                                 "correct": {key: _bits(head), "pgd_linf_8/255": _bits(other)},
                                 "strongest": {key: "transfer" if r != "2" else "bpda"}}
    clean = {"linear": [0.9, 0.9, 0.9], "t3a": [0.9, 0.9, 0.9]}
    corr = {h: [{"fog": [0.5, 0.4]}] * 3 for h in clean}
    results = make_results(clean, corr, ["fog"], adversarial)
    rows = _by_head(leaderboard(results, {}))
    t3a = rows["t3a"]
    assert t3a["attack"] == key and t3a["attack_strongest"] == {"0": "transfer", "1": "transfer", "2": "bpda"}
    assert t3a["attack_accuracy"]["mean"] == pytest.approx((14 + 38 + 26) / 120)
    cmp = t3a["attack_vs_linear"]
    assert cmp["mean_diff"] == pytest.approx(0.25) and cmp["n_replicates"] == 3 and cmp["n_images"] == 40
    assert 0 < cmp["low"] <= 0.25 <= cmp["high"] and cmp["verdict"] == "better than baseline"
    assert cmp["test"] == "paired bootstrap over replicates and images"
    # what an unpaired reading of the same accuracies would say: two-sample t, means 0.65 and 0.40, sd 0.30
    half = 2.7764451051977987 * math.sqrt(0.3 ** 2 / 3 + 0.3 ** 2 / 3)  # t(0.975, 4 degrees of freedom)
    assert 0.25 - half < 0 < 0.25 + half
    assert rows["linear"]["attack_vs_linear"] is None

    results["leaderboard"] = leaderboard(results, {})
    cells = _table_line(_md(results), "t3a")
    assert "(strongest: transfer in 2, bpda in 1 of 3 replicates)" in cells[5]
    assert "better than baseline, +25.0 [+" in cells[5]


# -- end to end on colour photo crops ------------------------------------------------------------------------

COLOUR_CORRUPTIONS = ["gaussian_noise", "brightness", "contrast", "pixelate", "jpeg_compression"]


@pytest.fixture(scope="module")
def colour_run(tmp_path_factory):
    """A tiny `vfe run` on 4 classes of crops of scikit-image's colour photos (20 test images, 32 px): clean
    accuracy is 60-85 %, and mild corruptions leave the linear head as accurate as clean or more (~10 s)."""
    tmp = tmp_path_factory.mktemp("colour_leaderboard")
    folder = write_colour_folder(tmp / "photos", n_train=15, n_test=5)
    settings = {"name": "colour", "dataset": str(folder), "image_size": 32, "n_train": None, "n_test": None,
                "heads": ["linear", "linear-tts"], "replicates": 2, "corruptions": COLOUR_CORRUPTIONS,
                "severities": [1, 3], "n_attack": 8, "attack_eps_linf": [1 / 255], "attack_eps_l2": [],
                "attack_steps": 2, "n_eot": 2, "ood": False, "runs_dir": str(tmp / "runs"),
                "cache_dir": str(tmp / "cache"), "progress": False}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = run(with_overrides(RunSettings(), settings), log=lambda *_: None)
    finally:
        torch.set_num_threads(threads)
    return json.loads((out / "results.json").read_text()), (out / "report.md").read_text()


@pytest.mark.slow
def test_on_colour_photos_every_head_gets_a_headline_where_classic_relative_mce_is_undefined(colour_run):
    results, md = colour_run
    clean = {h: {r: m["accuracy"] for r, m in per.items()} for h, per in results["clean"].items()}
    acc = {h: {r: {c: list(sev.values()) for c, sev in m["accuracy"].items()} for r, m in per.items()}
           for h, per in results["corruptions"]["per_head"].items()}
    reps = sorted(clean["linear"])
    # the case this test is for: the linear head does not degrade on some corruption of some replicate
    assert any(degradation(acc["linear"][r], clean["linear"][r], [c]) <= 1e-9 for r in reps
               for c in COLOUR_CORRUPTIONS)
    overall = [degradation(acc["linear"][r], clean["linear"][r], COLOUR_CORRUPTIONS) for r in reps]
    rows = _by_head(results["leaderboard"])
    for head in ("linear", "linear-tts"):
        row = rows[head]
        assert row["held_out_corruptions"] == COLOUR_CORRUPTIONS and row["held_out_relative_mCE"] is None
        if all(d > 1e-9 for d in overall):
            kind = "summed_relative_mCE"
            expected = {r: degradation(acc[head][r], clean[head][r], COLOUR_CORRUPTIONS) / overall[i]
                        for i, r in enumerate(reps)}
        else:
            kind = "summed_mCE"
            expected = {r: sum(1 - a for c in COLOUR_CORRUPTIONS for a in acc[head][r][c])
                        / sum(1 - a for c in COLOUR_CORRUPTIONS for a in acc["linear"][r][c]) for r in reps}
        assert row["headline_metric"] == kind
        assert row["headline_by_replicate"] == pytest.approx(expected)
        assert math.isfinite(row["headline"]["mean"]) and row["headline"]["n"] == len(reps)
        assert _table_line(md, head)[3] != "–"
    # the attack column: the paired bootstrap's mean difference is the mean of the per-image differences
    key = rows["linear-tts"]["attack"]
    adv = results["adversarial"]
    diffs = [int(a) - int(b) for r in reps for a, b in zip(adv["linear-tts"][r]["correct"][key],
                                                            adv["linear"][r]["correct"][key], strict=True)]
    assert rows["linear-tts"]["attack_vs_linear"]["mean_diff"] == pytest.approx(np.mean(diffs))
    strongest = {r: m["strongest"][key] for r, m in adv["linear-tts"].items()
                 if key in (m.get("strongest") or {})}
    assert rows["linear-tts"]["attack_strongest"] == (strongest or None)
    if strongest:
        assert "strongest:" in _table_line(md, "linear-tts")[5]
