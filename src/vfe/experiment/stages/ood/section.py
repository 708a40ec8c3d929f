"""The report's "Out-of-distribution detection" section, from results.json's "ood": each head's score chosen on the
validation halves, every score for reference, the head-free baselines and the OOD sets."""
from __future__ import annotations

from vfe.report import numbers
from vfe.report.document import Note, Paragraph, Section, Table
from vfe.report.names import metric_of, ordered
from vfe.report.narrative import baseline_choices, feature_baseline, ood_choice, ood_sets_of
from vfe.report.sections import Context, skipped


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
