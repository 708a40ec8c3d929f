"""The main job's settings: one typed dataclass per concern, composed into `RunSettings`.

Every field is a command-line flag of `vfe run` (and the data/backbone/engine ones of `vfe sweep`): the flags
are generated from these dataclasses by `vfe.benchmark.flags`, so a field added here is settable at once.
A field's flag is its name with dashes (`n_train` -> `--n-train`); names are unique across the
sub-settings for that reason. This module imports no torch: `vfe --help` reads it.

Defaults are the main job's (`vfe run`), chosen by measurement; `quick_settings()` are `vfe run --quick`.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from pathlib import Path

from vfe import defaults
from vfe.errors import DataError, SettingsError
from vfe.heads.registry import (
    check_params,
    expand_heads,
    head_class_of,
    head_names,
    is_augmented,
    is_augmix,
    is_external,
    spec,
)
from vfe.paths import check_writable_folder
from vfe.robustness.augmix import DEFAULT_VIEWS

DEFAULT_CORRUPTION_PARAMS = "auto"


def _help(text: str, **kwargs) -> dict:
    return {"metadata": {"help": text}, **kwargs}


@dataclass
class DataSettings:
    """Which images: the data set, and the class-balanced subsets drawn from its train and test splits."""

    dataset: str = field(default=defaults.DATASET, **_help(
        "'fashion-mnist', 'digits', an IDX folder, a CIFAR archive/folder, or a folder of class folders"))
    data_dir: str | None = field(default=None, **_help("where to look for named data sets first"))
    n_train: int | None = field(default=10000, **_help("training images (class-balanced; none = all)"))
    n_test: int | None = field(default=2000, **_help("test images (class-balanced; none = all)"))
    data_seed: int = field(default=0, **_help(
        "the base seed: the test subset and the corruption noise (fixed across replicates); each replicate's "
        "own seed is derived from it (docs/replicates.md)"))
    skip_bad: bool = field(default=False, **_help(
        "image folders: skip unreadable files (listed in skipped_files.txt) instead of stopping"))


@dataclass
class BackboneSettings:
    """The frozen feature extractor."""

    backbone: str = field(default=defaults.BACKBONE, **_help("timm model name"))
    weights: str = field(default=defaults.WEIGHTS, **_help(
        "'default' (packaged ImageNet weights), 'timm', 'none' (random) or a checkpoint PATH"))
    image_size: int | None = field(default=defaults.IMAGE_SIZE, **_help("input resolution in pixels"))
    device: str = field(default="auto", **_help("'auto', 'cpu', 'cuda', ..."))
    runtime: str = field(default="auto", metadata={"choices": defaults.RUNTIMES, "help": defaults.RUNTIME_HELP})


PROTOCOLS = ("frozen", "reference")


@dataclass
class FinetuneSettings:
    """Which backbone the heads sit on: the frozen ImageNet one, or the reference's fine-tuned one."""

    protocol: str = field(default="frozen", metadata={"choices": PROTOCOLS, "help": (
        "'frozen': heads on the ImageNet backbone's features; 'reference': first fine-tune the top of the "
        "backbone with Dropout -> Dense (the reference's compare model), then fit the heads on its features")})
    cut_point: str | None = field(default=None, **_help(
        "reference protocol: the layer the trainable top starts at (default: the reference's, per architecture)"))
    finetune_epochs: int = field(default=3, **_help(
        "reference protocol: fine-tuning epochs (the reference: 30 on 50,000 images; 3 on 10,000 fit the 25-min budget)"))
    finetune_batch_size: int = field(default=100, **_help("reference protocol: fine-tuning batch size"))
    finetune_lr: float = field(default=1e-3, **_help("reference protocol: Adam learning rate (Keras's default)"))
    finetune_augment: bool = field(default=False, **_help(
        "reference protocol: flip/rotate/zoom images while fine-tuning (the reference: none); runs the whole "
        "backbone every epoch, since augmented images have no cached cut-point activations"))
    finetune_lp_epochs: int = field(default=0, **_help(
        "reference protocol: LP-FT (Kumar et al. 2022): first train only the Dense layer on the un-tuned "
        "top's features for this many epochs, then fine-tune; 0 = the reference's plain fine-tuning"))
    finetune_augmix: bool = field(default=False, **_help(
        "reference protocol: fine-tune on (clean, AugMix view, AugMix view) triples, cross-entropy on the clean "
        "image + --finetune-js-weight x Jensen-Shannon consistency (Hendrycks et al. 2020); two new views per "
        "epoch, their cut-point activations cached"))
    finetune_js_weight: float = field(default=12.0, **_help(
        "reference protocol with --finetune-augmix: weight of the Jensen-Shannon term (AugMix's: 12)"))


