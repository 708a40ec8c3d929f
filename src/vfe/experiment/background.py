"""Cache entries a later stage will read, computed ahead in one background process that runs only on idle CPU.

Why: fine-tuning keeps the two cores about 175 % busy, fitting three VFE heads on two worker processes leaves one
core idle for the last one, and the selective-classification and attack stages stay near 176 %: about a fifth of
`make run`'s CPU time was idle. The corrupted test sets' common part (their activations at the cut, the same for
every replicate) and the OOD sets' features are known before those stages run, so a process at Linux's SCHED_IDLE
priority computes them meanwhile. SCHED_IDLE, not nice 19: the kernel preempts an idle-policy task as soon as any
normal task wakes, so the run's own threads wait only for the caches and memory bandwidth the two share (one
fine-tuning took 1.07x as long beside it, 1.55x beside a nice-19 process: `benchmarks/bench_background.py`).

The numbers do not change: the process computes each entry exactly as the stage would, through the same feature
source at one intra-op thread (extraction returns one thread's bits at any count: `OneThreadBits`), into the same
cache, and the stage reads what is there and computes what is not. Before a stage runs, the process is stopped
(SIGTERM: its shard locks are released and half-written temporary files removed), so a stage never waits for it.
"""
from __future__ import annotations

import os
import pickle
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Self

from vfe.data.types import ImageSet
from vfe.experiment.timer import count_process, process_ended
from vfe.features.source import FeatureSource


@dataclass(frozen=True)
class Entry:
    """One cache entry to compute: `source(data, transform, key)`, the transform and key made in the background
    process by `transform_of(*transform_args)` (a module-level function: the transform itself is a closure, which
    does not pickle), or none."""

    source: FeatureSource
    data: ImageSet
    transform_of: Callable[..., tuple[Callable, str]] | None = None
    transform_args: tuple = ()

    def compute(self) -> None:
        transform, key = self.transform_of(*self.transform_args) if self.transform_of else (None, None)
        self.source(self.data, transform=transform, transform_key=key)


@dataclass(frozen=True)
class Ahead:
    """What a stage's `ahead` reads to name the entries it will need: the run's shared data, the replicates
    prepared so far (none while the first is being fine-tuned), each replicate's corruption-noise seed and the
    run's base seed."""

    shared: Any  # vfe.experiment.prepare.Shared
    replicates: list
    noise_seeds: list[int]
    data_seed: int


@dataclass
class Background:
    """At most one background process at a time: `start(entries, window)` begins one, `stop()` ends it and logs
    what it computed. `enabled=False` (one usable core, a GPU, the Ray engine) makes both do nothing. `record`
    is results.json's "background": per window, the entries asked for, those it got through before it stopped
    (computed, or found in the cache) and the process's CPU seconds."""

    enabled: bool = True
    log: Callable[[str], None] = print
    record: list[dict] = field(default_factory=list)
    _process: Any = None
    _conn: Any = None
    _window: str = ""
    _asked: int = 0
    _started: float = 0.0

    def start(self, entries: list[Entry], window: str) -> None:
        """Compute `entries`, in order, in a new background process (the previous one is stopped first)."""
        self.stop()
        if not self.enabled or not entries:
            return
        from vfe.experiment.processes import worker_context  # a fork server's child starts in under a second

        context = worker_context()
        receive, send = context.Pipe(duplex=False)
        payload = pickle.dumps(entries, protocol=5)  # not through multiprocessing: it would send tensors as fds
        self._process = context.Process(target=_work, args=(payload, send), daemon=True, name="vfe-background")
        self._process.start()
        count_process(self._process.pid)  # its CPU counts in the stages' utilisation, as the workers' does
        send.close()
        self._conn, self._window, self._asked, self._started = receive, window, len(entries), time.perf_counter()

    def stop(self) -> None:
        """End the process now (what it finished stays in the cache); log and record what it computed."""
        if self._process is None:
            return
        if self._process.is_alive():
            os.kill(self._process.pid, signal.SIGTERM)
        self._process.join(timeout=30)
        if self._process.is_alive():  # stuck in native code that never returns to Python: no half files, locks die
            self._process.kill()
            self._process.join()
        done, cpu, error = 0, 0.0, None
        while self._conn.poll():
            try:
                kind, value, cpu = self._conn.recv()
            except EOFError:
                break
            if kind == "done":
                done = value + 1
            elif kind == "error":
                error = value
        self._conn.close()
        process_ended(self._process.pid, cpu)
        self.record.append({"window": self._window, "entries": self._asked, "ready": done,
                            "cpu_seconds": round(cpu, 1), "seconds": round(time.perf_counter() - self._started, 1)})
        self.log(f"[vfe] background, during {self._window}: {done} of {self._asked} cache entries done (computed, or found in the cache), "
                 f"{cpu:.0f} CPU-seconds on idle cores" + (f"; it stopped early: {error}" if error else ""))
        self._process = self._conn = None

    def finished(self, timeout: float | None = None) -> bool:
        """Wait up to `timeout` seconds for the process to have computed every entry; whether it has."""
        if self._process is None:
            return True
        self._process.join(timeout)
        return not self._process.is_alive()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _work(payload: bytes, conn) -> None:
    """The background process: idle priority, one thread, each entry in turn; ("done", index, cpu) after each, or
    ("error", one line, cpu) and an end."""
    signal.signal(signal.SIGTERM, _exit)  # SystemExit at the next bytecode: `finally` and `with` blocks run
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the run's to handle: it stops this process
    idle_priority()
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1):
            for i, entry in enumerate(pickle.loads(payload)):  # bytes this run's own process pickled, not a file
                if hasattr(entry.source, "progress"):  # its own copy: the bars belong to the stage running meanwhile
                    entry.source.progress = False
                entry.compute()
                conn.send(("done", i, time.process_time()))
    except Exception as err:  # noqa: BLE001 - the stage computes what is missing itself: say why
        first = (str(err).splitlines() or [""])[0]
        conn.send(("error", f"{type(err).__name__}: {first}", time.process_time()))
    finally:  # stopped or finished: its CPU seconds, the unfinished entry's included
        conn.send(("end", None, time.process_time()))


def _exit(*_) -> None:
    raise SystemExit(0)


def idle_priority() -> None:
    """This process (and the threads it starts) at SCHED_IDLE where the platform has it, else at nice 19."""
    if hasattr(os, "sched_setscheduler") and hasattr(os, "SCHED_IDLE"):
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    else:
        os.nice(19)


__all__ = ["Ahead", "Background", "Entry", "idle_priority"]
