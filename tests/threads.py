"""One thread for torch and the BLAS / OpenMP pools, as a context manager: conftest's autouse fixture uses it for
every test, and module-scoped fixtures (which run outside that fixture) use it themselves."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from threadpoolctl import threadpool_limits


@contextmanager
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1):
            yield
    finally:
        torch.set_num_threads(before)
