"""Checks of where the user asked vfe to write, made before any work (torch-free: the CLI runs them first)."""
from __future__ import annotations

import os
from pathlib import Path

from vfe.errors import SettingsError


def check_writable_folder(folder: str | os.PathLike, flag: str) -> None:
    """`folder` can be created and written (its nearest existing parent is a writable folder)."""
    folder = Path(folder)
    parent = folder
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise SettingsError(f"{folder}: cannot write there ({parent} is not a writable folder); choose another {flag}")


def check_output_file(path: str | os.PathLike, overwrite: bool, suffix: str | None = None,
                      flag: str = "--out") -> Path:
    """Refuse an output file before any work: wrong suffix, an existing file without `overwrite`, or a
    folder that cannot be written. A user's file is never replaced unless they asked."""
    path = Path(path)
    if suffix is not None and path.suffix != suffix:
        raise SettingsError(f"{flag} {path}: the file name must end in {suffix}")
    if path.is_dir():
        raise SettingsError(f"{flag} {path} is a folder; give a file name ending in {suffix or 'a suffix'}")
    if path.exists() and not overwrite:
        raise SettingsError(f"{flag} {path} exists; pass --overwrite to replace it, or choose another name")
    check_writable_folder(path.parent, flag)
    return path
