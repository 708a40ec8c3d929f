"""Output folders and files: one writer at a time, and a run folder that appears only when complete.

`claimed(path)` holds a lock beside an output (a run folder, a pipeline file) for as long as a command
writes it: a second `vfe run --name same` (or `vfe fit --out same`) is refused naming the first, or
waits for it. `staged_folder(folder)` gives a command a fresh folder beside `folder` and puts it in
`folder`'s place only once the command completes, so an earlier run is replaced whole (nothing of it
survives) and a run stopped anywhere (Ctrl-C, kill -9, a full disk) leaves `folder` as it was; the
same command run again starts over from the feature cache.

`Run` collects what a `vfe lab` / `vfe viz` command writes: its figures (PNG), its numbers
(metrics.json) and an HTML page. A folder that already holds a run is never overwritten unless asked
(`overwrite=True`), or reopened to continue it (`resume=True`, e.g. training that restarts from its
last checkpoint).
"""
from __future__ import annotations

import ctypes
import errno
import html
import os
import shutil
import socket
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from vfe.errors import VfeError
from vfe.io import atomic_write_bytes, read_json, write_json

RUN_MARKERS = ("run.json", "metrics.json", "index.html", "checkpoints")  # what only a run folder holds
_AT_FDCWD, _RENAME_EXCHANGE = -100, 2  # <fcntl.h>, <linux/fs.h>


class OutputInUseError(VfeError):
    """Another command is writing the same run folder or output file."""


def _beside(path: Path, what: str) -> Path:
    """A hidden name beside `path` (the lock, its holder, a staged or replaced copy), never inside it."""
    return path.parent / f".{path.name}.{what}"


def _holder(path: Path) -> str:
    """Who holds `path`'s lock, as its holder recorded it."""
    try:
        who = read_json(_beside(path, "lock.json"))
        return f"pid {who['pid']} on {who['host']}, since {who['since']}"
    except (OSError, ValueError, KeyError, TypeError):  # between its lock and its record, or gone meanwhile
        return "another vfe command"


