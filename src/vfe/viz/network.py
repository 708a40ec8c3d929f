"""A network to look inside: a timm backbone by name, or a model trained here (a run folder).

`Network` pairs the module whose named sub-modules are the layers one can ask for with the
preprocessing its inputs need, so the viz tools work on float images in [0, 1] whatever the source.
"""
from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from vfe.io import read_json
from vfe.lab.models import load_model
from vfe.viz.small_cnn import load_small_cnn


@dataclass
class Network:
    """`module` holds the layers (`module.named_modules()`); `prepare` maps [0, 1] images to its input."""

    name: str
    module: nn.Module
    prepare: Callable[[torch.Tensor], torch.Tensor]
    input_shape: tuple[int, int, int]  # C, H, W the network is used at
    run: Callable[[torch.Tensor], torch.Tensor] | None = None  # forward on prepared input (default: module)
    default_layers: tuple[str, ...] = ()

    def forward(self, x01: torch.Tensor) -> torch.Tensor:
        x = self.prepare(x01)
        return (self.run or self.module)(x)

    def layer_names(self) -> list[str]:
        return [n for n, _ in self.module.named_modules() if n]

    def layer(self, name: str) -> nn.Module:
        modules = dict(self.module.named_modules())
        if name not in modules or not name:
            close = difflib.get_close_matches(name, [n for n in modules if n], n=8, cutoff=0.6)
            raise ValueError(f"{self.name} has no layer {name!r}; "
                             + (f"close: {', '.join(close)}. " if close else "")
                             + "list them with `vfe viz activations --model ... --list-layers`")
        return modules[name]


def _fit_to(x01: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """Images in [0, 1] converted to the channel count and size a small model was trained on."""
    c, h, w = shape
    if x01.shape[1] == 3 and c == 1:
        x01 = (x01 * torch.tensor([0.299, 0.587, 0.114], dtype=x01.dtype).view(1, 3, 1, 1)).sum(1, keepdim=True)
    elif x01.shape[1] == 1 and c == 3:
        x01 = x01.expand(-1, 3, -1, -1)
    if tuple(x01.shape[-2:]) != (h, w):
        x01 = F.interpolate(x01, size=(h, w), mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)
    return x01


def _backbone_network(name: str, weights: str, image_size: int | None) -> Network:
    from vfe.backbones import create_backbone

    bb = create_backbone(name, weights=weights, image_size=image_size, device="cpu")
    model = bb.model
    tops = [n for n, _ in model.named_children()]
    blocks = [f"blocks.{i}" for i in range(len(model.blocks))] if hasattr(model, "blocks") else []
    defaults = tuple([tops[0], *blocks[1::2]][:4]) if tops else ()
    return Network(name=f"{name} ({bb.weights.kind} weights)", module=model, prepare=bb.normalise,
                   input_shape=tuple(bb.data_config["input_size"]), run=model.forward_features,
                   default_layers=defaults)


def _folder_network(folder: Path) -> Network:
    meta = read_json(folder / "model.json")
    family = meta.get("family")
    if family == "lab-autoencoder":
        model = load_model(folder)
        defaults = tuple(n for n, m in model.body.named_children() if isinstance(m, nn.Conv2d))
        defaults = tuple(f"body.{n}" for n in defaults) or ("body",)
        shape = model.config.input_shape
        return Network(f"{folder.name} (lab autoencoder)", model, lambda x: _fit_to(x, shape), shape,
                       run=lambda x: model(x)[0], default_layers=defaults)
    if family == "small-cnn":
        model = load_small_cnn(folder)
        shape = model.config.input_shape
        defaults = tuple(f"features.{i}" for i, m in enumerate(model.features) if isinstance(m, nn.Conv2d))
        return Network(f"{folder.name} (small CNN)", model, lambda x: _fit_to(x, shape), shape,
                       default_layers=defaults)
    raise ValueError(f"{folder / 'model.json'}: unknown model family {family!r} "
                     "(expected a folder from `vfe lab train` or `vfe viz small-cnn`)")


def load_network(spec: str, weights: str = "default", image_size: int | None = None) -> Network:
    """`spec` is a timm model name (e.g. efficientnet_lite0) or a folder holding model.json + weights."""
    path = Path(spec)
    if path.is_dir():
        if not (path / "model.json").exists():
            raise FileNotFoundError(f"{path} has no model.json: give a run folder of `vfe lab train` or "
                                    "`vfe viz small-cnn` (e.g. runs/viz/small-cnn/augmented), or a timm name")
        return _folder_network(path)
    network = _backbone_network(spec, weights, image_size)
    network.module.eval()
    return network
