"""Wall time, CPU utilisation and peak memory of each stage of a job: which stage took the time, which left cores
idle, which raised the RSS."""
from __future__ import annotations

import resource
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

_worker_cpu = [0.0]  # CPU seconds of the jobs this process ran in worker processes (vfe.experiment.processes)


def add_worker_cpu(seconds: float) -> None:
    """Count a finished job's CPU seconds in a worker process: the fork server's children are not this process's,
    so getrusage(RUSAGE_CHILDREN) never sees them."""
    _worker_cpu[0] += seconds


def cpu_seconds() -> float:
    """CPU seconds this process has used so far, every thread, user and system, and the jobs it ran in worker
    processes."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime + _worker_cpu[0]


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
