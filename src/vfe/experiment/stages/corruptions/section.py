"""The report's "Corruptions" section, from results.json's "corruptions": accuracy against severity per family,
the per-corruption table and the picture grid."""
from __future__ import annotations

import numpy as np

from vfe.report import figures, numbers
from vfe.report.document import Figure, Note, Section, Table
from vfe.report.inputs import decode_image
from vfe.report.names import metric_of
from vfe.report.sections import BENCHMARK_MEAN, Context, skipped
from vfe.robustness.corruptions import REGISTRY, corrupt
from vfe.robustness.corruptions.parameters import parameter_set
from vfe.robustness.stats import mean_std


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
