"""A backbone's network exported to ONNX for the other runtimes, kept on disk so it is exported once.

Only the network is exported (normalised float input N x 3 x S x S -> pooled features, batch size free):
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


def model_key(backbone: Any) -> str:
    """The hash naming a backbone's exported network (see the module docstring for what enters it)."""
    import onnxscript
    import timm

    spec = {"v": EXPORT_VERSION, "arch": backbone.arch, "weights": backbone.weights.identity,
            "input_size": list(backbone.data_config["input_size"]), "timm": timm.__version__,
            "torch": torch.__version__, "onnxscript": onnxscript.__version__}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:24]


def exported_model(backbone: Any, model_dir: str | os.PathLike | None = None) -> Path:
    """The ONNX file of `backbone`'s pooled-feature network, exported now unless already on disk."""
    folder = Path(model_dir) if model_dir is not None else default_model_dir()
    path = folder / f"{backbone.arch}-{backbone.image_size}px-{model_key(backbone)}.onnx"
    if not path.is_file():
        atomic_write_bytes(path, export_bytes(backbone))
    return path


def export_bytes(backbone: Any) -> bytes:
    """The serialised ONNX model of the backbone's pooled features (a copy of its network in NCHW)."""
    net = copy.deepcopy(backbone.pooled).to(memory_format=torch.contiguous_format).eval()
    size = backbone.image_size
    example = torch.zeros((2, 3, size, size))
    batch = torch.export.Dim("batch", min=1, max=4096)
    with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter reports its progress and deprecations
        program = torch.onnx.export(net, (example,), dynamo=True, input_names=[INPUT_NAME],
                                    output_names=[OUTPUT_NAME], dynamic_shapes={"x": {0: batch}}, verbose=False)
    return program.model_proto.SerializeToString()
