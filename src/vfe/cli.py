"""The `vfe` command line: one entry point over the same functions as the Python API.

It imports only settings and flag code at start-up (`vfe --help` answers in well under a second);
each command imports the heavy modules (torch, timm, ...) it needs when it runs.
"""
from __future__ import annotations

import argparse
import json
import sys
import traceback
from pathlib import Path

from vfe import defaults
from vfe.errors import SettingsError, VfeError
from vfe.experiment.config import FinetuneSettings, SweepSettings
from vfe.experiment.flags import ArgumentParser, add_flags, apply_flags, merge_head_params
from vfe.experiment.run_settings import RunSettings
from vfe.heads.registry import head_names
from vfe.lab import cli as lab_cli
from vfe.paths import check_output_file
from vfe.robustness.detectors import DEFAULT_VALIDATION, DETECTORS
from vfe.viz import cli as viz_cli

EXAMPLES = {
    "run": "vfe run                      # the main job: Fashion-MNIST, efficientnet_lite0, linear vs VFE, robustness\n"
           "vfe run --quick              # the same in a few minutes on small sizes\n"
           "vfe run --name big --n-train 60000 --heads linear vfe --replicates 5\n"
           "vfe run --quick --head-param vfe.vae_epochs=300 --n-attack 0   # any setting is a flag",
    "extract": f"vfe extract fashion-mnist --split test --backbone {defaults.BACKBONE} --image-size 112\n"
               "vfe extract fashion-mnist --engine ray --address auto --cache-dir /shared/vfe-cache   # docs/ray.md",
    "fit": "vfe fit fashion-mnist --head vfe --n-train 5000 --out runs/models/fmnist-vfe.safetensors\n"
           "vfe fit fashion-mnist --head finetune --param epochs=2 --out runs/models/fmnist-ft.safetensors\n"
           "vfe fit digits --head vfe --detector vfe-recon --coverage 0.9 --out digits-vfe.safetensors   # abstains\n"
           "vfe fit fashion-mnist --head linear --n-train 2000 --protocol reference --finetune-epochs 2 --replicate 1 "
           "--out rep1.safetensors   # replicate 1 of vfe run --quick --protocol reference",
    "evaluate": "vfe evaluate runs/models/fmnist-vfe.safetensors fashion-mnist --n-test 2000\n"
                "vfe evaluate runs/quick/best.safetensors fashion-mnist --n-test 500 --corruptions   # 19 x 5",
    "predict": "vfe predict runs/models/fmnist-vfe.safetensors photo1.png photo2.jpg some_folder/\n"
               "vfe predict runs/quick/best.safetensors --card   # the robustness card of a --save-best pipeline\n"
               "vfe predict digits-vfe.safetensors photos/ --coverage 0.9   # 'abstain' past the detector's threshold",
    "sweep": "vfe sweep --name beta --grid '{\"heads\": {\"vfe\": {\"beta\": [0.1, 1, 10]}, \"linear\": {}}, "
             "\"seeds\": [0, 1, 2]}'\n"
             "vfe sweep --name sizes --grid grid.json --compare-pixels   # transfer vs raw pixels per train size\n"
             "vfe sweep --name beta --grid grid.json --engine ray --address auto   # cells as Ray tasks: docs/ray.md",
    "leaderboard": "vfe leaderboard runs/reference runs/reference-lpft runs/reference-augmix --labels plain lp-ft augmix-js "
                   "--out board.json",
    "export": "vfe export runs/models/fmnist-vfe.safetensors --out fmnist-vfe.onnx --input-shape 28 28 1\n"
              "vfe export model.safetensors --out model-k8.onnx --samples 8   # a VFE averaging 8 draws",
    "cache": "vfe cache ls\nvfe cache rm 3fa9c1     # removes entries whose key starts with 3fa9c1\nvfe cache rm --all\n"
             "vfe cache verify --repair   # check every file's checksum; drop what fails (re-extracted later)",
}


def _formatter(prog):
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=32)


def _add(sub, name: str, help_: str) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help_, description=help_, formatter_class=_formatter,
                       epilog="example:\n  " + EXAMPLES[name].replace("\n", "\n  "))
    p.set_defaults(command_parser=p)  # so an unknown flag is reported with this command's flags
    return p


