"""vfe.io's writes: whole or not at all. A write that fails (a full disk, no permission) is one error naming the
file, leaves no temporary file and keeps an earlier file as it was; names that are not UTF-8 are written escaped."""
from __future__ import annotations

import errno
import os

import pytest
import torch
from safetensors import SafetensorError

from vfe import io
from vfe.errors import VfeError


def test_a_full_disk_names_the_file_and_keeps_the_earlier_one(tmp_path, monkeypatch):
    target = tmp_path / "results.json"
    io.write_json(target, {"run": "earlier"})

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(io.os, "fsync", full)
    with pytest.raises(VfeError, match=f"cannot write {target}: No space left on device; nothing was written"):
        io.write_json(target, {"run": "new"})
    assert io.read_json(target) == {"run": "earlier"}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]  # no temporary file left


def test_a_safetensors_error_names_the_file_and_leaves_nothing(tmp_path, monkeypatch):
    """safetensors reports a full disk as a SafetensorError (`vfe fit --out` on a full file system)."""
    target = tmp_path / "model.safetensors"

    def half_written(tensors, path, metadata=None):
        with open(path, "wb") as f:
            f.write(b"\x00" * 100)
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(io, "save_file", half_written)
    with pytest.raises(VfeError, match=f"cannot write {target}: .*No space left on device"):
        io.save_tensors(target, {"w": torch.zeros(3)})
    assert not any(tmp_path.iterdir())


def test_a_folder_that_cannot_be_created_is_named(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(VfeError, match=f"cannot write {blocker / 'out.json'}"):
        io.write_json(blocker / "out.json", {})


def test_names_that_are_not_utf8_are_written_escaped(tmp_path):
    name = os.fsdecode(b"bad\xff.png")  # as os.listdir gives it: a lone surrogate
    io.write_text(tmp_path / "list.txt", f"{name}: not a readable image\n")
    assert (tmp_path / "list.txt").read_text() == "bad\\xff.png: not a readable image\n"
    assert io.printable("plain ü") == "plain ü"
