"""The `vfe` command line: one entry point over the same functions as the Python API."""
from __future__ import annotations

import argparse
import json
import sys

EXAMPLES = {
    "run": "vfe run                      # the main job: Fashion-MNIST, efficientnet_lite0, linear vs VFE, robustness\n"
           "vfe run --quick              # the same in a few minutes on small sizes\n"
           "vfe run --name big --n-train 60000 --heads linear vfe --seeds 0 1 2 3 4",
    "extract": "vfe extract fashion-mnist --split test --backbone efficientnet_lite0 --image-size 112",
    "fit": "vfe fit fashion-mnist --head vfe --n-train 5000 --out runs/models/fmnist-vfe.safetensors",
    "evaluate": "vfe evaluate runs/models/fmnist-vfe.safetensors fashion-mnist --n-test 2000",
    "predict": "vfe predict runs/models/fmnist-vfe.safetensors photo1.png photo2.jpg some_folder/",
    "sweep": "vfe sweep --name beta --grid '{\"heads\": {\"vfe\": {\"beta\": [0.1, 1, 10]}, \"linear\": {}}, "
             "\"seeds\": [0, 1, 2]}'\n"
             "vfe sweep --name sizes --grid grid.json --compare-pixels   # transfer vs raw pixels per train size",
    "cache": "vfe cache ls\nvfe cache rm 3fa9c1     # removes entries whose key starts with 3fa9c1\nvfe cache rm --all",
}


def _formatter(prog):
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=32)


def _add(sub, name: str, help_: str) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=help_, description=help_, formatter_class=_formatter,
                          epilog="example:\n  " + EXAMPLES[name].replace("\n", "\n  "))


