"""Heads registered by a test stay in that test: the registry as it was is put back afterwards, so that other tests
(`--heads all`, the list of head names) never see them."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from vfe.heads import registry


@contextmanager
def restored_registry() -> Iterator[None]:
    entries, classes = dict(registry.REGISTRY), dict(registry._CLASSES)
    try:
        yield
    finally:
        registry.REGISTRY.clear()
        registry.REGISTRY.update(entries)
        registry._CLASSES.clear()
        registry._CLASSES.update(classes)
