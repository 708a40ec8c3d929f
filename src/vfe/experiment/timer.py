"""Wall time, CPU utilisation and peak memory of each stage of a job: which stage took the time, which left cores
idle, which raised the RSS."""
from __future__ import annotations

import os
import resource
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

_worker_cpu = [0.0]  # CPU seconds of the jobs this process ran in worker processes (vfe.experiment.processes)
_running: set[int] = set()  # helper processes whose CPU seconds are read live (vfe.experiment.background)


def add_worker_cpu(seconds: float) -> None:
    """Count a finished job's CPU seconds in a worker process: the fork server's children are not this process's,
    so getrusage(RUSAGE_CHILDREN) never sees them."""
    _worker_cpu[0] += seconds


def count_process(pid: int) -> None:
    """Count a running helper process's CPU seconds as they accrue (Linux's /proc; elsewhere from its end)."""
    _running.add(pid)


def process_ended(pid: int, cpu: float) -> None:
    """The helper process `pid` ended having used `cpu` seconds: counted from now on as a finished job's."""
    _running.discard(pid)
    add_worker_cpu(cpu)


def _process_cpu(pid: int) -> float:
    """User + system CPU seconds of a live process (utime and stime of /proc/PID/stat), 0 where unreadable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()  # the name, in (), may hold spaces
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_seconds() -> float:
    """CPU seconds this process has used so far, every thread, user and system, the jobs it ran in worker
    processes, and its running helper processes."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime + _worker_cpu[0] + sum(_process_cpu(pid) for pid in _running)


def peak_rss_mb() -> float:
    """This process's peak resident memory so far (Linux reports KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


@dataclass
class StageTimer:
    """Seconds per stage, its CPU utilisation (CPU seconds / wall seconds, in %: 200 = two cores busy all along),
    and the process's peak RSS when each stage ended."""

    seconds: dict[str, float] = field(default_factory=dict)
    cpu_percent: dict[str, float] = field(default_factory=dict)
    peak_rss_mb: dict[str, float] = field(default_factory=dict)
    log: object = print

    @contextmanager
    def timed(self, name: str):
        self.log(f"[vfe] {name} ...")
        start, cpu = time.perf_counter(), cpu_seconds()
        yield
        wall = time.perf_counter() - start
        self.seconds[name] = round(wall, 3)
        self.cpu_percent[name] = round(100 * (cpu_seconds() - cpu) / max(wall, 1e-9), 1)
        self.peak_rss_mb[name] = peak_rss_mb()
        self.log(f"[vfe] {name} done in {self.seconds[name]:.1f} s")