def _add_backbone_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backbone", default="efficientnet_lite0", help="timm model name (default: %(default)s)")
    p.add_argument("--weights", default="default",
                   help="'default' (packaged ImageNet weights), 'timm' (timm hub/cache), 'none' (random), or a "
                        "checkpoint PATH (.safetensors or a torch state dict)")
    p.add_argument("--image-size", type=int, default=112, help="input resolution (default: %(default)s)")


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("dataset", help="'fashion-mnist', 'digits', an IDX folder, a CIFAR archive/folder, or an "
                                   "image folder with one sub-folder per class")
    p.add_argument("--data-dir", help="where to look for named data sets first")
    p.add_argument("--cache-dir", help="feature cache folder (default: $VFE_CACHE or ~/.cache/vfe/features)")
    p.add_argument("--skip-bad", action="store_true",
                   help="image folders: skip unreadable files with a warning and a count, instead of stopping")
    p.add_argument("--download", action="store_true",
                   help="named IDX sets (fashion-mnist, mnist): download missing files to ~/.cache/vfe, "
                        "checked against their SHA-256 sums")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vfe", formatter_class=_formatter,
        description="Robust transfer learning with variational feature encoders.",
        epilog="examples:\n  " + "\n  ".join(e.splitlines()[0] for e in EXAMPLES.values()))
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = _add(sub, "run", "Run the reference experiment and its robustness benchmark; write results and a report.")
    from vfe.experiment import ExperimentConfig
    d = ExperimentConfig()
    p.add_argument("--name", default=None, help="run folder under --runs-dir (default: 'default', or 'quick')")
    p.add_argument("--quick", action="store_true", help="small sizes: a complete run in a few minutes")
    p.add_argument("--dataset", default=d.dataset)
    p.add_argument("--data-dir")
    p.add_argument("--cache-dir")
    p.add_argument("--runs-dir", default=d.runs_dir)
    p.add_argument("--backbone", default=d.backbone)
    p.add_argument("--weights", default=d.weights)
    p.add_argument("--image-size", type=int, default=d.image_size)
    p.add_argument("--n-train", type=int, default=None, help=f"training images (default {d.n_train})")
    p.add_argument("--n-test", type=int, default=None, help=f"test images (default {d.n_test})")
    p.add_argument("--heads", nargs="+", default=None,
                   help=f"heads to compare (default {' '.join(d.heads)}); 'all' = every feature head")
    p.add_argument("--seeds", nargs="+", type=int, default=None, help="training seeds (default 0 1 2)")
    p.add_argument("--corruptions", nargs="*", default=None,
                   help="corruption names (default: all 19); give none to skip the corruption stage")
    p.add_argument("--severities", nargs="+", type=int, default=None)
    p.add_argument("--n-attack", type=int, default=None, help="images attacked (0 skips the attack stage)")
    p.add_argument("--n-eot", type=int, default=None, help="samples per EOT gradient (default 20)")
    p.add_argument("--no-ood", action="store_true", help="skip the out-of-distribution stage")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run folder of the same name")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_run)

    p = _add(sub, "extract", "Compute (or find in the cache) backbone features of a data set.")
    _add_data_args(p)
    _add_backbone_args(p)
    p.add_argument("--split", default="train", choices=["train", "test"])
    p.add_argument("--shard-size", type=int, default=4096)
    p.set_defaults(func=cmd_extract)

    p = _add(sub, "fit", "Fit a head on cached features and save backbone + head as one pipeline file.")
    _add_data_args(p)
    _add_backbone_args(p)
    from vfe.heads import head_names
    names = [h for h in head_names() if h != "finetune"]
    p.add_argument("--head", default="vfe", choices=names, metavar="HEAD",
                   help=f"one of: {', '.join(names)} (default: %(default)s)")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="head hyperparameter, JSON value (repeatable), e.g. --param latent_dim=64")
    p.add_argument("--n-train", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="pipeline file to write (.safetensors)")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_fit)

    p = _add(sub, "evaluate", "Clean accuracy, NLL and ECE of a saved pipeline on a data set's test split.")
    p.add_argument("pipeline")
    p.add_argument("dataset")
    p.add_argument("--data-dir")
    p.add_argument("--cache-dir")
    p.add_argument("--split", default="test", choices=["train", "test"])
    p.add_argument("--n-test", type=int, default=None)
    p.set_defaults(func=cmd_evaluate)

    p = _add(sub, "predict", "Class and probability for image files, or every image in a folder.")
    p.add_argument("pipeline")
    p.add_argument("images", nargs="+")
    p.add_argument("--top", type=int, default=1, help="how many classes to print per image")
    p.set_defaults(func=cmd_predict)

    p = _add(sub, "sweep", "Run a grid of heads x hyperparameters x training sizes x seeds (resumable).")
    p.add_argument("--name", required=True, help="results go to RUNS_DIR/NAME/ (finished cells are reused)")
    p.add_argument("--grid", required=True,
                   help="JSON text or a .json file: {\"heads\": {head: {param: [values]}}, \"seeds\": [..], "
                        "\"train_sizes\": [100, null]} (null = the whole training set)")
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--data-dir")
    p.add_argument("--cache-dir")
    p.add_argument("--runs-dir", default="runs")
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--weights", default="default")
    p.add_argument("--image-size", type=int, default=112)
    p.add_argument("--n-train", type=int, default=10000)
    p.add_argument("--n-test", type=int, default=2000)
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--augment-family", default="noise", help="corruption family the *-aug heads train on")
    p.add_argument("--compare-pixels", action="store_true",
                   help="also train on raw pixels at the grid's train sizes: where does transfer win?")
    p.add_argument("--format", choices=["md", "json"], default="md")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_sweep)

    p = _add(sub, "cache", "List or remove feature-cache entries.")
    p.add_argument("action", choices=["ls", "rm"])
    p.add_argument("key", nargs="?", help="key prefix to remove")
    p.add_argument("--all", action="store_true", help="with rm: remove every entry")
    p.add_argument("--cache-dir")
    p.set_defaults(func=cmd_cache)

    for extra in ("vfe.lab.cli", "vfe.viz.cli"):
        try:
            module = __import__(extra, fromlist=["add_parser"])
        except ImportError:
            continue
        module.add_parser(sub)
    return parser


def cmd_run(args) -> int:
    from vfe.experiment import ExperimentConfig, quick_config, run

    config = quick_config() if args.quick else ExperimentConfig()
    overrides = {"dataset": args.dataset, "data_dir": args.data_dir, "cache_dir": args.cache_dir,
                 "runs_dir": args.runs_dir, "backbone": args.backbone, "weights": args.weights,
                 "image_size": args.image_size, "device": args.device, "n_train": args.n_train,
                 "n_test": args.n_test, "heads": args.heads, "seeds": args.seeds, "corruptions": args.corruptions,
                 "severities": args.severities, "n_attack": args.n_attack, "n_eot": args.n_eot,
                 "name": args.name}
    for key, value in overrides.items():
        if value is not None:
            setattr(config, key, value)
    if args.no_ood:
        config.ood = False
    out = run(config, overwrite=args.overwrite)
    print(f"[vfe] results: {out / 'results.json'}")
    for name in ("report.md", "report.html"):
        if (out / name).exists():
            print(f"[vfe] report:  {out / name}")
    return 0


