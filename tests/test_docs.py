"""The docs site and the README: docs/heads.md is what the head registry says, `mkdocs build --strict` passes (no
broken link, no page left out of the nav, every API reference resolved), the README is a short front door whose
links resolve and whose "your own images" commands run, and no page speaks of the project's status."""
from __future__ import annotations

import dataclasses
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from script_modules import load_script

from vfe.heads import registry

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "docs_heads.py"
README = ROOT / "README.md"
DOCS = ROOT / "docs"
# project-status language that does not belong in user docs (measured figures stay, with their commands)
STATUS = ("this session", "misses the", "withdrawn", "left open", "no gpu was available")


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


def _nav_pages(nav) -> list[str]:
    pages = []
    for entry in nav:
        for value in (entry.values() if isinstance(entry, dict) else [entry]):
            pages += _nav_pages(value) if isinstance(value, list) else [value]
    return pages


def test_the_nav_and_the_pages_agree():
    """Every nav entry is a page, and every page is in the nav (the fast half of what the strict build checks)."""
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    nav = _nav_pages(config["nav"])
    assert sorted(nav) == sorted(p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")), nav


def test_the_readme_is_a_short_front_door_whose_links_resolve():
    text = README.read_text()
    assert len(text.splitlines()) <= 120
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text)
    assert any(link.startswith("docs/") for link in links)
    for link in links:
        if not link.startswith(("http://", "https://")):
            assert (ROOT / link).exists(), link


def test_no_page_speaks_of_the_projects_status():
    for page in [README, *sorted(DOCS.glob("*.md"))]:
        text = page.read_text().lower()
        found = [phrase for phrase in STATUS if phrase in text]
        assert not found, (page.name, found)
        assert not re.search(r"\b20\d\d-\d\d-\d\d\b", re.sub(r"since \d{4}-\d\d-\d\d \d\d:\d\d", "", text)), page.name


def _own_images_commands() -> list[str]:
    section = README.read_text().split("## Your own images in three commands", 1)[1]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    return [line.split("#", 1)[0].strip() for line in block.splitlines() if line.strip()]


@pytest.mark.slow
def test_the_readmes_own_images_commands_run(tmp_path, monkeypatch, capsys):
    """The README's three commands, as written, on a small class folder of real photos (tests/colour_data.py)."""
    from colour_data import CLASS_NAMES, write_colour_folder

    from vfe.cli import main

    commands = _own_images_commands()
    assert len(commands) == 3 and [shlex.split(c)[:2] for c in commands] == [["vfe", "fit"], ["vfe", "evaluate"],
                                                                             ["vfe", "predict"]]
    write_colour_folder(tmp_path / "my_photos", n_train=6, n_test=2)
    assert "rocket" in CLASS_NAMES
    (tmp_path / "new_photo.png").write_bytes(next((tmp_path / "my_photos" / "test" / "rocket").glob("*.png")).read_bytes())
    monkeypatch.chdir(tmp_path)
    for command in commands:
        assert main(shlex.split(command)[1:]) == 0, command
    out = capsys.readouterr().out
    assert '"accuracy"' in out and "new_photo.png" in out
