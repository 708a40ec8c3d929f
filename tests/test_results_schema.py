"""results.json has a schema: a run writes its version and follows it, a reader refuses in one line a file of
another version or one that departs from it, and docs/results.schema.json is what the generator writes."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
from jsonschema import Draft202012Validator
from threads import one_thread

from vfe.cli import main
from vfe.experiment.config import with_overrides
from vfe.experiment.run import run
from vfe.experiment.run_settings import RunSettings
from vfe.report.inputs import read_results
from vfe.report.results_check import ResultsFileError, ResultsSchemaBug, check_written
from vfe.report.schema import SCHEMA_VERSION, schema_text

DOC = Path(__file__).resolve().parents[1] / "docs" / "results.schema.json"


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """(run folder, its results.json) of a run of a few seconds on the digits: one head, one replicate, no
    robustness stage (tests/experiment/test_run.py checks a run with every stage)."""
    tmp = tmp_path_factory.mktemp("schema")
    settings = with_overrides(RunSettings(), {
        "name": "small", "dataset": "digits", "image_size": 32, "n_train": 50, "n_test": 30, "heads": ["linear"],
        "replicates": 1, "head_params": {"linear": {"epochs": 3}}, "corruptions": [], "n_attack": 0, "ood": False,
        "runs_dir": str(tmp / "runs"), "cache_dir": str(tmp / "cache"), "progress": False})
    with one_thread():
        out = run(settings, log=lambda *_: None)
    return out, json.loads((out / "results.json").read_text())


def test_the_committed_schema_is_what_the_generator_writes():
    assert DOC.read_text() == schema_text(), \
        "docs/results.schema.json is stale: python -m vfe.report.schema > docs/results.schema.json"


def test_a_run_writes_its_schema_version_and_follows_the_committed_schema(small_run):
    out, results = small_run
    assert results["schema_version"] == SCHEMA_VERSION == 1
    Draft202012Validator(json.loads(DOC.read_text())).validate(results)
    assert read_results(out / "results.json")["setting"] == results["setting"]


def _doctored(results: dict, change) -> dict:
    broken = copy.deepcopy(results)
    change(broken)
    return broken


def _set_accuracy(r):
    r["clean"]["linear"]["0"]["accuracy"] = "0.9"


def _drop_summary(r):
    del r["summary"]


def _drop_version(r):
    del r["schema_version"]


def _newer(r):
    r["schema_version"] = SCHEMA_VERSION + 1


@pytest.mark.parametrize(("change", "says"), [
    (_set_accuracy, ("does not follow results schema version 1 at $.clean.linear['0'].accuracy: expected number, "
                     "found string; rerun it with this vfe (vfe run ... --overwrite) to report it")),
    (_drop_summary, "does not follow results schema version 1 at $: 'summary' is a required property"),
    (_drop_version, ("results schema version 0 (written by an older vfe; this vfe reads version 1); rerun it with "
                     "this vfe (vfe run ... --overwrite) to report it")),
    (_newer, ("results schema version 2 (written by a newer vfe; this vfe reads version 1); report it with the "
              "vfe that wrote it")),
])
def test_a_file_the_reader_cannot_read_is_one_line_naming_it(small_run, tmp_path, change, says):
    path = tmp_path / "results.json"
    path.write_text(json.dumps(_doctored(small_run[1], change)))
    with pytest.raises(ResultsFileError) as caught:
        read_results(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and says in message and "\n" not in message


def test_compare_with_a_run_of_an_older_schema_is_refused_in_one_line_before_any_work(small_run, tmp_path, capsys):
    old = tmp_path / "old"
    old.mkdir()
    (old / "results.json").write_text(json.dumps(_doctored(small_run[1], _drop_version)))
    # --address without --engine ray is refused by a later check: were the file let through, no run starts
    assert main(["run", "--quick", "--dataset", "digits", "--compare-with", str(old), "--runs-dir",
                 str(tmp_path / "runs"), "--no-progress", "--address", "127.0.0.1:1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"--compare-with {old}: {old / 'results.json'}: results schema version 0" in err


def test_what_a_run_writes_is_checked_as_json_will_hold_it(small_run):
    results = copy.deepcopy(small_run[1])
    results["clean"]["linear"]["0"]["accuracy"] = np.float32(0.75)  # numpy numbers are written as numbers
    results["head_parameters"]["linear"] = np.int64(650)
    written = check_written(results)
    assert written["clean"]["linear"]["0"]["accuracy"] == 0.75 and type(written["head_parameters"]["linear"]) is int
    results["reliability"]["linear"]["0"]["count"] = "15 bins"
    with pytest.raises(ResultsSchemaBug, match=r"at \$\.reliability\.linear\['0'\]\.count: expected array, found string"):
        check_written(results)