def _add_backbone_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backbone", default=defaults.BACKBONE, help="timm model name (default: %(default)s)")
    p.add_argument("--weights", default=defaults.WEIGHTS,
                   help="'default' (packaged ImageNet weights), 'timm' (timm hub/cache), 'none' (random), or a "
                        "checkpoint PATH (.safetensors or a torch state dict)")
    p.add_argument("--image-size", type=int, default=defaults.IMAGE_SIZE,
                   help="input resolution (default: %(default)s)")


def _add_wait_arg(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--wait", action="store_true",
                   help=f"when another vfe command is writing the same {what}, wait for it to finish instead of "
                        "stopping")


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
    parser = ArgumentParser(
        prog="vfe", formatter_class=_formatter,
        description="Robust transfer learning with variational feature encoders.",
        epilog="examples:\n  " + "\n  ".join(e.splitlines()[0] for e in EXAMPLES.values()))
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=ArgumentParser)

    p = _add(sub, "run", "Run the reference experiment and its robustness benchmark; write results and a report.")
    p.add_argument("--quick", action="store_true", help="small sizes: a complete run in a few minutes "
                                                        "(its own defaults; other flags still apply)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run folder of the same name")
    _add_wait_arg(p, "run folder")
    add_flags(p, RunSettings())
    p.set_defaults(func=cmd_run)

    p = _add(sub, "extract", "Compute (or find in the cache) backbone features of a data set.")
    _add_data_args(p)
    _add_backbone_args(p)
    p.add_argument("--split", default="train", choices=["train", "test"])
    p.add_argument("--shard-size", type=int, default=4096)
    p.add_argument("--engine", choices=["local", "ray"], default="local",
                   help="local: this process; ray: a pool of backbone actors on a Ray cluster fills the same "
                        "cache entry (pip install 'vfe[ray]'; docs/ray.md) (default: %(default)s)")
    p.add_argument("--address", default=None,
                   help="with --engine ray: auto (a running cluster), local (a new one here), ray://HOST:PORT "
                        "(Ray Client) or HOST:PORT of the head (default: a running cluster if found, else local)")
    p.add_argument("--actors", type=int, default=None,
                   help="with --engine ray: backbone actors (default: the cluster's CPUs / --cpus-per-actor, "
                        "at most one per shard)")
    p.add_argument("--cpus-per-actor", type=float, default=1.0,
                   help="with --engine ray: CPUs each actor reserves (its torch threads) (default: %(default)s)")
    p.add_argument("--gpus-per-actor", type=float, default=0.0,
                   help="with --engine ray: GPUs each actor reserves (default: %(default)s)")
    p.add_argument("--ray-shared-cache", choices=["auto", "yes", "no"], default="auto",
                   help="with --engine ray: yes: every node sees --cache-dir (the actors write it); no: the features "
                        "come back through Ray's object store and this machine writes the cache; auto: a probe "
                        "file in the cache folder decides (docs/ray.md) (default: %(default)s)")
    p.add_argument("--runtime", choices=defaults.RUNTIMES, default="auto", help=defaults.RUNTIME_HELP)
    p.set_defaults(func=cmd_extract)

    p = _add(sub, "fit", "Fit a head on cached features (or fine-tune on images) and save the pipeline file.")
    _add_data_args(p)
    _add_backbone_args(p)
    p.add_argument("--head", default="vfe", metavar="HEAD",
                   help=f"one of: {', '.join(head_names())}, or a head of your own as package.module:Class "
                        "(default: %(default)s)")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="head hyperparameter, JSON value (repeatable), e.g. --param latent_dim=64")
    p.add_argument("--n-train", type=int, default=None,
                   help="training images, a class-balanced draw seeded as a run's (default: all)")
    p.add_argument("--seed", type=int, default=0,
                   help="seeds the training subset, the fine-tuning (--protocol reference), the AugMix views and "
                        "the head; with --replicate, the run's --data-seed instead (default: %(default)s)")
    p.add_argument("--replicate", type=int, default=None, metavar="R",
                   help="fit replicate R (0, 1, ...) of a vfe run whose --data-seed is --seed: everything is seeded "
                        "by that replicate's seed (results.json setting.replicate_seeds[R]) and an image folder is "
                        "split by --seed, as the run did. Give the run's --n-train, --image-size, --protocol, "
                        "fine-tuning settings and head parameters (--param for its --head-param) too. Without it, "
                        "--seed S is the replicate whose seed is S in a run with --data-seed 0")
    p.add_argument("--out", required=True, help="pipeline file to write (.safetensors)")
    p.add_argument("--overwrite", action="store_true")
    _add_wait_arg(p, "--out file")
    p.add_argument("--detector", default=None, metavar="NAME",
                   help="also fit a detector to abstain with (vfe predict --coverage): "
                        + "; ".join(f"{k}: {v}" for k, v in DETECTORS.items()) + " (docs/abstention.md)")
    p.add_argument("--coverage", default=None, metavar="C",
                   help="with --detector: share of validation images answered, strictly between 0 and 1; the "
                        "threshold is chosen for it (default: 0.9)")
    p.add_argument("--n-val", type=int, default=None,
                   help=f"with --detector: validation images outside the training subset, a class-balanced draw "
                        f"seeded by --seed (default: {DEFAULT_VALIDATION}, or all left; without --n-train at most "
                        "a fifth of the split, and the head trains on the rest)")
    add_flags(p.add_argument_group("protocol settings", "The backbone the head sits on (the defaults are vfe run's; "
                                   "vfe run --quick fine-tunes for 2 epochs)"), FinetuneSettings())
    p.set_defaults(func=cmd_fit)

    p = _add(sub, "evaluate", "Clean accuracy, NLL and ECE of a saved pipeline on a data set's test split.")
    p.add_argument("pipeline")
    p.add_argument("dataset")
    p.add_argument("--data-dir")
    p.add_argument("--cache-dir")
    p.add_argument("--split", default="test", choices=["train", "test"])
    p.add_argument("--n-test", type=int, default=None)
    p.add_argument("--skip-bad", action="store_true",
                   help="image folders: skip unreadable files (listed in a warning) instead of stopping")
    p.add_argument("--allow-class-mismatch", action="store_true",
                   help="evaluate although the data set's class names differ from the model's (compared by index)")
    p.add_argument("--corruptions", nargs="*", metavar="NAME", default=None,
                   help="also under every corruption x severity of the images, made as vfe run makes them: all 19 "
                        "when no name is given (docs/cards.md)")
    p.add_argument("--severities", type=int, nargs="+", default=None, metavar="S",
                   help="with --corruptions: severities, 1-5 (default: all five)")
    p.add_argument("--corruption-seed", type=int, default=0,
                   help="with --corruptions: the run's --data-seed, which seeds its corruption noise "
                        "(default: %(default)s, the run's default)")
    p.add_argument("--corruption-params", default="auto", choices=["auto", "imagenet", "cifar"],
                   help="with --corruptions: severity parameters, as the run's (default: %(default)s)")
    p.add_argument("--runtime", choices=defaults.RUNTIMES, default="auto", help=defaults.RUNTIME_HELP)
    p.set_defaults(func=cmd_evaluate)

    p = _add(sub, "predict", "Class and probability for image files, or every image in a folder.")
    p.add_argument("pipeline")
    p.add_argument("images", nargs="*", help="image files or folders (none with --card)")
    p.add_argument("--card", action="store_true",
                   help="print the pipeline's robustness card (vfe run --save-best) instead of predicting")
    p.add_argument("--top", type=int, default=1, help="how many classes to print per image")
    p.add_argument("--skip-bad", action="store_true",
                   help="skip unreadable files (each reported on stderr, then counted) instead of stopping")
    p.add_argument("--coverage", default=None, metavar="C",
                   help="abstain: print 'abstain' and the detector's score for images past its threshold for this "
                        "coverage (0 < C < 1), re-derived from the validation scores the pipeline holds when it "
                        "was fitted for another (needs vfe fit --detector)")
    p.add_argument("--runtime", choices=defaults.RUNTIMES, default="auto", help=defaults.RUNTIME_HELP)
    p.set_defaults(func=cmd_predict)

    p = _add(sub, "sweep", "Run a grid of heads x hyperparameters x training sizes x seeds (resumable).")
    p.add_argument("--format", choices=["md", "json"], default="md", help="how the summary is printed")
    _add_wait_arg(p, "sweep folder")
    add_flags(p, SweepSettings())
    p.set_defaults(func=cmd_sweep)

    p = _add(sub, "export", "Write a saved pipeline as one ONNX file (uint8 images in, probabilities out).")
    p.add_argument("pipeline")
    p.add_argument("--out", required=True, help="the .onnx file to write")
    p.add_argument("--format", default="onnx", choices=["onnx"], help="the file format (default: %(default)s)")
    p.add_argument("--input-shape", type=int, nargs=3, metavar=("H", "W", "C"),
                   help="the images' height, width and channels (1 or 3); default: the backbone's size, RGB")
    p.add_argument("--samples", type=int, default=None,
                   help="a head that samples (VFE, VIB): average this many draws instead of using z_mean")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_export)

    p = _add(sub, "leaderboard", "One leaderboard over runs that differ only in how the backbone was fine-tuned "
                                 "(the first run is the base; docs/leaderboard.md).")
    p.add_argument("runs", nargs="+", metavar="RUN", help="finished run folders, the base run first")
    p.add_argument("--labels", nargs="+", default=None,
                   help="one name per run (default: the folder names); heads of the others show as HEAD@LABEL")
    p.add_argument("--out", default=None, help="also write the combined results and leaderboard to this JSON file")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.set_defaults(func=cmd_leaderboard)

    p = _add(sub, "cache", "List, verify or remove feature-cache entries.")
    p.add_argument("action", choices=["ls", "rm", "verify"])
    p.add_argument("key", nargs="?", help="key prefix (rm: what to remove; verify: what to check)")
    p.add_argument("--all", action="store_true", help="with rm: remove every entry")
    p.add_argument("--repair", action="store_true",
                   help="with verify: remove files that fail their checksum (the next extraction recomputes them)")
    p.add_argument("--cache-dir")
    p.set_defaults(func=cmd_cache)

    lab_cli.add_parser(sub)
    viz_cli.add_parser(sub)
    return parser


