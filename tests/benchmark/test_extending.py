"""docs/extending.md's head example, run as written: one file and one registry entry make a working head."""
from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest

from vfe.errors import SettingsError
from vfe.heads import registry
from vfe.heads.registry import HeadSpec, check_params, head_class, head_names, make_head

DOC = Path(__file__).parents[2] / "docs" / "extending.md"


@pytest.fixture
def centroid_head(tmp_path, monkeypatch):
    code = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.DOTALL)[0]
    (tmp_path / "centroid_example.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(registry.REGISTRY, "centroid",
                        HeadSpec("centroid", "centroid_example:CentroidHead", about="nearest class centroid"))
    yield
    sys.modules.pop("centroid_example", None)


def test_the_documented_head_works_through_the_registry(centroid_head, digits_features):
    X_train, X_test, y_train, y_test = digits_features
    assert "centroid" in head_names()
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
