"""docs/extending.md's head examples, run as written: a module of your own registers a working head, which
`--heads package.module:Class` names and `vfe.api.benchmark` runs through every stage."""
from __future__ import annotations

import dataclasses
import importlib
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from own_heads import restored_registry

from vfe.errors import SettingsError
from vfe.heads.registry import check_params, expand_heads, head_class, head_names, make_head

DOC = Path(__file__).parents[2] / "docs" / "extending.md"
EXAMPLES = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.DOTALL)


@pytest.fixture
def centroid_module(tmp_path, monkeypatch):
    """The doc's head module, importable as `centroid_example`; nothing of it registered yet."""
    (tmp_path / "centroid_example.py").write_text(EXAMPLES[0])
    monkeypatch.syspath_prepend(str(tmp_path))
    with restored_registry():
        yield
    sys.modules.pop("centroid_example", None)


def test_the_documented_head_works_through_the_registry(centroid_module, digits_features):
    X_train, X_test, y_train, y_test = digits_features
    assert "centroid" not in head_names()
    # what `vfe run --heads linear centroid_example:CentroidHead` does first: import, register, use the name
    assert expand_heads(["linear", "centroid_example:CentroidHead"]) == ["linear", "centroid"]
    head = make_head("centroid", temperature=0.5).fit(X_train, y_train)
    # nearest class mean by hand: the same predictions
    means = np.stack([X_train[y_train == c].mean(0) for c in np.unique(y_train)])
    by_hand = np.unique(y_train)[((X_test[:, None] - means[None]) ** 2).sum(-1).argmin(1)]
    assert np.array_equal(head.predict(X_test), by_hand) and head.score(X_test, y_test) > 0.8
    with pytest.raises(SettingsError, match="temperature"):
        check_params("centroid", {"temprature": 2.0})
    tensors, meta = head.export_state()
    again = head_class(meta["head"]).from_state(tensors, meta)
    assert np.allclose(again.predict_proba(X_test), head.predict_proba(X_test))


@pytest.mark.slow
def test_the_documented_benchmark_call_runs_the_head_beside_linear(centroid_module, tmp_path):
    namespace = {"CentroidHead": importlib.import_module("centroid_example").CentroidHead, "runs": tmp_path / "runs"}
    exec(EXAMPLES[1], namespace)  # noqa: S102 - the doc's own example, as written
    results, folder = namespace["results"], namespace["folder"]
    assert set(results["clean"]) == {"linear", "centroid"} and (folder / "report.md").exists()
    assert results["summary"]["table"]["centroid"]["clean_accuracy"]["mean"] > 0.3  # 10 classes, chance 0.1
    assert {row["head"] for row in results["leaderboard"]} == {"linear", "centroid"}


# -- the stage example ------------------------------------------------------------------------------------------

STAGE_FILES = {re.match(r"# src/vfe/experiment/stages/feature_drop/(\w+\.py)\n", block)[1]: block
               for block in EXAMPLES if block.startswith("# src/vfe/experiment/stages/feature_drop/")}


@pytest.fixture
def feature_drop(tmp_path, monkeypatch):
    """The doc's stage folder, written as `vfe.experiment.stages.feature_drop` (a folder outside the source tree on
    the package's search path), registered as the doc says: in STAGES and SECTIONS and as a field of RunSettings.
    Yields that RunSettings."""
    import vfe.experiment.run as run_module
    from vfe.experiment import stages
    from vfe.experiment.run_settings import RunSettings
    from vfe.experiment.stages import registry

    assert set(STAGE_FILES) == {"settings.py", "stage.py", "section.py"}
    folder = tmp_path / "doc_stages" / "feature_drop"
    folder.mkdir(parents=True)
    (folder / "__init__.py").write_text('"""Accuracy with a share of every test feature vector set to zero."""\n')
    for name, text in STAGE_FILES.items():
        (folder / name).write_text(text)
    monkeypatch.setattr(stages, "__path__", [*stages.__path__, str(folder.parent)])
    stage = importlib.import_module("vfe.experiment.stages.feature_drop.stage")
    settings = importlib.import_module("vfe.experiment.stages.feature_drop.settings")
    with_stage = dataclasses.make_dataclass(
        "RunSettings", [("feature_drop", settings.FeatureDropSettings,
                         dataclasses.field(default_factory=settings.FeatureDropSettings))], bases=(RunSettings,))
    monkeypatch.setattr(registry, "STAGES", (*registry.STAGES, stage.STAGE))
    monkeypatch.setattr(run_module, "STAGES", (*run_module.STAGES, stage.STAGE))
    monkeypatch.setattr(run_module, "SECTIONS", (*run_module.SECTIONS, stage.STAGE.section))
    # the schema step (docs/results.md) is not part of the example: the check reads the rest of the results
    written = run_module.check_written
    monkeypatch.setattr(run_module, "check_written", lambda results: {
        **written({k: v for k, v in results.items() if k != "feature_drop"}), "feature_drop": results["feature_drop"]})
    yield with_stage
    for name in [m for m in sys.modules if m.startswith("vfe.experiment.stages.feature_drop")]:
        del sys.modules[name]


@pytest.mark.slow
def test_the_documented_stage_runs_in_a_run_and_its_report(feature_drop, tmp_path):
    from test_run import tiny_config

    from vfe.experiment.config import with_overrides
    from vfe.experiment.flags import ArgumentParser, add_flags
    from vfe.experiment.run import run

    parser = ArgumentParser()
    add_flags(parser, feature_drop())
    assert parser.parse_args(["--drop-fraction", "0.3"]).drop_fraction == 0.3  # its field is a flag

    base = tiny_config(tmp_path, heads=["linear"], corruptions=[], n_attack=0, ood=False)
    settings = with_overrides(feature_drop(**{f.name: getattr(base, f.name) for f in dataclasses.fields(base)}),
                              {"drop_fraction": 0.5})
    with pytest.raises(SettingsError, match="--drop-fraction must be at least 0 and below 1, got 1.5"):
        run(with_overrides(settings, {"drop_fraction": 1.5}), log=lambda *_: None)  # its check, before any work
    out = run(settings, log=lambda *_: None)
    results = json.loads((out / "results.json").read_text())
    dropped = results["feature_drop"]["linear"]
    assert set(dropped) == {"0", "1"} and all(0 <= a <= 1 for a in dropped.values())
    assert "feature drop (0.5)" in results["timings"]
    mean, std = np.mean(list(dropped.values())), np.std(list(dropped.values()), ddof=1)
    assert f"| linear | {100 * mean:.1f} ± {100 * std:.1f} |" in (out / "report.md").read_text()