# in the fine-tuned weights' cache key only when AugMix is on, so the plain reference key stays what it was
AUGMIX_SETTINGS = ("finetune_augmix", "finetune_js_weight")


@dataclass
class HeadSettings:
    """Which heads are compared, over how many replicates, with which hyperparameters."""

    heads: list[str] = field(default_factory=lambda: ["linear", "vfe"], **_help(
        "heads to compare; 'all' = every head of the feature benchmark; a head of your own as package.module:Class "
        "(imported, and named by its registered name or its class name)"))
    replicates: int = field(default=3, **_help(
        "replicates of the whole experiment; each redraws the training subset, the fine-tuning (reference "
        "protocol), the heads' initialisation, the training views and the attacked images; every interval "
        "and verdict is over replicates (docs/replicates.md)"))
    # The reference trained its feature VAE for 2000 epochs (hours here); on the default features an epoch
    # costs ~0.9 s and downstream accuracy is flat from 100 to 300 epochs (benchmarks/README.md), so the
    # main job caps the VAE (and the AE) at 100 epochs with early stopping.
    head_params: dict[str, dict] = field(
        default_factory=lambda: {"vfe": {"vae_epochs": 100}, "ae": {"ae_epochs": 100}},
        **_help("per-head hyperparameters, --head-param HEAD.KEY=VALUE (repeatable; JSON values)"))
    augment_family: str = field(default="noise", **_help(
        "the one corruption family the augmented heads (vfe-aug, dae-aug) train on"))
    augmix_views: int = field(default=DEFAULT_VIEWS, **_help(
        "AugMix views per training image for the AugMix heads (linear-augmix, vfe-augmix, ...): each view is "
        "one more backbone pass over the training images"))


@dataclass
class CorruptionSettings:
    """The common-corruption stage: every corruption x severity of the test images."""

    corruptions: list[str] | None = field(default=None, **_help(
        "corruption names (default: all 19); give none to skip the stage"))
    severities: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5], **_help("severities, 1-5"))
    corruption_params: str = field(default=DEFAULT_CORRUPTION_PARAMS, **_help(
        "severity parameters: 'auto' (by image size), 'imagenet' or 'cifar'"))
    noise_per_replicate: bool = field(default=False, **_help(
        "redraw the corruption noise of the test set in every replicate (the corruption stage then costs one "
        "extraction per replicate); default: one draw shared by the replicates (docs/replicates.md says what "
        "that leaves out, measured by benchmarks/bench_noise_draw.py)"))
    test_time_bn: bool = field(default=False, **_help(
        "also fit and evaluate heads on features whose backbone BatchNorm adapts to each batch (Schneider et al. "
        "2020), training, clean and corrupted test batches, as extra heads HEAD+bn"))
    bn_batch_size: int = field(default=64, **_help("test-time BatchNorm: images per adapted batch (n)"))
    bn_prior: float = field(default=16.0, **_help(
        "test-time BatchNorm: prior strength N in images; statistics = N/(N+n) source + n/(N+n) batch "
        "(0: the batch's own)"))
    bn_heads: list[str] | None = field(default=None, **_help(
        "test-time BatchNorm: the heads given a +bn twin; none = every head fitted on the training features alone"))
    selective: bool = field(default=True, **_help(
        "selective classification under corruption: risk at 80 and 90 percent coverage and the area under the "
        "risk-coverage curve per detector (max softmax, Mahalanobis, the VFE's reconstruction error and ELBO), "
        "clean and per corruption family (docs/abstention.md)"))
    selective_heads: list[str] = field(default_factory=lambda: ["linear", "vfe"], **_help(
        "the classifier heads the selective-classification stage measures (those the run fits)"))


@dataclass
class AttackSettings:
    """White-box attacks end to end through the backbone, with EOT for heads that sample."""

    n_attack: int = field(default=100, **_help("images attacked (0 skips the stage)"))
    attack_eps_linf: list[float] = field(default_factory=lambda: [1 / 255, 2 / 255, 4 / 255, 8 / 255],
                                         **_help("L-inf budgets on [0, 1] pixels"))
    attack_eps_l2: list[float] = field(default_factory=lambda: [0.25, 0.5, 1.0], **_help("L2 budgets"))
    attack_steps: int = field(default=10, **_help("PGD steps"))
    n_eot: int = field(default=20, **_help("samples per EOT gradient (AutoAttack's rand version uses 20)"))


