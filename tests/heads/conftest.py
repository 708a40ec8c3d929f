"""Heads are tiny models on tiny data: one thread (torch and BLAS) is faster than two, where thread
hand-off dominates, and far faster when the machine's cores are shared."""
from __future__ import annotations

import pytest
import torch
from threadpoolctl import threadpool_limits


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(limits=1):
        yield
    torch.set_num_threads(threads)
