"""`vfe lab traverse`: the 2-D latent traversal grid of a model trained by `vfe lab train`."""
from __future__ import annotations

from pathlib import Path

from vfe.lab.data import load_images, to_tensor
from vfe.lab.figures import traversal, traversal_figure
from vfe.lab.models import load_model
from vfe.rundir import Run


def run_traverse(model_dir: str | Path, out: str | Path | None = None, overwrite: bool = False,
                 dims: tuple[int, int] = (0, 1), n: int = 25, span: float = 2.5,
                 dataset: str = "fashion-mnist", n_reference: int = 2000, data_dir: str | None = None) -> Run:
    """Decode an n x n grid over [-span, span] on latent `dims`; a plain autoencoder's code is scaled by
    its spread over `n_reference` training images of `dataset` (a VAE needs no data)."""
    model = load_model(model_dir)
    model_dir = Path(model_dir)
    run = Run(out or Path("runs/lab") / f"{model_dir.name}-traverse", f"vfe lab traverse: {model_dir}",
              overwrite=overwrite, settings={"model_dir": str(model_dir), "dims": list(dims), "n": n, "span": span})
    reference = None
    if not model.config.variational:
        reference = to_tensor(load_images(dataset, "train", n_reference, 0, data_dir))
    images, values = traversal(model, tuple(dims), n, span, reference)
    unit = "z" if model.config.variational else "code std. devs around the mean code"
    traversal_figure(images, values, tuple(dims), run.figure(
        "traversal.png", f"{n} x {n} decoded images over [-{span}, {span}] ({unit}) on dims {tuple(dims)}"),
        title=f"{model_dir.name}: latent dims {tuple(dims)}, others fixed")
    run.record(model_dir=str(model_dir), dims=list(dims), values=values.tolist())
    run.finish()
    return run
