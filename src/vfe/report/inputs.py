"""What the report needs from a run's live objects, as JSON values stored in results.json.

The run calls `report_inputs` once and merges its keys into the results, so the report can be written
(and rewritten) from results.json alone. A reader gets a run's results.json with `read_results`, checked
against its schema, and reads these keys back with the decoders below.
"""
from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

from vfe.robustness.calibration import reliability_curve


def read_results(path: str | Path) -> dict:
    """A run's results.json, of this vfe's schema version and following it; anything else is one line
    (ResultsFileError) naming the file and what to do, so no reader meets a missing key."""
    # imported here, not with the package (vfe.report imports this module): `python -m vfe.report.schema` runs
    # the schema as a script, which the package must not have imported first
    from vfe.report.results_check import ResultsFileError, check_readable

    path = Path(path)
    try:
        results = json.loads(path.read_text())
    except FileNotFoundError:
        raise ResultsFileError(f"{path}: no such file; give the results.json of a finished `vfe run`") from None
    except (OSError, ValueError) as e:
        raise ResultsFileError(f"{path}: cannot read it ({e}); rerun that run") from None
    check_readable(results, str(path))
    return results


def report_inputs(models: dict, test, clean_probs: dict) -> dict:
    """{"head_parameters": {head: count}, "reliability": {head: {seed: curve}}, "example_image": {...}}.

    `models` and `clean_probs` are keyed by (head, seed), `test` is the test ImageSet; the reliability
    curves use the binning of the clean stage's ECE (`reliability_curve`), the example image is the
    first test image, which the report draws under every corruption.
    """
    head_parameters: dict[str, int] = {}
    for (head, _seed), model in models.items():
        head_parameters.setdefault(head, parameter_count(model))
    reliability: dict[str, dict[str, dict]] = {}
    for (head, seed), probs in clean_probs.items():
        reliability.setdefault(head, {})[str(seed)] = reliability_curve(probs, test.labels)
    return {"head_parameters": head_parameters, "reliability": reliability,
            "example_image": encode_image(test.images[0])}


def parameter_count(model) -> int:
    """Learned parameters of a fitted head: every torch module it holds, shared parameters counted once."""
    from torch import nn

    params = {id(p): p.numel() for attr in vars(model).values() if isinstance(attr, nn.Module)
              for p in attr.parameters()}
    return sum(params.values())


def encode_image(image: np.ndarray) -> dict:
    """A uint8 H x W [x C] image as lossless PNG (base64) plus its shape: small in JSON, exact back."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise ValueError(f"encode_image: expected a uint8 H x W [x C] image, got {image.dtype} {image.shape}")
    buf = io.BytesIO()
    Image.fromarray(image.squeeze(-1) if image.ndim == 3 and image.shape[-1] == 1 else image).save(buf, "PNG")
    return {"shape": list(image.shape), "png_base64": base64.b64encode(buf.getvalue()).decode("ascii")}


def decode_image(encoded: dict) -> np.ndarray:
    """The image `encode_image` stored."""
    png = base64.b64decode(encoded["png_base64"])
    return np.asarray(Image.open(io.BytesIO(png))).reshape(encoded["shape"])
