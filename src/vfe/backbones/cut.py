"""A backbone cut in two at a layer boundary: a frozen bottom and a top that fine-tuning trains.

The reference fine-tuned Keras DenseNet121 with every layer from index 200 on trainable. Keras numbers
DenseNet121's 427 layers as: input, zero-pad, conv1/conv, conv1/bn, conv1/relu, zero-pad, pool1 (0-6),
dense block 1 (7 layers per conv block x 6: 7-48), transition pool2 (49-52), block 2 (x 12: 53-136), pool3
(137-140), block 3 (x 24: from 141). Index 200 = 141 + 7 x 8 + 3 is `conv4_block9_1_bn`: the second
BatchNorm of block 3's ninth conv block. timm's `densenet121` names that block
`features.denseblock3.denselayer9`; a cut can only sit between whole layers, so vfe cuts before it,
which also makes its first BatchNorm and 1x1 convolution trainable: 69.7 % of the feature extractor's
parameters instead of the reference's 68.7 % (approximate, by those two layers).

Other architectures have no reference cut. vfe keeps the same *fraction of parameters* trainable: the
cut is the layer boundary whose top holds the share of parameters nearest to 68.7 %. For
EfficientNet-Lite0 that is before `blocks.5.1` (72.5 % trainable; the top runs at 1/32 of the input
resolution, so fine-tuning it is cheap). A fraction of layers (53 % of DenseNet121's convolutions) would
be another reading of "equivalent"; parameters measure what fine-tuning changes, so vfe uses them.

The network is flattened into a list of *units*, each a module taking and returning one tensor, so that
    pooled features = pool(tail(units[cut:](units[:cut](stem(x)))))
A DenseNet layer becomes a unit that concatenates its output to its input, which is what a dense block
does layer by layer. Supported families: timm's EfficientNet (incl. Lite, MobileNetV2-style), DenseNet,
ResNet; `split` says so for any other.

Both parts run on the runtime the base backbone extracts with (ONNX Runtime or OpenVINO, runtimes.py),
each exported to ONNX on its own and kept only where the pooled features computed through it stay
faithful to torch fp32 on the check photos; the top stays torch for training and attacks (gradients).
"""
from __future__ import annotations

import copy
import os

import numpy as np
import torch
from torch import nn

from vfe.backbones.backbone import Backbone
from vfe.backbones.engine import OneThreadBits, intra_op_threads, iter_uint8_batches
from vfe.backbones.precision import autocast_for
from vfe.backbones.runtimes import part_on_runtime
from vfe.errors import SettingsError

# Keras DenseNet121 layers 200-426 hold this share of the feature extractor's parameters (computed from
# timm's densenet121, whose parameters match Keras's layer for layer; classifier excluded)
REFERENCE_TRAINABLE_FRACTION = 0.687
REFERENCE_CUTS = {"densenet121": "features.denseblock3.denselayer9"}  # the reference's own cut (see above)
CUT_VERSION = 1


class _DenseUnit(nn.Module):
    """One DenseNet layer as a unit: x -> cat(x, layer(x)), what its dense block does at that step."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.layer(x)], 1)


class _Pool(nn.Module):
    """The model's own global pooling (its `forward_head` with pre_logits=True)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        object.__setattr__(self, "model", model)  # not a submodule: its parameters are the units'

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(x, pre_logits=True)


def units(model: nn.Module) -> tuple[list[nn.Module], list[tuple[str, nn.Module]], list[nn.Module]]:
    """(stem, named units, tail) of a timm model; its pooled features are pool(tail(units(stem(x))))."""
    kind = type(model).__name__
    if kind == "EfficientNet":
        named = [(f"blocks.{i}.{j}", b) for i, stage in enumerate(model.blocks) for j, b in enumerate(stage)]
        return [model.conv_stem, model.bn1], named, [model.conv_head, model.bn2]
    if kind == "DenseNet":
        children = list(model.features.named_children())
        first = next(i for i, (name, _) in enumerate(children) if name.startswith("denseblock"))
        named = []
        for name, child in children[first:-1]:
            if name.startswith("denseblock"):
                named += [(f"features.{name}.{n}", _DenseUnit(layer)) for n, layer in child.items()]
            else:
                named.append((f"features.{name}", child))
        return [m for _, m in children[:first]], named, [children[-1][1]]
    if kind == "ResNet":
        named = [(f"layer{i}.{j}", b) for i in range(1, 5) for j, b in enumerate(getattr(model, f"layer{i}"))]
        return [model.conv1, model.bn1, model.act1, model.maxpool], named, []
    raise SettingsError(f"fine-tuning from a cut point supports timm's EfficientNet, DenseNet and ResNet "
                        f"families, not {kind}; use --protocol frozen with this backbone")


