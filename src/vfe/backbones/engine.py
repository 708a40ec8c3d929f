"""The fast feature-extraction path: batches in, pooled features out, preprocessing overlapped with compute.

A background thread turns uint8 batches into normalised model input (on CPU) or pinned uint8
tensors (on CUDA, where the resize runs on the GPU), while the calling thread runs the network.
On CPU the network is a torch.jit trace frozen for the batch's image size (oneDNN fuses
convolution, BatchNorm and activation), in channels-last layout; settings per backbone are in
registry.py with the measurements that chose them.
"""
from __future__ import annotations

import queue
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from itertools import islice
from typing import Any

import numpy as np
import torch

from vfe.backbones.precision import FAITHFUL_COSINE, min_cosine
from vfe.hardware import free_cores, usable_cores, user_fixed_threads

_DONE = object()

UInt8Batch = np.ndarray | torch.Tensor


def iter_uint8_batches(source: Any, batch_size: int) -> tuple[Iterator[UInt8Batch], int | None]:
    """(batches of at most `batch_size` uint8 images, total image count or None) from any accepted source.

    Accepted: an N x H x W (grayscale) or N x H x W x C uint8 array or tensor, or an array-like that
    decodes on slicing (LazyImages, np.memmap); an object with such `.images` (ImageSet); an
    iterable of batches, or of tuples / lists / dicts holding one first (as a DataLoader yields).
    Sources are read one batch at a time, so a lazy one never has more than one batch in memory here.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if _sliceable(getattr(source, "images", None)):
        source = source.images
    if _sliceable(source):
        if len(source.shape) not in (3, 4):
            raise ValueError(f"images must be N x H x W (grayscale) or N x H x W x C, got shape "
                             f"{tuple(source.shape)}; wrap a single image as images[None]")
        n = len(source)
        return (source[i:i + batch_size] for i in range(0, n, batch_size)), n
    if isinstance(source, Iterable) and not isinstance(source, (str, bytes)):
        return _rebatch(source, batch_size), None
    raise TypeError(f"cannot extract features from {type(source).__name__}: give uint8 images (N x H x W x C), "
                    "an ImageSet, or an iterable of such batches")


def _sliceable(x: Any) -> bool:
    """An array or array-like images container (has a shape and can be sliced)."""
    return hasattr(x, "shape") and hasattr(x, "__getitem__") and hasattr(x, "__len__")


def _rebatch(items: Iterable, batch_size: int) -> Iterator[UInt8Batch]:
    for item in items:
        if isinstance(item, dict):
            item = item.get("image", item.get("images", next(iter(item.values()))))
        elif isinstance(item, (tuple, list)):
            item = item[0]
        if not isinstance(item, (np.ndarray, torch.Tensor)):
            raise TypeError(f"a batch must be a uint8 array or tensor, got {type(item).__name__}")
        for i in range(0, len(item), batch_size):
            yield item[i:i + batch_size]
        del item  # released before the source produces its next batch: one batch alive at a time


class Prefetcher:
    """Runs `fn` over `items` in a daemon thread, `depth` results ahead; re-raises its errors here.

    torch releases the GIL inside its kernels, so the thread's preprocessing of batch i+1 runs
    while the caller's network computes batch i.
    """

    def __init__(self, items: Iterator, fn: Callable, depth: int = 2, enabled: bool = True):
        self.items, self.fn, self.enabled = items, fn, enabled
        self.queue: queue.Queue = queue.Queue(maxsize=depth)
        self.stop = threading.Event()
        if enabled:
            threading.Thread(target=self._work, name="vfe-prefetch", daemon=True).start()

    def _work(self) -> None:
        try:
            with torch.inference_mode():  # grad mode is per thread; the caller's does not reach here
                for item in self.items:
                    out = self.fn(item)
                    del item  # a view would keep its whole source batch alive while the next one is read
                    if not self._put(out):
                        return
            self._put(_DONE)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, raised there
            self._put(e)

    def _put(self, out: Any) -> bool:
        """Queue `out`, giving up (False) once the consumer has gone."""
        while not self.stop.is_set():
            try:
                self.queue.put(out, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Iterator:
        if not self.enabled:
            yield from map(self.fn, self.items)
            return
        try:
            while True:
                out = self.queue.get()
                if out is _DONE:
                    return
                if isinstance(out, BaseException):
                    raise out
                yield out
        finally:
            self.stop.set()


class TracedFeatures:
    """Frozen torch.jit traces of a feature function, one per input shape, layout and precision.

    The trace is made on the first batch of a shape and checked against the eager function in
    fp32 on that batch: in fp32 it must agree to rounding (relative L2 error <= 1e-4), under
    autocast every image's features must stay faithful (cosine >= 0.999). If tracing fails or
    the check does not pass, the eager function is used for that shape (with a warning), so
    correctness never depends on the trace. A batch of another size (the last, partial one) runs
    eagerly: each new shape would cost the JIT a trace and two slow profiling runs.

    With `batch_size`, only batches of that size are traced: traced and eager features differ by
    rounding, so which batches ran traced must not depend on what the process extracted first
    (without it the first batch's size is traced, and a small set extracted first would leave every
    later full batch eager; docs/reproducibility.md).
    """

    FP32_TOLERANCE = 1e-4

    def __init__(self, fn: torch.nn.Module, batch_size: int | None = None):
        self.fn = fn
        self.batch_size = batch_size
        self.cache: dict[tuple, Callable] = {}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.batch_size is not None and len(x) != self.batch_size:
            return self.fn(x)
        key = (tuple(x.shape[1:]), x.dtype, x.is_contiguous(memory_format=torch.channels_last), _autocast_dtype(x))
        if key not in self.cache:
            self.cache[key] = (len(x), self._trace(x))
        traced_size, fn = self.cache[key]
        return fn(x) if len(x) == traced_size else self.fn(x)

    def _trace(self, x: torch.Tensor) -> Callable:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # jit.trace is deprecated upstream but still fastest here
                traced = torch.jit.freeze(torch.jit.trace(self.fn, x, check_trace=False))
                got = traced(x).float()
            with torch.autocast(x.device.type, enabled=False):
                want = self.fn(x).float()
            if _autocast_dtype(x) is None:
                error = ((got - want).norm() / want.norm().clamp_min(1e-12)).item()
                if error <= self.FP32_TOLERANCE:
                    return traced
                reason = f"trace differs from eager by {error:.1e} (relative L2)"
            else:
                cosine = min_cosine(got, want)
                if cosine >= FAITHFUL_COSINE:
                    return traced
                reason = f"traced features keep only cosine {cosine:.4f} to eager fp32"
        except Exception as e:  # noqa: BLE001 - any tracing failure means: run eager
            reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        warnings.warn(f"vfe: running {type(self.fn).__name__} eagerly for input {tuple(x.shape[1:])} ({reason})",
                      RuntimeWarning, stacklevel=3)
        return self.fn


class ThreadModeChoice:
    """Overlap preprocessing with compute (a prefetch thread, one network thread fewer) or give every
    core to the network: decided by timing both on the batches at hand, and kept for `ttl` seconds.

    Which wins depends on the moment. On the 2-core project machine, loaded by other jobs, one
    network thread beside the prefetch thread was 1.7-12x faster than two (OpenMP threads stall at
    every barrier when a core is taken); on the same machine when quiet, two threads without prefetch
    were 1.6-1.8x faster (EfficientNet-Lite0 at 112 px 451 vs 280 img/s, DenseNet121 49 vs 28 img/s;
    `benchmarks/bench_extraction.py --thread-modes`).
    So the first batches of an extraction run in each mode in turn (the first batch of each untimed:
    it fills the pipeline), the faster one runs the rest, and the next extraction within `ttl`
    reuses the choice. The choice changes the speed only, never the features: the network runs through
    OneThreadBits in both modes (tests/core/test_determinism.py).
    """

    WARMUP_BATCHES = 3  # a new trace's first call traces and checks, the next two profile

    def __init__(self, batches: int = 6, ttl: float = 60.0):
        self.batches, self.ttl = batches, ttl
        self.prefetch: bool | None = None  # None until measured
        self.rates: dict[bool, float] = {}  # images/s by prefetch, from the last measurement
        self.until = 0.0
        self.warmed = False

    def run(self, batches: Iterator, run_mode: Callable[[Iterator, bool], Iterator]) -> Iterator:
        """Everything `run_mode(batches, prefetch)` yields for all `batches`, in order. The source is read
        as lazily as run_mode reads it (measuring slices it, never reads ahead of it)."""
        if self.prefetch is None or time.monotonic() >= self.until:
            if not self.warmed:
                yield from run_mode(islice(batches, self.WARMUP_BATCHES), False)
                self.warmed = True
            rates = {}
            for prefetch in (False, True):
                count, images, start = 0, 0, None
                for out in run_mode(islice(batches, self.batches), prefetch):
                    count += 1
                    if start is None:
                        start = time.perf_counter()
                    else:
                        images += len(out)
                    yield out
                if count < self.batches:  # the source ran out before both modes were timed
                    return
                rates[prefetch] = images / max(time.perf_counter() - start, 1e-9)
            self.prefetch, self.rates = rates[True] > rates[False], rates
            self.until = time.monotonic() + self.ttl
        yield from run_mode(batches, self.prefetch)


class OneThreadBits:
    """Calls a batch function so that its output has the bits it has with one intra-op thread, at any count.

    The thread count of extraction follows the load and the timed pipeline choice (compute_threads,
    ThreadModeChoice), but oneDNN splits some convolutions differently with more threads: measured on the
    2-core project machine, EfficientNet-Lite0's features of a batch under 16 images differ in the last bits
    between 1 and 2 threads, while batches of 16 and more agree (docs/reproducibility.md). So the first batch
    of each shape at each count other than one is computed both ways: if the two agree bit for bit, later
    batches of that shape run at the count given; if not, they run with one thread. Either way the first
    batch returns the one-thread result. It costs one extra forward pass per shape and count, and a slower
    pass only for shapes that disagree (on the project machine: the partial batch at the end of a set).
    """

    def __init__(self):
        self.agrees: dict[tuple, bool] = {}

    def __call__(self, fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        threads = torch.get_num_threads()
        if threads == 1 or x.device.type != "cpu":
            return fn(x)
        key = (tuple(x.shape), x.dtype, x.is_contiguous(memory_format=torch.channels_last), _autocast_dtype(x),
               threads)
        agrees = self.agrees.get(key)
        if agrees is None:
            got = fn(x)
            with intra_op_threads(1):
                want = fn(x)
            self.agrees[key] = torch.equal(got, want)
            return want
        if agrees:
            return fn(x)
        with intra_op_threads(1):
            return fn(x)


def compute_threads(requested: int | None, prefetch: bool) -> int:
    """Intra-op threads for the network: `requested`, else torch's setting capped at one per free core
    (`vfe.hardware.free_cores`: cores that other processes leave us; every usable core when the user fixed
    the count with OMP_NUM_THREADS), less the core the prefetch thread works on (see ThreadModeChoice for
    when each mode wins). Following the load does not change the features, unlike in training: every batch
    function runs through OneThreadBits."""
    if requested is not None:
        return int(requested)
    cores = usable_cores() if user_fixed_threads() else free_cores()
    return max(1, min(torch.get_num_threads(), cores - 1 if prefetch else cores))


@contextmanager
def intra_op_threads(n: int) -> Iterator[None]:
    """torch's intra-op thread count set to `n` inside the block (process-wide), restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _autocast_dtype(x: torch.Tensor) -> torch.dtype | None:
    kind = x.device.type
    return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else None
