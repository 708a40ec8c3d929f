"""The main job's general settings: one typed dataclass per concern (data, backbone, fine-tuning, heads, engine),
the sweep's, and their checks. `RunSettings` composes these with each robustness stage's own settings
(vfe.experiment.run_settings, vfe.experiment.stages).

Every field is a command-line flag of `vfe run` (and the data/backbone/engine ones of `vfe sweep`): the flags
are generated from these dataclasses by `vfe.experiment.flags`, so a field added here is settable at once.
A field's flag is its name with dashes (`n_train` -> `--n-train`); names are unique across the
sub-settings for that reason. This module imports no torch: `vfe --help` reads it.

Defaults are the main job's (`vfe run`), chosen by measurement.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from pathlib import Path

from vfe import defaults
from vfe.errors import DataError, SettingsError
from vfe.paths import check_writable_folder
from vfe.robustness.augmix import DEFAULT_VIEWS

DEFAULT_CORRUPTION_PARAMS = "auto"


def described(text: str, **kwargs) -> dict:
    """A dataclass field's keyword arguments carrying its flag's help text."""
    return {"metadata": {"help": text}, **kwargs}


@dataclass
class DataSettings:
    """Which images: the data set, and the class-balanced subsets drawn from its train and test splits."""

    dataset: str = field(default=defaults.DATASET, **described(
        "'fashion-mnist', 'digits', an IDX folder, a CIFAR archive/folder, or a folder of class folders"))
    data_dir: str | None = field(default=None, **described("where to look for named data sets first"))
    n_train: int | None = field(default=10000, **described("training images (class-balanced; none = all)"))
    n_test: int | None = field(default=2000, **described("test images (class-balanced; none = all)"))
    data_seed: int = field(default=0, **described(
        "the base seed: the test subset and the corruption noise (fixed across replicates); each replicate's "
        "own seed is derived from it (docs/replicates.md)"))
    skip_bad: bool = field(default=False, **described(
        "image folders: skip unreadable files (listed in skipped_files.txt) instead of stopping"))


@dataclass
class BackboneSettings:
    """The frozen feature extractor."""

    backbone: str = field(default=defaults.BACKBONE, **described("timm model name"))
    weights: str = field(default=defaults.WEIGHTS, **described(
        "'default' (packaged ImageNet weights), 'timm', 'none' (random) or a checkpoint PATH"))
    image_size: int | None = field(default=defaults.IMAGE_SIZE, **described("input resolution in pixels"))
    device: str = field(default="auto", **described("'auto', 'cpu', 'cuda', ..."))
    runtime: str = field(default="auto", metadata={"choices": defaults.RUNTIMES, "help": defaults.RUNTIME_HELP})


PROTOCOLS = ("frozen", "reference")


@dataclass
class FinetuneSettings:
    """Which backbone the heads sit on: the frozen ImageNet one, or the reference's fine-tuned one."""

    protocol: str = field(default="frozen", metadata={"choices": PROTOCOLS, "help": (
        "'frozen': heads on the ImageNet backbone's features; 'reference': first fine-tune the top of the "
        "backbone with Dropout -> Dense (the reference's compare model), then fit the heads on its features")})
    cut_point: str | None = field(default=None, **described(
        "reference protocol: the layer the trainable top starts at (default: the reference's, per architecture)"))
    finetune_epochs: int = field(default=3, **described(
        "reference protocol: fine-tuning epochs (the reference: 30 on 50,000 images; 3 on 10,000 fit the 25-min budget)"))
    finetune_batch_size: int = field(default=100, **described("reference protocol: fine-tuning batch size"))
    finetune_lr: float = field(default=1e-3, **described("reference protocol: Adam learning rate (Keras's default)"))
    finetune_augment: bool = field(default=False, **described(
        "reference protocol: flip/rotate/zoom images while fine-tuning (the reference: none); runs the whole "
        "backbone every epoch, since augmented images have no cached cut-point activations"))
    finetune_lp_epochs: int = field(default=0, **described(
        "reference protocol: LP-FT (Kumar et al. 2022): first train only the Dense layer on the un-tuned "
        "top's features for this many epochs, then fine-tune; 0 = the reference's plain fine-tuning"))
    finetune_augmix: bool = field(default=False, **described(
        "reference protocol: fine-tune on (clean, AugMix view, AugMix view) triples, cross-entropy on the clean "
        "image + --finetune-js-weight x Jensen-Shannon consistency (Hendrycks et al. 2020); two new views per "
        "epoch, their cut-point activations cached"))
    finetune_js_weight: float = field(default=12.0, **described(
        "reference protocol with --finetune-augmix: weight of the Jensen-Shannon term (AugMix's: 12)"))


