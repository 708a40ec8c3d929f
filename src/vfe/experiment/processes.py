"""The local engine's fan-out: a run's independent heads x replicates, fitted or attacked in worker processes.

Why processes: a head's fit and an attack seed torch's process-wide random generator, so two of them cannot share
a process (threads would draw from one generator in an order that follows the scheduler). And why at all: a
feature head fits at one intra-op thread (its weights must not depend on the load), and an attack on batches of 16
keeps two intra-op threads well short of both cores; two such jobs side by side, one thread each, keep both cores
busy (`make run`: benchmarks/README.md).

Each worker runs a job exactly as a Ray task does (`vfe.experiment.fanout.run_task`: one torch and one BLAS
thread), so the numbers are those of the job run alone at one thread, whatever the number of workers and the
order the jobs finish in. Workers are forked from a fork server (not from this process: a fork of a process whose
OpenMP pool has run can hang), which imported vfe's job modules once when it started (`start_early`), so a worker
starts in well under a second instead of the 5-9 s a fresh interpreter takes to import torch, timm and vfe here.
They receive the shared arrays once each and send their results back pickled between this run's own processes;
nothing is unpickled from disk. With one worker (one usable core, a user who fixed one thread, or a GPU) the jobs
run here, one after another.
"""
from __future__ import annotations

import multiprocessing
import pickle
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import torch
from tqdm.auto import tqdm

from vfe.errors import VfeError
from vfe.experiment.fanout import run_task
from vfe.experiment.timer import add_worker_cpu
from vfe.hardware import usable_cores

_SHARED: dict[str, Any] = {}  # in a worker: the arrays every job reads, received once
_JOB_MODULES = ["vfe.experiment.fit", "vfe.experiment.stages.adversarial.stage"]  # what the fork server imports for its workers


def worker_context() -> multiprocessing.context.BaseContext:
    """A fork server where the platform has one (Linux, macOS), else fresh interpreters (spawn)."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(_JOB_MODULES)
    return context


def start_early(workers: int) -> None:
    """Start the fork server now, when jobs will run in worker processes later: it imports the job modules while
    this process does other work, so the first pool starts at once."""
    if workers > 1 and worker_context().get_start_method() == "forkserver":  # the context names the modules to import
        from multiprocessing import forkserver

        forkserver.ensure_running()


def local_workers(device: str | torch.device) -> int:
    """How many jobs run at once here: one per usable core on the CPU, one where the network runs on a GPU.
    Torch's thread count bounds it (as it bounds a fit's threads: vfe.hardware.fit_threads_for), so a user who
    allowed one thread (OMP_NUM_THREADS=1, torch.set_num_threads(1)) gets the jobs one at a time in this
    process."""
    if torch.device(device).type != "cpu":
        return 1
    return max(1, min(torch.get_num_threads(), usable_cores()))


def map_local(function: Callable[..., Any], items: Sequence, shared: dict[str, Any], *, workers: int,
              progress: bool = True, desc: str = "jobs", unit: str = "job") -> Iterator[tuple[int, Any]]:
    """(position in `items`, function(item, **shared)) for every item, as each finishes: `fan_out`'s contract, in
    `workers` processes at one thread each. `function` must be importable by a fresh process (a module-level
    function of vfe) and the items, shared values and results picklable. With fewer than two workers or items,
    the jobs run in this process, in order, at its own thread count."""
    if not items:
        return
    with tqdm(total=len(items), desc=desc, unit=unit, disable=not progress, dynamic_ncols=True) as bar:
        if workers < 2 or len(items) < 2:
            for i, item in enumerate(items):
                result = function(item, **shared)
                bar.update()
                yield i, result
            return
        pool = ProcessPoolExecutor(min(workers, len(items)), mp_context=worker_context(),
                                   initializer=_receive, initargs=(pickle.dumps(shared, protocol=5),))
        pending = {pool.submit(_job, function, item): i for i, item in enumerate(items)}
        try:
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    position = pending.pop(future)
                    result = _result(future, desc)
                    bar.update()
                    yield position, result
        finally:  # an error, Ctrl-C or a caller that stops early: the jobs left are not run for nothing
            if pending:  # Python 3.14's terminate_workers(), by hand: 3.11 has none
                running = list((getattr(pool, "_processes", None) or {}).values())
                pool.shutdown(wait=False, cancel_futures=True)
                for process in running:
                    process.terminate()
            else:
                pool.shutdown()


def _receive(shared: bytes) -> None:
    """A worker's start: keep the shared arrays; Ctrl-C is the parent's to handle (it stops the workers).

    They come pickled by this run's own process into bytes, since multiprocessing would otherwise send each
    tensor's storage as a file descriptor (torch's sharing), and a fork server takes at most 256 per worker."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _SHARED.update(pickle.loads(shared))


def _job(function: Callable[..., Any], item: Any) -> tuple[Any, float]:
    """A job in a worker: its result and the CPU seconds it took there (for the stage's CPU utilisation)."""
    started = time.process_time()
    result = run_task(function, _SHARED, item)
    return result, time.process_time() - started


def _result(future, desc: str) -> Any:
    """A job's result; a user error raised in it is raised here as itself (one line at the command line)."""
    try:
        result, cpu = future.result()
    except BrokenProcessPool:
        raise VfeError(f"{desc}: a worker process died (out of memory?); what was cached is kept: run the command "
                       "again, with OMP_NUM_THREADS=1 to run the jobs one at a time in this process") from None
    add_worker_cpu(cpu)
    return result


__all__ = ["local_workers", "map_local", "start_early", "worker_context"]
