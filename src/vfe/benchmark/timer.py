"""Wall time and peak memory of each stage of a job: which stage took the time, which raised the RSS."""
from __future__ import annotations

import resource
import time
from contextlib import contextmanager
from dataclasses import dataclass, field


def peak_rss_mb() -> float:
    """This process's peak resident memory so far (Linux reports KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


@dataclass
class StageTimer:
    """Seconds per stage, and the process's peak RSS when each stage ended."""

    seconds: dict[str, float] = field(default_factory=dict)
    peak_rss_mb: dict[str, float] = field(default_factory=dict)
    log: object = print

    @contextmanager
    def timed(self, name: str):
        self.log(f"[vfe] {name} ...")
        start = time.perf_counter()
        yield
        self.seconds[name] = round(time.perf_counter() - start, 3)
        self.peak_rss_mb[name] = peak_rss_mb()
        self.log(f"[vfe] {name} done in {self.seconds[name]:.1f} s")
