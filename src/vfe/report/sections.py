"""One function per report section: results in, a `Section` of tables, figures and notes out.
A stage missing from the results gives a note saying it was skipped, never an error.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

import numpy as np

from vfe.report import figures, numbers
from vfe.report.document import Figure, Note, Paragraph, Section, Table
from vfe.report.inputs import decode_image
from vfe.report.names import metric_of, ordered, parse_attack, parse_ood
from vfe.report.narrative import (
    TEST_LABELS,
    baseline_choices,
    feature_baseline,
    interval_text,
    ood_choice,
    ood_sets_of,
    what_this_says,
)
from vfe.robustness.corruptions import REGISTRY, corrupt
from vfe.robustness.corruptions.parameters import parameter_set
from vfe.robustness.stats import BOOTSTRAP_TEST, N_RESAMPLES, T_TEST, mean_std, paired_attack

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


def corruption_section(ctx: Context) -> Section:
    title = "Corruptions"
    if "corruptions" not in ctx.results:
        return Section(title, [skipped("corruption")])
    corr = ctx.results["corruptions"]
    curves, severities = numbers.severity_curves(ctx.results, BENCHMARK_MEAN)
    if not curves:
        return Section(title, [Note("The corruption stage ran but measured no corruption.")])
    blocks: list = [Figure("corruptions_mean", figures.severity_curves(
        {h: {BENCHMARK_MEAN: c[BENCHMARK_MEAN]} for h, c in curves.items()}, severities, ctx.colours,
        "Accuracy under corruption, mean over the benchmark corruptions", ctx.setting_line, n_cols=1),
        "Mean accuracy over the benchmark corruptions at each severity (severity 0 is the clean test set); "
        "line: mean over replicates, band: ± one standard deviation.")]
    names = list(dict.fromkeys(n for c in curves.values() for n in c if n != BENCHMARK_MEAN))
    for family, members in _families(names).items():
        blocks.append(Figure(f"corruptions_{family}", figures.severity_curves(
            {h: {n: c[n] for n in members if n in c} for h, c in curves.items()}, severities, ctx.colours,
            f"Accuracy against severity: {family} corruptions", ctx.setting_line),
            f"{family.capitalize()} corruptions: accuracy against severity per head (mean ± std over replicates)."))
    blocks.append(_per_corruption_table(ctx, corr, names))
    blocks.append(_corruption_grid(ctx, names, severities))
    return Section(title, blocks)


def _families(names: list[str]) -> dict[str, list[str]]:
    """Corruptions by family as the registry groups them (a name it does not know: "other")."""
    out: dict[str, list[str]] = {}
    for name in names:
        out.setdefault(REGISTRY[name].family if name in REGISTRY else "other", []).append(name)
    return out


def _per_corruption_table(ctx: Context, corr: dict, names: list[str]) -> Table:
    acc_metric, ce_metric = metric_of("clean_accuracy"), metric_of("mCE")
    per_head = corr.get("per_head", {})
    seen = set((ctx.results.get("augmentation") or {}).get("train_corruptions", []))
    rows = []
    for name in names:
        row = [name.replace("_", " ")]
        if "augmentation" in ctx.results:
            row.append("seen" if name in seen else "held out")
        for head in per_head:
            reps = per_head[head].values()
            acc = [np.mean(list(r["accuracy"][name].values())) for r in reps if name in r.get("accuracy", {})]
            ce = [r["CE"][name] for r in reps if name in r.get("CE", {})]
            row.append(numbers.mean_pm_std(acc_metric, mean_std(acc)))
            row.append(numbers.mean_pm_std(ce_metric, mean_std(ce)))
        rows.append(row)
    augmentation = ctx.results.get("augmentation")
    header = ["corruption", *(["augmented heads"] if augmentation else []),
              *(f"{h}: {col}" for h in per_head for col in ("accuracy (%)", "CE (%)"))]
    caption = ("Per corruption: accuracy averaged over severities, and corruption error (CE: summed error over "
               f"severities relative to the {corr.get('normaliser', 'baseline')} head in the same replicate); mean "
               "± std over replicates.")
    if augmentation and augmentation["train_corruptions"]:
        caption += (f" The augmented heads trained on the {augmentation['train_family']} family "
                    f"({', '.join(augmentation['train_corruptions'])}): those rows are \"seen\", not a test of "
                    f"robustness for them; {', '.join(augmentation['held_out_families'])} stayed held out.")
    elif augmentation:
        caption += (" The AugMix heads trained on views made by operations that are none of these corruptions: "
                    "every row is held out for them.")
    return Table(header, rows, caption)


def _corruption_grid(ctx: Context, names: list[str], severities: list[int]) -> Figure | Note:
    if "example_image" not in ctx.results:
        return Note("The corruption picture grid needs a test image (`example_image`), which these results "
                    "do not hold.")

    config = ctx.results.get("config", {})
    seed, params = config.get("data_seed", 0), config.get("corruption_params", "auto")
    image = decode_image(ctx.results["example_image"])
    table = parameter_set(params, max(image.shape[:2]))

    def one(picture: np.ndarray, name: str, severity: int) -> np.ndarray:
        return corrupt(picture[None], name, severity, seed=seed, params=params)[0]

    png = figures.corruption_grid(image, names, severities, one,
                                  "The first test image under every corruption and severity", ctx.setting_line)
    return Figure("corruption_grid", png, f"The first test image under each corruption (rows) at each severity "
                                          f"(columns) with the {table.name!r} severity parameters ({table.source}), "
                                          "as the backbone receives it before resizing.")


def adversarial_section(ctx: Context) -> Section:
    title = "Adversarial robustness"
    if "adversarial" not in ctx.results:
        return Section(title, [skipped("adversarial")])
    curves, clean = numbers.adversarial_series(ctx.results)
    if not any(curves.values()):
        return Section(title, [Note("The adversarial stage ran but its results name no attack this report can "
                                    "parse (<attack>_<norm>_<eps>[_eot]).")])
    blocks: list = []
    facts = _attack_facts(ctx.results)
    if facts:
        blocks.append(Paragraph("How the attacks ran: " + "; ".join(facts) + "."))
    adaptive = [h for h, rows in ctx.results["adversarial"].items() if numbers.is_adaptive(rows)]
    blocks.append(Figure("adversarial", figures.adversarial_curves(
        curves, clean, ctx.colours, "Accuracy under attack against the attack radius", ctx.setting_line),
        "Accuracy under white-box attack (mean ± std over replicates); dashed: the attack as is, solid: with "
        "expectation over transformation (EOT); a head that does not sample has only the solid curve (EOT is "
        "the plain attack for it). ε = 0 is the accuracy on the same images before attack. "
        + (f"For {', '.join(adaptive)} (attacked adaptively) each point is the worst case over its attacks. "
           if adaptive else "")
        + "The table below gives 95 % intervals that include the sampling error of the attacked images."))
    blocks.append(_interval_table(ctx.results))
    if adaptive:
        blocks.append(_adaptive_table(ctx.results, adaptive))
    blocks.append(_eot_gap_table(ctx))
    return Section(title, blocks)


def _interval_table(results: dict) -> Table | Note:
    """Accuracy under each attack with its 95 % interval over replicates and images, beside the same images'
    clean accuracy: with ~100 attacked images per replicate their sampling error is part of the uncertainty."""
    intervals = results.get("adversarial_intervals")
    if not intervals:
        return Note("These results hold no per-image correctness, so the attacked figures carry only the spread "
                    "over replicates, and the attack comparisons use the paired t over replicates.")
    rows = []
    for head, per_key in intervals.items():
        samples = numbers.samples_randomly((results.get("adversarial") or {}).get(head) or {})
        attacks = {a: k for k in per_key if (a := parse_attack(k)) is not None}
        for attack in sorted(attacks, key=lambda a: (a.norm != "linf", a.method, a.eps, a.eot)):
            if attack.eot and not samples and replace(attack, eot=False) in attacks:
                continue  # a deterministic head: EOT repeats the plain attack
            iv = per_key[attacks[attack]]
            n_reps = iv.get("n_replicates", iv.get("n_seeds", numbers.MISSING))
            rows.append([head, attack.label, interval_text(iv), interval_text(per_key.get("clean")),
                         f"{iv.get('n_images', numbers.MISSING)} × {n_reps}"])
    if not rows:
        return Note("The attack intervals name no attack this report can parse.")
    return Table(["head", "attack", "accuracy under attack (%) [95 % interval]",
                  "clean accuracy of the attacked images (%) [95 % interval]", "images × replicates"], rows,
                 "Mean accuracy over replicates with a 95 % percentile interval from a two-stage bootstrap "
                 f"({N_RESAMPLES} resamples): the replicates with replacement, then each drawn replicate's own "
                 "attacked images with replacement (each replicate attacked its own images), so it carries both "
                 "the spread over replicates and the sampling error of the small attacked subsets. A head that "
                 "does not sample shows each attack once: EOT is the plain attack for it.")


def _adaptive_table(results: dict, heads: list[str]) -> Table:
    """Per adaptively attacked head and attack: each attack's accuracy and the worst case the report uses."""
    metric = metric_of("clean_accuracy")
    names = list(dict.fromkeys(a for h in heads for r in results["adversarial"][h].values()
                               for per_key in (r.get("per_attack") or {}).values() for a in per_key))
    rows = []
    for head in heads:
        per_replicate = results["adversarial"][head]
        keys = dict.fromkeys(k for r in per_replicate.values() for k in r.get("per_attack") or {})
        for key in sorted(keys, key=lambda k: metric_of(f"adv:{k}").sort_key):
            by_attack = [mean_std([((r.get("per_attack") or {}).get(key) or {}).get(a)
                                   for r in per_replicate.values()]) for a in names]
            worst = mean_std([(r.get("accuracy") or {}).get(key) for r in per_replicate.values()])
            rows.append([head, _short_attack(key), *(numbers.mean_pm_std(metric, st) for st in by_attack),
                         numbers.mean_pm_std(metric, worst),
                         numbers.strongest_text(per_replicate, key) or numbers.MISSING])
    return Table(["head", "attack", *(f"{a} (%)" for a in names), "worst case per image, reported (%)",
                  "strongest single attack"], rows,
                 "Heads attacked adaptively: accuracy under each attack alone (mean ± std over replicates) and the "
                 "worst case, where an image counts as correct only if every attack left it so, which every other "
                 "table and verdict uses; \"strongest single attack\" left the fewest images correct (with its "
                 "replicates where they differ). An accuracy that only the direct attack leaves is not robustness.")


