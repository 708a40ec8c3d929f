"""A robustness card: what one fitted head of a run measured, on one page (docs/cards.md).

Built from a run's results.json alone, for one (head, replicate): every number is copied from the field
named beside it in `SOURCES`, except the per-family corruption accuracies, which are means of that
replicate's per-corruption accuracies (`family_accuracy`, the one rule `vfe evaluate --corruptions` uses
too). Why a card: a pipeline file saved from a run (`vfe run --save-best`) carries what the run measured
of it, so whoever receives the file can read how it behaves under corruption, attack and unfamiliar inputs
without the run folder.
"""
from __future__ import annotations

import math

from vfe.errors import VfeError

CARD_VERSION = 1

# where each number of the card comes from in results.json (r: the replicate, h: the head)
SOURCES = {
    "clean": "clean[h][r]",
    "clean_over_replicates": "leaderboard row of h: clean_accuracy, clean_vs_linear",
    "corruptions.mean_accuracy": "corruptions.per_head[h][r].mean_accuracy (and mean_accuracy_all)",
    "corruptions.per_family": "mean over corruption x severity of corruptions.per_head[h][r].accuracy, "
                              "benchmark corruptions of each family",
    "held_out_robustness": "leaderboard row of h: headline_by_replicate[r], headline, headline_vs_linear, "
                           "headline_metric, held_out_corruptions",
    "strongest_attack": "min over the attack keys but 'clean' of adversarial[h][r].accuracy",
    "ece": "clean[h][r].ece",
    "ood_auroc": "ood.per_head[h][r]['selected_auroc_<OOD set>']",
    "detector.ood_auroc": "ood.per_head[h][r]['<msp|recon|elbo>_auroc_<OOD set>'], for mahalanobis "
                          "ood.selection.detector_mahalanobis[r][<OOD set>].auroc",
    "detector.selective": "selective.per_head[h][r][group][detector]: risk_80, risk_90, aurc",
}


class CardError(VfeError):
    """The results hold no such head or replicate (a user error: the CLI prints it as one line)."""


def family_accuracy(accuracy: dict[str, dict]) -> dict[str, float]:
    """{family: mean accuracy over its benchmark corruptions x severities} of one table {corruption: {severity:
    accuracy}}; families with no benchmark corruption in the table are left out, extra corruptions too (as in
    results.json's mean_accuracy)."""
    from vfe.robustness.corruptions.registry import BENCHMARK_CORRUPTIONS, families

    out = {}
    for family, names in families().items():
        values = [float(a) for c in names if c in accuracy and c in BENCHMARK_CORRUPTIONS
                  for a in accuracy[c].values()]
        if values:
            out[family] = sum(values) / len(values)
    return out


def _row(results: dict, head: str) -> dict | None:
    return next((row for row in results.get("leaderboard") or [] if row["head"] == head), None)


def _vfe_version() -> str:
    from vfe import __version__

    return __version__


def build_card(results: dict, head: str, replicate: int | str) -> dict:
    """The card (JSON-able) of `head`'s replicate `replicate` in a run's results.json content."""
    r = str(replicate)
    clean = results["clean"].get(head)
    if clean is None:
        raise CardError(f"the run has no head {head!r}; its heads: {', '.join(results['clean'])}")
    if r not in clean:
        raise CardError(f"head {head!r} has no replicate {r}; it has {', '.join(clean)}")
    setting = results["setting"]
    row = _row(results, head) or {}
    corruption = ((results.get("corruptions") or {}).get("per_head", {}).get(head) or {}).get(r)
    adversarial = ((results.get("adversarial") or {}).get(head) or {}).get(r)
    ood = ((results.get("ood") or {}).get("per_head", {}).get(head) or {}).get(r)
    return {
        "card_version": CARD_VERSION,
        "head": head,
        "replicate": int(r),
        "replicate_seed": setting["replicate_seeds"][int(r)] if int(r) < len(setting["replicate_seeds"]) else None,
        "dataset": setting["dataset"],
        "protocol": setting["protocol"],
        "replicates": setting["replicates"],
        "backbone": setting["backbone"],
        "weights": setting["weights"],
        "image_size": setting["image_size"],
        "n_train": setting["n_train"],
        "n_test": setting["n_test"],
        "data_seed": setting["data_seed"],
        "vfe_version": _vfe_version(),
        "clean": dict(clean[r]),
        "clean_over_replicates": {"accuracy": row.get("clean_accuracy"), "vs_linear": row.get("clean_vs_linear")},
        "ece": clean[r]["ece"],
        "corruptions": None if corruption is None else {
            "mean_accuracy": corruption["mean_accuracy"],
            "mean_accuracy_all": corruption["mean_accuracy_all"],
            "per_family": family_accuracy(corruption["accuracy"]),
            "corruptions": list(corruption["accuracy"]),
            "severities": (results.get("corruptions") or {}).get("severities"),
            "corruption_params": (results.get("config") or {}).get("corruption_params"),
        },
        "held_out_robustness": _held_out(row, r),
        "strongest_attack": _strongest_attack(adversarial),
        "ood_auroc": None if ood is None else {k.removeprefix("selected_auroc_"): v for k, v in ood.items()
                                               if k.startswith("selected_auroc_")},
        "sources": SOURCES,
    }


