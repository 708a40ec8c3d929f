"""Best-only checkpoints, kept N at a time, plus a `last` checkpoint to resume an interrupted run.

Everything is safetensors + JSON: optimizer state is flattened into named tensors and its
hyperparameters into JSON, so nothing is ever unpickled.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from vfe.io import load_tensors, read_json, save_tensors, write_json


def _flatten_optimizer(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for pid, state in sd["state"].items():
        for name, value in state.items():
            if torch.is_tensor(value):
                tensors[f"{pid}.{name}"] = value
            else:
                scalars[f"{pid}.{name}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for key, value in list(tensors.items()) + list(meta["scalars"].items()):
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = value
    return {"state": state, "param_groups": meta["param_groups"]}


class Checkpointer:
    """Saves `last` every epoch and `best-eNNNN` when the monitored value improves; keeps `keep` bests."""

    def __init__(self, directory: str | Path, keep: int = 1):
        if keep < 1:
            raise ValueError("keep must be >= 1")
        self.directory = Path(directory)
        self.keep = keep

    def _write(self, stem: str, module: nn.Module, optimizer: torch.optim.Optimizer | None, meta: dict) -> None:
        save_tensors(self.directory / f"{stem}.model.safetensors", module.state_dict())
        if optimizer is not None:
            tensors, opt_meta = _flatten_optimizer(optimizer)
            save_tensors(self.directory / f"{stem}.optim.safetensors", tensors)
            meta = {**meta, "optimizer": opt_meta}
        write_json(self.directory / f"{stem}.json", meta)  # written last: marks the checkpoint complete

    def save(self, module: nn.Module, optimizer: torch.optim.Optimizer | None, epoch: int,
             improved: bool, meta: dict) -> None:
        meta = {**meta, "epoch": epoch}
        if improved:
            self._write(f"best-e{epoch:04d}", module, None, meta)
            for old in self.best_checkpoints()[:-self.keep]:
                for f in self.directory.glob(f"{old.stem}.*"):
                    f.unlink(missing_ok=True)
        self._write("last", module, optimizer, meta)

    def best_checkpoints(self) -> list[Path]:
        """Completed best checkpoints (their JSON exists), oldest first."""
        return sorted(self.directory.glob("best-e*.json"))

    def load_best_state(self) -> dict[str, torch.Tensor] | None:
        best = self.best_checkpoints()
        if not best:
            return None
        return load_tensors(self.directory / f"{best[-1].stem}.model.safetensors")

    def restore_best(self, module: nn.Module) -> int | None:
        """Load the newest best weights into `module`; returns their epoch (None if there are none)."""
        state = self.load_best_state()
        if state is None:
            return None
        module.load_state_dict(state)
        return read_json(self.best_checkpoints()[-1])["epoch"]

    def resume(self, module: nn.Module, optimizer: torch.optim.Optimizer | None) -> dict | None:
        """Restore model and optimizer from `last`; returns its metadata, or None when starting fresh."""
        meta_path = self.directory / "last.json"
        if not meta_path.exists():
            return None
        meta = read_json(meta_path)
        module.load_state_dict(load_tensors(self.directory / "last.model.safetensors"))
        if optimizer is not None and "optimizer" in meta:
            tensors = load_tensors(self.directory / "last.optim.safetensors")
            optimizer.load_state_dict(_unflatten_optimizer(tensors, meta["optimizer"]))
        return meta
