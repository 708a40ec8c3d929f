"""The result blocks of the README and of docs/findings.md are what scripts/readme_results.py makes of the
committed results files, and the numbers in them are right: one row recomputed here by hand from the
per-replicate values; a number changed by hand in either page fails the check."""
from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from scipy import stats
from script_modules import load_script

from vfe.experiment.combine import check_comparable

FINETUNE = ("finetune_epochs", "finetune_batch_size", "finetune_lr", "finetune_lp_epochs", "finetune_augment")

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "readme_results.py"
RUNS = ROOT / "benchmarks" / "results" / "readme"
README = ROOT / "README.md"
FINDINGS = ROOT / "docs" / "findings.md"
PAGES = (README, FINDINGS)


def _script():
    return load_script("readme_results")


def test_the_readme_and_the_findings_page_agree_with_the_committed_results_files():
    done = subprocess.run([sys.executable, str(SCRIPT), "check"], check=False, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert _script().PAGES == PAGES


def test_each_page_keeps_its_generated_blocks():
    """The README answers with the answer, main, selective and robust fine-tuning blocks; the findings page holds those, the second run and the
    leaderboard (a block deleted from a page would otherwise leave nothing to check)."""
    module = _script()
    blocks = {page: {m["name"] for m in module.BLOCK.finditer(page.read_text())} for page in PAGES}
    assert {"answer", "main", "selective-answer", "leaderboard-answer-reference-finetuning"} <= blocks[README]
    assert {"answer", "main", "reproduce", "selective", "leaderboard-frozen-quick",
            "leaderboard-reference-finetuning-quick", "leaderboard-reference-finetuning"} <= blocks[FINDINGS]


@pytest.mark.parametrize("protocol", ["reference", "frozen"])
def test_the_clean_accuracy_row_is_the_mean_std_and_paired_t_interval_of_the_replicates(protocol):
    path = RUNS / f"{protocol}.json"
    if not path.exists():
        pytest.skip(f"{path} is not committed")  # the README then says so (test above)
    results = json.loads(path.read_text())
    linear = [results["clean"]["linear"][r]["accuracy"] for r in sorted(results["clean"]["linear"])]
    for head, per_replicate in results["clean"].items():
        values = [per_replicate[r]["accuracy"] for r in sorted(per_replicate)]
        cell = f"{100 * statistics.mean(values):.1f} ± {100 * statistics.stdev(values):.1f}"
        if head != "linear":
            diffs = [a - b for a, b in zip(values, linear, strict=True)]
            half = stats.t.ppf(0.975, len(diffs) - 1) * statistics.stdev(diffs) / math.sqrt(len(diffs))
            mean = statistics.mean(diffs)
            low, high = mean - half, mean + half
            verdict = "no difference shown" if low <= 0 <= high else "better" if low > 0 else "worse"

            def f(v):
                return f"{100 * v:+.1f}".replace("-", "−")

            cell += f" ({f(mean)} [{f(low)}, {f(high)}], {verdict})"
        for page in PAGES:
            row = next(line for line in page.read_text().splitlines() if line.startswith("| clean accuracy (%) |"))
            assert cell in row, (page.name, head, cell, row)


@pytest.mark.parametrize("name", sorted(p.stem for p in RUNS.glob("*.json")))
def test_a_changed_number_in_a_results_file_makes_the_check_fail(tmp_path, name):
    module = _script()
    results = json.loads((RUNS / f"{name}.json").read_text())
    if name.startswith("leaderboard-"):
        results["leaderboard"][0]["clean_accuracy"]["mean"] += 0.01
    elif name == "selective":  # the README shows the VFE detectors' paired differences
        head = next(iter(results["selective"]["vs_msp"]))
        results["selective"]["vs_msp"][head]["held_out"]["vfe-recon"]["risk_90"]["mean_diff"] += 0.01
    else:
        head = next(iter(results["summary"]["table"]))
        results["summary"]["table"][head]["clean_accuracy"]["mean"] += 0.01
    (tmp_path / f"{name}.json").write_text(json.dumps(results))
    for other in RUNS.glob("*.json"):
        if other.stem != name:
            (tmp_path / other.name).write_text(other.read_text())
    changed = []
    for page in PAGES:
        text = page.read_text()
        assert module.rendered_page(text, RUNS, page) == text
        changed += [page] if module.rendered_page(text, tmp_path, page) != text else []
    assert FINDINGS in changed  # the findings page shows every committed run
    if not name.startswith("leaderboard-"):
        assert README in changed


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_a_number_edited_by_hand_in_a_page_makes_the_check_fail(tmp_path, monkeypatch, page):
    """`check` (what CI runs) compares every page: a copy of the page with one generated number typed differently
    exits 1, the unchanged copy exits 0."""
    module = _script()
    text = page.read_text()
    block = next(m for m in module.BLOCK.finditer(text) if m["name"] == "main")
    row = next(line for line in block["body"].splitlines() if line.startswith("| clean accuracy (%) |"))
    cell = row.split(" | ")[1]  # the first head's "mean ± std"
    edited_row = row.replace(cell, cell.replace(cell[0], str((int(cell[0]) + 1) % 10), 1), 1)
    assert edited_row != row
    copies = {p: tmp_path / p.name for p in PAGES}
    for p, copy in copies.items():
        copy.write_text(p.read_text())
    monkeypatch.setattr(module, "PAGES", tuple(copies.values()))
    assert module.main(["check"]) == 0
    copies[page].write_text(text.replace(row, edited_row, 1))
    assert module.main(["check"]) == 1


def test_the_answer_says_no_difference_only_when_every_interval_contains_0(tmp_path):
    """The answer line is generated from the paired comparisons: each robustness measure with its interval, and
    "better" / "worse" printed next to the interval of each measure whose interval excludes 0."""
    module = _script()
    for name in ("reference", "frozen"):
        (tmp_path / f"{name}.json").write_text((RUNS / f"{name}.json").read_text())
    results = json.loads((RUNS / "reference.json").read_text())
    lines = module.answer_block(RUNS)
    for line in lines:
        for label in ("mean corruption accuracy", "summed relative mCE", "relative mCE", "PGD"):
            assert label in line
    c = results["summary"]["vs_baseline"]["vfe"]["summed_relative_mCE"]
    says = module.paired(c).rpartition(", ")
    assert f"summed relative mCE {says[0]}" in lines[0]
    keys = ("corruption_accuracy", "summed_relative_mCE", "relative_mCE", f"adv:{module.ranked_attack(results)}")
    any_shown = any(module.shown(results["summary"]["vs_baseline"]["vfe"].get(k)) for k in keys)
    assert lines[0].endswith("no difference shown on any.") is not any_shown
    results["summary"]["vs_baseline"]["vfe"]["summed_relative_mCE"] = {
        **c, "mean_diff": -0.2, "low": -0.3, "high": -0.1, "verdict": "better than baseline"}
    (tmp_path / "reference.json").write_text(json.dumps(results))
    changed = module.answer_block(tmp_path)[0]
    assert "summed relative mCE −20.0 [−30.0, −10.0], better" in changed
    assert "no difference shown on any" not in changed


def test_the_leaderboard_lists_every_verdict_with_its_interval():
    module = _script()
    results = json.loads((RUNS / "leaderboard-frozen-quick.json").read_text())
    block = module.leaderboard_block(results)
    listed = [line for line in block[block.index("Verdicts that exclude no difference:") + 1:] if line.startswith("- ")]
    expected = sum(module.shown(row.get(key)) for row in results["leaderboard"]
                   for key in ("clean_vs_linear", "headline_vs_linear", "attack_vs_linear"))
    assert len(listed) == expected > 0
    assert all(line.endswith((", better", ", worse")) and "[" in line for line in listed)
    findings = FINDINGS.read_text()
    assert all(line in findings for line in listed)


def test_verdicts_are_printed_only_with_their_interval():
    module = _script()
    better = {"mean_diff": 0.012, "low": 0.004, "high": 0.020, "verdict": "better than baseline"}
    none = {"mean_diff": -0.002, "low": -0.010, "high": 0.006, "verdict": "no difference shown"}
    assert module.paired(better) == "+1.2 [+0.4, +2.0], better"
    assert module.paired(none) == "−0.2 [−1.0, +0.6], no difference shown"
    # a verdict the results carry without an interval (e.g. an old run's unpaired one) is not repeated
    assert module.paired({"mean_diff": 0.012, "low": math.nan, "high": math.nan,
                          "verdict": "better than baseline"}) == "+1.2, no difference shown"


def test_the_second_run_line_counts_the_rows_inside(tmp_path):
    """The reproduce block's counts, recounted here from benchmarks/results/reproduce.json's rows; one row moved
    outside changes the line."""
    module = _script()
    path = ROOT / "benchmarks" / "results" / "reproduce.json"
    run = json.loads(path.read_text())["main"]
    inside = sum(row["low"] - 1e-12 <= row["run2_mean"] <= row["high"] + 1e-12 for row in run["rows"])
    line = module.reproduce_block(path)[0]
    assert f"{inside} of {len(run['rows'])} headline numbers inside" in line
    assert inside == run["inside"] and line in FINDINGS.read_text()
    same = json.loads(path.read_text())["main-same-threads"]
    same_inside = sum(row["low"] - 1e-12 <= row["run2_mean"] <= row["high"] + 1e-12 for row in same["rows"])
    if not same["bitwise_equal_per_replicate"]:
        assert f"same thread count, of the current code: {same_inside} of {len(same['rows'])} inside" in line
    moved = {**run, "inside": inside - 1, "rows": [{**run["rows"][0], "inside": False}, *run["rows"][1:]]}
    (tmp_path / "reproduce.json").write_text(json.dumps({"main": moved}))
    assert module.reproduce_block(tmp_path / "reproduce.json")[0] != line
    runtime = json.loads(path.read_text())["main-runtime"]  # the default runtime against the torch run
    runtime_inside = sum(row["low"] - 1e-12 <= row["run2_mean"] <= row["high"] + 1e-12 for row in runtime["rows"])
    runtime_line = module.reproduce_block(path)[1]
    assert f"torch before it: {runtime_inside} of {len(runtime['rows'])} headline numbers inside" in runtime_line
    assert runtime_line in FINDINGS.read_text()


def test_the_selective_answer_is_the_paired_t_interval_of_the_replicates_risks():
    """The README's selective-classification answer, recomputed from the per-replicate risks of the committed
    reference run: each VFE detector's risk at 90 % coverage on the held-out corruptions minus max softmax's."""
    module = _script()
    selective = json.loads((RUNS / "selective.json").read_text())["selective"]
    lines = module.selective_block(RUNS, answer_only=True)
    for head, per_replicate in selective["per_head"].items():
        for detector, label in (("vfe-recon", "VFE reconstruction error"), ("vfe-elbo", "VFE negative ELBO")):
            reps = sorted(per_replicate)
            diffs = [per_replicate[r]["held_out"][detector]["risk_90"] - per_replicate[r]["held_out"]["msp"]["risk_90"]
                     for r in reps]
            mean = statistics.mean(diffs)
            half = stats.t.ppf(0.975, len(diffs) - 1) * statistics.stdev(diffs) / math.sqrt(len(diffs))
            low, high = mean - half, mean + half
            reading = ("no difference shown" if low <= 0 <= high else "lower risk than max softmax" if high < 0
                       else "higher risk than max softmax")

            def f(v):
                return f"{100 * v:+.1f}".replace("-", "−")

            expected = f"- `{head}` head, {label}: {f(mean)} [{f(low)}, {f(high)}], {reading}"
            assert expected in lines, (expected, lines)
    readme = README.read_text()
    assert all(line in readme for line in lines)


def test_the_selective_run_is_the_readme_reference_run_again():
    """selective.json is the main job under the reference protocol with the selective-classification stage: the
    same command, settings and seeds as reference.json, so the same fine-tuned backbones and heads (their clean
    accuracies, replicate by replicate, equal)."""
    again = json.loads((RUNS / "selective.json").read_text())
    first = json.loads((RUNS / "reference.json").read_text())
    assert again["command"] == first["command"]
    check_comparable(("reference", first), ("selective", again))  # data, seeds, corruptions, attacks: one line if not
    assert [again["config"][k] for k in FINETUNE] == [first["config"][k] for k in FINETUNE]
    assert again["clean"] == first["clean"]


@pytest.mark.parametrize("name", ["leaderboard-reference-finetuning-quick", "leaderboard-reference-finetuning"])
def test_the_fine_tuning_leaderboard_headline_is_each_runs_paired_t_against_the_plain_linear_head(name):
    """The robust fine-tuning blocks of docs/findings.md (runs that differ in stage 0, `vfe leaderboard`; --quick
    sizes and the main job's) and the README's short form of the main job's: each head's summed relative mCE cell
    recomputed from its per-replicate values, paired with the plain run's linear head, whose own headline is 1
    in every replicate."""
    results = json.loads((RUNS / f"{name}.json").read_text())
    findings = FINDINGS.read_text()
    section = findings.split(f"<!-- results:{name} begin", 1)[1].split(f"<!-- results:{name} end", 1)[0]
    assert results["base"] == "plain" and len(results["runs"]) >= 2
    for row in results["leaderboard"]:
        values = [row["headline_by_replicate"][r] for r in sorted(row["headline_by_replicate"])]
        cell = f"{100 * statistics.mean(values):.1f} ± {100 * statistics.stdev(values):.1f}"
        if row["head"] != "linear":
            diffs = [v - 1.0 for v in values]
            half = stats.t.ppf(0.975, len(diffs) - 1) * statistics.stdev(diffs) / math.sqrt(len(diffs))
            mean = statistics.mean(diffs)
            verdict = ("no difference shown" if mean - half <= 0 <= mean + half
                       else "better" if mean + half < 0 else "worse")

            def f(v):
                return f"{100 * v:+.1f}".replace("-", "−")

            cell += f" ({f(mean)} [{f(mean - half)}, {f(mean + half)}], {verdict})"
        line = next(x for x in section.splitlines() if x.startswith(f"| `{row['head']}` |"))
        assert cell in line, (row["head"], cell, line)
        if row["head"] != "linear" and name == "leaderboard-reference-finetuning":  # the README's short form
            readme = next(x for x in README.read_text().splitlines() if x.startswith(f"- `{row['head']}`: "))
            assert f"summed relative mCE (linear = 100) {cell};" in readme, (row["head"], cell, readme)


def test_each_run_line_says_what_extracted_its_features():
    """A run names its runtime in its setting; a run from before `vfe run` had --runtime extracted with torch,
    which is not today's default, so its line says how to repeat it."""
    module = _script()
    for name in ("reference", "frozen"):
        results = json.loads((RUNS / f"{name}.json").read_text())
        line = module.setting_line(name, results)
        runtime = results["setting"].get("runtime")
        assert (f"features on {runtime};" if runtime else "features on torch (before --runtime auto") in line
    older = {"setting": {"backbone": "b"}, "config": {}}
    assert module.runtime_text(older).endswith("add --runtime torch to repeat it)")
    assert module.runtime_text({"setting": {"runtime": "bottom openvino, top openvino"}}) == \
        "features on bottom openvino, top openvino"
