"""`vfe lab compress`: code size vs reconstruction error, and the bytes each code saves per image.

The codes are stored at `code_dtype` (float16 by default) and decoded from that stored form, so the
error reported is the error of the compressed file, not of the float32 code in memory.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from vfe.lab.common import LabSettings, load_data, make_config, train_model
from vfe.lab.figures import examples
from vfe.lab.fit import mean_image_mse
from vfe.lab.losses import psnr
from vfe.viz import figures
from vfe.viz.run import Run

CODE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@torch.no_grad()
def compress_scores(model, images: torch.Tensor, code_dtype: str = "float16") -> dict[str, float]:
    """Reconstruction error after storing each image's code at `code_dtype`, and the bytes involved."""
    dtype = CODE_DTYPES[code_dtype]
    codes = model.encode_all(images).to(dtype)
    recon = model.decode(codes.float())
    raw_bytes = images[0].numel()  # one uint8 per pixel and channel
    code_bytes = codes.shape[1] * codes.element_size()
    decoder_bytes = 4 * sum(p.numel() for n, p in model.named_parameters() if n.startswith("decoder_net"))
    return {"code_size": int(codes.shape[1]), "mse": float((recon - images).pow(2).mean()),
            "psnr": float(psnr(recon, images).mean()), "raw_bytes": raw_bytes, "code_bytes": code_bytes,
            "bytes_saved_per_image": raw_bytes - code_bytes, "ratio": raw_bytes / code_bytes,
            "decoder_bytes": decoder_bytes}


def run_compress(settings: LabSettings | None = None, out: str | Path | None = None, overwrite: bool = False,
                 model: str = "dense-ae", code_sizes: Sequence[int] = (2, 4, 8, 16, 32, 64),
                 code_dtype: str = "float16") -> Run:
    """Train one `model` per code size; plot error against size; show reconstructions at each size."""
    if code_dtype not in CODE_DTYPES:
        raise ValueError(f"code_dtype {code_dtype!r}: use one of {', '.join(CODE_DTYPES)}")
    settings = settings or LabSettings()
    data = load_data(settings)
    run = Run(out or Path("runs/lab/compress"), "vfe lab compress: code size vs reconstruction error",
              overwrite=overwrite, settings={"model": model, "code_sizes": list(code_sizes),
                                             "code_dtype": code_dtype, **settings.to_dict()})
    idx = examples(data.test.labels, n=12)
    rows, scores = [("original", data.x_test[idx])], []
    for k in code_sizes:
        ae, history = train_model(make_config(model, data.input_shape, latent_dim=int(k)), data, settings,
                                  desc=f"{model} code {k}")
        s = compress_scores(ae, data.x_test, code_dtype)
        s["best_epoch"] = history.best_epoch
        scores.append(s)
        rows.append((f"code {k}", ae.decode(ae.encode_all(data.x_test[idx]).to(CODE_DTYPES[code_dtype]).float())))
    baseline = mean_image_mse(data.x_train, data.x_test)
    run.record(data=data.describe(), scores=scores, mean_image_mse=baseline)
    run.table(f"test set ({len(data.x_test)} images), codes stored as {code_dtype}", scores)
    setting = f"{model}, {settings.dataset} n_train={len(data.x_train)}, codes as {code_dtype}"
    sizes = [s["code_size"] for s in scores]
    figures.line_figure(sizes, {"test MSE per pixel": [s["mse"] for s in scores]},
                        run.figure("compression.png", "reconstruction error against code size; bytes saved "
                                   "per image in the table"),
                        xlabel="code size (numbers per image)", ylabel="MSE per pixel", logx=True, logy=True,
                        hlines={"mean-image baseline": baseline},
                        title=f"{setting}\nraw image {scores[0]['raw_bytes']} B; code "
                              + ", ".join(f"{s['code_bytes']} B" for s in scores))
    with torch.no_grad():
        figures.image_rows(rows, run.figure("reconstructions.png", "test images decoded from codes of each size"),
                           title=setting)
    run.finish()
    return run