# in the fine-tuned weights' cache key only when AugMix is on, so the plain reference key stays what it was
AUGMIX_SETTINGS = ("finetune_augmix", "finetune_js_weight")


@dataclass
class HeadSettings:
    """Which heads are compared, over how many replicates, with which hyperparameters."""

    heads: list[str] = field(default_factory=lambda: ["linear", "vfe"], **described(
        "heads to compare; 'all' = every head of the feature benchmark; a head of your own as package.module:Class "
        "(imported, and named by its registered name or its class name)"))
    replicates: int = field(default=3, **described(
        "replicates of the whole experiment; each redraws the training subset, the fine-tuning (reference "
        "protocol), the heads' initialisation, the training views and the attacked images; every interval "
        "and verdict is over replicates (docs/replicates.md)"))
    # The reference trained its feature VAE for 2000 epochs (hours here); on the default features an epoch
    # costs ~0.9 s and downstream accuracy is flat from 100 to 300 epochs (benchmarks/README.md), so the
    # main job caps the VAE (and the AE) at 100 epochs with early stopping.
    head_params: dict[str, dict] = field(
        default_factory=lambda: {"vfe": {"vae_epochs": 100}, "ae": {"ae_epochs": 100}},
        **described("per-head hyperparameters, --head-param HEAD.KEY=VALUE (repeatable; JSON values)"))
    augment_family: str = field(default="noise", **described(
        "the one corruption family the augmented heads (vfe-aug, dae-aug) train on"))
    augmix_views: int = field(default=DEFAULT_VIEWS, **described(
        "AugMix views per training image for the AugMix heads (linear-augmix, vfe-augmix, ...): each view is "
        "one more backbone pass over the training images"))


ENGINES = ("local", "ray")


@dataclass
class EngineSettings:
    """Where heads are fitted: in this process, or as Ray tasks on a cluster (docs/ray.md)."""

    engine: str = field(default="local", metadata={"choices": ENGINES, "help": (
        "local: fit the heads in this process; ray: fit them as Ray tasks, one CPU and one torch thread each, "
        "on the cluster at --address (pip install 'vfe[ray]'; docs/ray.md); the numbers of a local fit at one "
        "torch thread")})
    address: str | None = field(default=None, **described(
        "with --engine ray: auto (a running cluster), local (a new one here), ray://HOST:PORT (Ray Client) or "
        "HOST:PORT of the head; none: a running cluster if found, else a local one"))
    ray_shared_cache: str = field(default="auto", metadata={"choices": ("auto", "yes", "no"), "help": (
        "with --engine ray: whether every node sees the feature cache folder (then the backbone actors write it); "
        "no: their features come back through Ray's object store and this machine writes the cache; auto: a "
        "probe file in the cache folder decides (docs/ray.md)")})