def cmd_run(args) -> int:
    from vfe.experiment.run import run
    from vfe.experiment.run_settings import quick_settings

    settings = apply_flags(quick_settings() if args.quick else RunSettings(), args)
    out = run(settings, overwrite=args.overwrite, wait=args.wait)
    print(f"[vfe] results: {out / 'results.json'}")
    for name in ("report.md", "report.html"):
        if (out / name).exists():
            print(f"[vfe] report:  {out / name}")
    return 0


def cmd_extract(args) -> int:
    from vfe.api import extract_features

    fs = extract_features(args.dataset, split=args.split, backbone=args.backbone, weights=args.weights,
                          image_size=args.image_size, data_dir=args.data_dir, cache_dir=args.cache_dir,
                          shard_size=args.shard_size, skip_bad=args.skip_bad, download=args.download,
                          engine=args.engine, address=args.address, actors=args.actors,
                          cpus_per_actor=args.cpus_per_actor, gpus_per_actor=args.gpus_per_actor,
                          shared_cache=args.ray_shared_cache, runtime=args.runtime)
    print(f"{len(fs)} x {fs.manifest['dim']} features at {fs.path}")
    return 0


def _parse_params(pairs: list[str]) -> dict:
    """--param KEY=VALUE pairs as {key: JSON value} (checked against the head's parameters by fit_pipeline)."""
    bad = [pair for pair in pairs if "=" not in pair]
    if bad:
        raise SettingsError(f"--param expects KEY=VALUE (e.g. latent_dim=64), got {bad[0]!r}")
    return merge_head_params({}, [f"head.{pair}" for pair in pairs]).get("head", {})  # --head may hold "."


