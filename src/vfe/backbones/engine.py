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
import warnings
from collections.abc import Iterable, Iterator
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch

_DONE = object()


def iter_uint8_batches(source: Any, batch_size: int) -> tuple[Iterator[np.ndarray | torch.Tensor], int | None]:
    """(batches of at most `batch_size` uint8 images, total image count or None) from any accepted source.

    Accepted: an N x H x W (x C) uint8 array or tensor; an object with an `.images` array (ImageSet);
    an iterable of such batches, or of tuples / lists / dicts holding one first (as a DataLoader yields).
    """
    if hasattr(source, "images") and isinstance(getattr(source, "images"), (np.ndarray, torch.Tensor)):
        source = source.images
    if isinstance(source, (np.ndarray, torch.Tensor)):
        if source.ndim not in (3, 4):
            raise ValueError(f"images must be N x H x W (x C), got shape {tuple(source.shape)}")
        n = len(source)
        return (source[i:i + batch_size] for i in range(0, n, batch_size)), n
    if isinstance(source, Iterable):
        return _rebatch(source, batch_size), None
    if hasattr(source, "__getitem__") and hasattr(source, "__len__"):  # map-style dataset of batches
        return _rebatch((source[i] for i in range(len(source))), batch_size), None
    raise TypeError(f"cannot extract features from {type(source).__name__}: give uint8 images (N x H x W x C), "
                    "an ImageSet, or an iterable of such batches")


def _rebatch(items: Iterable, batch_size: int) -> Iterator[np.ndarray | torch.Tensor]:
    for item in items:
        if isinstance(item, dict):
            item = item.get("image", item.get("images", next(iter(item.values()))))
        elif isinstance(item, (tuple, list)):
            item = item[0]
        if not isinstance(item, (np.ndarray, torch.Tensor)):
            raise TypeError(f"a batch must be a uint8 array or tensor, got {type(item).__name__}")
        for i in range(0, len(item), batch_size):
            yield item[i:i + batch_size]


class Prefetcher:
    """Runs `fn` over `items` in a daemon thread, `depth` results ahead; re-raises its errors here."""

    def __init__(self, items: Iterator, fn, depth: int = 2, enabled: bool = True):
        self.items, self.fn, self.enabled = items, fn, enabled
        self.queue: queue.Queue = queue.Queue(maxsize=depth)
        self.stop = threading.Event()
        self.thread = None
        if enabled:
            self.thread = threading.Thread(target=self._work, name="vfe-prefetch", daemon=True)
            self.thread.start()

    def _work(self) -> None:
        try:
            for item in self.items:
                out = self.fn(item)
                while not self.stop.is_set():
                    try:
                        self.queue.put(out, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if self.stop.is_set():
                    return
            self.queue.put(_DONE)
        except BaseException as e:  # handed to the consumer, raised there
            self.queue.put(e)

    def __iter__(self):
        if not self.enabled:
            for item in self.items:
                yield self.fn(item)
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
    """torch.jit traces of a feature function, one per input shape (H, W), frozen for inference.

    A trace is checked against the eager function on the first two images; if it fails or differs
    the eager function is used for that shape (with a warning), so correctness never depends on it.
    """

    def __init__(self, fn: torch.nn.Module):
        self.fn = fn
        self.cache: dict[tuple, Any] = {}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        key = (tuple(x.shape[1:]), x.dtype, x.is_contiguous(memory_format=torch.channels_last))
        if key not in self.cache:
            self.cache[key] = self._trace(x)
        return self.cache[key](x)

    def _trace(self, x: torch.Tensor):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # jit.trace is deprecated upstream but still fastest here
                traced = torch.jit.freeze(torch.jit.trace(self.fn, x[:2], check_trace=False))
                got, want = traced(x[:2]), self.fn(x[:2])
            if torch.allclose(got, want, rtol=1e-3, atol=1e-4):
                return traced
            reason = f"trace differs from eager by {(got - want).abs().max().item():.2e}"
        except Exception as e:  # noqa: BLE001 - any tracing failure means: run eager
            reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        warnings.warn(f"vfe: running {type(self.fn).__name__} eagerly for input {tuple(x.shape[1:])} ({reason})",
                      RuntimeWarning, stacklevel=3)
        return self.fn


def autocast_for(device: torch.device, precision: str):
    if precision == "fp32":
        return nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    return torch.autocast(device.type, dtype=dtype)
