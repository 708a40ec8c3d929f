"""The one rule by which a built Backbone travels to another process: Ray actors and tasks, and pickling.

A backbone travels as a ShippedBackbone: its network with every tensor on the CPU (the process it lands in
may have no GPU, and a CUDA tensor in a pickle cannot be loaded there), its preprocessing and weights'
identity, and the precision and runtime this process *chose* (never "auto"), so that the receiver computes
the features of the same fingerprint without deciding again. `rebuild` builds that backbone on the
receiver's device with that precision and runtime, or raises one line (RuntimeUnavailableError) naming what
it cannot build there: it never falls back silently. Attacks differentiate `forward` (torch, fp32) only, so
`rebuild(..., fast_path=False)` builds neither a trace nor another runtime, and the backbone says so
(`runtime == "torch"`).

This module imports no Backbone module (a Backbone pickles itself through it): the shipped record carries
its class.
"""
from __future__ import annotations

import copy
import os
import warnings
from dataclasses import dataclass, replace
from itertools import chain
from typing import Any

import torch
from torch import nn

from vfe.backbones.registry import ExtractionSettings
from vfe.backbones.runtimes import RuntimeUnavailableError, choose_runtime
from vfe.backbones.weights import WeightsInfo


@dataclass(frozen=True)
class ShippedBackbone:
    """Everything `rebuild` needs; small apart from the network's weights, which are on the CPU."""

    kind: type  # the Backbone class, rebuilt as itself
    name: str
    model: nn.Module  # every parameter and buffer on the CPU
    weights: WeightsInfo
    data_config: dict
    settings: ExtractionSettings  # with the precision and runtime the sender chose

    @property
    def precision(self) -> str:
        return self.settings.precision

    @property
    def runtime(self) -> str:
        return self.settings.runtime

    def tensors(self) -> list[torch.Tensor]:
        """Every tensor that travels (for checking where they are)."""
        return list(chain(self.model.parameters(), self.model.buffers()))


def shippable(backbone: Any) -> ShippedBackbone:
    """`backbone` as a ShippedBackbone: its network on the CPU, its chosen precision and runtime named."""
    settings = replace(backbone.settings, precision=backbone.precision, runtime=backbone.runtime)
    return ShippedBackbone(type(backbone), backbone.name, cpu_copy(backbone.model), backbone.weights,
                           dict(backbone.data_config), settings)


def rebuild(shipped: ShippedBackbone, device: str | torch.device = "cpu", *, fast_path: bool = True,
            model_dir: str | os.PathLike | None = None) -> Any:
    """The shipped backbone built on `device`, with the sender's precision and runtime (its fingerprint).

    fast_path=False: only `forward` will be used (attacks), so no trace and no other runtime are built.
    model_dir: where another runtime's exported network is kept here (default: runtimes' own).
    """
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeUnavailableError(f"the {shipped.name} backbone was sent to be built on {device}, and CUDA "
                                      "is not available here")
    settings = shipped.settings if fast_path else replace(shipped.settings, jit=False, runtime="torch")
    # Backbone moves the network in place: a copy, so that a backbone rebuilt in the sender's process on
    # another device leaves the sender's own network where it is
    model = shipped.model if device.type == "cpu" else copy.deepcopy(shipped.model)
    backbone = shipped.kind(model, shipped.name, shipped.weights, shipped.data_config, device, settings)
    if settings.runtime != "torch":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a runtime that stays torch is an error below
            choose_runtime(backbone, model_dir)
        if backbone.runtime != settings.runtime:
            raise RuntimeUnavailableError(f"the {shipped.name} backbone extracts with {settings.runtime} where it "
                                          f"was built, and cannot here ({backbone.runtime_check['reason']})")
    return backbone


def cpu_copy(module: nn.Module) -> nn.Module:
    """`module` itself when every tensor is on the CPU, else a copy with every tensor on the CPU, made tensor
    by tensor (the GPU never holds the network twice)."""
    elsewhere = [t for t in chain(module.parameters(), module.buffers()) if t.device.type != "cpu"]
    if not elsewhere:
        return module
    memo: dict[int, Any] = {}
    for tensor in elsewhere:
        cpu = tensor.detach().cpu()
        memo[id(tensor)] = nn.Parameter(cpu, tensor.requires_grad) if isinstance(tensor, nn.Parameter) else cpu
    return copy.deepcopy(module, memo)


__all__ = ["ShippedBackbone", "cpu_copy", "rebuild", "shippable"]
