"""`vfe lab ...`: the autoencoder lab on the command line (the same functions as `vfe.lab`).

Only plain-data settings are imported here; each command imports torch and the rest when it runs.
"""
from __future__ import annotations

import argparse
import functools

from vfe.lab.config import ACTIVATIONS, COMPRESS_EPOCHS, DECODERS, PRESETS, RECON_LOSSES, LabSettings

EXAMPLES = {
    "train": "vfe lab train --model conv-vae                 # latent 2: traversal grid + latent plane\n"
             "vfe lab train --model conv-ae --decoder upsample --latent-dim 16\n"
             "vfe lab train --model beta-vae --beta 4 --epochs 30 --out runs/lab/beta4\n"
             "vfe lab train --model vae --resume --out runs/lab/vae   # continue from the last checkpoint",
    "compress": "vfe lab compress                               # dense-ae, codes 2..64, stored as float16\n"
                "vfe lab compress --model conv-ae --code-sizes 4 16 64 --n-train 5000",
    "features": "vfe lab features                               # logistic regression: pixels vs PCA vs code\n"
                "vfe lab features --model dense-ae --latent-dim 64",
    "denoise": "vfe lab denoise                                # noise factor 0.4, PSNR noisy vs denoised\n"
               "vfe lab denoise --noise-factor 0.6 --epochs 20",
    "inpaint": "vfe lab inpaint                                # restore a random 10x10 square\n"
               "vfe lab inpaint --mask-size 14",
    "pretrain": "vfe lab pretrain                               # encoder init vs random at 50/200/1000 labels\n"
                "vfe lab pretrain --label-counts 20 100 500 --seeds 0 1 2",
    "traverse": "vfe lab train --model conv-vae && vfe lab traverse runs/lab/conv-vae\n"
                "vfe lab traverse runs/lab/vae --dims 3 7 --span 3",
}


def _formatter(prog):
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=34)


def _epilog(text: str) -> str:
    return "example:\n  " + text.replace("\n", "\n  ")


def add_data_and_training_args(p: argparse.ArgumentParser, default_out: str, epochs: int | None = None) -> None:
    """The data, training and output options every training command shares (lab and `vfe viz small-cnn`);
    `epochs` replaces the usual default for a command whose models are cheap to train."""
    d = LabSettings()
    g = p.add_argument_group("data and training")
    g.add_argument("--dataset", default=d.dataset,
                   help="'fashion-mnist', 'digits', an IDX folder or an image folder (default: %(default)s)")
    g.add_argument("--data-dir", help="where to look for named data sets first")
    g.add_argument("--image-size", type=int, help="resize an image folder's images to this side (e.g. 32)")
    g.add_argument("--n-train", type=int, default=d.n_train,
                   help="training images, a seeded class-balanced subset (default: %(default)s; 0 = all)")
    g.add_argument("--n-test", type=int, default=d.n_test,
                   help="test images, chosen the same way (default: %(default)s; 0 = all)")
    g.add_argument("--epochs", type=int, default=epochs or d.epochs, help="most epochs (default: %(default)s)")
    g.add_argument("--batch-size", type=int, default=d.batch_size, help="(default: %(default)s)")
    g.add_argument("--lr", type=float, default=d.lr, help="Adam learning rate (default: %(default)s)")
    g.add_argument("--patience", type=int, default=d.patience,
                   help="early stopping: epochs without a better validation loss before stopping; the best "
                        "epoch's weights are restored (default: %(default)s; 0 = never stop early)")
    g.add_argument("--val-fraction", type=float, default=d.val_fraction,
                   help="training images held out for validation (default: %(default)s)")
    g.add_argument("--seed", type=int, default=d.seed, help="data subsets, weights, noise (default: %(default)s)")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    o = p.add_argument_group("output")
    o.add_argument("--out", help=f"run folder (default: {default_out})")
    o.add_argument("--overwrite", action="store_true", help="replace an existing run folder")


def settings_from_args(args) -> LabSettings:
    """The `LabSettings` the options of `add_data_and_training_args` describe."""
    return LabSettings(dataset=args.dataset, data_dir=args.data_dir, image_size=args.image_size,
                       n_train=args.n_train or None, n_test=args.n_test or None, epochs=args.epochs,
                       batch_size=args.batch_size, lr=args.lr, patience=args.patience or None,
                       val_fraction=args.val_fraction, seed=args.seed,
                       keep=getattr(args, "keep", LabSettings.keep), progress=not args.no_progress)