def _params(modules) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


def reference_cut(model: nn.Module, arch: str) -> str:
    """The unit the reference protocol's trainable top starts at (see the module docstring)."""
    stem, named, tail = units(model)
    names = [n for n, _ in named]
    if arch in REFERENCE_CUTS:
        return REFERENCE_CUTS[arch]
    total = _params(stem) + _params(m for _, m in named) + _params(tail)
    top = [_params(m for _, m in named[i:]) + _params(tail) for i in range(len(named))]
    best = min(range(1, len(named)), key=lambda i: abs(top[i] / total - REFERENCE_TRAINABLE_FRACTION))
    return names[best]


class CutModel(nn.Module):
    """A timm model split at `point`: `bottom(x)` (normalised images -> activations at the cut) and
    `top(a)` (activations -> pooled features). Both share the model's parameters."""

    def __init__(self, model: nn.Module, point: str):
        super().__init__()
        stem, named, tail = units(model)
        names = [n for n, _ in named]
        if point not in names:
            raise SettingsError(f"--cut-point {point!r} is not a layer boundary of {type(model).__name__}; "
                                f"choose one of {', '.join(names)}")
        at = names.index(point)
        self.point = point
        object.__setattr__(self, "model", model)  # not a submodule: its parameters are bottom's and top's
        self.bottom = nn.Sequential(*stem, *[m for _, m in named[:at]])
        self.top_units = nn.Sequential(*[m for _, m in named[at:]], *tail)
        self.pool = _Pool(model)
        total = _params([self.bottom, self.top_units])
        self.trainable_fraction = _params([self.top_units]) / total

    def top(self, a: torch.Tensor) -> torch.Tensor:
        return self.pool(self.top_units(a))

    def top_module(self) -> nn.Module:
        """The top as a module of its own (activations -> pooled features), for export."""
        return nn.Sequential(self.top_units, self.pool)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.top(self.bottom(x))


class CutActivations:
    """The frozen bottom as a feature-cache extractor: uint8 images -> activations at the cut, flattened.

    Stored as float16 (numpy has no bfloat16; float16 keeps 3 more mantissa bits than bf16, and its range
    is checked: a value beyond it raises instead of turning into inf) when the pooled features computed
    from them keep cosine >= FAITHFUL_COSINE with fp32 activations on the check photos (`faithful_storage`),
    else float32. The fingerprint names the base backbone, the cut and the storage type. The bottom runs on the
    base backbone's runtime where faithful (`model_dir`: where its exported network is kept).
    """

    def __init__(self, backbone: Backbone, cut: CutModel, storage: str, model_dir: str | os.PathLike | None = None):
        self.backbone = backbone
        self.cut = cut
        self.storage = storage
        self.name = f"{backbone.name}[:{cut.point}]"
        self._bits = OneThreadBits()
        with torch.inference_mode():
            probe = torch.zeros(1, 3, backbone.image_size, backbone.image_size, device=backbone.device)
            self.shape = tuple(cut.bottom(backbone.normalise(probe)).shape[1:])
        size = backbone.image_size
        rounding = (lambda a: a.half().float()) if storage == "fp16" else (lambda a: a)
        self._runtime, self.runtime_check = part_on_runtime(
            backbone, backbone.runtime, backbone.precision, cut.bottom, (3, size, size), f"bottom:{cut.point}",
            lambda bottom: _cosine_through(backbone, cut, lambda x: cut.top(rounding(bottom(x)))), model_dir)

    @property
    def runtime(self) -> str:
        return self._runtime.runtime if self._runtime is not None else "torch"

    def fingerprint(self) -> str:
        """The base backbone's, the cut and the storage type; and what ran the bottom when the base is not on
        torch (its fingerprint names its own runtime, which the bottom may have fallen back from)."""
        part = f":bottom={self.runtime}" if self.backbone.runtime != "torch" else ""
        return f"{self.backbone.fingerprint()}:cut={self.cut.point}:v{CUT_VERSION}:{self.storage}{part}"

    def iter_features(self, images, batch_size: int | None = None):
        bb = self.backbone
        batches, _ = iter_uint8_batches(images, int(batch_size or bb.settings.batch_size))
        dtype = np.float16 if self.storage == "fp16" else np.float32
        with torch.inference_mode(), intra_op_threads(bb.threads):
            for batch in batches:
                x = bb.preprocess(batch)
                if self._runtime is not None:
                    a = self._bits(self._runtime, x)
                else:
                    with autocast_for(bb.device, bb.precision):
                        a = self._bits(self.cut.bottom, x)
                a = a.float().flatten(1).cpu().numpy()
                if dtype == np.float16 and np.abs(a).max() > np.finfo(np.float16).max:
                    raise FloatingPointError(f"{self.name}: activations beyond float16's range; store them as fp32")
                yield a.astype(dtype)


