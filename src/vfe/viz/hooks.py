"""Outputs of named layers, captured with forward hooks; the forward pass stops after the last one."""
from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from vfe.viz.network import Network


class StopForward(Exception):
    """Raised by a hook once every wanted layer has fired: the rest of the network is not computed."""


@contextmanager
def capture(module: nn.Module, layers: Sequence[str], stop_early: bool = False):
    """Within the block, `store[name]` holds the output of each named layer after a forward pass."""
    layers = list(dict.fromkeys(layers))
    modules = dict(module.named_modules())
    missing = [n for n in layers if n not in modules or not n]
    if missing:
        close = difflib.get_close_matches(missing[0], [n for n in modules if n], n=8, cutoff=0.6)
        raise ValueError(f"no layer named {', '.join(map(repr, missing))}"
                         + (f" (close: {', '.join(close)})" if close else "")
                         + "; list them with `vfe viz activations --model ... --list-layers`")
    store: dict[str, torch.Tensor] = {}
    handles = []

    def hook_for(name: str) -> Callable:
        def hook(_mod, _inp, out):
            store[name] = out[0] if isinstance(out, (tuple, list)) else out
            if stop_early and len(store) == len(layers):
                raise StopForward
        return hook

    for name in layers:
        handles.append(modules[name].register_forward_hook(hook_for(name)))
    try:
        yield store
    finally:
        for h in handles:
            h.remove()


def run_until(network: Network, x01: torch.Tensor, layers: Sequence[str]) -> dict[str, torch.Tensor]:
    """Outputs of `layers` for images `x01`, stopping the forward pass after the last of them."""
    layers = list(dict.fromkeys(layers))
    with capture(network.module, layers, stop_early=True) as store:
        try:
            network.forward(x01)
        except StopForward:
            pass
    if len(store) != len(layers):
        raise ValueError(f"layers {sorted(set(layers) - set(store))} did not run in {network.name}'s forward pass")
    return dict(store)
