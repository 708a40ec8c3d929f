"""`vfe lab inpaint`: restore a masked square; PSNR inside the square before and after.

Each test image gets one `mask_size` x `mask_size` square (placed at random with a fixed seed) set
to 0. The restored image keeps the known pixels and takes the autoencoder's output inside the
square. Baseline: filling the square with the training set's mean image.
"""
from __future__ import annotations

from pathlib import Path

import torch

from vfe import plotting
from vfe.lab.common import load_data, make_config, train_model
from vfe.lab.config import LabSettings
from vfe.lab.figures import examples
from vfe.lab.losses import apply_mask, psnr, square_masks
from vfe.rundir import Run


def run_inpaint(settings: LabSettings | None = None, out: str | Path | None = None, overwrite: bool = False,
                model: str = "inpainting-ae", mask_size: int = 10, **overrides) -> Run:
    """Train `model` to fill a random `mask_size` square blanked out of each image; score it inside the square."""
    if mask_size < 1:
        raise ValueError(f"mask_size must be >= 1, got {mask_size}")
    settings = settings or LabSettings()
    data = load_data(settings)
    config = make_config(model, data.input_shape, **{**overrides, "mask_size": mask_size})
    run = Run(out or Path("runs/lab/inpaint"), "vfe lab inpaint: restoring a masked square",
              overwrite=overwrite, settings={"model": model, "mask_size": mask_size, **settings.to_dict(),
                                             **overrides})
    ae, history = train_model(config, data, settings, desc=f"{model} (mask {mask_size})")
    clean = data.x_test
    _, _, h, w = clean.shape
    masks = square_masks(len(clean), h, w, mask_size, torch.Generator().manual_seed(settings.seed + 1000))
    masked = apply_mask(clean, masks)
    restored = torch.where(masks, ae.reconstruct(masked), clean)
    mean_fill = torch.where(masks, data.x_train.mean(0, keepdim=True), clean)
    scores = {name: float(psnr(x, clean, masks).mean())
              for name, x in (("masked (zeros)", masked), ("mean-image fill", mean_fill), ("restored", restored))}
    run.record(data=data.describe(), mask_size=mask_size, psnr_in_square_db=scores, best_epoch=history.best_epoch)
    run.table(f"PSNR (dB) inside the square, {len(clean)} test images",
              [{"images": k, "PSNR in square": v} for k, v in scores.items()])
    setting = (f"{model}, {mask_size}x{mask_size} square, {settings.dataset} n_train={len(data.x_train)}; "
               f"PSNR in square {scores['masked (zeros)']:.1f} -> {scores['restored']:.1f} dB")
    idx = examples(data.test.labels, n=12)
    plotting.image_rows([("original", clean[idx]), ("masked", masked[idx]), ("restored", restored[idx])],
                        run.figure("inpainting.png", "test images: original, masked input, restored"), title=setting)
    plotting.history_figure(history.records, run.figure("loss_curves.png", "training curves"),
                            best_epoch=history.best_epoch, title=setting)
    run.finish()
    return run
