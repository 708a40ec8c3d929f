"""Run folders (`vfe.rundir`, shared by lab and viz): never overwritten unless asked, numbers written as they
come, one page listing it all."""
from __future__ import annotations

import pytest

from vfe.io import read_json
from vfe.rundir import Run


def test_a_run_folder_is_not_overwritten_unless_asked(tmp_path):
    run = Run(tmp_path / "r", "first", settings={"a": 1})
    run.record(score=0.5)
    with pytest.raises(FileExistsError, match="--overwrite"):
        Run(tmp_path / "r", "second")
    assert read_json(tmp_path / "r" / "metrics.json") == {"score": 0.5}
    Run(tmp_path / "r", "resumed", resume=True).record(more=1)  # reopened: earlier files stay
    assert (tmp_path / "r" / "metrics.json").exists()
    Run(tmp_path / "r", "replaced", overwrite=True)
    assert not (tmp_path / "r" / "metrics.json").exists()
    Run(tmp_path / "empty", "an empty folder is fine")
    Run(tmp_path / "empty", "still empty, still fine")


def test_overwrite_never_deletes_a_folder_that_is_not_a_run(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="holds no earlier run"):
        Run(tmp_path, "oops", overwrite=True)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_the_page_lists_figures_tables_and_settings_in_order_escaped(tmp_path):
    run = Run(tmp_path / "r", "title <b>", settings={"model": "conv-vae"})
    run.figure("a.png", "first figure")
    run.table("scores", [{"name": "x<y", "value": 0.123456}, {"name": "z", "extra": 3}])
    run.text("a note")
    page = run.finish().read_text()
    assert page.index("a.png") < page.index("scores") < page.index("a note")
    assert "title &lt;b&gt;" in page and "x&lt;y" in page and "0.1235" in page
    assert "model=conv-vae" in page
    meta = read_json(tmp_path / "r" / "run.json")
    assert meta["title"] == "title <b>" and meta["settings"] == {"model": "conv-vae"}
