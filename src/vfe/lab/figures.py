"""The lab's figures: reconstructions, the 2-D latent traversal grid, the latent plane by class.

Computation (what to decode, where to project) is kept apart from drawing (the generic charts of
`vfe.plotting`, and the traversal grid here) so the numbers behind each figure can be tested.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

from vfe import plotting
from vfe.lab.losses import corrupt
from vfe.lab.models import ImageAutoencoder
from vfe.rundir import Run


def examples(labels: np.ndarray, n: int = 10) -> np.ndarray:
    """Indices of `n` images taking the classes in turn (the first of each class, then the second...)."""
    members = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    order = [m[k] for k in range(max(len(m) for m in members)) for m in members if k < len(m)]
    return np.asarray(order[:n])


@torch.no_grad()
def traversal(model: ImageAutoencoder, dims: tuple[int, int] = (0, 1), n: int = 25, span: float = 2.5,
              reference: torch.Tensor | None = None) -> tuple[torch.Tensor, np.ndarray]:
    """Decoded images on an n x n grid over [-span, span] in latent `dims`, the other dimensions fixed.

    For a VAE the values are z itself (its prior is N(0, I)) and the other dimensions stay at 0.
    A plain autoencoder's code has no prior, so the values are in standard deviations of the code
    over `reference` images (required), around its mean, where the other dimensions stay.
    Returns (n*n images, rows from +span at the top down to -span; columns left to right) and values.
    """
    d = model.latent_dim
    if d < 2 or len(set(dims)) != 2 or not all(0 <= i < d for i in dims):
        raise ValueError(f"dims must be two different latent dimensions in [0, {d}), got {dims}")
    values = np.linspace(-span, span, n)
    if model.config.variational:
        centre, scale = torch.zeros(d), torch.ones(d)
    else:
        if reference is None:
            raise ValueError("a plain autoencoder's traversal needs reference images to scale its code")
        codes = model.encode_all(reference)
        centre, scale = codes.mean(0), codes.std(0)
    v = torch.as_tensor(values, dtype=torch.float32)
    z = centre.repeat(n * n, 1)
    cols, rows = torch.meshgrid(v, v.flip(0), indexing="xy")  # top row = +span
    z[:, dims[0]] = centre[dims[0]] + scale[dims[0]] * cols.reshape(-1)
    z[:, dims[1]] = centre[dims[1]] + scale[dims[1]] * rows.reshape(-1)
    model.eval()
    return model.decode(z), values


def project_latents(codes: np.ndarray, method: str = "pca", seed: int = 0) -> tuple[np.ndarray, tuple[str, str]]:
    """2-D points for a scatter plot: the code itself when it is 2-D, else PCA (or t-SNE) of it."""
    if codes.shape[1] == 2:
        return codes, ("z[0]", "z[1]")
    if method == "pca":
        from sklearn.decomposition import PCA  # heavy, and only for codes of more than 2 numbers

        pca = PCA(2, random_state=seed).fit(codes)
        r = pca.explained_variance_ratio_
        return pca.transform(codes), (f"PC1 ({r[0]:.0%} of variance)", f"PC2 ({r[1]:.0%})")
    if method == "tsne":
        from sklearn.manifold import TSNE  # heavy

        return TSNE(2, init="pca", random_state=seed).fit_transform(codes), ("t-SNE 1", "t-SNE 2")
    raise ValueError(f"unknown projection {method!r}; use 'pca' or 'tsne'")


def traversal_figure(images, values: np.ndarray, dims: tuple[int, int], path: str | Path,
                     title: str | None = None) -> Path:
    """A k x k grid of decoded images; columns vary latent `dims[0]`, rows `dims[1]` over `values`
    (top row = largest value), drawn at about 1.6 screen pixels per image pixel."""
    k = len(values)
    t = plotting.as_images(images)
    h = t.shape[-2] + 1
    arr = plotting.grid_array(t, nrow=k, padding=1, pad_value=0.0)
    fig, ax = plt.subplots(figsize=(9, 9))
    ax.imshow(arr, interpolation="antialiased")
    centres = np.arange(k) * h + h / 2
    ticks = np.unique(np.linspace(0, k - 1, min(k, 5)).round().astype(int))
    ax.set_xticks(centres[ticks], [f"{values[i]:g}" for i in ticks])
    ax.set_yticks(centres[ticks], [f"{values[::-1][i]:g}" for i in ticks])
    ax.set_xlabel(f"z[{dims[0]}]")
    ax.set_ylabel(f"z[{dims[1]}]")
    if title:
        ax.set_title(plotting.wrap_title(title, 80), fontsize=10)
    return plotting.save_figure(fig, path, dpi=max(110, int(1.6 * arr.shape[0] / (9 * 0.78))))


def draw_model_figures(model: ImageAutoencoder, run: Run, x_test: torch.Tensor, labels: np.ndarray,
                       class_names: list[str], history_records: list[dict], best_epoch: int | None,
                       setting: str, projection: str = "pca", dims: tuple[int, int] = (0, 1),
                       x_reference: torch.Tensor | None = None) -> None:
    """The four standard figures of a trained model into `run`."""
    idx = examples(labels, n=12)
    clean = x_test[idx]
    inputs = corrupt(clean, model.config, torch.Generator().manual_seed(0))
    rows = [("original", clean)]
    if not torch.equal(inputs, clean):
        rows.append(("input", inputs))
    rows.append(("reconstructed", model.reconstruct(inputs)))
    plotting.image_rows(rows, run.figure("reconstructions.png", f"test images and their reconstructions ({setting})"))
    keys = [k for k in ("loss", "mse", "kl") if k in history_records[0]]
    plotting.history_figure(history_records, run.figure("loss_curves.png", "training curves; dashed: best epoch"),
                            keys=keys, best_epoch=best_epoch, title=setting)
    codes = model.encode_all(x_test).numpy()
    points, axes = project_latents(codes, projection)
    kind = projection if codes.shape[1] > 2 else "2-D code"
    plotting.scatter_classes(points, labels, class_names,
                             run.figure("latent.png", f"test codes coloured by class ({kind})"),
                             title=setting, axis_labels=axes)
    if model.latent_dim >= 2:
        imgs, values = traversal(model, dims, reference=x_reference if x_reference is not None else x_test)
        unit = "z" if model.config.variational else "code std. devs"
        traversal_figure(imgs, values, dims, run.figure(
            "traversal.png", f"25 x 25 decoded images over [-2.5, 2.5] ({unit}) on dims {dims}, others fixed"),
            title=setting)
