"""`vfe run`'s folder: nothing lost, nothing silently wrong. Any sequence of runs, overwrites, kills at any write and
resumptions leaves either no results or complete ones equal to a clean run's; --overwrite leaves nothing of the
earlier run; a run killed with SIGKILL resumes with the same command and gives the same numbers."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from threads import one_thread

from vfe.errors import SettingsError
from vfe.experiment.config import with_overrides
from vfe.experiment.run import run
from vfe.experiment.run_settings import RunSettings

# what differs between two runs of the same settings: wall-clock times, memory, where the run was written
MEASURED_NOT_COMPUTED = {"timings", "seconds", "fit_seconds", "peak_rss_mb", "peak_rss_mb_after_stage",
                         "cpu_percent_per_stage", "config"}


def tiny(runs_dir: Path, cache_dir: Path, name: str = "tiny") -> RunSettings:
    """A run of a few seconds: one linear head, one replicate, no robustness stage."""
    return with_overrides(RunSettings(), {
        "name": name, "dataset": "digits", "image_size": 32, "n_train": 50, "n_test": 30, "heads": ["linear"],
        "replicates": 1, "head_params": {"linear": {"epochs": 3}}, "corruptions": [], "n_attack": 0, "ood": False,
        "runs_dir": str(runs_dir), "cache_dir": str(cache_dir), "progress": False})


def numbers(results):
    """Everything a run computes, without what is measured (times, memory) or where it was written."""
    if isinstance(results, dict):
        return {k: numbers(v) for k, v in results.items() if k not in MEASURED_NOT_COMPUTED}
    if isinstance(results, list):
        return [numbers(v) for v in results]
    return results


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """(cache folder, the numbers of a clean run); the cache is warm for the runs the tests start."""
    tmp = tmp_path_factory.mktemp("run-folders")
    with one_thread():
        out = run(tiny(tmp / "clean", tmp / "cache"), log=lambda *_: None)
    return tmp, numbers(json.loads((out / "results.json").read_text()))


def assert_complete_or_absent(folder: Path, expected: dict) -> bool:
    """A run folder's results are absent, or complete (with their report) and equal to a clean run's."""
    if not (folder / "results.json").exists():
        return False
    results = json.loads((folder / "results.json").read_text())
    assert {"summary", "leaderboard", "timings"} <= set(results)
    assert numbers(results) == expected
    assert (folder / "report.md").stat().st_size > 0 and (folder / "report.html").stat().st_size > 0
    assert not [p for p in folder.rglob("*") if p.name.endswith(".tmp")]
    return True


class Killed(BaseException):
    """kill -9 in the middle of a run: nothing of vfe's own handles it."""


def killed_at(k: int | None):
    """os.replace and os.rename as vfe's writes and folder swaps call them, raising Killed at the k-th call: the
    run dies just before that file (a cache shard, results.json, a figure, the report) or folder lands."""
    real = {"replace": os.replace, "rename": os.rename}
    calls = [0]

    def fake(name):
        def call(*args, **kwargs):
            if sys._getframe(1).f_globals.get("__name__", "").startswith("vfe."):
                calls[0] += 1
                if calls[0] - 1 == k:
                    raise Killed
            return real[name](*args, **kwargs)
        return call
    return fake("replace"), fake("rename")


@pytest.mark.slow
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(st.tuples(st.booleans(), st.none() | st.integers(0, 14)), min_size=1, max_size=4))
def test_any_sequence_of_runs_overwrites_kills_and_resumptions_leaves_complete_results_or_none(clean, monkeypatch,
                                                                                              steps):
    """Each step is `vfe run` (with or without --overwrite), killed at its k-th write or not at all; the next step
    with the same command is the resumption. After every step the folder holds no results, or complete results equal
    to a clean run's; a refused run changes nothing; a killed one leaves the folder as it was."""
    tmp, expected = clean
    runs = Path(tempfile.mkdtemp(dir=tmp))
    settings_ = tiny(runs, tmp / "cache")
    folder = settings_.run_dir
    for overwrite, kill_at in steps:
        before = (folder / "results.json").read_bytes() if (folder / "results.json").exists() else None
        with monkeypatch.context() as patch:
            replace, rename = killed_at(kill_at)
            patch.setattr(os, "replace", replace)
            patch.setattr(os, "rename", rename)
            try:
                run(settings_, overwrite=overwrite, log=lambda *_: None)
                outcome = "finished"
            except SettingsError as err:
                assert before is not None and not overwrite and "already holds a run" in str(err)
                outcome = "refused"
            except Killed:
                outcome = "killed"
        if outcome == "finished":
            assert assert_complete_or_absent(folder, expected)
            assert sorted(p.name for p in runs.iterdir()) == [".tiny.lock", "tiny"]  # nothing staged is left
        else:
            after = (folder / "results.json").read_bytes() if (folder / "results.json").exists() else None
            assert after == before or after is None and before is None
            assert_complete_or_absent(folder, expected)


@pytest.mark.slow
def test_overwrite_replaces_the_whole_folder(clean):
    """`vfe run --overwrite` used to leave the earlier run's files, e.g. a skipped_files.txt listing files skipped
    by a run that skipped none."""
    tmp, expected = clean
    folder = tmp / "overwritten" / "tiny"
    folder.mkdir(parents=True)
    (folder / "results.json").write_text("{}")
    (folder / "skipped_files.txt").write_text("flowers/broken.jpg: not a readable image\n")
    (folder / "figures").mkdir()
    (folder / "figures" / "an-earlier-figure.png").write_bytes(b"png")
    run(tiny(tmp / "overwritten", tmp / "cache"), overwrite=True, log=lambda *_: None)
    assert assert_complete_or_absent(folder, expected)
    assert not (folder / "skipped_files.txt").exists()
    assert not (folder / "figures" / "an-earlier-figure.png").exists()


@pytest.mark.slow
def test_a_run_killed_with_sigkill_resumes_with_the_same_command(clean):
    """A real kill -9 of `vfe run` while it writes: the folder holds no results; the same command then finishes
    (the lock died with the killed process) and gives a clean run's numbers."""
    tmp, expected = clean
    runs = tmp / "sigkill"
    settings_ = tiny(runs, tmp / "cache")
    command = [sys.executable, "-m", "vfe.cli", "run", "--name", "tiny", "--runs-dir", str(runs),
               "--cache-dir", str(tmp / "cache"), "--dataset", "digits", "--image-size", "32", "--n-train", "50",
               "--n-test", "30", "--heads", "linear", "--replicates", "1", "--head-param", "linear.epochs=3",
               "--corruptions", "--n-attack", "0", "--no-ood", "--no-progress"]
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    staged = runs / ".tiny.partial"
    deadline = time.monotonic() + 120
    while not staged.exists() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=60)
    assert child.returncode == -signal.SIGKILL
    assert not (runs / "tiny" / "results.json").exists()
    assert run(settings_, log=lambda *_: None) == runs / "tiny"
    assert assert_complete_or_absent(runs / "tiny", expected)
