"""`vfe lab train`: fit one autoencoder, save it, and draw its figures into one run folder."""
from __future__ import annotations

from pathlib import Path

from vfe.io import write_json
from vfe.lab.common import load_data, make_config, train_model
from vfe.lab.config import LabSettings
from vfe.lab.figures import draw_model_figures
from vfe.lab.fit import evaluate_reconstruction, mean_image_mse
from vfe.lab.models import AEConfig, save_model
from vfe.rundir import Run


def run_train(model: str | AEConfig = "conv-ae", settings: LabSettings | None = None,
              out: str | Path | None = None, overwrite: bool = False, resume: bool = False,
              projection: str = "pca", dims: tuple[int, int] = (0, 1), **overrides) -> Run:
    """Train `model` (a preset name or config) and write model, checkpoints, history, figures, metrics.

    `resume=True` continues an interrupted run in `out` from its last checkpoint.
    """
    settings = settings or LabSettings()
    name = model if isinstance(model, str) else f"{model.kind}-{'vae' if model.variational else 'ae'}"
    data = load_data(settings)
    config = make_config(model, data.input_shape, **overrides)
    run = Run(out or Path("runs/lab") / name, f"vfe lab train: {name}", overwrite=overwrite, resume=resume,
              settings={"model": name, **settings.to_dict(), **overrides})
    ae, history = train_model(config, data, settings, checkpoint_dir=run.path("checkpoints"), desc=name)
    save_model(ae, run.dir, preset_name=name if isinstance(model, str) else None, data=data.describe())
    write_json(run.path("history.json"), history.to_dict())
    scores = evaluate_reconstruction(ae, data.x_test, seed=settings.seed)
    baseline = mean_image_mse(data.x_train, data.x_test)
    run.record(model=name, config=config.to_dict(), data=data.describe(), test_mse=scores["mse"],
               test_psnr=scores["psnr"], mean_image_mse=baseline, best_epoch=history.best_epoch,
               epochs_run=len(history.records), stopped_early=history.stopped_early)
    run.table("test reconstruction", [{"model": name, "test MSE / pixel": scores["mse"],
                                       "PSNR (dB)": scores["psnr"], "mean-image MSE": baseline,
                                       "best epoch": history.best_epoch}])
    setting = (f"{name}, latent {config.latent_dim}, {settings.dataset} n_train={len(data.x_train)}, "
               f"seed {settings.seed}")
    draw_model_figures(ae, run, data.x_test, data.test.labels, data.test.class_names, history.records,
                       history.best_epoch, setting, projection=projection, dims=dims, x_reference=data.x_train)
    run.finish()
    return run
