"""The shape of results.json, the file between `vfe run` and everything that reads a run, as typed records.

The TypedDicts below are the definition. docs/results.schema.json is generated from them
(`python -m vfe.report.schema > docs/results.schema.json`; a test fails when the two differ), docs/results.md
says what each section means, and vfe.report.results_check checks a file against them on both sides: when
`vfe run` writes one and when a reader reads one.

SCHEMA_VERSION goes up when a reader of the old shape could fail on or misread the new one: a section or field
removed, renamed or retyped, or a new required one. A new optional section or field keeps it. Files written before
the schema have no "schema_version": they are version 0.

No `from __future__ import annotations` here: Python 3.11's TypedDict sees `NotRequired` only in evaluated
annotations, and the generator reads them at runtime.
"""
import json
import sys
from functools import cache
from typing import Annotated, Any, Literal, NotRequired, Required, TypedDict, TypeVar

from vfe.report.typed_json import Keys, json_schema_of
from vfe.robustness.metrics import HEADLINE_KINDS
from vfe.robustness.stats import BOOTSTRAP_TEST, T_TEST, VERDICTS

SCHEMA_VERSION = 1


T = TypeVar("T")
ByHead = Annotated[dict[str, T], Keys('head, as --heads names it ("<head>+bn": its test-time BatchNorm twin)')]
ByReplicate = Annotated[dict[str, T], Keys('replicate index as a string: "0", "1", ...', r"^(0|[1-9][0-9]*)$")]
ByAttack = Annotated[dict[str, T], Keys('attack key: "clean", "fgsm_linf_2/255", "pgd_l2_0.5_eot", ...')]
ByCorruption = Annotated[dict[str, T], Keys('corruption name, e.g. "gaussian_noise"')]
BySeverity = Annotated[dict[str, T], Keys('severity as a string: "1" ... "5"', r"^[0-9]+$")]
ByMetric = Annotated[dict[str, T], Keys('summary metric: "clean_accuracy", "mCE", "adv:<attack key>", '
                                        '"ood:<score>_<auroc|fpr95>_<OOD set>", ...')]
ByOodSet = Annotated[dict[str, T], Keys('OOD set: "digits", "fashion-mnist", "textures", "gaussian_noise_s5", '
                                                     '"uniform_noise"')]
ByStage = Annotated[dict[str, T], Keys("stage, as the run's timer names it")]

Share = Annotated[float, "a share of images, 0 to 1"]
Seconds = Annotated[float, "wall seconds"]


class CleanMetrics(TypedDict):
    """One head and replicate on the clean test images."""

    accuracy: Share
    nll: Annotated[float, "mean negative log-likelihood of the true class, nats"]
    ece: Annotated[float, "expected calibration error, 15 equal-width confidence bins, 0 to 1"]


class Setting(TypedDict):
    """What a reader needs to interpret every number of the run."""

    dataset: str
    protocol: Annotated[str, '"frozen" or "reference" (the top of the backbone fine-tuned first)']
    backbone: str
    weights: str
    image_size: Annotated[int, "pixels"]
    feature_dim: int
    n_train: int
    n_test: int
    replicates: int
    replicate_seeds: list[int]
    redrawn_per_replicate: list[str]
    fixed_across_replicates: list[str]
    heads: list[str]
    data_seed: int
    torch: str
    threads: int
    machine: str
    device: str
    runtime: NotRequired[Annotated[str, 'what extracted the features: "torch", "openvino", "onnxruntime"; under the '
                                        'reference protocol per part ("bottom openvino, top openvino")']]


class Finetune(TypedDict):
    """Stage 0 of the reference protocol in one replicate: the fine-tuned top of the backbone."""

    cut_point: str
    trainable_fraction: Share
    activation_shape: list[int]
    activation_storage: str
    storage_min_cosine: float
    runtime: NotRequired[Annotated[dict[str, str], 'what ran the frozen bottom and the fine-tuned top: "torch", '
                                   '"onnxruntime" or "openvino"']]
    settings: dict[str, Any]
    seed: int
    weights: str
    weights_sha256: str
    loaded_from_cache: bool
    history: dict[str, Any]
    compare_model_test_accuracy: Share
    seconds: Seconds


