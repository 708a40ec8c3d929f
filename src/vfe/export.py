"""A saved pipeline as one ONNX file: uint8 images in, class probabilities out, served without vfe.

The graph holds everything `vfe predict` does after reading the file: the backbone's own preprocessing
(resize with antialiasing, centre crop, grey -> RGB, mean/std), the backbone, and the head's
probability path. A head that samples a latent code (the VFE, VIB) is exported deterministically on
z_mean by default, or averaging `samples` draws (ONNX RandomNormalLike: each call of a session draws
anew; a new session starts from the same state). The input's height, width and channels are fixed at export (the
resize is computed for them); the batch size is free.

torch's TorchScript exporter cannot export antialiased resizing (`aten::_upsample_bilinear2d_aa`), so
this uses the dynamo exporter (`torch.onnx.export(dynamo=True)`, which needs `onnxscript`); ONNX
Runtime runs the result; both are installed with vfe.
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
import os
from pathlib import Path

import torch
from torch import nn

from vfe.errors import SettingsError
from vfe.paths import check_output_file
from vfe.pipeline import Pipeline

INPUT_NAME, OUTPUT_NAME = "images", "probabilities"


class ServedPipeline(nn.Module):
    """uint8 images N x H x W x C -> class probabilities N x classes, all inside one torch graph."""

    def __init__(self, pipeline: Pipeline, samples: int | None = None):
        super().__init__()
        self.backbone = pipeline.backbone
        self.head = deterministic_head(pipeline.head, samples).probability_module().eval()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x01 = images.permute(0, 3, 1, 2).float() / 255.0
        return self.head(self.backbone(x01))


def deterministic_head(head, samples: int | None):
    """The head predicting on z_mean (or averaging `samples` draws) when it samples; otherwise itself."""
    params = head.get_params()
    if "predict_mode" not in params:
        if samples is not None:
            raise SettingsError(f"--samples: the {type(head).__name__} does not sample; export it without --samples")
        return head
    if samples is not None and samples < 1:
        raise SettingsError(f"--samples must be at least 1, got {samples}")
    served = copy.copy(head)
    served.set_params(**({"predict_mode": "mean"} if samples is None else
                         {"predict_mode": "average", "n_samples": samples}))
    return served


def export_onnx(pipeline: str | os.PathLike | Pipeline, out: str | os.PathLike,
                input_shape: tuple[int, int, int] | None = None, samples: int | None = None,
                overwrite: bool = False) -> Path:
    """Write `pipeline` as an ONNX file at `out`; returns its path.

    input_shape: (height, width, channels) of the images it will be given (channels 1 or 3); default:
        the backbone's input size, RGB.
    samples: for a head that samples, average this many draws instead of using z_mean.
    """
    out = check_output_file(out, overwrite, suffix=".onnx")
    pipe = pipeline if isinstance(pipeline, Pipeline) else Pipeline.load(pipeline, device="cpu", runtime="torch")
    if input_shape is None:
        _, height, width = pipe.backbone.data_config["input_size"]
        input_shape = (height, width, 3)
    height, width, channels = input_shape
    if channels not in (1, 3) or not (8 <= height <= 1024 and 8 <= width <= 1024):
        raise SettingsError(f"--input-shape {height} {width} {channels}: height and width 8..1024, channels 1 or 3")
    model = ServedPipeline(pipe, samples).eval()
    example = torch.zeros((2, height, width, channels), dtype=torch.uint8)
    batch = torch.export.Dim("batch", min=1, max=4096)
    with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):  # the exporter prints its progress
        program = torch.onnx.export(model, (example,), dynamo=True, input_names=[INPUT_NAME],
                                    output_names=[OUTPUT_NAME], dynamic_shapes={"images": {0: batch}},
                                    verbose=False)
    program.model.metadata_props.update({
        "vfe": json.dumps({"class_names": pipe.class_names, "classes": [int(c) for c in pipe.head.classes_],
                           "input": f"uint8 N x {height} x {width} x {channels}",
                           "head": type(pipe.head).__name__,
                           "latent": "mean" if samples is None else f"average of {samples} draws"})})
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        program.save(str(tmp))
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    return out
