"""StageTimer's CPU utilisation: CPU seconds over wall seconds of the stage, every thread of the process."""
from __future__ import annotations

import time

import pytest

from vfe.experiment.timer import StageTimer


def _spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def test_a_waiting_stage_uses_no_cpu_and_a_busy_one_about_a_core():
    timer = StageTimer(log=lambda *_: None)
    with timer.timed("waiting"):
        time.sleep(0.3)
    with timer.timed("busy"):
        _spin(0.3)
    assert timer.cpu_percent["waiting"] < 10
    # a machine shared with other jobs gives a spinning thread less than a whole core, never more
    assert 30 < timer.cpu_percent["busy"] <= 105
    assert list(timer.cpu_percent) == list(timer.seconds) == list(timer.peak_rss_mb)
    assert timer.seconds["waiting"] == pytest.approx(0.3, abs=0.1)