def _add_model_args(p: argparse.ArgumentParser, default: str, latent: bool = True) -> None:
    g = p.add_argument_group("model (a preset, with any of its fields changed)")
    g.add_argument("--model", default=default, choices=list(PRESETS), metavar="PRESET",
                   help=f"one of {', '.join(PRESETS)} (default: %(default)s)")
    if latent:
        g.add_argument("--latent-dim", type=int, help="code size (default: the preset's)")
    g.add_argument("--hidden", type=int, nargs="+", help="dense layer sizes of a dense model, e.g. 128 64")
    g.add_argument("--filters", type=int, nargs="+", help="strided 3x3 conv filters of a conv model, e.g. 32 64")
    g.add_argument("--activation", choices=list(ACTIVATIONS), metavar="NAME",
                   help=f"hidden activation: {', '.join(ACTIVATIONS)} (default: relu)")
    g.add_argument("--decoder", choices=list(DECODERS), help="conv decoder: transposed convs or upsample + conv")
    g.add_argument("--recon-loss", choices=list(RECON_LOSSES),
                   help="reconstruction loss (default: mse; see docs/lab.md for the reductions)")
    g.add_argument("--beta", type=float, help="KL weight of a VAE (beta-VAE when > 1)")


def _overrides(args) -> dict:
    names = ("latent_dim", "hidden", "filters", "activation", "decoder", "recon_loss", "beta", "noise_factor",
             "mask_size")
    out = {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}
    return {k: tuple(v) if isinstance(v, list) else v for k, v in out.items()}


def _reads_every_image(command):
    """The lab trains on every image of its data set and has no --skip-bad: an unreadable image is reported with
    the fix the lab offers, not the flag of other commands."""
    @functools.wraps(command)
    def run(args) -> int:
        from vfe.data.folder import SKIP_BAD_HINT
        from vfe.data.images import UnreadableImageError

        try:
            return command(args)
        except UnreadableImageError as err:
            raise UnreadableImageError(str(err).replace(
                SKIP_BAD_HINT, " (`vfe lab` trains on every image of the folder: it has no --skip-bad)")) from None
    return run


def _done(run) -> int:
    print(f"[vfe lab] wrote {run.dir}/ (open {run.dir / 'index.html'})")
    return 0


@_reads_every_image
def cmd_train(args) -> int:
    from vfe.lab.train import run_train

    return _done(run_train(args.model, settings_from_args(args), args.out, overwrite=args.overwrite,
                           resume=args.resume, projection=args.projection, dims=tuple(args.dims), **_overrides(args)))


@_reads_every_image
def cmd_compress(args) -> int:
    from vfe.lab.compression import run_compress

    return _done(run_compress(settings_from_args(args), args.out, args.overwrite, model=args.model,
                              code_sizes=args.code_sizes, code_dtype=args.code_dtype, **_overrides(args)))


@_reads_every_image
def cmd_features(args) -> int:
    from vfe.lab.features import run_features

    return _done(run_features(settings_from_args(args), args.out, args.overwrite, model=args.model,
                              projection=args.projection, **_overrides(args)))


@_reads_every_image
def cmd_denoise(args) -> int:
    from vfe.lab.denoising import run_denoise

    overrides = _overrides(args)
    return _done(run_denoise(settings_from_args(args), args.out, args.overwrite, model=args.model,
                             noise_factor=overrides.pop("noise_factor"), **overrides))


@_reads_every_image
def cmd_inpaint(args) -> int:
    from vfe.lab.inpainting import run_inpaint

    overrides = _overrides(args)
    return _done(run_inpaint(settings_from_args(args), args.out, args.overwrite, model=args.model,
                             mask_size=overrides.pop("mask_size"), **overrides))


@_reads_every_image
def cmd_pretrain(args) -> int:
    from vfe.lab.pretraining import run_pretrain

    return _done(run_pretrain(settings_from_args(args), args.out, args.overwrite, model=args.model,
                              label_counts=args.label_counts, seeds=args.seeds, steps=args.steps,
                              classifier_lr=args.classifier_lr, **_overrides(args)))