def _short_attack(key: str) -> str:
    attack = parse_attack(key)
    return attack.label if attack is not None else key


def _attack_facts(results: dict) -> list[str]:
    """The attack settings as recorded per replicate (falling back to the run's config)."""
    per_replicate = [r for per_head in results["adversarial"].values() for r in per_head.values()]
    config = results.get("config", {})

    def values(key: str) -> str:
        found = sorted({r[key] for r in per_replicate if key in r} or ({config[key]} if config.get(key) else set()))
        return ", ".join(map(str, found))

    facts = []
    if values("n"):
        facts.append(f"{values('n')} test images attacked per head and replicate (each replicate draws its own "
                     "images; within a replicate every head is attacked on the same ones)")
    steps = values("steps") or values("attack_steps")
    if steps:
        facts.append(f"{steps} PGD steps")
    if values("n_eot"):
        facts.append(f"EOT averaged over {values('n_eot')} draws of the head's randomness per step")
    sampling = {h: numbers.samples_randomly(rows) for h, rows in results["adversarial"].items()
                if any("samples_randomly" in r for r in rows.values())}
    if sampling:
        facts.append("heads that sample at prediction time: " + (", ".join(h for h, v in sampling.items() if v)
                                                                 or "none"))
    adaptive = [h for h, rows in results["adversarial"].items() if numbers.is_adaptive(rows)]
    if adaptive:
        facts.append("heads attacked adaptively (worst case over attacks, per replicate): " + ", ".join(adaptive))
    return facts