class AugmentationRecord(TypedDict):
    """What the heads trained on corrupted or AugMix views saw, and which corruption families stayed held out."""

    train_family: str
    train_corruptions: list[str]
    train_severities: list[int]
    held_out_families: list[str]
    seen_by_head: ByHead[list[str]]
    augmix: NotRequired[dict[str, Any]]


class CorruptionRow(TypedDict):
    """One head and replicate under every corruption x severity; CE and mCE are against the linear head of the
    same replicate (absent when the run has no linear head)."""

    accuracy: ByCorruption[BySeverity[Share]]
    nll: ByCorruption[BySeverity[float]]
    ece: ByCorruption[BySeverity[float]]
    mean_accuracy: Annotated[float, "over the 15 benchmark corruptions measured, every severity"]
    mean_accuracy_all: Annotated[float, "over every corruption measured"]
    mean_nll: float
    mean_ece: float
    CE: NotRequired[ByCorruption[float]]
    mCE: NotRequired[float]
    relative_mCE: NotRequired[float]
    summed_relative_mCE: NotRequired[float]


class Corruptions(TypedDict):
    """The corruption stage."""

    per_head: ByHead[ByReplicate[CorruptionRow]]
    normaliser: Annotated[str, "the head CE and mCE are normalised by"]
    severities: list[int]
    benchmark_corruptions: list[str]


class AttackResult(TypedDict):
    """One head and replicate under every attack, on the replicate's own attacked images. For a head that adapts
    at test time, accuracy and correct are the per-image worst case over the direct, transfer and BPDA attacks,
    and the per_attack fields say how each did."""

    accuracy: ByAttack[Share]
    correct: Annotated[ByAttack[str], "per attacked image, in order: '1' right, '0' wrong"]
    n: Annotated[int, "images attacked"]
    samples_randomly: bool
    steps: int
    n_eot: int
    seconds: Seconds
    images: Annotated[list[int], "the attacked images' rows in the test set"]
    per_attack: NotRequired[ByAttack[dict[str, Share]]]
    per_attack_correct: NotRequired[ByAttack[dict[str, str]]]
    strongest: NotRequired[ByAttack[str]]
    seconds_per_attack: NotRequired[dict[str, Seconds]]


class AttackInterval(TypedDict):
    """A head's accuracy under one attack over every replicate and attacked image, with its 95 % interval (a
    two-stage bootstrap: replicates, then each replicate's own images; exact binomial at 0 or 1)."""

    mean: Share
    low: float
    high: float
    n_images: int
    n_replicates: int
    level: float


class OodChoice(TypedDict):
    """The score chosen on the validation halves, and every score's AUROC there."""

    chosen: str
    validation_auroc: dict[str, float]


class OodSelection(TypedDict):
    """How each reported OOD score was chosen: on a seeded validation half, never on the test half."""

    per_head: ByHead[ByReplicate[ByOodSet[OodChoice]]]
    feature_baselines: ByReplicate[ByOodSet[OodChoice]]
    detector_mahalanobis: NotRequired[Annotated[ByReplicate[ByOodSet[dict[str, float]]],
                                                "a pipeline detector's Mahalanobis score (shrunk covariance): its "
                                                "validation_auroc, and auroc and fpr95 on the test halves; not "
                                                "chosen from (vfe run --save-best chooses a detector by it)"]]
    seed: ByReplicate[int]
    n_validation: Annotated[dict[str, int], '"in" and each OOD set']
    n_test: Annotated[dict[str, int], '"in" and each OOD set']
    protocol: str


class OodSet(TypedDict):
    """An OOD set: how many images, and where they came from."""

    n: int
    source: str