def detector_card(results: dict, head: str, replicate: int | str, detector, how: str = "") -> dict:
    """The card's "detector": what a pipeline abstains with (a vfe.robustness.detectors.Detector and how it was
    chosen, or None and why), and what the run measured of that detector's score for `head`'s replicate, where
    it did."""
    if detector is None:
        return {"name": None, "why_none": how}
    r, name = str(replicate), detector.name
    ood = results.get("ood") or {}
    if name == "mahalanobis":  # the detector's own (shrunk) score, not the baseline's (vfe.experiment.stages.ood.stage)
        sets = ((ood.get("selection") or {}).get("detector_mahalanobis") or {}).get(r) or {}
        auroc = {ood_set: values["auroc"] for ood_set, values in sets.items()}
    else:
        from vfe.robustness.detectors import OOD_SCORE_OF

        prefix = f"{OOD_SCORE_OF[name]}_auroc_"
        values = ((ood.get("per_head") or {}).get(head) or {}).get(r) or {}
        auroc = {k.removeprefix(prefix): v for k, v in values.items() if k.startswith(prefix)}
    groups = (((results.get("selective") or {}).get("per_head") or {}).get(head) or {}).get(r) or {}
    return {"name": name, "chosen_by": how, "coverage": detector.coverage, "threshold": detector.threshold,
            "validation_images": len(detector.validation_scores),
            "validation_coverage": detector.validation_coverage,
            "ood_auroc": auroc or None,
            "selective": {g: values[name] for g, values in groups.items() if name in values} or None}


def _held_out(row: dict, r: str) -> dict | None:
    if not row or row.get("headline") is None:
        return None
    return {"metric": row["headline_metric"], "value": (row.get("headline_by_replicate") or {}).get(r),
            "over_replicates": row["headline"], "vs_linear": row.get("headline_vs_linear"),
            "held_out_corruptions": row["held_out_corruptions"]}


def _strongest_attack(adversarial: dict | None) -> dict | None:
    """The attack with the lowest accuracy of those tried (for a head that adapts, each attack's accuracy is
    already the per-image worst case over direct, transfer and BPDA)."""
    tried = {k: v for k, v in ((adversarial or {}).get("accuracy") or {}).items() if k != "clean"}
    if not tried:
        return None
    attack = min(tried, key=lambda k: (tried[k], k))
    return {"attack": attack, "accuracy": tried[attack], "n_images": adversarial.get("n"),
            "attacks_tried": sorted(tried)}


# -- markdown ------------------------------------------------------------------------------------------

def _pct(x) -> str:
    return "–" if not isinstance(x, (int, float)) or not math.isfinite(x) else f"{100 * x:.1f} %"


def _diff(comparison: dict | None) -> str:
    """' (vs linear: +0.3 points [-0.2, +0.8], no difference shown)' from a paired comparison."""
    if not comparison or not isinstance(comparison.get("mean_diff"), (int, float)):
        return ""
    low, high = comparison.get("low"), comparison.get("high")
    interval = (f" [{100 * low:+.1f}, {100 * high:+.1f}]" if all(isinstance(v, (int, float)) and math.isfinite(v)
                                                                    for v in (low, high)) else " (no interval)")
    return f" (vs linear, paired over {comparison.get('n', '?')} replicates: {100 * comparison['mean_diff']:+.1f} " \
           f"points{interval}, {comparison.get('verdict', '')})"