@dataclass
class SweepSettings:
    """A sweep: a grid of heads x hyperparameters x training sizes x seeds on the same prepared data."""

    name: str = field(default="", metadata={"help": "results go to RUNS_DIR/NAME/ (finished cells are reused)",
                                            "required": True})
    grid: str = field(default="", metadata={
        "help": 'JSON text or a .json file: {"heads": {head: {param: [values]}}, "seeds": [..], '
                '"train_sizes": [100, null]} (null = the whole training set)', "required": True})
    runs_dir: str = field(default="runs", **described("where run folders go"))
    cache_dir: str | None = field(default=None, **described(
        "feature cache folder (default: $VFE_CACHE or ~/.cache/vfe/features)"))
    augment_family: str = field(default="noise", **described(
        "the one corruption family the augmented heads (vfe-aug, dae-aug) train on"))
    corruption_params: str = field(default=DEFAULT_CORRUPTION_PARAMS, **described(
        "severity parameters of the augmented heads' corruptions: 'auto', 'imagenet' or 'cifar'"))
    augmix_views: int = field(default=DEFAULT_VIEWS, **described(
        "AugMix views per training image for the AugMix heads (linear-augmix, vfe-augmix, ...)"))
    compare_pixels: bool = field(default=False, **described(
        "also train on raw pixels at the grid's train sizes: where does transfer win?"))
    progress: bool = field(default=True, **described("progress bars"))
    data: DataSettings = field(default_factory=DataSettings)
    backbone: BackboneSettings = field(default_factory=BackboneSettings)
    cluster: EngineSettings = field(default_factory=EngineSettings)


def sections(settings) -> dict[str, object]:
    """{name: sub-settings} of a settings dataclass (its fields that are dataclasses), in field order."""
    return {f.name: getattr(settings, f.name) for f in fields(settings) if is_dataclass(getattr(settings, f.name))}


def flat_dict(settings) -> dict:
    """Settings as one flat {field name: value} dict, one key per flag (field names are unique)."""
    own = sections(settings)
    flat = {f.name: getattr(settings, f.name) for f in fields(settings) if f.name not in own}
    for sub in own.values():
        flat.update(asdict(sub))
    return flat


def with_overrides(settings, values: dict):
    """A copy of `settings` with flat {field name: value} overrides placed in their sections."""
    own = sections(settings)
    top = {f.name for f in fields(settings)} - set(own)
    new = {k: v for k, v in values.items() if k in top}
    known = set(top)
    for section, sub in own.items():
        names = {f.name for f in fields(sub)}
        known |= names
        mine = {k: v for k, v in values.items() if k in names}
        if mine:
            new[section] = replace(sub, **mine)
    unknown = set(values) - known
    if unknown:
        raise SettingsError(f"unknown setting(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}")
    return replace(settings, **new)


def check_finetune(ft: FinetuneSettings) -> None:
    """The protocol and stage 0's settings, as `vfe run` and `vfe fit` take them."""
    if ft.protocol not in PROTOCOLS:
        raise SettingsError(f"--protocol must be one of {', '.join(PROTOCOLS)}, got {ft.protocol!r}")
    if ft.finetune_lp_epochs < 0:
        raise SettingsError(f"--finetune-lp-epochs must be >= 0 (0: plain fine-tuning); got {ft.finetune_lp_epochs}")
    if not ft.finetune_js_weight >= 0:
        raise SettingsError(f"--finetune-js-weight must be >= 0, got {ft.finetune_js_weight}")
    if ft.finetune_augmix and ft.finetune_augment:
        raise SettingsError("--finetune-augmix and --finetune-augment: choose one way of augmenting the images")
    if ft.finetune_epochs < 1 or ft.finetune_batch_size < 1 or not ft.finetune_lr > 0:
        raise SettingsError(f"--finetune-epochs and --finetune-batch-size must be >= 1 and --finetune-lr > 0; got "
                            f"{ft.finetune_epochs}, {ft.finetune_batch_size}, {ft.finetune_lr}")


def check_run_dir(out: Path, overwrite: bool) -> None:
    """The run folder is writable and holds no finished run unless it may be replaced (checked before any work,
    and again once its lock is held: a run that held it may have finished meanwhile)."""
    if (out / "results.json").exists() and not overwrite:
        raise SettingsError(f"{out} already holds a run; pass --overwrite or choose another --name")
    check_writable_folder(out, "--runs-dir")


