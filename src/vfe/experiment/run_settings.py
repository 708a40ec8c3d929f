"""`RunSettings`: everything that defines a run of the main job, composed of the general settings
(vfe.experiment.config) and each robustness stage's own (vfe.experiment.stages.<name>.settings); `quick_settings()`
are `vfe run --quick`; `check` makes every cheap check before any image is loaded.

Every field is a `vfe run` flag (vfe.experiment.flags). This module imports no torch: `vfe --help` reads it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from vfe.errors import SettingsError
from vfe.experiment.config import (
    BackboneSettings,
    DataSettings,
    EngineSettings,
    FinetuneSettings,
    HeadSettings,
    check_data,
    check_engine,
    check_finetune,
    check_run_dir,
    check_views,
    compared_results,
    described,
    flat_dict,
    with_overrides,
)
from vfe.experiment.stages.adversarial.settings import AttackSettings
from vfe.experiment.stages.corruptions.settings import CorruptionSettings
from vfe.experiment.stages.ood.settings import OODSettings
from vfe.experiment.stages.selective.settings import SelectiveSettings
from vfe.heads.registry import check_params, expand_heads, head_class_of, is_external, spec


@dataclass
class RunSettings:
    """Everything that defines a run of the main job."""

    name: str = field(default="default", **described("run folder under --runs-dir"))
    runs_dir: str = field(default="runs", **described("where run folders go"))
    cache_dir: str | None = field(default=None, **described(
        "feature cache folder (default: $VFE_CACHE or ~/.cache/vfe/features)"))
    progress: bool = field(default=True, **described("progress bars"))
    compare_with: str | None = field(default=None, **described(
        "a finished run folder (e.g. the other protocol's) whose heads the report shows beside this run's"))
    save_best: bool = field(default=False, **described(
        "also save the best head that needs nothing at test time (clean accuracy within 0.5 points of the linear "
        "head's, paired; best held-out headline) as a pipeline, RUN/best.safetensors, with its robustness card "
        "RUN/card.md (docs/cards.md)"))
    best_detector: str = field(default="auto", **described(
        "with --save-best: the detector the saved pipeline abstains with (vfe predict --coverage): auto (the one "
        "the OOD stage measured best for that head and replicate; mahalanobis without it), mahalanobis, msp, "
        "vfe-recon or vfe-elbo (a VFE head only), or none; its threshold is chosen on training images outside the "
        "replicate's training subset (docs/abstention.md)"))
    best_coverage: float = field(default=0.9, **described(
        "with --save-best: the share of those validation images the detector's threshold answers"))
    data: DataSettings = field(default_factory=DataSettings)
    backbone: BackboneSettings = field(default_factory=BackboneSettings)
    finetune: FinetuneSettings = field(default_factory=FinetuneSettings)
    heads: HeadSettings = field(default_factory=HeadSettings)
    # each robustness stage's own settings (vfe.experiment.stages)
    corruptions: CorruptionSettings = field(default_factory=CorruptionSettings)
    selective_classification: SelectiveSettings = field(default_factory=SelectiveSettings)
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




def check(settings: RunSettings, overwrite: bool = False) -> None:
    """Every cheap check of a run's settings, before any image is loaded: names, sizes, budgets, output.

    Raises SettingsError naming the setting (as its flag) and the valid choices.
    """
    from vfe.experiment.stages.registry import STAGES  # the stages' modules import torch: not at `vfe --help`

    heads = settings.heads
    check_data(settings.data, settings.backbone)
    if not heads.heads:
        raise SettingsError("--heads: give at least one head")
    if isinstance(heads.replicates, bool) or not isinstance(heads.replicates, int) or heads.replicates < 1:
        raise SettingsError(f"--replicates must be a whole number >= 1 (3 or more for intervals), "
                            f"got {heads.replicates!r}")
    names = expand_heads(heads.heads)  # unknown or non-benchmark heads raise here, naming the choices
    check_external_heads(names, settings.cluster, settings.attacks)
    for head, params in heads.head_params.items():
        spec(head)
        check_params(head, params)
        if "random_state" in params:
            raise SettingsError(f"--head-param {head}.random_state: each replicate seeds every head itself (from "
                                "--data-seed and the replicate); leave it out, or change --data-seed")
    check_views(heads.augment_family, heads.augmix_views)
    for stage in STAGES:
        if stage.check is not None:
            stage.check(*stage.settings_of(settings), names)
    check_finetune(settings.finetune)
    if settings.compare_with is not None:
        compared_results(settings.compare_with)
    check_engine(settings.cluster)
    check_save_best(settings, names)
    check_run_dir(settings.run_dir, overwrite)




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
    be measured (vfe.experiment.best). Its detector needs training images outside the training subset."""
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