def _coverage(text: str | None, default: float | None = None) -> float | None:
    """--coverage as a number strictly between 0 and 1 (`default` when not given); one line otherwise."""
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is None or not 0 < value < 1:
        raise SettingsError(f"--coverage must be a number strictly between 0 and 1 (e.g. 0.9), got {text!r}")
    return value


def cmd_fit(args) -> int:
    from vfe.api import fit_pipeline
    from vfe.rundir import claimed

    if args.detector is None and (args.coverage is not None or args.n_val is not None):
        raise SettingsError("--coverage and --n-val choose a detector's threshold: give --detector too (one of "
                            f"{', '.join(DETECTORS)})")
    coverage = _coverage(args.coverage, default=0.9)
    check_output_file(args.out, args.overwrite, suffix=".safetensors")  # before minutes of extraction
    params = _parse_params(args.param)
    finetune = apply_flags(FinetuneSettings(), args)
    with claimed(args.out, "--out", wait=args.wait):  # one fit writes --out at a time
        check_output_file(args.out, args.overwrite, suffix=".safetensors")  # again: the holder may have written it
        pipe, score = fit_pipeline(args.dataset, head=args.head, head_params=params, backbone=args.backbone,
                                   weights=args.weights, image_size=args.image_size, n_train=args.n_train,
                                   seed=args.seed, data_dir=args.data_dir, cache_dir=args.cache_dir,
                                   skip_bad=args.skip_bad, download=args.download,
                                   skipped_list=args.out + ".skipped.txt", detector=args.detector,
                                   coverage=coverage, n_val=args.n_val, protocol=finetune.protocol,
                                   finetune=finetune, replicate=args.replicate)
        pipe.save(args.out, overwrite=args.overwrite)
    print(f"saved {args.out} (training accuracy {score:.4f})")
    if pipe.detector is not None:
        d = pipe.detector
        print(f"detector {d.name}: abstains above {d.threshold:.6g}, answering {d.validation_coverage:.4f} of "
              f"{len(d.validation_scores)} validation images (target coverage {d.coverage})")
    return 0


