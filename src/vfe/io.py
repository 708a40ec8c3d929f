"""Atomic, pickle-free writes of the artefacts vfe produces (tensors as safetensors, the rest JSON).

Every write goes to a temporary file beside its target and is renamed onto it only when complete, so a
reader (or a rerun after Ctrl-C or a crash) never sees half a file. A write that fails (a full disk, a
folder without write permission) is a VfeError naming the target; the temporary file is removed and
an earlier file at the target stays as it was.
"""
from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from vfe.errors import VfeError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def publish(tmp: str, path: Path) -> None:
    """Give the temporary file normal permissions (mkstemp makes it 0600), then rename it into place."""
    os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, path)


def write_error(path: Path, err: Exception) -> VfeError:
    """A failed write as one line naming the file (safetensors reports a full disk as a SafetensorError)."""
    reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
    return VfeError(f"cannot write {printable(str(path))}: {reason}; nothing was written there (free some "
                    "space, or choose a folder you can write to, then rerun)")


@contextmanager
def _temporary_beside(path: Path) -> Iterator[tuple[int, str]]:
    """(descriptor, name) of a new temporary file beside `path`, renamed onto `path` when the block succeeds.

    The temporary file never outlives the block; an OSError or SafetensorError is a VfeError naming `path`.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise write_error(path, err) from err
    try:
        yield fd, tmp
        publish(tmp, path)
    except (OSError, SafetensorError) as err:
        raise write_error(path, err) from err
    finally:
        Path(tmp).unlink(missing_ok=True)  # gone already when published


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temporary file in the same folder, then rename: readers never see half a file."""
    path = Path(path)
    with _temporary_beside(path) as (fd, _), os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def printable(text: str) -> str:
    """`text` with the bytes of file names that are not valid UTF-8 shown as \\xNN.

    Python holds such bytes as lone surrogates (os.fsdecode), which no UTF-8 writer accepts; escaped,
    the name still says which file it is.
    """
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate that did not come from a file name
        raw = text.encode("utf-8", "backslashreplace")
    return raw.decode("utf-8", "backslashreplace")


def write_text(path: str | os.PathLike, text: str) -> None:
    """UTF-8 text written atomically; file names in it that are not valid UTF-8 are escaped (`printable`)."""
    atomic_write_bytes(path, printable(text).encode("utf-8"))


def _json_default(o: Any):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=2, default=_json_default, allow_nan=True).encode())


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())


def save_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor],
                 metadata: dict[str, str] | None = None) -> None:
    """safetensors file written atomically (contiguous CPU copies, as the format requires)."""
    path = Path(path)
    with _temporary_beside(path) as (fd, tmp):
        os.close(fd)
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)


def load_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    return load_file(str(path))
