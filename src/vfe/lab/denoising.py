"""`vfe lab denoise`: a denoising autoencoder's PSNR against the noisy input and a blur baseline.

Noise as in training: clip(x + noise_factor * N(0, 1), 0, 1), drawn once with a fixed seed for the
test images. The baseline is a Gaussian blur (sigma 1 pixel), the simplest classical denoiser.
"""
from __future__ import annotations

from pathlib import Path

import torch
from scipy.ndimage import gaussian_filter

from vfe import plotting
from vfe.lab.common import load_data, make_config, train_model
from vfe.lab.config import LabSettings
from vfe.lab.figures import examples
from vfe.lab.losses import add_noise, psnr
from vfe.rundir import Run


def _summary(values: torch.Tensor) -> dict[str, float]:
    return {"mean": float(values.mean()), "std": float(values.std())}


def run_denoise(settings: LabSettings | None = None, out: str | Path | None = None, overwrite: bool = False,
                model: str = "denoising-ae", noise_factor: float = 0.4, **overrides) -> Run:
    """Train `model` to map clip(x + noise_factor * N(0, 1), 0, 1) back to x; score it on noisy test images."""
    if noise_factor <= 0:
        raise ValueError(f"noise_factor must be > 0, got {noise_factor}")
    settings = settings or LabSettings()
    data = load_data(settings)
    config = make_config(model, data.input_shape, **{**overrides, "noise_factor": noise_factor})
    run = Run(out or Path("runs/lab/denoise"), "vfe lab denoise: PSNR of noisy vs denoised images",
              overwrite=overwrite, settings={"model": model, "noise_factor": noise_factor, **settings.to_dict(),
                                             **overrides})
    ae, history = train_model(config, data, settings, desc=f"{model} (noise {noise_factor})")
    clean = data.x_test
    noisy = add_noise(clean, noise_factor, torch.Generator().manual_seed(settings.seed + 1000))
    denoised = ae.reconstruct(noisy)
    blurred = torch.from_numpy(gaussian_filter(noisy.numpy(), sigma=(0, 0, 1, 1)))
    scores = {"noisy": _summary(psnr(noisy, clean)), "gaussian blur (sigma 1)": _summary(psnr(blurred, clean)),
              "denoised": _summary(psnr(denoised, clean))}
    run.record(data=data.describe(), noise_factor=noise_factor, psnr_db=scores, best_epoch=history.best_epoch)
    run.table(f"PSNR (dB) on {len(clean)} test images", [{"images": k, **v} for k, v in scores.items()])
    setting = (f"{model}, noise factor {noise_factor}, {settings.dataset} n_train={len(data.x_train)}; "
               f"PSNR noisy {scores['noisy']['mean']:.1f} dB -> denoised {scores['denoised']['mean']:.1f} dB")
    idx = examples(data.test.labels, n=12)
    plotting.image_rows([("clean", clean[idx]), ("noisy", noisy[idx]), ("denoised", denoised[idx])],
                        run.figure("denoising.png", "test images: clean, noisy input, autoencoder output"),
                        title=setting)
    plotting.history_figure(history.records, run.figure("loss_curves.png", "training curves"),
                            best_epoch=history.best_epoch, title=setting)
    run.finish()
    return run