def _eot_gap_table(ctx: Context) -> Table | Note:
    """Naive vs EOT accuracy for each attack a sampling head ran both ways, with the paired interval of the gap:
    a gain that vanishes under EOT is obfuscation."""
    metric = metric_of("clean_accuracy")
    rows = []
    for head, per_replicate in ctx.results["adversarial"].items():
        if not numbers.samples_randomly(per_replicate):
            continue  # EOT is the plain attack for it: no gap to show
        keys = dict.fromkeys(k for r in per_replicate.values() for k in r.get("accuracy") or {})
        attacks = {a: k for k in keys if (a := parse_attack(k)) is not None}
        for attack in sorted((a for a in attacks if not a.eot), key=lambda a: (a.norm != "linf", a.method, a.eps)):
            twin = replace(attack, eot=True)
            if twin not in attacks:
                continue
            naive, eot = attacks[attack], attacks[twin]
            gap = paired_attack(per_replicate, per_replicate, naive, eot)  # naive − EOT, same images
            rows.append([head, attack.label,
                         numbers.mean_pm_std(metric, mean_std(r["accuracy"].get(naive) for r in per_replicate.values()
                                                              if "accuracy" in r)),
                         numbers.mean_pm_std(metric, mean_std(r["accuracy"].get(eot) for r in per_replicate.values()
                                                              if "accuracy" in r)),
                         numbers.paired_difference(metric, gap, unit=False) if gap.get("n") else numbers.MISSING,
                         TEST_LABELS.get(gap.get("test"), numbers.MISSING)])
    if not rows:
        return Note("No head that samples was attacked both with and without EOT, so there is no EOT gap to show.")
    return Table(["head", "attack", "accuracy, naive (%)", "accuracy, EOT (%)",
                  "naive − EOT (points) [95 % paired interval]", "test"], rows,
                 "Mean ± std over replicates; the gap's interval pairs the two attacks on the same replicates and "
                 "images. Accuracy that the naive attack leaves but EOT removes is a gradient-masking artefact, "
                 "not robustness.")


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