def cmd_evaluate(args) -> int:
    from vfe.api import evaluate_pipeline

    if args.corruptions is None and (args.severities or args.corruption_seed or args.corruption_params != "auto"):
        raise SettingsError("--severities, --corruption-seed and --corruption-params apply with --corruptions only")
    metrics = evaluate_pipeline(args.pipeline, args.dataset, split=args.split, n_test=args.n_test,
                                data_dir=args.data_dir, cache_dir=args.cache_dir, skip_bad=args.skip_bad,
                                allow_class_mismatch=args.allow_class_mismatch,
                                corruptions=False if args.corruptions is None else args.corruptions or True,
                                severities=args.severities, corruption_seed=args.corruption_seed,
                                corruption_params=args.corruption_params, runtime=args.runtime)
    print(json.dumps(metrics, indent=2))
    return 0


def cmd_predict(args) -> int:
    from vfe.api import predict_files
    from vfe.io import printable

    if args.card:
        return _print_card(args)
    if not args.images:
        raise SettingsError("give image files or folders to predict (or --card to print the pipeline's card)")

    coverage = _coverage(args.coverage)  # before the pipeline loads or any image is read
    skipped = []
    for path, ranked in predict_files(args.pipeline, args.images, top=args.top, skip_bad=args.skip_bad,
                                      coverage=coverage, runtime=args.runtime):
        if isinstance(ranked, str):  # an unreadable file, skipped
            skipped.append(path)
            print(f"skipped {ranked}", file=sys.stderr, flush=True)
            continue
        if not isinstance(ranked, list):  # past the detector's threshold: abstain, with the score
            print(f"{printable(path)}\tabstain\t{ranked.detector} {ranked.score:.6g} > {ranked.threshold:.6g}",
                  flush=True)
            continue
        print(printable(path) + "\t" + "\t".join(f"{name} {p:.4f}" for name, p in ranked), flush=True)
    if skipped:
        print(f"vfe predict: skipped {len(skipped)} unreadable file(s) (--skip-bad)", file=sys.stderr)
    return 0


def _print_card(args) -> int:
    """The card of a pipeline file, from its header alone (no tensor is loaded)."""
    from vfe.card import card_markdown
    from vfe.pipeline import card_of, read_metadata

    if args.images:
        raise SettingsError("--card prints the pipeline's card: give no images with it")
    card = card_of(read_metadata(args.pipeline))
    if card is None:
        print(f"{args.pipeline}: no robustness card (only pipelines saved by vfe run --save-best carry one)")
    else:
        print(card_markdown(card))
    return 0


def cmd_sweep(args) -> int:
    from pathlib import Path

    from vfe.experiment.sweep import run_sweep_job

    settings = apply_flags(SweepSettings(), args)
    result = run_sweep_job(settings, wait=args.wait)
    if args.format == "json":
        print(json.dumps(result["rows"], indent=2))
    else:
        print(result["markdown"])
        for row in result.get("train_size", {}).get("gain", []):
            print(f"{row['n_train']:>6} labels: transfer {row['transfer_accuracy']:.4f} ({row['transfer_head']}) vs "
                  f"pixels {row['scratch_accuracy']:.4f}: gain {row['gain']:+.4f}")
    print(f"[vfe] sweep: {Path(settings.runs_dir) / settings.name / 'sweep.json'}")
    return 0


