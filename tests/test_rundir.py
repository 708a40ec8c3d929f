"""Run folders (`vfe.rundir`): never overwritten unless asked, numbers written as they come, one page listing it
all (lab and viz); one writer per output, and a run folder replaced whole or not at all (run, sweep, fit)."""
from __future__ import annotations

import os
import re
import socket
import threading
import time

import pytest

from vfe import rundir
from vfe.io import read_json
from vfe.rundir import OutputInUseError, Run, claimed, staged_folder


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


def test_a_second_writer_is_refused_naming_the_holder_or_waits_for_it(tmp_path):
    """Two commands writing one output: the second stops with one line naming the first (pid, host) and the
    flags that help, or with wait=True waits for it; a killed holder's lock is dropped by the kernel."""
    target = tmp_path / "runs" / "same"
    with claimed(target, "--name"):
        holder = re.escape(f"{target} is being written by pid {os.getpid()} on {socket.gethostname()}, since ")
        with pytest.raises(OutputInUseError, match=holder + ".*; pass --wait .* another --name"), \
                claimed(target, "--name"):
            pass
        waited = []
        waiter = threading.Thread(target=lambda: _claim_and_note(target, waited))
        waiter.start()
        time.sleep(0.3)
        assert waited == ["waiting"]  # it logged that it waits, and still waits
    waiter.join(timeout=10)
    assert waited == ["waiting", "got it"]
    with claimed(target, "--name"):  # released: free again, and the holder's record is gone with it
        pass
    assert sorted(p.name for p in target.parent.iterdir()) == [".same.lock"]


def _claim_and_note(target, notes: list) -> None:
    with claimed(target, "--name", wait=True, log=lambda _: notes.append("waiting")):
        notes.append("got it")


@pytest.mark.parametrize("exchange", [True, False], ids=["one-exchange", "two-renames"])
def test_a_staged_folder_replaces_a_finished_run_whole_and_a_stopped_one_changes_nothing(tmp_path, monkeypatch,
                                                                                         exchange):
    if not exchange:  # a system or file system that cannot exchange two names
        monkeypatch.setattr(rundir, "_exchange", lambda a, b: False)
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "results.json").write_text("old")
    (folder / "skipped_files.txt").write_text("files an earlier run skipped")
    with pytest.raises(KeyboardInterrupt), staged_folder(folder, "results.json") as stage:
        (stage / "results.json").write_text("half")
        raise KeyboardInterrupt
    assert sorted(p.name for p in folder.iterdir()) == ["results.json", "skipped_files.txt"]
    assert (folder / "results.json").read_text() == "old"
    with staged_folder(folder, "results.json") as stage:
        assert not any(stage.iterdir())  # the stopped run's files are gone: the rerun starts clean
        (stage / "results.json").write_text("new")
    assert [p.name for p in folder.iterdir()] == ["results.json"]  # nothing of the earlier run survives
    assert (folder / "results.json").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_a_swap_stopped_between_its_renames_gets_the_earlier_run_back(tmp_path):
    folder = tmp_path / "run"
    (tmp_path / ".run.replaced").mkdir()  # what a kill between the two renames leaves
    (tmp_path / ".run.replaced" / "results.json").write_text("old")
    (tmp_path / ".run.partial").mkdir()
    with pytest.raises(RuntimeError), staged_folder(folder, "results.json"):
        raise RuntimeError("stopped again")
    assert (folder / "results.json").read_text() == "old"


def test_a_folder_without_a_run_keeps_its_other_files(tmp_path):
    """A sweep's cells (or the user's notes) in a folder that holds no run are kept; the run's files join them."""
    folder = tmp_path / "shared"
    (folder / "sweep").mkdir(parents=True)
    (folder / "sweep" / "cell.json").write_text("{}")
    with staged_folder(folder, "results.json") as stage:
        (stage / "results.json").write_text("new")
        (stage / "figures").mkdir()
    assert sorted(p.name for p in folder.iterdir()) == ["figures", "results.json", "sweep"]
