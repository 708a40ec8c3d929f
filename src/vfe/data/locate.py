"""Where the files of a named data set are looked for, in one place.

Order: `data_dir`, then `$VFE_DATA`, then vfe's own download cache (~/.cache/vfe/<name>), then the
system folders that distribution packages install into (/usr/share/datasets/<name>, where Debian's
`dataset-fashion-mnist` puts Fashion-MNIST). `data_dir` and `$VFE_DATA` may be the data set's own
folder or a folder holding one sub-folder per data set.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

SYSTEM_DATA_DIRS = (Path("/usr/share/datasets"),)


def download_dir(name: str) -> Path:
    """vfe's cache folder for a named data set: downloads go here, never into a user's data folder."""
    return Path.home() / ".cache" / "vfe" / name


def search_dirs(name: str, data_dir: str | os.PathLike | None = None) -> list[Path]:
    """The folders that may hold `name`'s files, in the order they are tried."""
    dirs: list[Path] = []
    for root in (data_dir, os.environ.get("VFE_DATA")):
        if root:
            dirs += [Path(root) / name, Path(root)]
    dirs.append(download_dir(name))
    dirs += [system / name for system in SYSTEM_DATA_DIRS]
    return dirs


def locate(name: str, holds: Callable[[Path], bool],
           data_dir: str | os.PathLike | None = None) -> Path | None:
    """The first search folder for which `holds(folder)` is true, or None."""
    return next((d for d in search_dirs(name, data_dir) if d.is_dir() and holds(d)), None)
