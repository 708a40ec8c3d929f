"""`vfe run --save-best`: the run's best head that needs nothing at test time, saved as a pipeline with its
robustness card (docs/cards.md).

The rule, in order (each step leaves a reason per head in the card's `selection.heads`):
  1. eligible: a head that predicts from one image alone, saved in a pipeline file as it was measured: not a
     head that adapts to each test set (T3A, re-standardisation: `adapts` in vfe.heads.registry), not a
     test-time BatchNorm twin ("<head>+bn"), and a head class a pipeline can hold (features in, export_state);
  2. clean accuracy within 0.5 points of the linear head's, paired over replicates: the lower bound of the
     95 % paired-t interval of (head - linear) clean accuracy (results.json summary.vs_baseline[head]
     .clean_accuracy) is at least -0.005; where there is no interval (one replicate, or differences without
     spread) its mean difference is, and the card says so. The linear head itself qualifies;
  3. ranked by the leaderboard's headline (its mean over replicates, lower first); a tie goes to the higher mean
     clean accuracy, then to the leaderboard's order (the run's head order);
  4. of that head's replicates, the one whose clean accuracy is the median: for an even count the lower of the
     two middle ones; equal accuracies in replicate order.
No qualifying head (no linear head, or no head with a headline): one line in the log and no file.

The pipeline carries a detector so that `vfe predict --coverage` abstains on unfamiliar inputs. Which one
(--best-detector auto, the default) is measured, because it depends on the data and on the kind of input: on
Fashion-MNIST max softmax separates the heavily noised test images far worse than Mahalanobis or the VFE's
reconstruction error (AUROC ~0.72 against ~0.98), yet it flags pure noise images that Mahalanobis lets through
(vfe.experiment.stages.ood.stage). Auto takes, among the detectors the saved head offers, the one whose worst AUROC over the
OOD stage's sets (on their validation halves, for that head and replicate) is highest, so that it catches every
kind of unfamiliar input measured; equal worst cases go to the higher mean, then to DETECTORS' order. The
detectors' scores are the OOD stage's (Mahalanobis: the detector's own, the covariance shrunk,
`detector_mahalanobis`); without the OOD stage, Mahalanobis. It is
fitted on the replicate's training features, its threshold for --best-coverage chosen on training images outside
the replicate's training subset (vfe.experiment.detection, the rule `vfe fit --detector` uses), their features
through the replicate's backbone. The card says how it was chosen and what the run measured of it for this head
and replicate (OOD AUROC on the test halves, selective risk), where it did.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path

from vfe.card import build_card, card_markdown, detector_card
from vfe.errors import SettingsError, VfeError
from vfe.experiment.detection import detection_split, validation_room
from vfe.experiment.stages.corruptions.adapted_bn import SUFFIX as BN_SUFFIX
from vfe.experiment.summary import BASELINE
from vfe.heads.registry import adapts_at_test_time, head_class_of
from vfe.io import write_text
from vfe.robustness.detectors import (
    DETECTORS,
    OOD_SCORE_OF,
    VFE_METHODS,
    fit_detector,
    validation_size_needed,
)

MARGIN = 0.005  # 0.5 points of clean accuracy below the linear head's
PIPELINE_FILE = "best.safetensors"
CARD_FILE = "card.md"


def _unsaveable(head: str) -> str | None:
    """Why `head` cannot stand alone in a pipeline file, or None."""
    if head.endswith(BN_SUFFIX):
        return "adapts its backbone's BatchNorm to each test batch (test-time BatchNorm)"
    if adapts_at_test_time(head):
        return "adapts to each test set at prediction time"
    try:
        cls = head_class_of(head)
    except VfeError:  # a head registered in another process (not here)
        return "its class is not registered in this process"
    if getattr(cls, "inputs", "features") != "features" or not callable(getattr(cls, "export_state", None)):
        return "a pipeline file cannot hold it (it needs features in and export_state)"
    return None


def _clean_gap(results: dict, head: str) -> tuple[bool, str]:
    """(within MARGIN of the linear head's clean accuracy, how that was decided)."""
    if head == BASELINE:
        return True, "the linear head itself"
    c = (results["summary"].get("vs_baseline", {}).get(head) or {}).get("clean_accuracy") or {}
    if not c.get("n"):
        return False, "no replicate shared with the linear head"
    low, mean = c.get("low"), c.get("mean_diff")
    if isinstance(low, (int, float)) and math.isfinite(low):
        return low >= -MARGIN - 1e-12, (f"paired 95 % interval of clean accuracy vs linear "
                                        f"[{100 * low:+.2f}, {100 * c['high']:+.2f}] points: lower bound "
                                        f"{'>=' if low >= -MARGIN - 1e-12 else '<'} -0.5")
    return mean >= -MARGIN - 1e-12, (f"no paired interval ({c['n']} replicate(s) or no spread): mean difference "
                                     f"{100 * mean:+.2f} points {'>=' if mean >= -MARGIN - 1e-12 else '<'} -0.5")


def median_replicate(results: dict, head: str) -> int:
    """The replicate of `head` whose clean accuracy is the median (the lower middle one for an even count)."""
    reps = sorted(((m["accuracy"], int(r)) for r, m in results["clean"][head].items()))
    return reps[(len(reps) - 1) // 2][1]


def select_best(results: dict) -> dict:
    """{"head", "replicate", "rule", "heads": {head: why it was or was not chosen}}; "head" None with "reason"
    when no head qualifies."""
    board = results.get("leaderboard") or []
    order = {row["head"]: i for i, row in enumerate(board)}
    why: dict[str, str] = {}
    ranked = []
    for row in board:
        head = row["head"]
        problem = _unsaveable(head)
        if problem:
            why[head] = f"not eligible: {problem}"
            continue
        ok, how = _clean_gap(results, head) if BASELINE in results["clean"] else (False, "no linear head")
        if not ok:
            why[head] = f"clean accuracy not within 0.5 points of the linear head's ({how})"
            continue
        headline = row.get("headline")
        if not headline or not isinstance(headline.get("mean"), (int, float)) or not math.isfinite(headline["mean"]):
            why[head] = f"qualifies ({how}) but has no held-out headline to rank by"
            continue
        clean = (row.get("clean_accuracy") or {}).get("mean", -math.inf)
        ranked.append((headline["mean"], -clean, order[head], head))
        why[head] = f"qualifies ({how}); headline {row['headline_metric']} {100 * headline['mean']:.2f} %"
    rule = ("the best head by the leaderboard's headline (lower first) among the heads that need nothing at test "
            "time and whose clean accuracy is within 0.5 points of the linear head's (paired); of its "
            "replicates, the one with the median clean accuracy")
    if BASELINE not in results["clean"]:
        return {"head": None, "reason": "the run has no linear head to compare clean accuracy with (add linear "
                                        "to --heads)", "rule": rule, "heads": why}
    if not ranked:
        return {"head": None, "reason": "no head qualifies (" + "; ".join(f"{h}: {w}" for h, w in why.items())
                                        + ")", "rule": rule, "heads": why}
    head = min(ranked)[3]
    replicate = median_replicate(results, head)
    n = len(results["clean"][head])
    return {"head": head, "replicate": replicate, "heads": why,
            "rule": f"{rule}: {head} ({why[head]}), replicate {replicate} (median clean accuracy of {n})"}


@dataclass(frozen=True)
class BestDetector:
    """--best-detector at --best-coverage, its validation images drawn from `pool` (the run's training split)
    outside the training subset of `n_train` images."""

    name: str
    coverage: float
    pool: object  # ImageSet
    n_train: int


def check_detector_room(detector: BestDetector, seed: int) -> None:
    """Enough training images outside the training subset for the threshold: checked once the data is loaded,
    before any feature is extracted."""
    room, needed = validation_room(detector.pool, detector.n_train, seed), validation_size_needed(detector.coverage)
    if room < needed:
        raise SettingsError(f"--save-best: the detector's threshold for --best-coverage {detector.coverage} needs "
                            f"{needed} training images outside the training subset, and --n-train {detector.n_train} "
                            f"leaves {room} of {len(detector.pool)}: lower --n-train or --best-coverage, or give "
                            "--best-detector none")


_DETECTOR_OF = {score: detector for detector, score in OOD_SCORE_OF.items()}  # the OOD stage's score -> detector


def auto_detector(results: dict, head: str, replicate: int | str) -> tuple[str, str]:
    """(detector, how it was chosen) for --best-detector auto: the highest worst-case validation-half AUROC over
    the OOD stage's sets for `head`'s replicate (ties: the higher mean, then DETECTORS' order); Mahalanobis without
    the OOD stage."""
    r = str(replicate)
    selection = (results.get("ood") or {}).get("selection")
    if not selection:
        return "mahalanobis", "--best-detector auto without the OOD stage (--no-ood): mahalanobis, which any head offers"
    auroc: dict[str, list[float]] = {}
    for choice in selection["per_head"][head][r].values():
        for score, value in choice["validation_auroc"].items():
            if score in _DETECTOR_OF:
                auroc.setdefault(_DETECTOR_OF[score], []).append(value)
    for choice in (selection.get("detector_mahalanobis") or {}).get(r, {}).values():
        auroc.setdefault("mahalanobis", []).append(choice["validation_auroc"])
    rank = {name: (min(values), sum(values) / len(values)) for name, values in auroc.items()}
    name = max((d for d in DETECTORS if d in rank), key=lambda d: rank[d])  # max keeps the first of equals
    listed = ", ".join(f"{d} {rank[d][0]:.3f} (mean {rank[d][1]:.3f})" for d in DETECTORS if d in rank)
    return name, (f"--best-detector auto: the highest worst-case AUROC over the OOD stage's {len(auroc[name])} "
                  f"sets on their validation halves ({listed})")


def _fitted_detector(detector: BestDetector, model, p, replicate: int, results: dict, head: str, log):
    """(the detector for `model` on replicate draw `p`, or None, and how it was chosen or why there is none)."""
    name, how = (auto_detector(results, head, replicate) if detector.name == "auto" else
                 (detector.name, f"--best-detector {detector.name}"))
    method = VFE_METHODS.get(name)
    if method is not None and not callable(getattr(model, method, None)):
        why = f"{name} needs a VFE head, and the saved head has no {method}"
        log(f"[vfe] --save-best: the pipeline carries no detector: {why} (choose --best-detector auto)")
        return None, why
    _, validation = detection_split(detector.pool, detector.n_train, p.seed, detector.coverage)
    X_val = p.features(validation, desc="extract detector validation")
    return fit_detector(name, model, p.X_train, p.train.labels, X_val, detector.coverage), how


def save_best(results: dict, models: dict, prepared: list, out_folder: Path, log, shown: Path | None = None,
              detector: BestDetector | None = None) -> Path | None:
    """Write out_folder/best.safetensors (the chosen head on its replicate's backbone, `detector` fitted for it,
    the card in its metadata) and out_folder/card.md; the pipeline's path, or None (one line in the log) when no
    head qualifies. `shown`: the folder named in the log (the run folder, where `out_folder` is its staged copy)."""
    from vfe.pipeline import Pipeline  # torch and timm: imported only when a pipeline is saved

    choice = select_best(results)
    if choice["head"] is None:
        log(f"[vfe] --save-best: no pipeline saved: {choice['reason']}")
        return None
    head, replicate = choice["head"], choice["replicate"]
    model = copy.deepcopy(models[(head, replicate)])  # the run's own stays as it was
    if "device" in model.get_params():
        model.set_params(device="cpu")  # the saved pipeline predicts wherever it is loaded
    p = prepared[replicate]
    fitted, how = (_fitted_detector(detector, model, p, replicate, results, head, log) if detector is not None
                   else (None, "--best-detector none"))
    card = {**build_card(results, head, replicate), "selection": {k: v for k, v in choice.items()},
            "detector": detector_card(results, head, replicate, fitted, how)}
    path = Pipeline(p.backbone, model, p.train.class_names, detector=fitted, card=card).save(
        out_folder / PIPELINE_FILE, overwrite=True)
    write_text(out_folder / CARD_FILE, card_markdown(card))
    where = shown or out_folder
    log(f"[vfe] best pipeline: {where / PIPELINE_FILE} ({head}, replicate {replicate}"
        f"{f', abstains with {fitted.name} at coverage {fitted.coverage}' if fitted else ''}); its card: "
        f"{where / CARD_FILE}")
    return path
