"""The leaderboard section: every head and strategy ranked on held-out corruptions (results.json
"leaderboard", computed by `vfe.experiment.leaderboard`), this run's and, with --compare-with, the other
protocol's.

Each verdict against the linear head is printed with its paired interval and its test, so a reader sees how
far the interval is from 0, not only which side of it the verdict fell on (docs/leaderboard.md)."""
from __future__ import annotations

from collections import Counter

from vfe.report import numbers
from vfe.report.document import Paragraph, Section, Table
from vfe.report.names import metric_of, parse_attack
from vfe.robustness.metrics import CORRUPTION_ERROR, MIN_DEGRADATION, SUMMED_MCE, SUMMED_RELATIVE_MCE

PERCENT = metric_of("clean_accuracy")
RATIO = metric_of("relative_mCE")
ECE = metric_of("clean_ece")

HEADLINES = {  # kind: (column label, short name for a cell, what it is)
    SUMMED_RELATIVE_MCE: (
        "held-out relative mCE, summed (%)", "summed relative mCE",
        ("the summed relative mCE: each head's error increase over its own clean error, summed over every "
         "held-out corruption and severity, over the linear head's summed increase (same replicate, same "
         "corruptions): 100 means as robust as the linear head, below 100 more robust")),
    SUMMED_MCE: (
        "held-out mCE, summed (%) (fallback)", "summed mCE (fallback)",
        ("FALLBACK to the summed mCE. The linear head's error increase summed over some head's held-out "
         "corruptions is not positive in {where}, so no ratio of degradations exists there; the headline is "
         "each head's corruption errors summed over every held-out corruption and severity, over the linear "
         "head's (100 = as many errors under corruption as the linear head; clean errors count too)")),
    CORRUPTION_ERROR: (
        "held-out corruption error (%) (fallback)", "corruption error (fallback)",
        ("FALLBACK to the plain corruption error. The linear head makes no error at all on some head's "
         "held-out corrupted images in some replicate, so no ratio to it exists; the headline is each head's "
         "plain mean error over its held-out corruptions and severities (not normalised)")),
}
OLD_RUN = ("held-out relative mCE (%)", "relative mCE", "")  # a leaderboard older than the headline


def _signed(metric, x) -> str:
    sign = "+" if x > 0 else "−" if x < 0 else ""
    return f"{sign}{metric.value(abs(x))}"


def _paired(metric, comparison: dict | None, is_base: bool) -> str:
    """' · better than baseline, −27.3 [−32.7, −21.9]': the verdict, the mean difference, its interval."""
    if is_base:
        return " · baseline"
    if not comparison or not numbers.is_number(comparison.get("mean_diff")):
        return ""
    text = f" · {comparison['verdict']}, {_signed(metric, comparison['mean_diff'])}"
    low, high = comparison.get("low"), comparison.get("high")
    if numbers.is_number(low) and numbers.is_number(high):
        return f"{text} [{_signed(metric, low)}, {_signed(metric, high)}]"
    n = comparison.get("n", comparison.get("n_replicates"))
    return f"{text} (no interval: {n} replicate{'s' if n != 1 else ''}, or no spread)"


def _strongest(row: dict) -> str:
    """' (strongest: transfer)', or with counts where the replicates' strongest attacks differ."""
    names = Counter((row.get("attack_strongest") or {}).values())
    if not names:
        return ""
    if len(names) == 1:
        return f" (strongest: {next(iter(names))})"
    counts = ", ".join(f"{name} in {n}" for name, n in names.most_common())
    return f" (strongest: {counts} of {names.total()} replicates)"


def _held_out(row: dict, total: int) -> str:
    n = len(row.get("held_out_corruptions") or [])
    if not row.get("seen_corruptions"):
        return f"all {n}"
    return f"{n} of {row.get('n_benchmark_corruptions', total)}"


def _headline(row: dict, show_kind: bool) -> str:
    stat = row.get("headline") if "headline_metric" in row else row.get("held_out_relative_mCE")
    text = numbers.mean_pm_std(RATIO, stat) + _paired(RATIO, row.get("headline_vs_linear"),
                                                      row["head"] == "linear")
    return f"{text} ({HEADLINES.get(row.get('headline_metric'), OLD_RUN)[1]})" if show_kind else text


def _classic(row: dict) -> str:
    if "headline_metric" in row and not row.get("held_out_relative_mCE"):
        return "undefined (the linear head does not degrade on some held-out corruption)"
    return numbers.mean_pm_std(RATIO, row.get("held_out_relative_mCE"))


def _attack(row: dict, is_base: bool) -> str:
    if not row.get("attack"):
        return numbers.MISSING
    return (numbers.mean_pm_std(PERCENT, row.get("attack_accuracy")) + _strongest(row)
            + _paired(PERCENT, row.get("attack_vs_linear"), is_base))


