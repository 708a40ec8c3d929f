"""Feature maps of named layers for one image, drawn as grids of their first channels."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from vfe import defaults, plotting
from vfe.rundir import Run
from vfe.viz.hooks import run_until
from vfe.viz.images import load_image
from vfe.viz.network import Network, load_network


@torch.no_grad()
def activation_maps(network: Network, x01: torch.Tensor, layers: Sequence[str]) -> dict[str, torch.Tensor]:
    """Each layer's output for one image: C x h x w (a dense layer's output comes back as C x 1 x 1)."""
    network.module.eval()
    out = run_until(network, x01[:1], layers)
    return {name: (a[0] if a.ndim == 4 else a[0].reshape(-1, 1, 1)).float() for name, a in out.items()}


def run_activations(model: str = defaults.BACKBONE, image: str = "chelsea", layers: Sequence[str] = (),
                    n_channels: int = 32, out: str | Path | None = None, overwrite: bool = False,
                    weights: str = "default", image_size: int | None = None, data_dir: str | None = None) -> Run:
    """Grids of the first `n_channels` feature maps of each layer (default: a few spread over the network)."""
    network = load_network(model, weights, image_size)
    x01, description = load_image(image, data_dir)
    layers = list(layers) or list(network.default_layers)
    if not layers:
        raise ValueError(f"name the layers to show with --layers (see --list-layers for {network.name})")
    name = Path(model).name if Path(model).is_dir() else model
    run = Run(out or Path("runs/viz/activations") / name, f"vfe viz activations: {network.name}",
              overwrite=overwrite, settings={"model": model, "image": description, "layers": layers,
                                             "n_channels": n_channels})
    maps = activation_maps(network, x01, layers)
    plotting.image_grid(x01, run.figure("input.png", f"input: {description}"), nrow=1, size=3,
                        title=description)
    stats = []
    for layer, a in maps.items():
        k = min(n_channels, a.shape[0])
        safe = layer.replace("/", "_")
        plotting.image_grid(a[:k, None], run.figure(f"activations_{safe}.png",
                                                    f"{layer}: first {k} of {a.shape[0]} channels, {a.shape[1]}x"
                                                    f"{a.shape[2]}, each scaled to its own range"),
                            nrow=min(8, k), normalize_each=True, cmap="viridis",
                            title=f"{network.name} - {layer} ({a.shape[0]} x {a.shape[1]} x {a.shape[2]})")
        stats.append({"layer": layer, "channels": a.shape[0], "height": a.shape[1], "width": a.shape[2],
                      "mean": float(a.mean()), "fraction_zero": float((a == 0).float().mean())})
    run.record(model=model, image=description, layers=stats)
    run.table("layers", stats)
    run.finish()
    return run
