"""The docs site: docs/heads.md is what the head registry says, and `mkdocs build --strict` passes (no broken
link, no page left out of the nav, every API reference resolved)."""
from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
from script_modules import load_script

from vfe.heads import registry

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "docs_heads.py"


def _script():
    return load_script("docs_heads")


def test_the_heads_page_is_the_one_generated_from_the_registry():
    # a fresh process: tests that register heads of their own change this process's registry
    done = subprocess.run([sys.executable, str(SCRIPT), "check"], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


def test_the_heads_page_follows_a_change_to_the_registry(monkeypatch):
    docs_heads = _script()
    changed = dict(registry.REGISTRY)
    changed["centroid"] = registry.HeadSpec("centroid", "vfe.heads.centroid:CentroidHead", about="nearest centroid")
    changed["vfe"] = dataclasses.replace(changed["vfe"], benchmark=False, excluded_because="too slow today")
    monkeypatch.setattr(docs_heads, "REGISTRY", changed)
    page = docs_heads.render()
    assert "| `centroid` | `vfe.heads.centroid.CentroidHead` | nearest centroid | no | yes |" in page
    assert "| no: too slow today |" in page
    assert "| `vfe-k8` | `vfe.heads.vfe.VFEHead`; preset of `vfe`; sets `predict_mode='average'`, `n_samples=8` |" in page
    assert docs_heads.main(["check"]) == 1


@pytest.mark.slow
def test_the_site_builds_strictly(tmp_path):
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    api = (tmp_path / "api" / "index.html").read_text()
    assert "fit_pipeline" in api and "paired_comparison" in api
    assert "linear-augmix-js" in (tmp_path / "heads" / "index.html").read_text()