class Ood(TypedDict):
    """The out-of-distribution stage: "<score|selected>_<auroc|fpr95>_<OOD set>" per head and replicate, measured
    on the test halves."""

    per_head: ByHead[ByReplicate[dict[str, float]]]
    feature_baselines: dict[str, ByReplicate[float]]
    selection: OodSelection
    ood_sets: ByOodSet[OodSet]
    n_in: int
    convention: str


class AdaptedBatchNorm(TypedDict):
    """One replicate's "+bn" heads: what was adapted and how, what it cost, what was left out."""

    heads: list[str]
    batch_size: int
    prior: float
    adaptation: str
    batchnorm_layers: int
    fingerprint: str
    heads_refitted_on: str
    seconds: dict[str, Any]
    fit_seconds: ByHead[list[Seconds]]
    cost: dict[str, float]
    attacks: str
    not_evaluated: dict[str, str]


class MeanStd(TypedDict):
    """Mean and sample standard deviation (ddof 1; 0 for one value) over replicates; NaN when none was finite."""

    mean: float
    std: float
    n: int


class Comparison(TypedDict, total=False):
    """A head minus the linear head, paired by replicate: the paired t over the replicates' values, or for
    attacks the paired bootstrap over replicates and their images. Only "n" when they share no replicate;
    the verdict is "better" / "worse" only when the interval [low, high] excludes 0."""

    n: Required[int]
    mean_diff: float
    std_diff: float
    low: float
    high: float
    level: float
    p_value: float
    n_replicates: int
    n_images: int
    test: Literal[T_TEST, BOOTSTRAP_TEST]
    verdict: Literal[VERDICTS]


ByGroup = Annotated[dict[str, T], Keys('"clean", a corruption family ("noise", "blur", "weather", "digital"), or '
                                       '"held_out" (the benchmark corruptions the head did not train on)')]
ByDetector = Annotated[dict[str, T], Keys('detector: "msp", "mahalanobis", "vfe-recon", "vfe-elbo"')]
BySelectiveMetric = Annotated[dict[str, T], Keys('"risk_80", "risk_90" or "aurc"')]


class SelectiveMetrics(TypedDict):
    """One classifier, detector and stream of images: its selective risk at 80 and 90 % coverage and the area
    under its risk-coverage curve (Geifman & El-Yaniv 2017); lower is better."""

    risk_80: Share
    risk_90: Share
    aurc: Annotated[float, "area under the risk-coverage curve, 0 to 1"]


class Selective(TypedDict):
    """Selective classification under corruption: each classifier head answers the inputs a detector ranks most
    familiar; each group of corrupted test sets is one stream (every corruption x severity of it, pooled)."""

    per_head: ByHead[ByReplicate[ByGroup[ByDetector[SelectiveMetrics]]]]
    summary: ByHead[ByGroup[ByDetector[BySelectiveMetric[MeanStd]]]]
    vs_msp: Annotated[ByHead[ByGroup[ByDetector[BySelectiveMetric[Comparison]]]],
                      "each detector minus the same head's max softmax, paired by replicate (lower is better)"]
    groups: ByHead[ByGroup[list[str]]]
    detectors: list[str]
    coverages: list[float]
    n_images: ByHead[ByGroup[int]]


class Summary(TypedDict):
    """Per head: every metric the stages measured, mean +/- std over replicates, and its paired comparison with
    the baseline head."""

    table: ByHead[ByMetric[MeanStd]]
    vs_baseline: ByHead[ByMetric[Comparison]]
    baseline: str


class LeaderboardRow(TypedDict):
    """One head ranked on the benchmark corruptions it did not see in training (docs/leaderboard.md)."""

    head: str
    clean_accuracy: MeanStd | None
    clean_vs_linear: Comparison | None
    clean_ece: MeanStd | None
    seen_corruptions: list[str]
    held_out_corruptions: list[str]
    n_benchmark_corruptions: int
    held_out_accuracy: MeanStd | None
    linear_held_out_accuracy: MeanStd | None
    headline_metric: Literal[HEADLINE_KINDS]
    headline: MeanStd | None
    headline_by_replicate: ByReplicate[float]
    headline_vs_linear: Comparison | None
    linear_summed_degradation: ByReplicate[float]
    held_out_relative_mCE: MeanStd | None
    attack: str | None
    attack_accuracy: MeanStd | None
    attack_strongest: ByReplicate[str] | None
    attack_vs_linear: Comparison | None
    ood_auroc: ByOodSet[MeanStd | None]
    fit_seconds: MeanStd | None


