"""The main job end to end on a tiny setting: every stage runs and every section of the results is filled."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from vfe.errors import SettingsError
from vfe.experiment.config import with_overrides
from vfe.experiment.run import run
from vfe.experiment.run_settings import RunSettings
from vfe.report.inputs import read_results
from vfe.report.schema import SCHEMA_VERSION


def tiny_config(tmp_path, **overrides) -> RunSettings:
    settings = {"name": "tiny", "dataset": "digits", "image_size": 32, "n_train": 300, "n_test": 100,
                "heads": ["linear", "vfe"], "replicates": 2,
                "head_params": {"vfe": {"encoder_units": 64, "latent_dim": 16, "decoder_units": 64,
                                        "vae_epochs": 30}},
                "corruptions": ["gaussian_noise", "defocus_blur"], "severities": [1, 5], "n_attack": 8,
                "attack_eps_linf": [8 / 255], "attack_eps_l2": [1.0], "attack_steps": 3, "n_eot": 2,
                "runs_dir": str(tmp_path / "runs"), "cache_dir": str(tmp_path / "cache"), "progress": False}
    return with_overrides(RunSettings(), {**settings, **overrides})


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("experiment")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the tests that re-run it: float sums depend on the thread count
    try:
        out = run(tiny_config(tmp), log=lambda *_: None)
    finally:
        torch.set_num_threads(threads)
    return tmp, out, json.loads((out / "results.json").read_text())


@pytest.mark.slow
def test_every_stage_fills_its_section(tiny_run):
    _, out, results = tiny_run
    for section in ("setting", "clean", "corruptions", "selective", "adversarial", "ood", "summary", "timings"):
        assert section in results, section
    assert set(results["clean"]) == {"linear", "vfe"} and set(results["clean"]["vfe"]) == {"0", "1"}
    assert results["setting"]["runtime"] == "torch"  # --runtime auto: nothing measured faster at this size
    assert results["clean"]["linear"]["0"]["accuracy"] > 0.5  # 10 classes, chance 0.1
    row = results["corruptions"]["per_head"]["vfe"]["0"]
    assert set(row["accuracy"]) == {"gaussian_noise", "defocus_blur"} and np.isfinite(row["mCE"])
    assert results["corruptions"]["per_head"]["linear"]["0"]["mCE"] == pytest.approx(1.0)  # its own normaliser
    adv = results["adversarial"]["linear"]["0"]["accuracy"]
    assert adv["pgd_linf_8/255"] <= adv["clean"]
    table = results["summary"]["table"]["vfe"]
    assert {"clean_accuracy", "corruption_accuracy", "mCE"} <= set(table) and table["clean_accuracy"]["n"] == 2
    # peak memory after every timed stage (the report is timed after results.json is written), never falling
    by_stage = results["peak_rss_mb_after_stage"]
    assert list(by_stage) == [k for k in results["timings"] if k != "total"]
    assert list(by_stage.values()) == sorted(by_stage.values()) and 0 < by_stage[next(iter(by_stage))]
    assert results["peak_rss_mb"] >= max(by_stage.values())
    cpu = results["cpu_percent_per_stage"]  # CPU seconds / wall seconds of each stage
    assert list(cpu) == list(by_stage) and all(0 <= v <= 110 * (os.cpu_count() or 1) for v in cpu.values())
    for name in ("report.md", "report.html", "results.json"):
        assert (out / name).stat().st_size > 1000


@pytest.mark.slow
def test_results_json_has_the_schema_version_and_follows_its_schema(tiny_run):
    _, out, results = tiny_run
    assert results["schema_version"] == SCHEMA_VERSION
    read_results(out / "results.json")  # ResultsFileError naming the field where it departs from the schema


@pytest.mark.slow
def test_a_finished_run_is_not_overwritten_unless_asked(tiny_run):
    tmp, _, _ = tiny_run
    with pytest.raises(SettingsError, match="overwrite"):
        run(tiny_config(tmp), log=lambda *_: None)


@pytest.mark.slow
def test_rerun_reuses_the_feature_cache_and_gives_the_same_numbers(tiny_run):
    tmp, _, results = tiny_run
    again = run(tiny_config(tmp, name="again", n_attack=0, ood=False), log=lambda *_: None)
    second = json.loads((again / "results.json").read_text())
    assert second["clean"] == results["clean"]
    assert second["corruptions"]["per_head"]["linear"]["0"]["accuracy"] == \
        results["corruptions"]["per_head"]["linear"]["0"]["accuracy"]
    for r in (1, 2):
        stage = f"replicate {r}: extract features"
        assert second["timings"][stage] < results["timings"][stage] + 1.0
