"""`vfe lab compress`: code size vs reconstruction error, and the bytes each code saves per image.

The codes are stored at `code_dtype` (float16 by default) and decoded from that stored form, so the
error reported is the error of the compressed file, not of the float32 code in memory. An image
costs one byte per pixel and channel (uint8); a code costs its size times the dtype's bytes; the
decoder's weights are a one-off cost, reported beside.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from vfe import plotting
from vfe.lab.common import load_data, make_config, train_model
from vfe.lab.config import COMPRESS_EPOCHS, LabSettings
from vfe.lab.figures import examples
from vfe.lab.fit import mean_image_mse
from vfe.lab.losses import psnr
from vfe.lab.models import ImageAutoencoder
from vfe.rundir import Run

CODE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@torch.no_grad()
def stored_reconstruction(model: ImageAutoencoder, images: torch.Tensor, code_dtype: str = "float16") -> torch.Tensor:
    """Images decoded from their codes after a round trip through `code_dtype`, as a file would hold them."""
    if code_dtype not in CODE_DTYPES:
        raise ValueError(f"code_dtype {code_dtype!r}: use one of {', '.join(CODE_DTYPES)}")
    codes = model.encode_all(images).to(CODE_DTYPES[code_dtype])
    model.eval()
    return model.decode(codes.float())


@torch.no_grad()
def compress_scores(model: ImageAutoencoder, images: torch.Tensor, code_dtype: str = "float16") -> dict:
    """Reconstruction error after storing each image's code at `code_dtype`, and the bytes involved."""
    recon = stored_reconstruction(model, images, code_dtype)
    raw_bytes = images[0].numel()  # one uint8 per pixel and channel
    code_bytes = model.latent_dim * CODE_DTYPES[code_dtype].itemsize
    decoder_bytes = 4 * sum(p.numel() for p in model.decoder_net.parameters())
    return {"code_size": model.latent_dim, "mse": float((recon - images).pow(2).mean()),
            "psnr": float(psnr(recon, images).mean()), "raw_bytes": raw_bytes, "code_bytes": code_bytes,
            "bytes_saved_per_image": raw_bytes - code_bytes, "ratio": raw_bytes / code_bytes,
            "decoder_bytes": decoder_bytes}


def run_compress(settings: LabSettings | None = None, out: str | Path | None = None, overwrite: bool = False,
                 model: str = "dense-ae", code_sizes: Sequence[int] = (2, 4, 8, 16, 32, 64),
                 code_dtype: str = "float16", **overrides) -> Run:
    """Train one `model` per code size; plot error against size; show reconstructions at each size.

    `overrides` change the preset's other fields (hidden sizes, activation, ...), as for `run_train`.
    """
    if code_dtype not in CODE_DTYPES:
        raise ValueError(f"code_dtype {code_dtype!r}: use one of {', '.join(CODE_DTYPES)}")
    if not code_sizes or min(code_sizes) < 1:
        raise ValueError(f"code_sizes must be one or more positive sizes, got {list(code_sizes)}")
    settings = settings or LabSettings(epochs=COMPRESS_EPOCHS)
    data = load_data(settings)
    run = Run(out or Path("runs/lab/compress"), "vfe lab compress: code size vs reconstruction error",
              overwrite=overwrite, settings={"model": model, "code_sizes": list(code_sizes), "code_dtype": code_dtype,
                                             **settings.to_dict(), **overrides})
    idx = examples(data.test.labels, n=12)
    rows, scores = [("original", data.x_test[idx])], []
    for k in sorted({int(k) for k in code_sizes}):
        config = make_config(model, data.input_shape, **{**overrides, "latent_dim": k})
        ae, history = train_model(config, data, settings, desc=f"{model} code {k}")
        scores.append({**compress_scores(ae, data.x_test, code_dtype), "best_epoch": history.best_epoch})
        rows.append((f"code {k}", stored_reconstruction(ae, data.x_test[idx], code_dtype)))
    baseline = mean_image_mse(data.x_train, data.x_test)
    run.record(data=data.describe(), code_dtype=code_dtype, scores=scores, mean_image_mse=baseline)
    run.table(f"test set ({len(data.x_test)} images), codes stored as {code_dtype}", scores)
    setting = f"{model}, {settings.dataset} n_train={len(data.x_train)}, codes as {code_dtype}, seed {settings.seed}"
    plotting.line_figure([s["code_size"] for s in scores], {"test MSE per pixel": [s["mse"] for s in scores]},
                         run.figure("compression.png", "reconstruction error against code size (the bytes each "
                                    "image takes are in the title and the table)"),
                         xlabel="code size (numbers per image)", ylabel="MSE per pixel", logx=True, logy=True,
                         hlines={"mean-image baseline": baseline},
                         title=f"{setting}\nimage {scores[0]['raw_bytes']} B; codes "
                               + ", ".join(f"{s['code_bytes']} B" for s in scores))
    plotting.image_rows(rows, run.figure("reconstructions.png", "test images decoded from stored codes of each size"),
                        title=setting)
    run.finish()
    return run