class ReliabilityCurve(TypedDict):
    """What a reliability diagram plots: per confidence bin its count, mean confidence and accuracy (NaN when
    empty), and the ECE of that binning."""

    bin_edges: list[float]
    count: list[int]
    confidence: list[float]
    accuracy: list[float]
    ece: float


class EncodedImage(TypedDict):
    """The first test image, lossless: PNG in base64, and its shape (H, W[, C])."""

    shape: list[int]
    png_base64: str


class ComparedRun(TypedDict):
    """What this run's report needs of the run --compare-with named."""

    path: str
    setting: Setting
    summary: Summary
    adversarial_intervals: ByHead[ByAttack[AttackInterval]] | None
    finetune: ByReplicate[Finetune] | None
    leaderboard: list[LeaderboardRow]


class BackgroundWindow(TypedDict):
    """What the idle-priority background process computed while one step ran (vfe.experiment.background)."""

    window: Annotated[str, 'the step it ran beside: "fine-tuning and fitting", or a stage\'s name']
    entries: Annotated[int, "cache entries the later stages will read, asked of it"]
    ready: Annotated[int, "of those, how many it had got through when it stopped (computed, or found in the cache); one it had "
                         "not reached may be in the cache too"]
    cpu_seconds: Annotated[float, "its CPU seconds (cpu_percent_per_stage counts them too)"]
    seconds: Seconds


class Results(TypedDict):
    """results.json, written by `vfe run` into runs/<name>/: every number of the run, and all its report needs."""

    schema_version: Literal[SCHEMA_VERSION]
    setting: Setting
    config: Annotated[dict[str, Any], "the run's settings, one key per flag (RunSettings.from_dict reads it back)"]
    clean: ByHead[ByReplicate[CleanMetrics]]
    fit_seconds: ByHead[Annotated[list[Seconds], "one per replicate"]]
    histories: Annotated[dict[str, Any], 'each fitted head\'s training history (null: none), keyed '
                                         '"<head>/replicate<r>"; its shape is the head\'s own']
    augmentation: NotRequired[AugmentationRecord]
    finetune: NotRequired[ByReplicate[Finetune]]
    corruptions: NotRequired[Corruptions]
    corruption_seconds: NotRequired[ByCorruption[Seconds]]
    test_time_bn: NotRequired[ByReplicate[AdaptedBatchNorm]]
    adversarial: NotRequired[ByHead[ByReplicate[AttackResult]]]
    adversarial_intervals: NotRequired[ByHead[ByAttack[AttackInterval]]]
    ood: NotRequired[Ood]
    selective: NotRequired[Selective]
    head_parameters: ByHead[int]
    reliability: ByHead[ByReplicate[ReliabilityCurve]]
    example_image: EncodedImage
    summary: Summary
    leaderboard: list[LeaderboardRow]
    compared_run: NotRequired[ComparedRun]
    timings: ByStage[Seconds]
    peak_rss_mb: Annotated[float, "the run's peak resident memory, MB"]
    peak_rss_mb_after_stage: ByStage[float]
    cpu_percent_per_stage: ByStage[Annotated[float, "CPU seconds / wall seconds, %: 200 = two cores busy"]]
    background: NotRequired[list[BackgroundWindow]]


@cache
def json_schema() -> dict:
    """The JSON Schema of results.json; closed at the top, so a new section is added to `Results` first."""
    return json_schema_of(Results, "vfe results.json")


def schema_text() -> str:
    """docs/results.schema.json as the generator writes it."""
    return json.dumps(json_schema(), indent=2, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    sys.stdout.write(schema_text())