def cmd_export(args) -> int:
    from vfe.export import export_onnx

    check_output_file(args.out, args.overwrite, suffix=".onnx")  # before the pipeline is loaded
    out = export_onnx(args.pipeline, args.out, input_shape=tuple(args.input_shape) if args.input_shape else None,
                      samples=args.samples, overwrite=args.overwrite)
    print(f"saved {out}")
    return 0


def cmd_cache(args) -> int:
    from vfe.errors import CacheError
    from vfe.features.cache import FeatureCache

    cache = FeatureCache(args.cache_dir)
    if args.action == "ls":
        entries = cache.entries()
        if not entries:
            print(f"(empty) {cache.root}")
        for e in entries:
            status = f"{e['n']}x{e['dim']}" if e["status"] == "ok" else e["status"].upper()
            detail = e.get("problem") or f"{e.get('backbone_name', '')}  {e.get('data_source', '')}  " \
                                         f"{e.get('transform') or ''}"
            print(f"{e['key']}  {status:>12}  {e['bytes'] / 2**20:8.1f} MiB  {detail}")
        return 0
    if args.action == "verify":
        records = cache.verify(args.key, repair=args.repair)
        if args.key and not records:  # a mistyped key must not read as "nothing wrong"
            raise CacheError(f"no cache entry {args.key!r} in {cache.root}; list them with vfe cache ls")
        if not records:
            print(f"(empty) {cache.root}")
        for r in records:
            print(f"{r['key']}  {r['status'].upper():>10}  {r['message']}")
        unrepaired = [r for r in records if r["status"] == "damaged" and not r.get("repaired")]
        if unrepaired:
            print(f"{len(unrepaired)} damaged entr{'y' if len(unrepaired) == 1 else 'ies'}: "
                  "`vfe cache verify --repair` removes what fails", file=sys.stderr)
        return 1 if unrepaired else 0
    if not args.key and not args.all:
        raise SettingsError("rm needs a key prefix (vfe cache ls lists the entries), or --all to remove every entry")
    removed = cache.remove(args.key, everything=args.all)
    print(f"removed {len(removed)} entr{'y' if len(removed) == 1 else 'ies'}")
    return 0


def cmd_leaderboard(args) -> int:
    from vfe.experiment.combine import board_lines, combine
    from vfe.experiment.config import compared_results
    from vfe.io import write_json

    labels = args.labels or [Path(run).resolve().name for run in args.runs]
    if len(labels) != len(args.runs):
        raise SettingsError(f"--labels: {len(labels)} labels for {len(args.runs)} runs; give one per run, in order")
    if args.out is not None:
        check_output_file(args.out, overwrite=args.overwrite, suffix=".json")
    combined = combine({label: compared_results(run) for label, run in zip(labels, args.runs, strict=True)})
    combined["runs"] = {label: {"path": run, **combined["runs"][label]}
                        for label, run in zip(labels, args.runs, strict=True)}
    print("\n".join(board_lines(combined)))
    if args.out is not None:
        write_json(Path(args.out), combined)
        print(f"wrote {args.out}")
    return 0


def _interrupted(args) -> str:
    """What Ctrl-C left: every command's outputs are written whole or not at all, and the same command resumes from
    what is cached; `vfe lab` / `vfe viz` run folders keep what was written so far."""
    if args.command not in ("lab", "viz"):
        return "interrupted; rerun the same command to resume"
    resume = ", or with --resume to continue from the last checkpoint" if hasattr(args, "resume") else ""
    return f"interrupted; its run folder keeps what was written: rerun with --overwrite to start over{resume}"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:  # Ctrl-C: one line and the shell's 128 + SIGINT, not a traceback
        if args.debug:
            traceback.print_exc()
        print(f"vfe {args.command}: {_interrupted(args)}", file=sys.stderr)
        return 130
    except (VfeError, ValueError, OSError) as err:  # the user's input: one line naming it, not a traceback
        if args.debug:
            traceback.print_exc()
        print(f"vfe {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["build_parser", "main"]
