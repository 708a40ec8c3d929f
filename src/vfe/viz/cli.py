"""`vfe viz ...`: CNN visualisation on the command line (the same functions as `vfe.viz`).

Only plain-data settings are imported here; each command imports torch and the rest when it runs.
`small-cnn` trains with the lab's data and training options (`vfe.lab.cli`).
"""
from __future__ import annotations

import argparse

from vfe import defaults
from vfe.lab.cli import add_data_and_training_args, settings_from_args
from vfe.viz.config import AscentConfig

EXAMPLES = {
    "activations": "vfe viz activations                            # efficientnet_lite0 on skimage's chelsea\n"
                   "vfe viz activations --image coffee --layers blocks.2 blocks.4 --n-channels 16\n"
                   "vfe viz activations --model runs/viz/small-cnn/augmented --image fashion-mnist:0\n"
                   "vfe viz activations --list-layers",
    "maximize": "vfe viz maximize                               # blocks.3 of efficientnet_lite0, channels 0-15\n"
                "vfe viz maximize --layer blocks.5 --channels 3 7 11 --steps 128\n"
                "vfe viz maximize --model runs/viz/small-cnn/augmented --layer features.6",
    "small-cnn": "vfe viz small-cnn                              # plain vs augmentation + dropout, history plots\n"
                 "vfe viz small-cnn --n-train 2000 --epochs 30 --variants augmented",
}


def _formatter(prog):
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=34)


def _add_network_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("network")
    g.add_argument("--model", default=defaults.BACKBONE,
                   help="a timm model name, or a run folder of `vfe viz small-cnn` / `vfe lab train` "
                        "(default: %(default)s)")
    g.add_argument("--weights", default="default",
                   help="for a timm model: 'default' (packaged ImageNet weights), 'timm', 'none' or a PATH "
                        "(default: %(default)s)")


def _add_output_args(p: argparse.ArgumentParser, default_out: str) -> None:
    o = p.add_argument_group("output")
    o.add_argument("--out", help=f"run folder (default: {default_out})")
    o.add_argument("--overwrite", action="store_true", help="replace an existing run folder")


def _done(run) -> int:
    print(f"[vfe viz] wrote {run.dir}/ (open {run.dir / 'index.html'})")
    return 0


def cmd_activations(args) -> int:
    if args.list_layers:
        from vfe.viz.network import load_network

        network = load_network(args.model, args.weights, args.image_size)
        for name, module in network.module.named_modules():
            if name:
                print(f"{name}\t{type(module).__name__}")
        return 0
    from vfe.viz.activations import run_activations

    return _done(run_activations(args.model, args.image, args.layers or (), args.n_channels, args.out,
                                 args.overwrite, weights=args.weights, image_size=args.image_size,
                                 data_dir=args.data_dir))


def cmd_maximize(args) -> int:
    from vfe.viz.maximize import run_maximize

    config = AscentConfig(steps=args.steps, lr=args.lr, l2_decay=args.l2_decay, blur_every=args.blur_every,
                          blur_sigma=args.blur_sigma, jitter=args.jitter, size=args.size, seed=args.seed)
    return _done(run_maximize(args.model, args.layer, args.channels or (), args.n_channels, config, args.out,
                              args.overwrite, weights=args.weights, progress=not args.no_progress))


def cmd_small_cnn(args) -> int:
    from vfe.viz.small_cnn import run_small_cnn

    return _done(run_small_cnn(settings_from_args(args), args.out, args.overwrite, args.variants, flip=args.flip))


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add `viz` and its sub-commands to the `vfe` command's subparsers."""
    viz = subparsers.add_parser(
        "viz", help="CNN visualisation: activation maps, inputs that maximise a channel, a small CNN baseline.",
        description="Look inside CNNs: a timm backbone (packaged ImageNet weights) or a model trained here. "
                    "Every command writes PNG figures, metrics.json and index.html into its run folder "
                    "(default runs/viz/<command>/...).",
        formatter_class=_formatter,
        epilog="examples:\n  " + "\n  ".join(e.splitlines()[0] for e in EXAMPLES.values()))
    sub = viz.add_subparsers(dest="viz_command", required=True, metavar="VIZ_COMMAND")

    def add(name: str, help_: str):
        return sub.add_parser(name, help=help_, description=help_, formatter_class=_formatter,
                              epilog="example:\n  " + EXAMPLES[name].replace("\n", "\n  "))

    p = add("activations", "Feature maps of named layers for one image: a grid of the first N channels per layer.")
    _add_network_args(p)
    p.add_argument("--image", default="chelsea",
                   help="an image file, a scikit-image photo (chelsea, coffee, astronaut, ...) or DATASET:INDEX "
                        "(a test image, e.g. fashion-mnist:0) (default: %(default)s)")
    p.add_argument("--layers", nargs="+", help="layer names (default: a few spread over the network)")
    p.add_argument("--n-channels", type=int, default=32, help="channels shown per layer (default: %(default)s)")
    p.add_argument("--image-size", type=int, help="input resolution of a timm model (default: its own, 224)")
    p.add_argument("--data-dir", help="where to look for named data sets first")
    p.add_argument("--list-layers", action="store_true", help="print the layer names and exit")
    _add_output_args(p, "runs/viz/activations/<model>")
    p.set_defaults(func=cmd_activations)

    d = AscentConfig()
    p = add("maximize", "Inputs that maximise a channel: regularised gradient ascent from a random image, "
                        "one image per channel, in a grid.")
    _add_network_args(p)
    p.add_argument("--layer", help="layer name (default: one in the middle of the network)")
    p.add_argument("--channels", type=int, nargs="+", help="channel indices (default: the first --n-channels)")
    p.add_argument("--n-channels", type=int, default=16, help="(default: %(default)s)")
    g = p.add_argument_group("ascent")
    g.add_argument("--steps", type=int, default=d.steps, help="(default: %(default)s)")
    g.add_argument("--lr", type=float, default=d.lr, help="step in pixel units (default: %(default)s)")
    g.add_argument("--l2-decay", type=float, default=d.l2_decay,
                   help="pull toward grey per step (default: %(default)s)")
    g.add_argument("--blur-every", type=int, default=d.blur_every,
                   help="blur every N steps, 0 = never (default: %(default)s)")
    g.add_argument("--blur-sigma", type=float, default=d.blur_sigma, help="(default: %(default)s)")
    g.add_argument("--jitter", type=int, default=d.jitter, help="random shift in pixels (default: %(default)s)")
    g.add_argument("--size", type=int, default=d.size,
                   help="image side; a timm model runs at this resolution (default: %(default)s)")
    g.add_argument("--seed", type=int, default=d.seed, help="(default: %(default)s)")
    g.add_argument("--no-progress", action="store_true")
    _add_output_args(p, "runs/viz/maximize/<model>-<layer>")
    p.set_defaults(func=cmd_maximize)

    p = add("small-cnn", "Train a small CNN from scratch (Conv-Pool x3, Dense 128), plain and with augmentation + "
                         "dropout: the no-transfer baseline, with its training-history plots.")
    p.add_argument("--variants", nargs="+", default=["plain", "augmented"], choices=["plain", "augmented"],
                   help="(default: %(default)s)")
    p.add_argument("--flip", action="store_true",
                   help="augment with horizontal flips too (off: every Fashion-MNIST shoe faces left)")
    add_data_and_training_args(p, "runs/viz/small-cnn")
    p.set_defaults(func=cmd_small_cnn)
    return viz
