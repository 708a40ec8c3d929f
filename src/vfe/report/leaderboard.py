"""The leaderboard section: every head and strategy ranked on held-out corruptions (results.json "leaderboard",
computed by `vfe.benchmark.leaderboard`), this run's and, with --compare-with, the other protocol's."""
from __future__ import annotations

from vfe.report import numbers
from vfe.report.document import Paragraph, Section, Table
from vfe.report.names import metric_of, parse_attack

PERCENT = metric_of("clean_accuracy")
RATIO = metric_of("relative_mCE")
ECE = metric_of("clean_ece")


def _interval(metric, bounds) -> str:
    return f" [{metric.value(bounds[0])}, {metric.value(bounds[1])}]" if bounds and all(
        numbers.is_number(b) for b in bounds) else ""


def _held_out(row: dict, total: int) -> str:
    n = len(row.get("held_out_corruptions") or [])
    return f"{n} of {total}" if row.get("seen_corruptions") else f"all {n}"


def _row(row: dict, protocol: str, total: int) -> list[str]:
    diff = row.get("clean_diff_vs_linear")
    attack = row.get("attack")
    ood = row.get("ood_auroc") or {}
    fit = row.get("fit_seconds")
    return [
        f"{row['head']} · {protocol}",
        numbers.mean_pm_std(PERCENT, row.get("clean_accuracy"))
        + (f" ({numbers.signed_difference(PERCENT, {'mean_diff': diff['mean']})})" if diff and row["head"] != "linear"
           and numbers.is_number(diff.get("mean")) else ""),
        f"{numbers.mean_pm_std(PERCENT, row.get('held_out_accuracy'))} ({_held_out(row, total)})",
        numbers.mean_pm_std(RATIO, row.get("held_out_relative_mCE"))
        + _interval(RATIO, row.get("held_out_relative_mCE_interval")),
        (numbers.mean_pm_std(PERCENT, row.get("attack_accuracy")) + _interval(PERCENT, row.get("attack_interval")))
        if attack else numbers.MISSING,
        numbers.mean_pm_std(ECE, row.get("clean_ece")),
        ", ".join(f"{name} {numbers.mean_pm_std(PERCENT, stat)}" for name, stat in ood.items()) or numbers.MISSING,
        numbers.seconds(fit["mean"]) if fit else numbers.MISSING,
    ]


def leaderboard_section(results: dict) -> Section | None:
    """The ranked table; None when the run has no leaderboard (a run older than it)."""
    board = results.get("leaderboard")
    if not board:
        return None
    runs = [(results.get("setting", {}), board)]
    other = results.get("compared_run") or {}
    if other.get("leaderboard"):
        runs.append((other.get("setting", {}), other["leaderboard"]))
    rows = []
    for setting, entries in runs:
        total = len(results.get("corruptions", {}).get("benchmark_corruptions", []))
        rows += [_row(r, setting.get("protocol", "frozen"), total) for r in entries]
    attacks = {r.get("attack") for _, entries in runs for r in entries if r.get("attack")}
    attack_label = " / ".join(sorted(spec.label for a in attacks if (spec := parse_attack(a)))) or "attack"
    seen = sorted({c for _, entries in runs for r in entries for c in r.get("seen_corruptions") or []})
    blocks = [
        Paragraph("Every head of the run, best first by relative mCE on the benchmark corruptions it did not see in "
                  "training (the linear head's errors on the same corruptions, same seed, are the normaliser: 100 "
                  "means as robust as the linear head, below 100 more robust). The interval after it is the 95 % "
                  "Student-t interval over seeds: a head separates from the linear head when it excludes 100. "
                  + (f"Heads trained with corrupted images saw {', '.join(seen)}: those are left out of their "
                     "columns. " if seen else "No head saw any benchmark corruption in training. ")
                  + "Each protocol is normalised by its own linear head."),
        Table(["head · protocol", "clean accuracy (%) (vs linear)", "held-out corruption accuracy (%)",
               "held-out relative mCE (%) [95 % interval]", f"{attack_label} (%) [95 % interval]", ECE.unit_label,
               "OOD AUROC (%), validation-selected score", "fit time per seed"], rows,
              "Mean ± std over seeds. The attack interval is the bootstrap over attacked images and seeds.")]
    return Section("Leaderboard", blocks)