def check_data(data: DataSettings, backbone: BackboneSettings) -> None:
    """Sizes of the data and backbone settings that `vfe run` and `vfe sweep` share."""
    for flag, value in (("--n-train", data.n_train), ("--n-test", data.n_test)):
        if value is not None and value < 1:
            raise SettingsError(f"{flag} must be at least 1 (or 'none' for all images), got {value}")
    if backbone.image_size is not None and not 8 <= backbone.image_size <= 1024:
        raise SettingsError(f"--image-size must be between 8 and 1024 pixels, got {backbone.image_size}")


def check_views(augment_family: str, augmix_views: int) -> None:
    """--augment-family names a corruption family and --augmix-views is at least 1 (run and sweep)."""
    from vfe.robustness.corruptions.registry import REGISTRY  # imports scipy and OpenCV: not at `vfe --help`

    families = sorted({c.family for c in REGISTRY.values()})
    if augment_family not in families:
        raise SettingsError(f"--augment-family {augment_family!r} is not a corruption family; one of "
                            f"{', '.join(families)}")
    if augmix_views < 1:
        raise SettingsError(f"--augmix-views must be at least 1, got {augmix_views}")


def check_corruption_params(corruption_params: str) -> None:
    if corruption_params not in ("auto", "imagenet", "cifar"):
        raise SettingsError(f"--corruption-params must be 'auto', 'imagenet' or 'cifar', got {corruption_params!r}")


def check_sweep(settings: SweepSettings) -> None:
    """Every cheap check of a sweep's settings (its grid is checked by expand_grid), before any image is loaded."""
    if not settings.name:
        raise SettingsError("--name: give the sweep a name (its folder under --runs-dir)")
    check_data(settings.data, settings.backbone)
    check_views(settings.augment_family, settings.augmix_views)
    check_corruption_params(settings.corruption_params)
    check_engine(settings.cluster)
    check_writable_folder(Path(settings.runs_dir) / settings.name, "--runs-dir")


def check_trainable(data, dataset: str, n_train: int | None) -> None:
    """The training split of `data` (an ImageSet) holds two classes or more, and `n_train` images are one per
    class at least: checked once the data is loaded, before any feature is extracted, since a head refuses
    one class only after the extraction."""
    classes = sorted(set(data.labels.tolist()))
    if len(classes) < 2:
        only = data.class_names[classes[0]] if classes else "none"
        raise DataError(f"{dataset}: its training images are all of one class ({only}); a classifier needs "
                        "two classes or more (an image folder: one sub-folder per class)")
    if n_train is not None and n_train < len(classes):
        raise SettingsError(f"--n-train {n_train} is fewer than the {len(classes)} classes of {dataset}: give "
                            f"at least {len(classes)}, one image per class")


def check_engine(cluster: EngineSettings) -> None:
    """--engine among ENGINES, and --address only with --engine ray (Ray itself is imported only then)."""
    if cluster.engine not in ENGINES:
        raise SettingsError(f"--engine must be one of {', '.join(ENGINES)}, got {cluster.engine!r}")
    if cluster.engine == "local" and cluster.address is not None:
        raise SettingsError("--address applies to --engine ray only")


def compared_results(folder: str) -> dict:
    """The results.json of the run `--compare-with` names; SettingsError naming the fix if it is not one."""
    import json

    path = Path(folder) / "results.json"
    try:
        results = json.loads(path.read_text())
    except FileNotFoundError:
        raise SettingsError(f"--compare-with {folder}: no results.json there; give the folder of a finished "
                            "`vfe run`") from None
    except (OSError, ValueError) as e:
        raise SettingsError(f"--compare-with {folder}: cannot read {path} ({e}); rerun that run") from None
    from vfe.report.results_check import check_readable  # of this vfe's schema version, or one line saying so

    check_readable(results, f"--compare-with {folder}: {path}")
    return results