class TopFeatures:
    """The top as a feature-cache extractor over cached cut activations: activations -> pooled features.

    `fingerprint` is that of `backbone` (the fine-tuned one, whose weights' hash it includes), so these
    entries are the features the full fine-tuned backbone computes from images, found by their source; plus
    the part's runtime when it runs on `runtime` (the base backbone's, in `precision`) rather than torch.
    """

    def __init__(self, backbone: Backbone, cut: CutModel, shape: tuple[int, ...], runtime: str = "torch",
                 precision: str = "fp32", model_dir: str | os.PathLike | None = None):
        self.backbone = backbone
        self.cut = cut
        self.shape = shape
        self.name = backbone.name
        self._bits = OneThreadBits()
        self._runtime, self.runtime_check = part_on_runtime(
            backbone, runtime, precision, cut.top_module(), shape, f"top:{cut.point}",
            lambda top: _cosine_through(backbone, cut, lambda x: top(cut.bottom(x))), model_dir)

    @property
    def runtime(self) -> str:
        return self._runtime.runtime if self._runtime is not None else "torch"

    def fingerprint(self) -> str:
        part = f":top={self.runtime}" if self.runtime != "torch" else ""
        return f"{self.backbone.fingerprint()}:via={self.cut.point}:v{CUT_VERSION}{part}"

    def __call__(self, a: np.ndarray | torch.Tensor) -> torch.Tensor:
        return self.cut.top(self._input(a))

    def _input(self, a: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Flattened activations -> the top's input tensor."""
        a = torch.as_tensor(a).to(self.backbone.device).float().view(-1, *self.shape)
        return a.contiguous(memory_format=torch.channels_last) if self.backbone.channels_last else a

    def iter_features(self, batches, batch_size: int = 512):
        bb = self.backbone
        with torch.inference_mode(), intra_op_threads(bb.threads):
            for block in batches:
                for i in range(0, len(block), batch_size):
                    a = self._input(block[i:i + batch_size])
                    if self._runtime is not None:
                        f = self._bits(self._runtime, a)
                    else:
                        with autocast_for(bb.device, bb.precision):
                            f = self._bits(self.cut.top, a)
                    yield f.float().cpu().numpy()


def _cosine_through(backbone: Backbone, cut: CutModel, pooled) -> float:
    """Min cosine of `pooled(x)` to the cut network's fp32 torch features, x the check photos."""
    from vfe.backbones.precision import min_cosine

    with torch.inference_mode():
        x = backbone.check_batch()
        return min_cosine(pooled(x).float().cpu(), cut(x).float().cpu())


def faithful_storage(backbone: Backbone, cut: CutModel) -> tuple[str, float]:
    """'fp16' when pooled features from float16-rounded activations keep cosine >= FAITHFUL_COSINE with
    those from fp32 activations on the check photos, else 'fp32'; and the cosine measured."""
    from vfe.backbones.precision import FAITHFUL_COSINE

    cosine = _cosine_through(backbone, cut, lambda x: cut.top(cut.bottom(x).half().float()))
    return ("fp16" if cosine >= FAITHFUL_COSINE else "fp32"), cosine


def clone_for_finetuning(backbone: Backbone, point: str) -> CutModel:
    """A trainable copy of the backbone's network, cut at `point` (the backbone itself stays untouched)."""
    model = copy.deepcopy(backbone.model).float()
    return CutModel(model, point)
