"""`vfe leaderboard`: runs that differ only in stage 0 ranked together, each head paired with the base run's linear
head replicate by replicate; runs that do not share their random draws are refused in one line."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
from scipy import stats
from threads import one_thread

from vfe.cli import main
from vfe.errors import SettingsError
from vfe.experiment.combine import combine
from vfe.experiment.config import with_overrides
from vfe.experiment.run import run
from vfe.experiment.run_settings import RunSettings

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("combine")
    settings = with_overrides(RunSettings(), {
        "name": "plain", "dataset": "digits", "image_size": 32, "n_train": 200, "n_test": 100, "heads": ["linear"],
        "replicates": 2, "corruptions": ["gaussian_noise", "defocus_blur"], "severities": [2, 4], "n_attack": 0,
        "ood": False, "runs_dir": str(tmp / "runs"), "cache_dir": str(tmp / "cache"), "progress": False})
    with one_thread():
        out = run(settings, log=lambda *_: None)
    return out, json.loads((out / "results.json").read_text())


def variant_of(results: dict, shift: float) -> dict:
    """The same run as if its stage 0 had been another: every corrupted accuracy moved by `shift`, the
    fine-tuning settings changed."""
    other = copy.deepcopy(results)
    other["config"]["finetune_lp_epochs"] = 3
    for rows in other["corruptions"]["per_head"].values():
        for row in rows.values():
            for severities in row["accuracy"].values():
                for s in severities:
                    severities[s] = min(1.0, severities[s] + shift)
    return other


def test_each_run_s_heads_are_ranked_against_the_base_run_s_linear_head(base_run):
    _, base = base_run
    other = variant_of(base, 0.03)
    combined = combine({"plain": base, "lp-ft": other})
    assert combined["setting"]["heads"] == ["linear", "linear@lp-ft"] and combined["base"] == "plain"
    row = next(r for r in combined["leaderboard"] if r["head"] == "linear@lp-ft")
    names = ["gaussian_noise", "defocus_blur"]

    def degradation(res, r):  # summed over corruptions x severities
        clean_error = 1 - res["clean"]["linear"][r]["accuracy"]
        acc = res["corruptions"]["per_head"]["linear"][r]["accuracy"]
        return sum((1 - acc[c][s]) - clean_error for c in names for s in ("2", "4"))

    expected = {r: degradation(other, r) / degradation(base, r) for r in ("0", "1")}  # summed relative mCE
    assert row["headline_by_replicate"] == pytest.approx(expected)
    assert row["headline"]["mean"] == pytest.approx(np.mean(list(expected.values())))
    d = np.array(list(expected.values())) - 1.0  # paired with the base linear head's own headline, 1
    half = stats.t.ppf(0.975, 1) * d.std(ddof=1) / np.sqrt(2)
    assert (row["headline_vs_linear"]["low"], row["headline_vs_linear"]["high"]) == pytest.approx(
        (d.mean() - half, d.mean() + half))
    assert combined["leaderboard"][0]["head"] == "linear@lp-ft"  # more robust: ranked first
    assert combined["runs"]["lp-ft"]["finetune"]["finetune_lp_epochs"] == 3


def test_runs_that_do_not_share_their_random_draws_are_refused(base_run):
    _, base = base_run
    other = variant_of(base, 0.0)
    other["setting"]["replicate_seeds"] = [1, 2]
    with pytest.raises(SettingsError, match="differ in replicate_seeds"):
        combine({"plain": base, "other": other})
    with pytest.raises(SettingsError, match="two runs or more"):
        combine({"plain": base})
    older = variant_of(base, 0.0)
    del older["config"]["noise_per_replicate"]  # a run from before the setting existed: its default's behaviour
    assert combine({"plain": base, "older": older})["base"] == "plain"
    older["config"]["noise_per_replicate"] = True
    with pytest.raises(SettingsError, match="differ in noise_per_replicate"):
        combine({"plain": base, "older": older})
    # a run from before --runtime reached vfe run extracted with torch, not with today's default
    assert base["config"]["runtime"] == "auto"
    on_torch = variant_of(base, 0.0)
    del on_torch["config"]["runtime"]
    with pytest.raises(SettingsError, match="differ in runtime \\('auto' vs 'torch'\\)"):
        combine({"plain": base, "older": on_torch})


def test_the_command_prints_the_table_and_writes_the_file_once(base_run, tmp_path, capsys):
    folder, base = base_run
    other = tmp_path / "lp-ft"
    other.mkdir()
    (other / "results.json").write_text(json.dumps(variant_of(base, 0.02)))
    out = tmp_path / "board.json"
    assert main(["leaderboard", str(folder), str(other), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| linear@lp-ft |" in printed and "| linear |" in printed
    assert json.loads(out.read_text())["runs"]["lp-ft"]["path"] == str(other)
    assert main(["leaderboard", str(folder), str(other), "--out", str(out)]) == 2  # not replaced unless asked
    assert "--overwrite" in capsys.readouterr().err