@_reads_every_image
def cmd_traverse(args) -> int:
    from vfe.lab.traverse import run_traverse

    return _done(run_traverse(args.model_dir, args.out, args.overwrite, dims=tuple(args.dims), n=args.n,
                              span=args.span, dataset=args.dataset, data_dir=args.data_dir))


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add `lab` and its sub-commands to the `vfe` command's subparsers."""
    lab = subparsers.add_parser(
        "lab", help="Autoencoders on images: train, compress, features, denoise, inpaint, pretrain, traverse.",
        description="The autoencoder lab: dense / convolutional / variational / denoising autoencoders on small "
                    "images, their five uses, and their figures. Every command writes PNG figures, metrics.json "
                    "and index.html into its run folder (default runs/lab/<command>).",
        formatter_class=_formatter,
        epilog="examples:\n  " + "\n  ".join(e.splitlines()[0] for e in EXAMPLES.values()))
    sub = lab.add_subparsers(dest="lab_command", required=True, metavar="LAB_COMMAND")

    def add(name: str, help_: str):
        return sub.add_parser(name, help=help_, description=help_, formatter_class=_formatter,
                              epilog=_epilog(EXAMPLES[name]))

    p = add("train", "Train one autoencoder; save it with checkpoints, history and its figures "
                     "(reconstructions, loss curves, latent plane by class, 25x25 traversal grid).")
    _add_model_args(p, "conv-ae")
    p.add_argument("--noise-factor", type=float, help="train as a denoiser at this Gaussian noise factor")
    p.add_argument("--mask-size", type=int, help="train as an in-painter of squares of this size")
    p.add_argument("--dims", type=int, nargs=2, default=[0, 1], help="latent dims of the traversal (default: 0 1)")
    p.add_argument("--projection", choices=["pca", "tsne"], default="pca",
                   help="2-D projection of codes larger than 2 (default: %(default)s)")
    p.add_argument("--keep", type=int, default=LabSettings.keep, help="best checkpoints kept (default: %(default)s)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    add_data_and_training_args(p, "runs/lab/<model>")
    p.set_defaults(func=cmd_train)

    p = add("compress", "Compression: code size vs reconstruction error, and the bytes saved per image.")
    _add_model_args(p, "dense-ae", latent=False)
    p.add_argument("--code-sizes", type=int, nargs="+", default=[2, 4, 8, 16, 32, 64],
                   help="one model is trained per code size (default: %(default)s)")
    p.add_argument("--code-dtype", choices=["float32", "float16", "bfloat16"], default="float16",
                   help="how codes are stored (default: %(default)s)")
    add_data_and_training_args(p, "runs/lab/compress", epochs=COMPRESS_EPOCHS)
    p.set_defaults(func=cmd_compress)

    p = add("features", "Features for a classifier: logistic regression on the encoder's code vs on raw pixels "
                        "(and on PCA of the pixels to the code's size).")
    _add_model_args(p, "conv-ae")
    p.add_argument("--projection", choices=["pca", "tsne"], default="pca",
                   help="2-D projection of the codes in latent.png (default: %(default)s)")
    add_data_and_training_args(p, "runs/lab/features")
    p.set_defaults(func=cmd_features)

    p = add("denoise", "Denoising: train on noisy inputs, report PSNR noisy vs denoised (and a blur baseline).")
    _add_model_args(p, "denoising-ae")
    p.add_argument("--noise-factor", type=float, default=0.4,
                   help="input = clip(x + factor * N(0, 1), 0, 1) (default: %(default)s)")
    add_data_and_training_args(p, "runs/lab/denoise")
    p.set_defaults(func=cmd_denoise)

    p = add("inpaint", "In-painting: restore a masked square, PSNR inside the square before and after.")
    _add_model_args(p, "inpainting-ae")
    p.add_argument("--mask-size", type=int, default=10, help="side of the square in pixels (default: %(default)s)")
    add_data_and_training_args(p, "runs/lab/inpaint")
    p.set_defaults(func=cmd_inpaint)

    p = add("pretrain", "Pre-training: a classifier initialised from the encoder vs from random weights, "
                        "at small label counts.")
    _add_model_args(p, "conv-ae")
    p.add_argument("--label-counts", type=int, nargs="+", default=[50, 200, 1000],
                   help="labelled training images per comparison (default: %(default)s)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1],
                   help="label subsets and classifier seeds (default: %(default)s)")
    p.add_argument("--steps", type=int, default=300, help="gradient steps per classifier (default: %(default)s)")
    p.add_argument("--classifier-lr", type=float, default=1e-3, help="(default: %(default)s)")
    add_data_and_training_args(p, "runs/lab/pretrain")
    p.set_defaults(func=cmd_pretrain)

    p = add("traverse", "A 2-D latent traversal grid of a trained model (25 x 25 over [-2.5, 2.5]).")
    p.add_argument("model_dir", help="a folder written by `vfe lab train`")
    p.add_argument("--dims", type=int, nargs=2, default=[0, 1], help="the two latent dims (default: 0 1)")
    p.add_argument("--n", type=int, default=25, help="images per side (default: %(default)s)")
    p.add_argument("--span", type=float, default=2.5, help="values run over [-span, span] (default: %(default)s)")
    p.add_argument("--dataset", default="fashion-mnist",
                   help="images that scale a plain autoencoder's code (unused for a VAE; default: %(default)s)")
    p.add_argument("--data-dir")
    p.add_argument("--out", help="run folder (default: runs/lab/<model folder name>-traverse)")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_traverse)
    return lab