@dataclass
class OODSettings:
    """Out-of-distribution detection: another data set, and the test set under heavy noise."""

    ood: bool = field(default=True, **_help("run the out-of-distribution stage"))


ENGINES = ("local", "ray")


@dataclass
class EngineSettings:
    """Where heads are fitted: in this process, or as Ray tasks on a cluster (docs/ray.md)."""

    engine: str = field(default="local", metadata={"choices": ENGINES, "help": (
        "local: fit the heads in this process; ray: fit them as Ray tasks, one CPU and one torch thread each, "
        "on the cluster at --address (pip install 'vfe[ray]'; docs/ray.md); the numbers of a local fit at one "
        "torch thread")})
    address: str | None = field(default=None, **_help(
        "with --engine ray: auto (a running cluster), local (a new one here), ray://HOST:PORT (Ray Client) or "
        "HOST:PORT of the head; none: a running cluster if found, else a local one"))
    ray_shared_cache: str = field(default="auto", metadata={"choices": ("auto", "yes", "no"), "help": (
        "with --engine ray: whether every node sees the feature cache folder (then the backbone actors write it); "
        "no: their features come back through Ray's object store and this machine writes the cache; auto: a "
        "probe file in the cache folder decides (docs/ray.md)")})


@dataclass
class RunSettings:
    """Everything that defines a run of the main job."""

    name: str = field(default="default", **_help("run folder under --runs-dir"))
    runs_dir: str = field(default="runs", **_help("where run folders go"))
    cache_dir: str | None = field(default=None, **_help(
        "feature cache folder (default: $VFE_CACHE or ~/.cache/vfe/features)"))
    progress: bool = field(default=True, **_help("progress bars"))
    compare_with: str | None = field(default=None, **_help(
        "a finished run folder (e.g. the other protocol's) whose heads the report shows beside this run's"))
    save_best: bool = field(default=False, **_help(
        "also save the best head that needs nothing at test time (clean accuracy within 0.5 points of the linear "
        "head's, paired; best held-out headline) as a pipeline, RUN/best.safetensors, with its robustness card "
        "RUN/card.md (docs/cards.md)"))
    best_detector: str = field(default="auto", **_help(
        "with --save-best: the detector the saved pipeline abstains with (vfe predict --coverage): auto (the one "
        "the OOD stage measured best for that head and replicate; mahalanobis without it), mahalanobis, msp, "
        "vfe-recon or vfe-elbo (a VFE head only), or none; its threshold is chosen on training images outside the "
        "replicate's training subset (docs/abstention.md)"))
    best_coverage: float = field(default=0.9, **_help(
        "with --save-best: the share of those validation images the detector's threshold answers"))
    data: DataSettings = field(default_factory=DataSettings)
    backbone: BackboneSettings = field(default_factory=BackboneSettings)
    finetune: FinetuneSettings = field(default_factory=FinetuneSettings)
    heads: HeadSettings = field(default_factory=HeadSettings)
    corruptions: CorruptionSettings = field(default_factory=CorruptionSettings)
    attacks: AttackSettings = field(default_factory=AttackSettings)
    ood: OODSettings = field(default_factory=OODSettings)
    cluster: EngineSettings = field(default_factory=EngineSettings)

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_dir) / self.name

    def to_dict(self) -> dict:
        """The settings as saved in results.json: flat, one key per flag (field names are unique)."""
        return flat_dict(self)

    @classmethod
    def from_dict(cls, flat: dict) -> RunSettings:
        """The settings saved by `to_dict` (e.g. results.json's "config"); unknown keys are refused."""
        return with_overrides(cls(), flat)


