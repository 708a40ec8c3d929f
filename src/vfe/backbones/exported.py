"""A backbone's network exported to ONNX for the other runtimes, kept on disk so it is exported once.

Only the network is exported (normalised float input N x 3 x S x S -> pooled features, batch size free),
or one part of it (`exported_part`: the reference protocol's frozen bottom and fine-tuned top):
the resize, crop and normalisation stay vfe's own (the backbone's data config), so every runtime sees
exactly the input torch sees. The file is written atomically (vfe.io) under
`<feature cache>/_models/`, a folder the cache's listing skips, and named by a hash of what fixes the
graph: architecture, weights identity (a file's SHA-256), input size, and the timm, torch and
exporter versions. The graph holds fp32 weights; reduced precision is the runtime's choice when it
compiles it, so one file serves every precision. ONNX is protobuf: reading it runs no code.

torch's dynamo exporter (`torch.onnx.export(dynamo=True)`, package onnxscript) is used, as in
vfe.export.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import json
import os
import re
import warnings
from pathlib import Path
from typing import Any

import torch

from vfe.io import atomic_write_bytes

EXPORT_VERSION = 1
INPUT_NAME, OUTPUT_NAME = "input", "features"


def default_model_dir() -> Path:
    """`_models` in the default feature cache ($VFE_CACHE, else ~/.cache/vfe/features), which is
    vfe.features.cache.default_cache_root; repeated here because backbones sit below features."""
    return Path(os.environ.get("VFE_CACHE", Path.home() / ".cache" / "vfe" / "features")) / "_models"


def model_key(backbone: Any, part: str = "") -> str:
    """The hash naming a backbone's exported network, or one `part` of it (see the module docstring for
    what enters it)."""
    import onnxscript
    import timm

    spec = {"v": EXPORT_VERSION, "arch": backbone.arch, "weights": backbone.weights.identity,
            "input_size": list(backbone.data_config["input_size"]), "timm": timm.__version__,
            "torch": torch.__version__, "onnxscript": onnxscript.__version__, **({"part": part} if part else {})}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:24]


def exported_model(backbone: Any, model_dir: str | os.PathLike | None = None) -> Path:
    """The ONNX file of `backbone`'s pooled-feature network, exported now unless already on disk."""
    size = backbone.image_size
    return exported_part(backbone, backbone.pooled, (3, size, size), "", model_dir)


def exported_part(backbone: Any, net: torch.nn.Module, input_shape: tuple[int, ...], part: str,
                  model_dir: str | os.PathLike | None = None) -> Path:
    """The ONNX file of `net`, a part of `backbone`'s network named `part` (fixed by the backbone's weights)
    taking inputs of `input_shape` per image, exported now unless already on disk."""
    folder = Path(model_dir) if model_dir is not None else default_model_dir()
    name = "-" + re.sub(r"[^A-Za-z0-9_-]", "_", part) if part else ""
    key = model_key(backbone, part)
    path = folder / f"{backbone.arch}-{backbone.image_size}px{name}-{key}.onnx"
    if not path.is_file():
        earlier = _EXPORTED.get(key)  # the same network, exported into another folder by this process
        atomic_write_bytes(path, earlier.read_bytes() if earlier is not None and earlier.is_file()
                           else export_bytes(net, input_shape))
    _EXPORTED[key] = path
    return path


# key -> the file this process last exported or found it in: a second feature cache gets a copy, not another
# export (torch's dynamo exporter takes 5-10 s for EfficientNet-Lite0 on 2 cores)
_EXPORTED: dict[str, Path] = {}


def export_bytes(net: torch.nn.Module, input_shape: tuple[int, ...]) -> bytes:
    """The serialised ONNX model of `net` (a copy of it in NCHW), batch size free."""
    net = copy.deepcopy(net).to(memory_format=torch.contiguous_format).eval()
    example = torch.zeros((2, *input_shape))
    batch = torch.export.Dim("batch", min=1, max=4096)
    with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter reports its progress and deprecations
        program = torch.onnx.export(net, (example,), dynamo=True, input_names=[INPUT_NAME],
                                    output_names=[OUTPUT_NAME], dynamic_shapes=({0: batch},), verbose=False)
    return program.model_proto.SerializeToString()
