"""Facts about the machine that decide how vfe computes (shared by training and extraction).

Extraction follows the cores that are free now; training does not. On the 2-core project machine, two
OpenMP threads beside other busy processes collapse: a thread that reaches a barrier waits for its partner,
whose core another process holds, at every one of the thousands of parallel regions a batch runs
(`benchmarks/bench_busy.py`). `free_cores` estimates how many cores other processes leave us, and
extraction's `engine.compute_threads` runs the network on that many: a forward pass gives the same bits at
any thread count (measured, docs/reproducibility.md; tests/core/test_determinism.py). A training step does
not: weight gradients and BatchNorm's batch statistics are sums split across threads, so the weights after
one epoch differ with the thread count. `fit_threads` therefore gives a fit a count fixed by the machine
(`usable_cores`, torch's setting at most), never by its load, so the same command gives the same numbers
however busy the machine is.

OpenMP's wait policy is the other half: `import vfe` sets `OMP_WAIT_POLICY=PASSIVE` unless the user set
it (`vfe.OPENMP_ENV_DEFAULTS`, in vfe/__init__.py: it must happen before torch loads its OpenMP runtime).
"""
from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

# The kernel's 1-minute load average is an exponential moving average of the number of runnable tasks
# with this time constant (seconds); our own share of it is estimated the same way (OwnLoad).
LOAD_TIME_CONSTANT = 60.0
# Load from other processes counts as a taken core from half a core up: rounding half up, because a
# thread too many costs far more than a thread too few (a barrier stalls for a whole time slice).
BUSY_SHARE = 0.5
# Environment variables by which a user fixes the thread count; when one is set, vfe's automatic choice
# keeps torch's count as it is.
USER_THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
# Heads fitted on feature vectors use at most this many intra-op threads: a second thread gains little on
# the small matrices of their training steps even on a quiet machine (benchmarks/bench_busy.py --threads),
# and one thread never waits on a core another process holds. Image models (fine-tuning, the lab's
# autoencoders) are not limited: their convolutions gain from every usable core.
FEATURE_HEAD_THREADS = 1
CGROUP_ROOT = Path("/sys/fs/cgroup")


