"""Inputs that maximise a channel: gradient ascent on its mean activation from a random image.

Without regularisation, ascent finds high-frequency patterns that look like noise. Three standard
regularisers keep the images natural (Yosinski et al. 2015, "Understanding neural networks
through deep visualization"; Olah et al. 2017, "Feature visualization"):
  * jitter   - the image is shifted by a random offset before each step, so the pattern cannot
               rely on exact pixel positions;
  * L2 decay - pixels are pulled toward mid-grey by a factor (1 - decay) each step;
  * blur     - every `blur_every` steps the image is smoothed with a small Gaussian.
The gradient is normalised per image (divided by its RMS), so `lr` is a step in pixel units.
All channels asked for are optimised together, one image each, in one batch; the forward pass
stops at the layer (later layers are never computed).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import torch
from torchvision.transforms.functional import gaussian_blur
from tqdm.auto import tqdm

from vfe import defaults, plotting
from vfe.rundir import Run
from vfe.viz.config import AscentConfig
from vfe.viz.hooks import run_until
from vfe.viz.network import Network, load_network


def maximize_channels(network: Network, layer: str, channels: Sequence[int], config: AscentConfig | None = None,
                      progress: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images (N x C x S x S in [0, 1]) that maximise each channel's mean activation at `layer`.

    Returns the images, the channels' mean activation at the start, and at the end of the ascent.
    """
    config = config or AscentConfig()
    c, h, _ = network.input_shape
    size = config.size or h
    n = len(channels)
    idx = torch.as_tensor(list(channels))
    network.module.eval()
    for p in network.module.parameters():
        p.requires_grad_(False)
    gen = torch.Generator().manual_seed(config.seed)
    x = (0.5 + 0.1 * torch.randn(n, c, size, size, generator=gen)).clamp(0, 1)

    def objective(img: torch.Tensor) -> torch.Tensor:
        a = run_until(network, img, [layer])[layer]
        if a.ndim == 2:
            a = a[:, :, None, None]
        if idx.max() >= a.shape[1]:
            raise ValueError(f"{layer} has {a.shape[1]} channels; channel {int(idx.max())} does not exist")
        return a[torch.arange(n), idx].flatten(1).mean(1)

    with torch.no_grad():
        start = objective(x)
    for step in tqdm(range(config.steps), desc=f"maximise {layer}", disable=not progress, leave=False):
        dy, dx = (int(v) for v in torch.randint(-config.jitter, config.jitter + 1, (2,), generator=gen))
        shifted = torch.roll(x, (dy, dx), dims=(2, 3)).requires_grad_(True)
        objective(shifted).sum().backward()
        g = torch.roll(shifted.grad, (-dy, -dx), dims=(2, 3))
        g = g / g.pow(2).flatten(1).mean(1).sqrt().clamp_min(1e-12).view(n, 1, 1, 1)
        with torch.no_grad():
            x = x + config.lr * g
            x = 0.5 + (x - 0.5) * (1 - config.l2_decay)
            if config.blur_every and (step + 1) % config.blur_every == 0 and config.blur_sigma > 0:
                x = gaussian_blur(x, kernel_size=2 * round(3 * config.blur_sigma) + 1, sigma=config.blur_sigma)
            x = x.clamp(0, 1)
    with torch.no_grad():
        end = objective(x)
    return x.detach(), start, end


def run_maximize(model: str = defaults.BACKBONE, layer: str | None = None, channels: Sequence[int] = (),
                 n_channels: int = 16, config: AscentConfig | None = None, out: str | Path | None = None,
                 overwrite: bool = False, weights: str = "default", progress: bool = True) -> Run:
    """A grid of the images that maximise each channel (default: the first `n_channels`) of `layer`."""
    config = config or AscentConfig()
    network = load_network(model, weights, config.size)
    layer = layer or (network.default_layers[len(network.default_layers) // 2] if network.default_layers else None)
    if layer is None:
        raise ValueError(f"name the layer with --layer (see `vfe viz activations --model {model} --list-layers`)")
    network.layer(layer)  # a clear error for an unknown name
    channels = list(channels) or list(range(n_channels))
    name = Path(model).name if Path(model).is_dir() else model
    run = Run(out or Path("runs/viz/maximize") / f"{name}-{layer}", f"vfe viz maximize: {network.name}, {layer}",
              overwrite=overwrite, settings={"model": model, "layer": layer, "channels": channels, **asdict(config)})
    images, start, end = maximize_channels(network, layer, channels, config, progress)
    setting = (f"{network.name} - {layer}, channels {channels[0]}..{channels[-1]}; {config.steps} steps, "
               f"jitter {config.jitter}px, L2 decay {config.l2_decay}, blur sigma {config.blur_sigma} "
               f"every {config.blur_every}")
    plotting.image_grid(images, run.figure("maximize.png", "images maximising each channel's mean activation "
                                           "(row-major, channel order)"),
                        nrow=min(8, len(channels)), title=setting, size=9)
    rows = [{"channel": c, "activation at start": float(s), "activation at end": float(e)}
            for c, s, e in zip(channels, start, end, strict=True)]
    run.record(model=model, layer=layer, channels=rows, config=asdict(config))
    run.table("mean activation of each channel", rows)
    run.finish()
    return run
