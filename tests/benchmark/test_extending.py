"""docs/extending.md's head examples, run as written: a module of your own registers a working head, which
`--heads package.module:Class` names and `vfe.api.benchmark` runs through every stage."""
from __future__ import annotations

import importlib
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
