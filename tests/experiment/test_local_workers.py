"""The local engine fits heads x replicates in worker processes (vfe.experiment.processes): the fitted heads must be
those of the same fits run here one by one, bit for bit, on real data (8x8 digits features). The attacks' twin
test is tests/robustness/test_attack_workers.py."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from vfe.errors import SettingsError
from vfe.experiment.config import HeadSettings
from vfe.experiment.fit import TrainingDraw, fit_replicates
from vfe.experiment.processes import local_workers, map_local

HEADS = ["linear", "vfe"]
PARAMS = {"vfe": {"vae_epochs": 4, "epochs": 4, "latent_dim": 8}, "linear": {"epochs": 10}}


def _draws(digits_features) -> list[TrainingDraw]:
    """Two replicates: each its own training subset and seed."""
    X, _, y, _ = digits_features
    rows = [np.random.default_rng(seed).choice(len(X), 400, replace=False) for seed in (1, 2)]
    return [TrainingDraw(r, seed, X[idx], y[idx]) for r, (seed, idx) in enumerate(zip((11, 22), rows))]


def test_fits_in_worker_processes_equal_fits_one_by_one_here(digits_features):
    settings = HeadSettings(heads=HEADS, head_params=PARAMS)
    draws = _draws(digits_features)
    here, here_s = fit_replicates(settings, HEADS, draws, progress=False, workers=1)
    there, there_s = fit_replicates(settings, HEADS, draws, progress=False, workers=2)
    assert list(there) == list(here) == [("linear", 0), ("vfe", 0), ("linear", 1), ("vfe", 1)]
    X_test = digits_features[1]
    for key in here:
        assert np.array_equal(there[key].predict_proba(X_test), here[key].predict_proba(X_test)), key
    # the two replicates really differ (their own subsets and seeds), and every fit is timed once per replicate
    assert not np.array_equal(here[("linear", 0)].predict_proba(X_test), here[("linear", 1)].predict_proba(X_test))
    assert {h: len(s) for h, s in there_s.items()} == {h: len(s) for h, s in here_s.items()} == {"linear": 2, "vfe": 2}


def test_a_user_error_in_a_worker_is_raised_here_as_itself(digits_features):
    settings = HeadSettings(heads=["linear"], head_params={"linear": {"no_such_parameter": 1}})
    with pytest.raises(SettingsError, match="no_such_parameter"):
        fit_replicates(settings, ["linear"], _draws(digits_features), progress=False, workers=2)


def test_results_come_with_their_positions_whatever_the_order_they_finish_in(digits_features):
    draws = _draws(digits_features)
    items = [("linear", 1), ("linear", 0)]
    from vfe.experiment.fit import _fit_draw_task
    got = dict(map_local(_fit_draw_task, items, {"draws": draws, "head_params": PARAMS, "device": "cpu"}, workers=2,
                         progress=False))
    X_test = digits_features[1]
    for i, (head, k) in enumerate(items):
        alone, _ = _fit_draw_task((head, k), draws=draws, head_params=PARAMS, device="cpu")
        assert np.array_equal(got[i][0].predict_proba(X_test), alone.predict_proba(X_test))


def test_one_thread_allowed_means_one_job_at_a_time_here():
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert local_workers("cpu") == 1
    finally:
        torch.set_num_threads(before)
    assert local_workers("cuda") == 1  # a GPU runs one network at a time


def test_ctrl_c_stops_the_workers_and_leaves_no_job_running(digits_features):
    """A real SIGINT while two long fits run: KeyboardInterrupt here (the CLI's one line), and within seconds no
    worker process is left computing."""
    import os
    import signal
    import threading
    import time

    from vfe.experiment.fit import _fit_draw_task

    draws = _draws(digits_features)
    slow = {"vfe": {"vae_epochs": 100000, "vae_patience": 100000, "latent_dim": 8}}  # hours, unless stopped

    def busy_descendants() -> list[int]:
        """Descendant processes (workers, under the fork server) that used CPU in the last half second."""
        def stat(pid: int) -> list[str] | None:
            try:
                return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                return None
        family, changed = {os.getpid()}, True
        while changed:
            changed = False
            for entry in Path("/proc").iterdir():
                if entry.name.isdigit() and int(entry.name) not in family:
                    fields = stat(int(entry.name))
                    if fields and int(fields[1]) in family:
                        family.add(int(entry.name))
                        changed = True
        family.discard(os.getpid())
        def ticks(pid: int) -> int:
            fields = stat(pid)
            return int(fields[11]) + int(fields[12]) if fields else 0
        before = {pid: ticks(pid) for pid in family}
        time.sleep(0.5)
        return [pid for pid in family if ticks(pid) - before[pid] > 10]  # over 0.1 s of CPU in 0.5 s

    seen_busy = []

    def interrupt() -> None:
        deadline = time.monotonic() + 60
        while len(seen_busy) < 2 and time.monotonic() < deadline:  # until both fits run (the fork server imports)
            seen_busy[:] = busy_descendants()
        os.kill(os.getpid(), signal.SIGINT)

    timer = threading.Timer(1.0, interrupt)
    timer.start()
    started = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt):
            list(map_local(_fit_draw_task, [("vfe", 0), ("vfe", 1)],
                           {"draws": draws, "head_params": slow, "device": "cpu"}, workers=2, progress=False))
    finally:
        timer.cancel()
    assert len(seen_busy) == 2
    assert time.monotonic() - started < 90  # it did not wait for the fits
    deadline = time.monotonic() + 10
    while busy_descendants() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert busy_descendants() == []