def _row(row: dict, protocol: str, total: int, show_kind: bool) -> list[str]:
    is_base = row["head"] == "linear"
    ood = row.get("ood_auroc") or {}
    fit = row.get("fit_seconds")
    return [
        f"{row['head']} · {protocol}",
        numbers.mean_pm_std(PERCENT, row.get("clean_accuracy"))
        + _paired(PERCENT, row.get("clean_vs_linear"), is_base),
        f"{numbers.mean_pm_std(PERCENT, row.get('held_out_accuracy'))} ({_held_out(row, total)})",
        _headline(row, show_kind),
        _classic(row),
        _attack(row, is_base),
        numbers.mean_pm_std(ECE, row.get("clean_ece")),
        ", ".join(f"{name} {numbers.mean_pm_std(PERCENT, stat)}" for name, stat in ood.items())
        or numbers.MISSING,
        numbers.seconds(fit["mean"]) if fit else numbers.MISSING,
    ]


def _where_linear_does_not_degrade(entries: list[dict]) -> str:
    """'2 of 3 replicates': where the linear head's summed degradation on some head's held-out set is <= 0."""
    reps = {r for row in entries for r, d in (row.get("linear_summed_degradation") or {}).items()
            if d <= MIN_DEGRADATION}
    total = {r for row in entries for r in row.get("linear_summed_degradation") or {}}
    return f"{len(reps)} of {len(total)} replicates" if total else "some replicate"


def _definitions(runs: list[tuple[dict, list[dict]]]) -> str:
    """What each run's headline is, and why where it fell back."""
    definitions = []
    for setting, entries in runs:
        what = HEADLINES.get(entries[0].get("headline_metric"), OLD_RUN)[2]
        if what:
            what = what.format(where=_where_linear_does_not_degrade(entries))
            definitions.append(f"Headline ({setting.get('protocol', 'frozen')} protocol): {what}.")
    return " ".join(definitions)


PAIRED = ("Verdicts against the linear head are paired: replicate r of every head shares its training "
          "subset, initialisation and attacked images, so each verdict reads the per-replicate differences "
          "(head − linear). Clean accuracy and the headline: the paired t test, the mean difference and its "
          "95 % Student-t interval over replicates. The attack: the paired bootstrap over replicates and, "
          "within each, the same attacked images, the mean difference and its 95 % percentile interval. "
          "\"better than baseline\" or \"worse than baseline\" only when the interval excludes 0, else \"no "
          "difference shown\"; the interval is printed beside each verdict. The attack column is each head's "
          "strongest attack (for adaptive heads the worst of the direct, transfer and BPDA attacks, named "
          "where the run recorded it).")


def leaderboard_section(results: dict) -> Section | None:
    """The ranked table; None when the run has no leaderboard (a run older than it)."""
    board = results.get("leaderboard")
    if not board:
        return None
    runs = [(results.get("setting", {}), board)]
    other = results.get("compared_run") or {}
    if other.get("leaderboard"):
        runs.append((other.get("setting", {}), other["leaderboard"]))
    kinds = {r.get("headline_metric") for _, entries in runs for r in entries}
    show_kind = len(kinds) > 1
    total = len(results.get("corruptions", {}).get("benchmark_corruptions", []))
    rows = [_row(r, setting.get("protocol", "frozen"), total, show_kind)
            for setting, entries in runs for r in entries]
    attacks = {r.get("attack") for _, entries in runs for r in entries if r.get("attack")}
    attack_label = " / ".join(sorted(spec.label for a in attacks if (spec := parse_attack(a)))) or "attack"
    seen = sorted({c for _, entries in runs for r in entries for c in r.get("seen_corruptions") or []})
    headline_header = "headline (%) (kind per row)" if show_kind else HEADLINES.get(next(iter(kinds)),
                                                                                    OLD_RUN)[0]
    blocks = [
        Paragraph("Every head of the run, best headline first, on the benchmark corruptions it did not see "
                  "in training (docs/leaderboard.md). " + _definitions(runs) + " Classic relative mCE, the "
                  "mean of per-corruption ratios, is shown beside it only where the linear head degrades on "
                  "every held-out corruption in every replicate. "
                  + (f"Heads trained with corrupted images saw {', '.join(seen)}: those are left out of "
                     "their columns. " if seen else "No head saw any benchmark corruption in training. ")
                  + "Each protocol is normalised by its own linear head."),
        Paragraph(PAIRED),
        Table(["head · protocol", "clean accuracy (%) · vs linear (paired t, 95 %)",
               "held-out corruption accuracy (%)", f"{headline_header} · vs linear (paired t, 95 %)",
               "classic relative mCE, held-out (%)",
               f"{attack_label} (%) · vs linear (paired bootstrap, 95 %)", ECE.unit_label,
               "OOD AUROC (%), validation-selected score", "fit time per replicate"], rows,
              "Mean ± std over replicates; differences are head − linear, in points.")]
    return Section("Leaderboard", blocks)