@dataclass
class SweepSettings:
    """A sweep: a grid of heads x hyperparameters x training sizes x seeds on the same prepared data."""

    name: str = field(default="", metadata={"help": "results go to RUNS_DIR/NAME/ (finished cells are reused)",
                                            "required": True})
    grid: str = field(default="", metadata={
        "help": 'JSON text or a .json file: {"heads": {head: {param: [values]}}, "seeds": [..], '
                '"train_sizes": [100, null]} (null = the whole training set)', "required": True})
    runs_dir: str = field(default="runs", **_help("where run folders go"))
    cache_dir: str | None = field(default=None, **_help(
        "feature cache folder (default: $VFE_CACHE or ~/.cache/vfe/features)"))
    augment_family: str = field(default="noise", **_help(
        "the one corruption family the augmented heads (vfe-aug, dae-aug) train on"))
    corruption_params: str = field(default=DEFAULT_CORRUPTION_PARAMS, **_help(
        "severity parameters of the augmented heads' corruptions: 'auto', 'imagenet' or 'cifar'"))
    augmix_views: int = field(default=DEFAULT_VIEWS, **_help(
        "AugMix views per training image for the AugMix heads (linear-augmix, vfe-augmix, ...)"))
    compare_pixels: bool = field(default=False, **_help(
        "also train on raw pixels at the grid's train sizes: where does transfer win?"))
    progress: bool = field(default=True, **_help("progress bars"))
    data: DataSettings = field(default_factory=DataSettings)
    backbone: BackboneSettings = field(default_factory=BackboneSettings)
    cluster: EngineSettings = field(default_factory=EngineSettings)


def quick_settings() -> RunSettings:
    """`vfe run --quick`: every stage, on sizes small enough for a few minutes on 2 cores."""
    return RunSettings(
        name="quick",
        data=DataSettings(n_train=2000, n_test=500),
        finetune=FinetuneSettings(finetune_epochs=2),
        heads=HeadSettings(replicates=2, head_params={"vfe": {"vae_epochs": 40}, "ae": {"ae_epochs": 40}}),
        corruptions=CorruptionSettings(severities=[1, 3, 5]),
        attacks=AttackSettings(n_attack=32, attack_eps_linf=[2 / 255, 8 / 255], attack_eps_l2=[0.5],
                               attack_steps=5, n_eot=8))


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


def check(settings: RunSettings, overwrite: bool = False) -> None:
    """Every cheap check of a run's settings, before any image is loaded: names, sizes, budgets, output.

    Raises SettingsError naming the setting (as its flag) and the valid choices.
    """
    from vfe.robustness.corruptions.registry import REGISTRY  # imports scipy and OpenCV: not at `vfe --help`

    heads, corr, att = settings.heads, settings.corruptions, settings.attacks
    check_data(settings.data, settings.backbone)
    if not heads.heads:
        raise SettingsError("--heads: give at least one head")
    if isinstance(heads.replicates, bool) or not isinstance(heads.replicates, int) or heads.replicates < 1:
        raise SettingsError(f"--replicates must be a whole number >= 1 (3 or more for intervals), "
                            f"got {heads.replicates!r}")
    names = expand_heads(heads.heads)  # unknown or non-benchmark heads raise here, naming the choices
    check_external_heads(names, settings.cluster, att)
    for head, params in heads.head_params.items():
        spec(head)
        check_params(head, params)
        if "random_state" in params:
            raise SettingsError(f"--head-param {head}.random_state: each replicate seeds every head itself (from "
                                "--data-seed and the replicate); leave it out, or change --data-seed")
    check_views(heads.augment_family, heads.augmix_views)
    unknown = [c for c in corr.corruptions or [] if c not in REGISTRY]
    if unknown:
        raise SettingsError(f"--corruptions: unknown {', '.join(unknown)}; known: {', '.join(REGISTRY)}")
    bad = [s for s in corr.severities if s not in (1, 2, 3, 4, 5)]
    if bad or not corr.severities:
        raise SettingsError(f"--severities must be among 1 2 3 4 5, got {corr.severities}")
    check_corruption_params(corr.corruption_params)
    check_test_time_bn(corr, expand_heads(heads.heads))
    check_selective(corr)
    if att.n_attack < 0 or att.attack_steps < 1 or att.n_eot < 1:
        raise SettingsError(f"--n-attack must be >= 0, --attack-steps and --n-eot >= 1; got {att.n_attack}, "
                            f"{att.attack_steps}, {att.n_eot}")
    if any(e <= 0 for e in [*att.attack_eps_linf, *att.attack_eps_l2]):
        raise SettingsError("--attack-eps-linf and --attack-eps-l2 must be positive")
    check_finetune(settings.finetune)
    if settings.compare_with is not None:
        compared_results(settings.compare_with)
    check_engine(settings.cluster)
    check_save_best(settings, names)
    check_run_dir(settings.run_dir, overwrite)


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


