"""The report's "Selective classification under corruption" section, from results.json's "selective".

Risks and AURC are in % (lower is better), mean ± std over replicates; every detector is set against the
same head's max softmax, paired by replicate, and called lower or higher only when the paired interval
excludes 0.
"""
from __future__ import annotations

from vfe.report import numbers
from vfe.report.document import Note, Paragraph, Section, Table
from vfe.report.names import Metric
from vfe.report.sections import Context
from vfe.robustness.selective import risk_key

TITLE = "Selective classification under corruption"
REFERENCE = "msp"
DETECTOR_LABELS = {"msp": "max softmax", "mahalanobis": "Mahalanobis", "vfe-recon": "VFE reconstruction error",
                   "vfe-elbo": "VFE negative ELBO"}
GROUP_LABELS = {"clean": "clean", "held_out": "held-out corruptions"}
ANSWER_COVERAGE = 0.9
ANSWER_GROUP = "held_out"
VFE_DETECTORS = ("vfe-recon", "vfe-elbo")


def metric(key: str) -> Metric:
    """"risk_90" -> selective risk at 90 % coverage; "aurc" -> area under the risk-coverage curve (both in %)."""
    label = "AURC" if key == "aurc" else f"risk at {key.removeprefix('risk_')} % coverage"
    return Metric(key, "selective", label, True, (key,))


def detector_label(name: str) -> str:
    return DETECTOR_LABELS.get(name, name)


def group_label(name: str) -> str:
    return GROUP_LABELS.get(name, name)


def answer_lines(selective: dict) -> list[str]:
    """One sentence per classifier head and VFE detector: is its risk at 90 % coverage on the held-out corruptions
    lower than max softmax's, by the paired interval over replicates? (The README quotes these.)"""
    key, m = risk_key(ANSWER_COVERAGE), metric(risk_key(ANSWER_COVERAGE))
    lines = []
    for head, groups in selective.get("vs_msp", {}).items():
        for detector in VFE_DETECTORS:
            comparison = groups.get(ANSWER_GROUP, {}).get(detector, {}).get(key)
            if not comparison:
                continue
            mine = selective["summary"][head][ANSWER_GROUP][detector][key]
            msp = selective["summary"][head][ANSWER_GROUP][REFERENCE][key]
            lines.append(f"{head} head, {detector_label(detector)} against max softmax: risk "
                         f"{numbers.mean_pm_std(m, mine)} % vs {numbers.mean_pm_std(m, msp)} %, paired difference "
                         f"{numbers.paired_difference(m, comparison)}: {_reading(comparison)}")
    return lines


def _reading(comparison: dict, key: str = "risk") -> str:
    what = "AURC" if key == "aurc" else "risk"
    verdict = numbers.verdict(comparison)
    if verdict == "better than baseline":
        return f"lower {what} than max softmax"
    if verdict == "worse than baseline":
        return f"higher {what} than max softmax"
    return "no difference shown"


def selective_section(ctx: Context) -> Section:
    selective = ctx.results.get("selective")
    if not selective:
        return Section(TITLE, [Note("Skipped: it needs the corruption stage and a classifier head of "
                                    "--selective-heads (these results hold no \"selective\" section).")])
    coverages = selective["coverages"]
    blocks: list = [Paragraph(
        "Each classifier head answers only the inputs a detector finds most familiar and abstains on the rest. "
        "A group is one stream of images: the clean test set, or every corruption x severity of a family pooled "
        "(held-out: every benchmark corruption the head did not train on). Selective risk at coverage c is the "
        "error rate over the share c of the stream the detector ranks most familiar; AURC is the area under the "
        "risk-coverage curve (Geifman & El-Yaniv 2017). Lower is better; % mean ± std over replicates. Images per "
        "stream and replicate: " + ", ".join(f"{group_label(g)} {n}" for g, n in
                                              next(iter(selective["n_images"].values()), {}).items()) + ".")]
    answer = answer_lines(selective)
    if answer:
        blocks.append(Paragraph("The VFE's detectors against max softmax at 90 % coverage on the held-out "
                                "corruptions, paired by replicate: " + "; ".join(answer) + "."))
    for head, groups in selective["summary"].items():
        names = list(groups)
        header = ["detector", *(f"{group_label(g)}: {metric(risk_key(c)).label}" if g in ("clean", ANSWER_GROUP)
                                else f"{group_label(g)}: risk at {round(c * 100)} %"
                                for g in names for c in (coverages if g in ("clean", ANSWER_GROUP)
                                                         else [ANSWER_COVERAGE])),
                  f"{group_label(ANSWER_GROUP)}: AURC"]
        rows = []
        for detector in selective["detectors"]:
            cells = [numbers.mean_pm_std(metric(risk_key(c)), groups[g][detector][risk_key(c)])
                     for g in names for c in (coverages if g in ("clean", ANSWER_GROUP) else [ANSWER_COVERAGE])]
            aurc = groups.get(ANSWER_GROUP, {}).get(detector, {}).get("aurc")
            rows.append([detector_label(detector), *cells, numbers.mean_pm_std(metric("aurc"), aurc)])
        blocks.append(Table(header, rows, f"The {head} head answering (%)."))
    rows = []
    for head, groups in selective.get("vs_msp", {}).items():
        for detector, by_metric in groups.get(ANSWER_GROUP, {}).items():
            for key in (*(risk_key(c) for c in coverages), "aurc"):
                comparison = by_metric[key]
                rows.append([head, detector_label(detector), metric(key).label,
                             numbers.paired_difference(metric(key), comparison), _reading(comparison, key)])
    if rows:
        blocks.append(Table(["head", "detector", "metric", "minus max softmax (paired, 95 %)", "reading"], rows,
                            "Held-out corruptions: each detector against the same head's max softmax."))
    return Section(TITLE, blocks)