def ood_section(ctx: Context) -> Section:
    title = "Out-of-distribution detection"
    ood = ctx.results.get("ood")
    if ood is None:
        return Section(title, [skipped("out-of-distribution")])
    table = (ctx.results.get("summary") or {}).get("table", {})
    keys = dict.fromkeys(k for per_head in table.values() for k in per_head
                         if k.startswith("ood:") and not k.startswith("ood:selected_"))
    blocks: list = _ood_selected_table(ctx, ood, table)
    if keys:
        rows = [[m.unit_label, *(numbers.mean_pm_std(m, table[h].get(m.key), ctx.n_replicates) for h in table),
                 "higher" if m.higher_is_better else "lower"] for m in ordered(keys)]
        caption = ("Every score, for reference (picking the best row would select on the test set); "
                   + ("on the test halves; " if ood.get("selection") else "")
                   + "mean ± std over replicates.")
        blocks.append(Table(["metric", *table, "better"], rows, caption))
    else:
        blocks.append(Note("The OOD stage ran but the summary holds no OOD metric."))
    if not ood.get("selection") and keys:
        blocks.append(Note("These results predate choosing each head's OOD score on held-out validation "
                           "data, so no score is singled out: the best row per head would overstate it."))
    baselines = {k: stat for k in (ood.get("feature_baselines") or {}) if not k.startswith("selected_")
                 and (stat := feature_baseline(ood, k)) is not None}
    if baselines:
        rows = [[m.unit_label, numbers.mean_pm_std(m, baselines[m.key[4:]])]
                for m in ordered(f"ood:{k}" for k in baselines)]
        blocks.append(Table(["feature-space baseline", "value"], rows, "Detectors on the backbone features alone "
                            "(no head; fitted on each replicate's training features), every score for reference; "
                            "mean ± std over replicates."))
    sets = ood.get("ood_sets")
    if sets:
        blocks.append(Table(["OOD set", "images", "source"],
                            [[name, numbers.general(info.get("n")), numbers.general(info.get("source"))]
                             for name, info in sets.items()],
                            f"Out-of-distribution sets, against {numbers.general(ood.get('n_in'))} in-distribution "
                            "test images."))
    if ood.get("convention"):
        blocks.append(Paragraph(f"Convention: {ood['convention']}."))
    return Section(title, blocks)


def _ood_selected_table(ctx: Context, ood: dict, table: dict) -> list:
    """Each head's figure for the score chosen on validation, beside the head-free feature baseline."""
    selection = ood.get("selection")
    if not selection:
        return []
    chosen_heads = selection.get("per_head") or {}
    rows = []
    for ood_set in ood_sets_of(ood):
        for stat in ("auroc", "fpr95"):
            m = metric_of(f"ood:selected_{stat}_{ood_set}")
            rows.append([f"{ood_set}: {'AUROC' if stat == 'auroc' else 'FPR at 95% TPR'} (%)",
                         *(numbers.mean_pm_std(m, table[h].get(m.key), ctx.n_replicates) for h in table),
                         numbers.mean_pm_std(m, feature_baseline(ood, m.key[4:])),
                         "higher" if m.higher_is_better else "lower"])
        rows.append([f"{ood_set}: score chosen on validation", *(ood_choice(chosen_heads.get(h, {}), ood_set)
                                                                  for h in table),
                     ood_choice(baseline_choices(ood), ood_set), ""])
    n_val, n_test = selection.get("n_validation") or {}, selection.get("n_test") or {}
    return [Table(["OOD set", *table, "head-free baseline (backbone features)", "better"], rows,
                  "Each head's OOD score (and the feature baseline's, Mahalanobis or relative Mahalanobis) "
                  "is chosen per replicate by its AUROC on a validation half "
                  f"({numbers.general(n_val.get('in'))} in-distribution images) and reported on the other, "
                  f"held-out half ({numbers.general(n_test.get('in'))}); mean ± std over replicates.")]


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