def check_external_heads(heads: list[str], cluster: EngineSettings, attacks: AttackSettings) -> None:
    """Heads registered in this process from outside vfe: they run locally (a Ray worker is a fresh process that
    never imported the user's module), and the attack stage needs each one's `probability_module()`."""
    external = [h for h in heads if is_external(h)]
    if external and cluster.engine == "ray":
        raise SettingsError(f"--engine ray: {', '.join(external)} registered in this process only, which Ray workers "
                            "do not see; run heads of your own with --engine local")
    blind = [h for h in external if not callable(getattr(head_class_of(h), "probability_module", None))]
    if blind and attacks.n_attack > 0:
        raise SettingsError(f"--n-attack: {', '.join(blind)} has no probability_module() (features -> class "
                            "probabilities as a torch module), which the attacks differentiate; define it, or give "
                            "--n-attack 0")


def check_save_best(settings: RunSettings, heads: list[str]) -> None:
    """--save-best compares clean accuracy with the linear head's and ranks by held-out corruptions: both must
    be measured (vfe.benchmark.best). Its detector needs training images outside the training subset."""
    from vfe.robustness.detectors import DETECTORS
    from vfe.robustness.selective import check_coverage

    default = RunSettings()
    if not settings.save_best:
        changed = [flag for flag, key in (("--best-detector", "best_detector"), ("--best-coverage", "best_coverage"))
                   if getattr(settings, key) != getattr(default, key)]
        if changed:
            raise SettingsError(f"{', '.join(changed)}: the detector of the pipeline --save-best writes; add "
                                "--save-best")
        return
    if settings.best_detector not in ("auto", *DETECTORS, "none"):
        raise SettingsError(f"--best-detector must be auto, one of {', '.join(DETECTORS)} or none, got "
                            f"{settings.best_detector!r}")
    if settings.best_detector != "none":
        try:
            check_coverage(settings.best_coverage)
        except SettingsError as e:
            raise SettingsError(f"--best-coverage: {e}") from None
        if settings.data.n_train is None:
            raise SettingsError("--save-best: the detector's threshold is chosen on training images the head never "
                                "saw, and --n-train none trains on all of them: give --n-train, or --best-detector "
                                "none")
    if "linear" not in heads:
        raise SettingsError("--save-best keeps heads within 0.5 points of the linear head's clean accuracy: add "
                            "linear to --heads")
    if settings.corruptions.corruptions == []:
        raise SettingsError("--save-best ranks heads by their held-out corruption robustness: it needs the "
                            "corruption stage (leave --corruptions out for all 19, or name some)")


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


def check_selective(corr: CorruptionSettings) -> None:
    """--selective-heads names heads vfe knows (those the run does not fit are left out of the stage)."""
    unknown = [h for h in corr.selective_heads if h not in head_names()]
    if unknown:
        raise SettingsError(f"--selective-heads: {', '.join(unknown)} is not a head; `vfe heads` lists them")


def check_test_time_bn(corr: CorruptionSettings, heads: list[str]) -> None:
    """The test-time BatchNorm settings: sizes in range, heads among the run's, the corruption stage on."""
    if corr.bn_heads is not None:
        unknown = [h for h in corr.bn_heads if h not in heads]
        if unknown or not corr.bn_heads:
            raise SettingsError(f"--bn-heads must name heads of the run ({', '.join(heads)}), got "
                                f"{' '.join(corr.bn_heads) or 'none'}; leave it out for every head")
        views = [h for h in corr.bn_heads if is_augmented(h) or is_augmix(h)]
        if views:
            raise SettingsError(f"--bn-heads: {', '.join(views)} train on corrupted or AugMix views of the training "
                                "images, which are not adapted; choose heads fitted on the training features alone")
    if not corr.test_time_bn:
        return
    if corr.corruptions == []:
        raise SettingsError("--test-time-bn evaluates heads on corrupted test images: it needs the corruption "
                            "stage (leave --corruptions out for all 19, or name some)")
    if corr.bn_batch_size < 1:
        raise SettingsError(f"--bn-batch-size must be at least 1, got {corr.bn_batch_size}")
    if not 0 <= corr.bn_prior < math.inf:
        raise SettingsError(f"--bn-prior must be a finite number >= 0 (0: the batch's own statistics), "
                            f"got {corr.bn_prior}")


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
