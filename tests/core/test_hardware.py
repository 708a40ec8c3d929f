"""Extraction's thread count follows the free cores, training's the usable cores whatever the load: the
documented rules on mocked machines, the thread context restores torch's count, a user's explicit setting
wins, and `import vfe` never overrides a user's OpenMP variable."""
from __future__ import annotations

import math
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import vfe
from vfe import hardware
from vfe.backbones import engine
from vfe.heads import linear
from vfe.heads.linear import LinearHead
from vfe.training import TrainConfig, train


@pytest.fixture
def two_cores(monkeypatch, tmp_path):
    """A 2-CPU machine without cgroup quota, whose load the test sets; torch at 2 threads, no user env."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(hardware, "CGROUP_ROOT", tmp_path)  # no cpu.max: unlimited
    monkeypatch.setattr(hardware, "own_load", lambda: 0.0)
    monkeypatch.setattr(hardware, "runnable_elsewhere", lambda: 0.0)
    for name in hardware.USER_THREAD_ENV:
        monkeypatch.delenv(name, raising=False)
    torch.set_num_threads(2)  # the autouse fixture in tests/conftest.py restores 1 afterwards


def set_load(monkeypatch, load: float) -> None:
    monkeypatch.setattr(os, "getloadavg", lambda: (load, load, load))


# -- the rule ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("load", "own", "runnable", "expected"), [
    (0.0, 0.0, 0.0, 2),   # quiet
    (1.9, 1.8, 0.0, 2),   # the load is our own (a 2-thread extraction just ran): 0.1 from others
    (0.49, 0.0, 0.0, 2),  # under half a core taken elsewhere: still free
    (0.5, 0.0, 0.0, 1),   # half a core or more counts as taken
    (1.3, 0.2, 0.0, 1),   # one busy process
    (2.4, 0.3, 0.0, 1),   # two busy processes: at least one thread, always
    (0.2, 0.0, 2.0, 1),   # two processes that just started: runnable now, not yet in the average
])
def test_cores_left_on_two_cores(load, own, runnable, expected):
    assert hardware.cores_left(2, 2, None, load, own, runnable) == expected


def test_cores_left_scales_the_load_to_our_share_of_the_cpus_and_obeys_the_quota():
    # 4 of 16 CPUs are ours; a load of 8 from others spread evenly puts 2 of it on ours
    assert hardware.cores_left(4, 16, None, 8.0, 0.0) == 2
    assert hardware.cores_left(4, 4, 1.5, 0.0, 0.0) == 1  # a quota of 1.5 cores rounds down
    assert hardware.cores_left(4, 4, 8.0, 0.0, 0.0) == 4  # a quota above the affinity changes nothing
    assert hardware.cores_left(4, 4, 0.5, 0.0, 0.0) == 1  # never below one


def test_free_cores_reads_affinity_loadavg_and_cgroup(monkeypatch, tmp_path, two_cores):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    monkeypatch.setattr(hardware, "own_load", lambda: 0.2)
    set_load(monkeypatch, 1.2)  # 1.0 from others: one core taken
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert hardware.cgroup_cpu_quota() is None
    assert hardware.free_cores() == 3
    (tmp_path / "cpu.max").write_text("200000 100000\n")
    assert hardware.cgroup_cpu_quota() == 2.0
    assert hardware.usable_cores() == 2
    assert hardware.free_cores() == 2
    monkeypatch.setattr(hardware, "runnable_elsewhere", lambda: 3.0)  # three jobs started a moment ago
    assert hardware.free_cores() == 1


def test_cgroup_v1_quota(tmp_path):
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("150000\n")
    assert hardware.cgroup_cpu_quota(tmp_path) == 1.5
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert hardware.cgroup_cpu_quota(tmp_path) is None
    assert hardware.cgroup_cpu_quota(tmp_path / "missing") is None


def test_without_a_load_average_every_usable_core_is_free(monkeypatch, two_cores):
    def unavailable():
        raise OSError("no load average here")
    monkeypatch.setattr(os, "getloadavg", unavailable)
    assert hardware.free_cores() == 2


def test_own_load_averages_cpu_use_like_the_kernels_load_average():
    clock = {"wall": 1000.0, "cpu": 30.0}
    own = hardware.OwnLoad(clock=lambda: clock["wall"], cpu_clock=lambda: clock["cpu"], age=lambda: 60.0)
    decay = math.exp(-60.0 / 60.0)  # one time constant
    # first call: 30 CPU-seconds over the process's 60 s, assumed even: rate 0.5 for 60 s
    assert own() == pytest.approx(0.5 * (1 - decay))
    clock["wall"] += 60.0
    clock["cpu"] += 60.0  # one full core for the next 60 s
    assert own() == pytest.approx(0.5 * (1 - decay) * decay + 1.0 * (1 - decay))


def test_runnable_elsewhere_sees_a_busy_process():
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        # an instant's count: this process's own threads still spinning after an earlier test's parallel region
        # can hide the busy one for a moment, so it must show within 2 s of samples, not in the first one
        seen = []
        for _ in range(20):
            seen.append(hardware.runnable_elsewhere())
            if seen[-1] >= 1:
                break
            time.sleep(0.1)
        assert max(seen) >= 1, seen
    finally:
        busy.kill()
        busy.wait()


# -- the thread context -----------------------------------------------------------------------------------


def test_fit_threads_sets_and_restores_torchs_count(monkeypatch, two_cores):
    set_load(monkeypatch, 0.0)
    with hardware.fit_threads(1) as n:
        assert n == 1 and torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2
    with pytest.raises(RuntimeError), hardware.fit_threads(1):
        raise RuntimeError("a fit that fails")
    assert torch.get_num_threads() == 2


def test_fit_threads_follow_the_usable_cores_not_the_load(monkeypatch, tmp_path, two_cores):
    for load in (0.0, 1.0, 2.0, 5.0):  # quiet, one core taken, both, overloaded: the same count
        set_load(monkeypatch, load)
        monkeypatch.setattr(hardware, "runnable_elsewhere", lambda load=load: load)
        assert hardware.free_cores() == (2 if load == 0.0 else 1)
        assert hardware.fit_threads_for() == 2
        assert hardware.fit_threads_for(limit=1) == 1
    (tmp_path / "cpu.max").write_text("150000 100000\n")  # a quota of 1.5 cores: usable_cores() is 1
    assert hardware.fit_threads_for() == 1


def test_explicit_threads_are_respected(monkeypatch, two_cores):
    set_load(monkeypatch, 2.0)  # both cores taken
    with hardware.fit_threads(2):
        assert torch.get_num_threads() == 2
    torch.set_num_threads(1)  # a user's lower count is never exceeded
    assert hardware.fit_threads_for() == 1
    torch.set_num_threads(2)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # fixed by the user: kept, limit or not
    assert hardware.fit_threads_for(limit=1) == 2
    with pytest.raises(ValueError, match="at least 1"):
        hardware.fit_threads_for(0)


def test_train_runs_with_the_configured_threads_and_restores(monkeypatch, two_cores, digits_features):
    set_load(monkeypatch, 2.0)
    X, _, y, _ = digits_features
    seen = []

    def loss(module, batch):
        seen.append(torch.get_num_threads())
        return torch.nn.functional.cross_entropy(module(batch[0]), batch[1]), {}

    data = (torch.from_numpy(X[:64]), torch.from_numpy(y[:64].astype(np.int64)))
    train(torch.nn.Linear(64, 10), loss, data, None, TrainConfig(epochs=1, batch_size=32, threads=1))
    assert set(seen) == {1}
    seen.clear()
    train(torch.nn.Linear(64, 10), loss, data, None, TrainConfig(epochs=1, batch_size=32))  # busy: still both
    assert set(seen) == {2}
    assert torch.get_num_threads() == 2


def test_feature_heads_fit_with_one_thread_even_when_cores_are_free(monkeypatch, two_cores, digits_features):
    set_load(monkeypatch, 0.0)
    seen = []
    real = linear.fit_classifier

    def recording(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return real(*args, **kwargs)

    monkeypatch.setattr(linear, "fit_classifier", recording)
    X, _, y, _ = digits_features
    LinearHead(epochs=1).fit(X[:100], y[:100])
    assert seen == [hardware.FEATURE_HEAD_THREADS]
    assert torch.get_num_threads() == 2


def test_extraction_threads_follow_free_cores_unless_fixed(monkeypatch, two_cores):
    monkeypatch.setattr(engine, "free_cores", lambda: 1)  # one core taken
    assert engine.compute_threads(None, prefetch=False) == 1
    assert engine.compute_threads(None, prefetch=True) == 1
    assert engine.compute_threads(2, prefetch=False) == 2  # Backbone settings.threads: the user's number
    monkeypatch.setattr(engine, "free_cores", lambda: 2)
    assert engine.compute_threads(None, prefetch=False) == 2
    assert engine.compute_threads(None, prefetch=True) == 1  # the prefetch thread has the other core
    monkeypatch.setattr(engine, "free_cores", lambda: 1)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # fixed by the user: the load is not consulted
    assert engine.compute_threads(None, prefetch=False) == 2


# -- OpenMP's wait policy ---------------------------------------------------------------------------------


def _policy_after_import(**env) -> str:
    clean = {k: v for k, v in os.environ.items() if k not in vfe.OPENMP_USER_ENV}
    code = "import os, vfe; print(os.environ.get('OMP_WAIT_POLICY', 'unset'))"
    return subprocess.run([sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True,
                          check=True).stdout.strip()


def test_import_vfe_makes_openmp_waits_passive_but_never_overrides_the_user():
    assert _policy_after_import() == "PASSIVE"
    assert _policy_after_import(OMP_WAIT_POLICY="ACTIVE") == "ACTIVE"
    assert _policy_after_import(OMP_WAIT_POLICY="") == ""  # set, even if empty: the user's
    assert _policy_after_import(GOMP_SPINCOUNT="10000") == "unset"  # the user tuned waiting another way


def test_openmp_defaults_are_not_set_once_torch_is_loaded():
    environ = {}
    assert vfe.set_openmp_defaults(environ, torch_loaded=True) == {} and environ == {}
    assert vfe.set_openmp_defaults(environ, torch_loaded=False) == {"OMP_WAIT_POLICY": "PASSIVE"}
    assert environ == {"OMP_WAIT_POLICY": "PASSIVE"}
