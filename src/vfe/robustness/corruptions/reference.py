"""bethgelab's `imagecorruptions` 1.1.2, made to run under today's libraries, as a reference to check
and time `corrupt` against (the tests and benchmarks/bench_corruptions.py use it).

Three things stop it: it imports `pkg_resources` (gone from setuptools >= 81), calls scikit-image's
`gaussian(..., multichannel=True)` (now `channel_axis=-1`; breaks glass_blur and gaussian_blur) and
uses `np.float_` (gone from NumPy 2; breaks fog). `imagecorruptions_reference()` bridges the three
for the duration of a `with` block and undoes them after; the reference's own code is unchanged.
"""
from __future__ import annotations

import contextlib
import importlib
import sys
import types
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import skimage.filters

_MISSING = object()


def _resource_filename(package: str, resource: str) -> str:
    """`pkg_resources.resource_filename` for a module inside an installed package."""
    return str(Path(sys.modules[package].__file__).parent / resource)


def _gaussian(image, sigma=1, multichannel=None, **kwargs):
    if multichannel:
        kwargs["channel_axis"] = -1
    return skimage.filters.gaussian(image, sigma=sigma, **kwargs)


@contextlib.contextmanager
def imagecorruptions_reference() -> Iterator[types.ModuleType]:
    """The `imagecorruptions` package, importable and runnable inside the block."""
    saved_pkg = sys.modules.get("pkg_resources", _MISSING)
    saved_float = np.__dict__.get("float_", _MISSING)
    if saved_pkg is _MISSING:
        sys.modules["pkg_resources"] = types.SimpleNamespace(resource_filename=_resource_filename)
    np.float_ = np.float64
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # its scipy.ndimage.interpolation import
            module = importlib.import_module("imagecorruptions")
        corruptions = importlib.import_module("imagecorruptions.corruptions")
        saved_gaussian, corruptions.gaussian = corruptions.gaussian, _gaussian
        try:
            yield module
        finally:
            corruptions.gaussian = saved_gaussian
    finally:
        if saved_pkg is _MISSING:
            sys.modules.pop("pkg_resources", None)
        if saved_float is _MISSING:
            del np.float_
        else:
            np.float_ = saved_float