def cpu_has_native_bf16() -> bool:
    """oneDNN runs bf16 convolutions natively (AVX512-BF16 or AMX); without it bf16 is emulated and slow."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


# -- cores ------------------------------------------------------------------------------------------------


def cgroup_cpu_quota(root: Path | None = None) -> float | None:
    """The CPU quota of this process's cgroup in cores (1.5 for `150000 100000`), or None when unlimited.

    cgroup v2 (`cpu.max`: "quota period" or "max period") or v1 (`cpu/cpu.cfs_quota_us`, -1 for none).
    """
    root = CGROUP_ROOT if root is None else Path(root)
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    for folder in ("cpu", "cpu,cpuacct"):
        try:
            quota = int((root / folder / "cpu.cfs_quota_us").read_text())
            period = int((root / folder / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            continue
        return None if quota <= 0 or period <= 0 else quota / period
    return None


def usable_cores() -> int:
    """Cores this process may run on: its CPU affinity, capped by the cgroup quota rounded down (at least 1).

    Down, because two threads on 1.5 cores of quota are throttled every period: the same barrier stall as
    a core taken by another process.
    """
    cores = _affinity_count()
    quota = cgroup_cpu_quota()
    return max(1, min(cores, math.floor(quota))) if quota is not None else cores


def _affinity_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def free_cores() -> int:
    """Cores not taken by other processes: the number of intra-op threads that will not wait on a busy core.

    The rule (`cores_left`): load from others = the 1-minute load average less this process's own share of
    it (`OwnLoad`), or the tasks runnable right now less our own running threads, whichever is larger (the
    average lags a minute behind a job that just started). Scaled to our share of the machine's CPUs when
    the affinity mask is a subset; rounded half up (`BUSY_SHARE`); subtracted from `usable_cores()`; at
    least 1. Where the load average is unavailable, all usable cores count as free.
    """
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return usable_cores()
    return cores_left(_affinity_count(), os.cpu_count() or _affinity_count(), cgroup_cpu_quota(), load,
                      own_load(), runnable_elsewhere())


def cores_left(affinity: int, cpus: int, quota: float | None, load_average: float, own_load: float,
               runnable_others: float | None = None) -> int:
    """The rule behind `free_cores`, on its inputs (see there); a pure function so that it can be checked."""
    others = max(0.0, load_average - own_load, runnable_others or 0.0)
    others *= affinity / max(cpus, affinity)  # the load spreads over all CPUs, ours are `affinity` of them
    busy = math.floor(others + 1.0 - BUSY_SHARE)
    cores = affinity if quota is None else max(1, min(affinity, math.floor(quota)))
    return max(1, min(cores, affinity - busy))


class OwnLoad:
    """This process's own share of the 1-minute load average: its CPU use (all threads), averaged as the
    kernel averages the load (exponentially, `LOAD_TIME_CONSTANT`). The first call assumes the process
    used its CPU time evenly since it started (Linux: /proc/self/stat); later calls update the average with
    the CPU time used since the previous call. The clocks can be replaced (tests)."""

    def __init__(self, clock=time.monotonic, cpu_clock=time.process_time, age=None):
        self.clock, self.cpu_clock = clock, cpu_clock
        self.age = _process_age if age is None else age
        self.lock = threading.Lock()
        self.at: float | None = None
        self.cpu = 0.0
        self.value = 0.0

    def __call__(self) -> float:
        now, cpu = self.clock(), self.cpu_clock()
        with self.lock:
            if self.at is None:
                age = self.age()
                if age:
                    self.value = cpu / age * -math.expm1(-age / LOAD_TIME_CONSTANT)
            elif now > self.at:
                weight = -math.expm1(-(now - self.at) / LOAD_TIME_CONSTANT)
                self.value += ((cpu - self.cpu) / (now - self.at) - self.value) * weight
            self.at, self.cpu = now, cpu
            return self.value


def _process_age() -> float | None:
    """Seconds since this process started (Linux), else None."""
    try:
        stat = Path("/proc/self/stat").read_text()
        started = int(stat.rsplit(")", 1)[1].split()[19]) / os.sysconf("SC_CLK_TCK")  # field 22: starttime
        return max(float(Path("/proc/uptime").read_text().split()[0]) - started, 1e-3)
    except (OSError, ValueError, IndexError):
        return None


own_load = OwnLoad()


def runnable_elsewhere(samples: int = 3, gap: float = 0.001) -> float | None:
    """Tasks runnable right now that are not this process's (Linux /proc/loadavg's fourth field less our own
    running threads): the least of a few samples `gap` seconds apart, so a task that ran for an instant
    does not count. None where /proc is unavailable."""
    counts = []
    try:
        for i in range(samples):
            if i:
                time.sleep(gap)
            runnable = int(Path("/proc/loadavg").read_text().split()[3].split("/")[0])
            counts.append(runnable - _own_running_threads())
    except (OSError, ValueError, IndexError):
        return None
    return float(max(0, min(counts)))


def _own_running_threads() -> int:
    running = 0
    for task in Path("/proc/self/task").iterdir():
        try:
            running += (task / "stat").read_text().rsplit(")", 1)[1].split()[0] == "R"
        except (OSError, IndexError):
            continue  # the thread ended while we looked
    return running


# -- threads ----------------------------------------------------------------------------------------------


def user_fixed_threads() -> bool:
    """Whether the user fixed the thread count through the environment (OMP_NUM_THREADS, MKL_NUM_THREADS)."""
    return any(os.environ.get(name) for name in USER_THREAD_ENV)


def fit_threads_for(requested: int | None = None, limit: int | None = None) -> int:
    """Intra-op threads for a fit: `requested` when given; torch's current count when the user fixed it in
    the environment (USER_THREAD_ENV); else the least of torch's current count, `usable_cores()` and `limit`.

    Never `free_cores()`: a training step's float sums depend on the thread count, so a count that followed
    the load would make the same command give different weights on a busy machine (docs/reproducibility.md).
    Torch's current count bounds the choice, so a `torch.set_num_threads` of the user's is never exceeded."""
    if requested is not None:
        if int(requested) < 1:
            raise ValueError(f"threads must be at least 1, got {requested}")
        return int(requested)
    current = torch.get_num_threads()
    if user_fixed_threads():
        return current
    return max(1, min(current, usable_cores(), current if limit is None else limit))


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch's intra-op thread count set to `n` inside the block (process-wide), restored after."""
    before = torch.get_num_threads()
    if n != before:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


@contextmanager
def fit_threads(requested: int | None = None, limit: int | None = None) -> Iterator[int]:
    """Fit with `fit_threads_for(requested, limit)` intra-op threads; torch's count is restored afterwards."""
    n = fit_threads_for(requested, limit)
    with torch_threads(n):
        yield n
