"""The README's result blocks are what scripts/readme_results.py makes of the committed results files, and the
numbers in them are right: one row recomputed here by hand from the per-replicate values."""
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

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "readme_results.py"
RUNS = ROOT / "benchmarks" / "results" / "readme"


def _script():
    return load_script("readme_results")


def test_the_readme_agrees_with_the_committed_results_files():
    done = subprocess.run([sys.executable, str(SCRIPT), "check"], check=False, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("protocol", ["reference", "frozen"])
def test_the_clean_accuracy_row_is_the_mean_std_and_paired_t_interval_of_the_replicates(protocol):
    path = RUNS / f"{protocol}.json"
    if not path.exists():
        pytest.skip(f"{path} is not committed")  # the README then says so (test above)
    results = json.loads(path.read_text())
    readme = (ROOT / "README.md").read_text()
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
        row = next(line for line in readme.splitlines() if line.startswith("| clean accuracy (%) |"))
        assert cell in row, (head, cell, row)


def test_a_changed_number_makes_the_check_fail(tmp_path):
    module = _script()
    readme = (ROOT / "README.md").read_text()
    name = next((p.stem for p in sorted(RUNS.glob("*.json"))), None)
    if name is None:
        pytest.skip("no committed results file")
    results = json.loads((RUNS / f"{name}.json").read_text())
    assert module.rendered_readme(readme, RUNS) == readme
    if name.startswith("leaderboard-"):
        results["leaderboard"][0]["clean_accuracy"]["mean"] += 0.01
    else:
        head = next(iter(results["summary"]["table"]))
        results["summary"]["table"][head]["clean_accuracy"]["mean"] += 0.01
    (tmp_path / f"{name}.json").write_text(json.dumps(results))
    for other in RUNS.glob("*.json"):
        if other.stem != name:
            (tmp_path / other.name).write_text(other.read_text())
    assert module.rendered_readme(readme, tmp_path) != readme


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
    assert inside == run["inside"] and line in (ROOT / "README.md").read_text()
    moved = {**run, "inside": inside - 1, "rows": [{**run["rows"][0], "inside": False}, *run["rows"][1:]]}
    (tmp_path / "reproduce.json").write_text(json.dumps({"main": moved}))
    assert module.reproduce_block(tmp_path / "reproduce.json")[0] != line