@contextmanager
def claimed(path: str | os.PathLike, flag: str, wait: bool = False, log=print) -> Iterator[None]:
    """Hold the lock of the output `path` while the block writes it.

    Another holder makes this an OutputInUseError naming it (its pid and host) and `flag`, the option
    that picks another output; with `wait`, one log line and then a wait for it. The kernel drops the
    lock of a killed process, so a stopped command never blocks the next.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(_beside(path, "lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        holder = _holder(path)
        if not wait:
            raise OutputInUseError(f"{path} is being written by {holder}; pass --wait to wait for it, or choose "
                                   f"another {flag}") from None
        log(f"[vfe] {path} is being written by {holder}; waiting for it (--wait)")
        lock.acquire()
    try:
        write_json(_beside(path, "lock.json"), {"pid": os.getpid(), "host": socket.gethostname(),
                                                "since": time.strftime("%Y-%m-%d %H:%M:%S")})
        yield
    finally:
        _beside(path, "lock.json").unlink(missing_ok=True)
        lock.release()


@contextmanager
def staged_folder(folder: str | os.PathLike, marker: str) -> Iterator[Path]:
    """A fresh folder beside `folder` to write into; when the block completes it takes `folder`'s place.

    A `folder` holding `marker` (an earlier run's results) is replaced whole, in one exchange of names
    where the system can (`_swap`); a folder without `marker` keeps its other content beside the new
    files, `marker` moved in last. Hold `claimed(folder)` around it: what a stopped command left beside
    `folder` is cleared (or put back) when the next one starts.
    """
    folder, stage, old = Path(folder), _beside(Path(folder), "partial"), _beside(Path(folder), "replaced")
    if old.exists() and not folder.exists():  # a swap stopped between its two renames: the earlier run back
        os.rename(old, folder)
    for leftover in (stage, old):
        shutil.rmtree(leftover, ignore_errors=True)
    stage.mkdir(parents=True)
    yield stage
    if (folder / marker).exists():
        _swap(stage, folder, old)
    else:
        _move_into(stage, folder, marker)


def _swap(new: Path, folder: Path, old: Path) -> None:
    """`new` in `folder`'s place, the earlier content deleted: in one step where the system can exchange two names,
    else by two renames (a stop between them is undone by the next `staged_folder`)."""
    if _exchange(new, folder):
        shutil.rmtree(new)  # it holds the earlier content now
        return
    os.rename(folder, old)
    os.rename(new, folder)
    shutil.rmtree(old)


def _exchange(a: Path, b: Path) -> bool:
    """Exchange the names `a` and `b` atomically (Linux's renameat2 with RENAME_EXCHANGE); False where the system or
    the file system cannot."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None) if sys.platform == "linux" else None
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def _move_into(stage: Path, folder: Path, marker: str) -> None:
    """Every entry of `stage` into `folder` (same names replaced), `marker` last, then `stage` removed."""
    folder.mkdir(parents=True, exist_ok=True)
    for entry in sorted(stage.iterdir(), key=lambda p: p.name == marker):
        target = folder / entry.name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        os.replace(entry, target)
    stage.rmdir()


class Run:
    """Collects what a command writes and renders `index.html` listing it, in order."""

    def __init__(self, out: str | Path, title: str, overwrite: bool = False, resume: bool = False,
                 settings: dict | None = None):
        self.dir = Path(out)
        if self.dir.exists() and any(self.dir.iterdir()):
            if overwrite and not any((self.dir / m).exists() for m in RUN_MARKERS):
                raise FileExistsError(f"{self.dir} is not empty and holds no earlier run; --overwrite only "
                                      "replaces run folders: choose another --out")
            if overwrite:
                shutil.rmtree(self.dir)
            elif not resume:
                raise FileExistsError(f"{self.dir} already holds a run; pass --overwrite to replace it"
                                      " (or --out to write elsewhere)")
        self.dir.mkdir(parents=True, exist_ok=True)
        self.title = title
        self.settings = dict(settings or {})
        self.items: list[tuple[str, object]] = []
        self.metrics: dict = {}
        self.started = time.time()

    def path(self, name: str) -> Path:
        return self.dir / name

    def figure(self, name: str, caption: str) -> Path:
        """The path to draw figure `name` at; it is listed on the page with `caption`."""
        self.items.append(("figure", (name, caption)))
        return self.dir / name

    def table(self, title: str, rows: Sequence[dict]) -> None:
        self.items.append(("table", (title, list(rows))))

    def text(self, paragraph: str) -> None:
        self.items.append(("text", paragraph))

    def record(self, **metrics) -> None:
        """Numbers that go to metrics.json (written now, so a crash later keeps them)."""
        self.metrics.update(metrics)
        write_json(self.dir / "metrics.json", self.metrics)

    def finish(self) -> Path:
        """Write run.json (settings, command line, duration) and index.html; returns the page's path."""
        seconds = round(time.time() - self.started, 1)
        command = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])  # `vfe lab ...`, not the venv's path
        write_json(self.dir / "run.json", {"title": self.title, "settings": self.settings,
                                           "command": command, "seconds": seconds})
        write_json(self.dir / "metrics.json", self.metrics)
        page = self.dir / "index.html"
        atomic_write_bytes(page, render_page(self.title, self.settings, self.items, seconds).encode())
        return page


def _table_html(rows: list[dict]) -> str:
    if not rows:
        return "<p>(empty)</p>"
    cols = list(dict.fromkeys(k for r in rows for k in r))

    def cell(v):
        return f"{v:.4g}" if isinstance(v, float) else html.escape(str(v))
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{cell(r.get(c, ''))}</td>" for c in cols) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def render_page(title: str, settings: dict, items: list[tuple[str, object]], seconds: float) -> str:
    parts = [f"<h1>{html.escape(title)}</h1>",
             "<p class='settings'>" + ", ".join(f"{html.escape(str(k))}={html.escape(str(v))}"
                                                for k, v in settings.items()) + f"; {seconds} s</p>"]
    for kind, item in items:
        if kind == "figure":
            name, caption = item
            parts.append(f"<figure><img src='{html.escape(name)}' alt='{html.escape(caption)}'>"
                         f"<figcaption>{html.escape(caption)}</figcaption></figure>")
        elif kind == "table":
            t_title, rows = item
            parts.append(f"<h2>{html.escape(t_title)}</h2>{_table_html(rows)}")
        else:
            parts.append(f"<p>{html.escape(str(item))}</p>")
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
             "img{max-width:100%}figure{margin:1.5em 0}figcaption{color:#555;font-size:90%}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
             ".settings{color:#555;font-size:90%}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>\n")