def _mean_std(stat: dict | None) -> str:
    if not stat or not isinstance(stat.get("mean"), (int, float)) or not math.isfinite(stat["mean"]):
        return "–"
    return f"{100 * stat['mean']:.1f} ± {100 * stat['std']:.1f} % (n = {stat['n']})"


def card_markdown(card: dict) -> str:
    """card.md: the card as a page a person reads."""
    lines = [f"# Robustness card: `{card['head']}`, replicate {card['replicate']}", "",
             (f"- data set: {card['dataset']} ({card['n_train']} training / {card['n_test']} test images), "
             f"protocol: {card['protocol']}, backbone: {card['backbone']} ({card['weights']} weights, "
             f"{card['image_size']} px)"),
             (f"- replicate {card['replicate']} of {card['replicates']} (seed {card['replicate_seed']}, base seed "
             f"{card['data_seed']}); vfe {card['vfe_version']}")]
    selection = card.get("selection")
    if selection:
        lines.append(f"- why this head and replicate: {selection['rule']}")
    lines += ["", "| measure | value |", "| --- | --- |",
              f"| clean accuracy | {_pct(card['clean']['accuracy'])} |",
              (f"| clean accuracy over replicates | {_mean_std(card['clean_over_replicates']['accuracy'])}"
              f"{_diff(card['clean_over_replicates']['vs_linear'])} |"),
              f"| ECE (15 bins) | {_pct(card['ece'])} |"]
    corruptions = card.get("corruptions")
    if corruptions:
        lines.append(f"| corruption accuracy, mean of the benchmark corruptions measured | "
                     f"{_pct(corruptions['mean_accuracy'])} |")
        lines += [f"| corruption accuracy, {family} | {_pct(acc)} |"
                  for family, acc in corruptions["per_family"].items()]
    held = card.get("held_out_robustness")
    if held:
        lines.append(f"| held-out robustness ({held['metric']}; 100 % = the linear head, lower is better) | "
                     f"{_pct(held['value'])}; over replicates {_mean_std(held['over_replicates'])}"
                     f"{_diff(held['vs_linear'])} |")
    attack = card.get("strongest_attack")
    if attack:
        lines.append(f"| strongest attack ({attack['attack']}, {attack['n_images']} images) | "
                     f"{_pct(attack['accuracy'])} |")
    for name, value in (card.get("ood_auroc") or {}).items():
        lines.append(f"| OOD AUROC vs {name} (validation-selected score) | {_pct(value)} |")
    lines += _detector_rows(card.get("detector"))
    lines += ["", ("Every number is read from the run's results.json (the card's `sources` name the fields); "
                  "corruption families average that replicate's accuracies over their benchmark corruptions and "
                  "severities. docs/cards.md says what each row means."), ""]
    return "\n".join(lines)


def _detector_rows(detector: dict | None) -> list[str]:
    """The table rows of the card's detector (none for a card from before detectors were saved)."""
    if detector is None:
        return []
    if detector["name"] is None:
        return [f"| abstains (vfe predict --coverage) | no: {detector['why_none']} |"]
    rows = [(f"| abstains (vfe predict --coverage) | {detector['name']} score above {detector['threshold']:.6g}: "
            f"answers {_pct(detector['validation_coverage'])} of {detector['validation_images']} validation "
            f"images (target {_pct(detector['coverage'])}); chosen by {detector['chosen_by']} |")]
    rows += [f"| {detector['name']} OOD AUROC vs {name} (test half) | {_pct(value)} |"
             for name, value in (detector.get("ood_auroc") or {}).items()]
    selective = detector.get("selective") or {}
    for group in ("clean", "held_out"):  # results.json has every family too
        values = selective.get(group) or {}
        rows += [f"| {detector['name']}: selective risk at {key.removeprefix('risk_')} % coverage, "
                 f"{group.replace('_', '-')} corrupted images (the run's, all severities) | {_pct(values[key])} |"
                 if group != "clean" else
                 f"| {detector['name']}: selective risk at {key.removeprefix('risk_')} % coverage, clean test "
                 f"images | {_pct(values[key])} |" for key in sorted(k for k in values if k.startswith("risk_"))]
    return rows
