"""One function per report section: results in, a `Section` of tables, figures and notes out.
A stage missing from the results gives a note saying it was skipped, never an error.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from vfe.report import figures, numbers
from vfe.report.document import Figure, Note, Section, Table
from vfe.report.names import metric_of, ordered, parse_ood
from vfe.report.narrative import (
    TEST_LABELS,
    what_this_says,
)
from vfe.robustness.stats import BOOTSTRAP_TEST, N_RESAMPLES, T_TEST, mean_std

BENCHMARK_MEAN = "mean over benchmark corruptions"
# results.json "histories" keys: "<head>/replicate<r>" ("<head>/seed<s>" in runs from before replicates)
HISTORY_NAME = re.compile(r"^(?P<head>.+)/(?:replicate|seed)(?P<replicate>-?\d+)$")
# what the summary table shows; the rest of the metrics are in the stage sections
SUMMARY_METRICS = ("clean_accuracy", "corruption_accuracy", "mCE", "relative_mCE", "summed_relative_mCE",
                   "clean_ece", "clean_nll")


@dataclass
class Context:
    """What every section needs: the results and what follows from them."""

    results: dict
    heads: list[str] = field(init=False)
    setting_line: str = field(init=False)
    colours: dict = field(init=False)

    def __post_init__(self) -> None:
        setting = self.results.get("setting", {})
        self.heads = list(self.results.get("clean") or setting.get("heads") or [])
        self.setting_line = setting_line(setting)
        self.colours = figures.head_colours(self.heads)

    @property
    def n_replicates(self) -> int | None:
        return n_replicates(self.results.get("setting", {}))


def n_replicates(setting: dict) -> int | None:
    """How many replicates the run had (`replicates`; results written before replicates listed `seeds`)."""
    if isinstance(setting.get("replicates"), int):
        return setting["replicates"]
    return len(setting["seeds"]) if setting.get("seeds") else None


def replicates_text(setting: dict) -> str:
    """'3 replicates' (or, for results written before replicates, the seeds they list)."""
    n = n_replicates(setting)
    if n is None:
        return "? replicates"
    if "replicates" not in setting:
        return f"seeds {', '.join(map(str, setting['seeds']))}"
    return f"{n} replicate{'s' * (n != 1)}"


def setting_line(setting: dict) -> str:
    """The one line every figure carries: what was measured, on what, how often."""
    size = setting.get("image_size")
    tuned = ", top fine-tuned (reference protocol)" if setting.get("protocol") == "reference" else ""
    return (f"{setting.get('backbone', '?')} ({setting.get('weights', '?')} weights{tuned}) at "
            f"{f'{size} px' if size else '? px'} on {setting.get('dataset', '?')}; "
            f"n_train={setting.get('n_train', '?')}, n_test={setting.get('n_test', '?')}; {replicates_text(setting)}")


def skipped(stage: str, why: str = "it is not in the results") -> Note:
    return Note(f"The {stage} stage was skipped: {why}.")


def setting_section(ctx: Context) -> Section:
    s = ctx.results.get("setting", {})
    rows = [["dataset", s.get("dataset")], ["protocol", s.get("protocol", "frozen")], ["backbone", s.get("backbone")],
            ["weights", s.get("weights")],
            ["image size", f"{s['image_size']} px" if s.get("image_size") else None],
            ["feature dimension", s.get("feature_dim")], ["training images", s.get("n_train")],
            ["test images", s.get("n_test")], ["heads", s.get("heads") or ctx.heads],
            *([["replicates", s.get("replicates")], ["replicate seeds", s.get("replicate_seeds")],
               ["redrawn in each replicate", "; ".join(s.get("redrawn_per_replicate") or []) or None],
               ["fixed across replicates", "; ".join(s.get("fixed_across_replicates") or []) or None]]
              if "replicates" in s else [["seeds", s.get("seeds")]]),
            ["data seed", s.get("data_seed")], ["device", s.get("device")],
            *([["runtime", s["runtime"]]] if "runtime" in s else []), ["machine", s.get("machine")],
            ["torch", s.get("torch")]]
    counts = ctx.results.get("head_parameters") or {}
    rows += [[f"parameters of one {head} head", f"{counts[head]:,}"] for head in ctx.heads if head in counts]
    blocks = [Table(["setting", "value"], [[k, numbers.general(v)] for k, v in rows])]
    timings = ctx.results.get("timings")
    if timings:
        rows = [[stage, numbers.seconds(t)] for stage, t in timings.items()]
        for head, per_replicate in (ctx.results.get("fit_seconds") or {}).items():
            stat = mean_std(per_replicate)
            rows.append([f"fit one {head} head (mean ± std over {len(per_replicate)} replicates)",
                         f"{numbers.seconds(stat['mean'])} ± {numbers.seconds(stat['std'])}"])
        blocks.append(Table(["stage", "wall time"], rows, "Wall-clock time per stage of the run."))
    else:
        blocks.append(Note("No stage timings in these results."))
    return Section("Setting", blocks)


def narrative_section(ctx: Context) -> Section:
    return Section("What this says", list(what_this_says(ctx.results)))


def summary_section(ctx: Context) -> Section:
    summary = ctx.results.get("summary")
    if not summary or not summary.get("table"):
        return Section("Summary", [skipped("summary", "the results hold no per-head summary")])
    table = summary["table"]
    keys = dict.fromkeys(k for per_head in table.values() for k in per_head)
    metrics = [m for m in ordered(keys) if m.key in SUMMARY_METRICS or m.group == "adversarial"
               or (m.group == "ood" and (ood := parse_ood(m.key[4:])) is not None and ood.stat == "auroc")]
    header = ["metric", *(f"{h} (mean ± std over replicates)" for h in table), "better"]
    rows = [[m.unit_label, *(numbers.mean_pm_std(m, table[h].get(m.key), ctx.n_replicates) for h in table),
             "higher" if m.higher_is_better else "lower"] for m in metrics]
    blocks = [Table(header, rows, "Mean ± sample standard deviation over replicates; n is shown where a metric "
                                  "has fewer replicates than the run. Which differences count is decided by the "
                                  "paired tests of the comparison section, not by these spreads.")]
    missing = [stage for stage in ("corruptions", "adversarial", "ood") if stage not in ctx.results]
    if missing:
        blocks.append(Note(f"Not run, so not in the table: {', '.join(missing)}."))
    return Section("Summary", blocks)


def comparison_section(ctx: Context) -> Section:
    summary = ctx.results.get("summary") or {}
    comparisons = summary.get("vs_baseline")
    baseline = summary.get("baseline", "baseline")
    if not comparisons:
        return Section(f"Paired comparison with the {baseline} head",
                       [skipped("paired comparison", f"there is no {baseline} head or no other head to compare")])
    blocks = []
    for head, per_metric in comparisons.items():
        rows = []
        for m in ordered(per_metric):
            c = per_metric[m.key]
            rows.append([m.unit_label, numbers.signed_difference(m, {"mean_diff": c.get("mean_diff")}),
                         numbers.paired_interval(m, c), TEST_LABELS.get(c.get("test"), numbers.MISSING),
                         numbers.p_value(c), numbers.verdict(c)])
        blocks.append(Table(["metric", f"{head} − {baseline} (mean over replicates)", "95 % paired interval",
                             "test", "p (paired t)", "verdict"], rows,
                            f"{head} against {baseline}, replicate by replicate (replicate r of both heads shares "
                            "its training subset, fine-tuning, initialisation seed and attacked images). "
                            f"\"{TEST_LABELS[T_TEST]}\": the Student-t interval of the per-replicate differences, "
                            "mean ± t(0.975, n−1) · sd / √n, with the paired t-test's p. "
                            f"\"{TEST_LABELS[BOOTSTRAP_TEST]}\" (attacks, where the results hold per-image "
                            f"correctness): percentile interval of {N_RESAMPLES} resamples of the replicates and, "
                            "within each, its attacked images, of the per-image difference in correctness. The "
                            "verdict is \"better\" or \"worse\" only when the interval excludes 0, else \"no "
                            "difference shown\"; with one replicate, or the same difference in every replicate, "
                            "there is no interval and no verdict."))
    return Section(f"Paired comparison with the {baseline} head", blocks)


def calibration_section(ctx: Context) -> Section:
    title = "Calibration"
    curves = ctx.results.get("reliability")
    if not curves:
        return Section(title, [Note("Reliability diagrams need the clean test probabilities per confidence bin "
                                    "(`reliability`), which these results do not hold.")])
    bins = {head: [{"edges": np.asarray(curve["bin_edges"]),
                    **{k: np.asarray(curve[k], dtype=float) for k in ("accuracy", "confidence", "count")}}
                   for curve in (curves[head][r] for r in numbers.replicate_keys(curves[head]))]
            for head in sorted(curves)}
    table = (ctx.results.get("summary") or {}).get("table", {})
    ece = {h: numbers.mean_pm_std(metric_of("clean_ece"), table.get(h, {}).get("clean_ece")) + " %" for h in bins}
    png = figures.reliability_diagrams(bins, ece, ctx.colours, "Reliability on the clean test set",
                                       ctx.setting_line)
    return Section(title, [Figure("reliability", png, "Accuracy per confidence bin (mean ± std over replicates) with "
                                                      "its gap to the bin's mean confidence; below, the share of "
                                                      "test images per bin.")])


def training_section(ctx: Context) -> Section:
    title = "Training curves"
    histories = ctx.results.get("histories")
    if not histories:
        return Section(title, [Note("No training histories in these results.")])
    per_head: dict[str, dict[str, dict]] = {}
    for name, history in histories.items():
        named = HISTORY_NAME.match(name)
        head, replicate = (named["head"], named["replicate"]) if named else (name, "0")
        phases = numbers.history_phases(history)
        if phases:
            per_head.setdefault(head, {})[replicate] = phases
    blocks = []
    for head, per_replicate in per_head.items():
        per_replicate = {r: per_replicate[r] for r in numbers.replicate_keys(per_replicate)}
        blocks.append(Figure(f"training_{head}", figures.training_curves(
            per_replicate, f"Training curves of the {head} head", ctx.setting_line),
            f"{head}: training (blue) and validation (orange) metrics per epoch."))
    return Section(title, blocks or [Note("The training histories hold no per-epoch records.")])


def sweep_section(ctx: Context) -> Section | None:
    """The sweep's rows (per cell or summarised), one line each; None when the run had no sweep."""
    rows = ctx.results.get("sweep")
    if not rows:
        return None
    flat = [_sweep_row(r) for r in rows]
    columns = list(dict.fromkeys(k for r in flat for k in r))
    return Section("Sweep", [Table(columns, [[r.get(c, numbers.MISSING) for c in columns] for r in flat],
                                   "Every cell of the sweep (head × parameters × training size, over seeds).")])


def _sweep_row(row: dict) -> dict[str, str]:
    """Parameters as 'k=v', `<m>_mean`/`<m>_std` pairs as one 'mean ± std' cell, nested metrics flattened."""
    row = dict(row)
    row.pop("data", None)  # the hash of the arrays the cell ran on: a cache key, not a result
    if "train_size" in row and row["train_size"] is None:
        row["train_size"] = "all"  # the sweep's None: the whole training set
    out = {"head": numbers.general(row.pop("head"))} if "head" in row else {}
    params = row.pop("params", None)
    if params is not None:
        out["params"] = ", ".join(f"{k}={v}" for k, v in params.items()) or "defaults"
    flat = numbers.flatten(row)
    for key, value in flat.items():
        stem = key.removesuffix("_mean")
        if key.endswith("_std") and f"{key.removesuffix('_std')}_mean" in flat:
            continue
        if key.endswith("_mean") and f"{stem}_std" in flat:
            std = flat[f"{stem}_std"]
            out[stem] = f"{numbers.general(value)} ± {std:.2g}" if numbers.is_number(std) else numbers.general(value)
        else:
            out[key] = numbers.general(value)
    return out