def cmd_extract(args) -> int:
    from vfe.api import extract_features

    fs = extract_features(args.dataset, split=args.split, backbone=args.backbone, weights=args.weights,
                          image_size=args.image_size, data_dir=args.data_dir, cache_dir=args.cache_dir,
                          shard_size=args.shard_size, skip_bad=args.skip_bad, download=args.download)
    print(f"{len(fs)} x {fs.manifest['dim']} features at {fs.path}")
    return 0


def _parse_params(pairs: list[str]) -> dict:
    params = {}
    for pair in pairs:
        if "=" not in pair:
            raise SystemExit(f"--param expects KEY=VALUE, got {pair!r}")
        key, value = pair.split("=", 1)
        try:
            params[key] = json.loads(value)
        except json.JSONDecodeError:
            params[key] = value
    return params


def cmd_fit(args) -> int:
    from vfe.api import fit_pipeline

    pipe, score = fit_pipeline(args.dataset, head=args.head, head_params=_parse_params(args.param),
                               backbone=args.backbone, weights=args.weights, image_size=args.image_size,
                               n_train=args.n_train, seed=args.seed, data_dir=args.data_dir,
                               cache_dir=args.cache_dir, skip_bad=args.skip_bad, download=args.download)
    pipe.save(args.out, overwrite=args.overwrite)
    print(f"saved {args.out} (training accuracy {score:.4f})")
    return 0


def cmd_evaluate(args) -> int:
    from vfe.api import evaluate_pipeline

    metrics = evaluate_pipeline(args.pipeline, args.dataset, split=args.split, n_test=args.n_test,
                                data_dir=args.data_dir, cache_dir=args.cache_dir)
    print(json.dumps(metrics, indent=2))
    return 0


def cmd_predict(args) -> int:
    from vfe.api import predict_files

    for path, ranked in predict_files(args.pipeline, args.images, top=args.top):
        print(path + "\t" + "\t".join(f"{name} {p:.4f}" for name, p in ranked))
    return 0


def cmd_sweep(args) -> int:
    from pathlib import Path

    from vfe.api import sweep

    text = Path(args.grid).read_text() if args.grid.endswith(".json") else args.grid
    try:
        grid = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"--grid: not valid JSON ({err})") from None
    result = sweep(args.dataset, grid, name=args.name, runs_dir=args.runs_dir, backbone=args.backbone,
                   weights=args.weights, image_size=args.image_size, n_train=args.n_train, n_test=args.n_test,
                   data_seed=args.data_seed, augment_family=args.augment_family, compare_pixels=args.compare_pixels,
                   data_dir=args.data_dir, cache_dir=args.cache_dir, device=args.device)
    if args.format == "json":
        print(json.dumps(result["rows"], indent=2))
    else:
        print(result["markdown"])
        for row in result.get("train_size", {}).get("gain", []):
            print(f"{row['n_train']:>6} labels: transfer {row['transfer_accuracy']:.4f} ({row['transfer_head']}) vs "
                  f"pixels {row['scratch_accuracy']:.4f}: gain {row['gain']:+.4f}")
    print(f"[vfe] sweep: {Path(args.runs_dir) / args.name / 'sweep.json'}")
    return 0


def cmd_cache(args) -> int:
    from vfe.features.cache import FeatureCache

    cache = FeatureCache(args.cache_dir)
    if args.action == "ls":
        entries = cache.entries()
        if not entries:
            print(f"(empty) {cache.root}")
        for e in entries:
            status = "INCOMPLETE" if e.get("incomplete") else f"{e['n']}x{e['dim']}"
            print(f"{e['key']}  {status:>12}  {e['bytes'] / 2**20:8.1f} MiB  {e.get('backbone_name', '')}  "
                  f"{e.get('data_source', '')}  {e.get('transform') or ''}")
        return 0
    removed = cache.remove(args.key, everything=args.all)
    print(f"removed {len(removed)} entr{'y' if len(removed) == 1 else 'ies'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, OSError) as err:  # bad input: files, formats, values - a message, not a traceback
        print(f"vfe {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["build_parser", "main"]
