"""The reference protocol's report sections: its fine-tuning stage, and two runs' heads side by side.

`vfe run --protocol reference` fine-tunes the top of the backbone first (results.json "finetune");
`--compare-with RUN` copies another finished run's summary into results.json ("compared_run"), so the
report can show, e.g., the compare model and VFE on the fine-tuned backbone beside the linear head and
VFE on the frozen one, every number from its own run.
"""
from __future__ import annotations

from vfe.report import numbers
from vfe.report.document import Note, Paragraph, Section, Table
from vfe.report.names import hardest_telling_budget, metric_of, parse_attack
from vfe.robustness.stats import mean_std

PROTOCOL_LABELS = {"frozen": "frozen ImageNet backbone", "reference": "fine-tuned top (the reference's protocol)"}
SIDE_BY_SIDE = ("clean_accuracy", "corruption_accuracy", "mCE", "relative_mCE", "clean_ece")


def augmentation_text(settings: dict) -> str:
    """What the fine-tuning's images went through, from its FinetuneSettings."""
    if settings.get("finetune_augmix"):
        return (f"AugMix, two views per image and epoch, Jensen-Shannon weight {settings.get('finetune_js_weight')} "
                "(their activations at the cut cached)")
    return "flip, rotation, zoom (whole backbone every epoch)" if settings.get("finetune_augment") else "none"


def finetune_section(results: dict) -> Section | None:
    """What stage 0 of the reference protocol did, replicate by replicate (results.json "finetune": {replicate:
    record}); None for a frozen-protocol run."""
    per_rep = results.get("finetune")
    if not per_rep:
        return None
    first = next(iter(per_rep.values()))
    s = first.get("settings", {})
    shape = " x ".join(map(str, first.get("activation_shape", [])))
    storage = (f"{shape}, cached as {first.get('activation_storage')} (min cosine of features vs fp32 "
               f"{first.get('storage_min_cosine')})")
    training = f"{s.get('finetune_epochs')}, {s.get('finetune_batch_size')}, {s.get('finetune_lr')}"
    accuracy = mean_std([ft.get("compare_model_test_accuracy") for ft in per_rep.values()])
    rows = [["trainable top starts at", first.get("cut_point")],
            ["share of the backbone's parameters trained", f"{100 * first['trainable_fraction']:.1f} %"],
            ["activations at the cut", storage],
            ["epochs, batch size, Adam learning rate", training],
            ["input augmentation", augmentation_text(s)],
            ["linear probe first (LP-FT), epochs", str(s.get("finetune_lp_epochs") or "no")],
            [(f"compare model (fine-tuned top + its own Dense) test accuracy, mean ± std over {accuracy['n']} "
             "replicates"), numbers.mean_pm_std(metric_of("clean_accuracy"), accuracy)]]
    per_replicate = []
    for r, ft in per_rep.items():
        records = (ft.get("history") or {}).get("records") or []
        last = records[-1] if records else {}
        per_replicate.append([r, str(ft.get("seed")), numbers.general(ft.get("compare_model_test_accuracy")),
                              f"{numbers.general(last.get('loss'))}, {numbers.general(last.get('acc'))}"
                              if last else numbers.MISSING, numbers.seconds(ft.get("seconds")),
                              (f"{'read from the cache' if ft.get('loaded_from_cache') else 'trained in this run'}, "
                              f"sha256 {str(ft.get('weights_sha256'))[:16]}…")])
    return Section("Fine-tuning (reference protocol)", [
        Paragraph("Stage 0 trained the top of the backbone together with Dropout(0.3) -> Dense, as the reference's "
                  "compare model, for a fixed number of epochs with BatchNorm of the top in training mode, once per "
                  "replicate (each on its own training subset, with its own seed). Each replicate's heads were then "
                  "fitted on the features of its fine-tuned, frozen backbone; its `linear` head is the compare "
                  "model's Dropout -> Dense retrained on those features, and the corruptions, attacks and OOD sets "
                  "of the replicate all run through its fine-tuned backbone."),
        Table(["", "value"], [[k, numbers.general(v)] for k, v in rows]),
        Table(["replicate", "seed", "compare model test accuracy", "last epoch: training loss, accuracy",
               "wall time", "weights"], per_replicate, "Fine-tuning, replicate by replicate.")])


def comparable(results: dict) -> dict:
    """What another run's report needs of this run's results (results.json "compared_run")."""
    return {k: results.get(k) for k in ("setting", "summary", "adversarial_intervals", "finetune", "leaderboard")}


def _strongest_attack(keys, tables) -> str | None:
    """The L-inf EOT attack of the largest budget at which some head of `tables` keeps accuracy above 0 (the
    hardest test that still tells heads apart; the largest budget when none does), else None."""
    specs = {k: spec for k in keys if k.startswith("adv:") and (spec := parse_attack(k[4:])) is not None
             and spec.norm == "linf" and spec.eot}
    eps = hardest_telling_budget(specs, tables)
    return next((k for k, spec in specs.items() if spec.eps == eps), None)


def protocols_section(results: dict) -> Section | None:
    """This run's heads beside those of the run given by --compare-with; None without one."""
    other = results.get("compared_run")
    if not other:
        return None
    runs = [(results.get("setting", {}), results), (other.get("setting", {}), other)]
    columns, cells = [], []
    for setting, res in runs:
        for head, stats in (res.get("summary") or {}).get("table", {}).items():
            columns.append(f"{head} · {setting.get('protocol', 'frozen')}")
            cells.append((stats, (res.get("adversarial_intervals") or {}).get(head, {})))
    shared = set.intersection(*(set(stats) for stats, _ in cells)) if cells else set()
    rows = []
    for key in [k for k in SIDE_BY_SIDE if k in shared]:
        m = metric_of(key)
        rows.append([m.unit_label, *(numbers.mean_pm_std(m, stats.get(key)) for stats, _ in cells)])
    attack = _strongest_attack(shared, [(res.get("summary") or {}).get("table", {}) for _, res in runs])
    if attack:
        m = metric_of(attack)
        rows.append([m.unit_label, *(_with_interval(m, stats.get(attack), intervals.get(attack[4:]))
                                     for stats, intervals in cells)])
    for key in sorted(k for k in shared if k.startswith("ood:selected_auroc_")):
        m = metric_of(key)
        rows.append([m.unit_label, *(numbers.mean_pm_std(m, stats.get(key)) for stats, _ in cells)])
    settings = [f"{s.get('protocol', 'frozen')}: {s.get('backbone')} at {s.get('image_size')} px on "
                f"{s.get('dataset')}, n_train={s.get('n_train')}, n_test={s.get('n_test')}, {_replicates(s)}"
                for s, _ in runs]
    blocks = [Paragraph("Each column is one head under one protocol, every number from its own run: "
                        + "; ".join(PROTOCOL_LABELS.get(s.get("protocol", "frozen"), "?") + f" ({line})"
                                    for (s, _), line in zip(runs, settings, strict=True)) + "."),
              Table(["metric", *columns], rows,
                    "Mean ± std over replicates; the attack row adds the 95 % interval of a two-stage bootstrap "
                    "(replicates, then each replicate's own attacked images). Relative mCE and mCE are normalised "
                    "by each run's own linear head. No verdicts here: the two protocols' runs share no replicates "
                    "to pair.")]
    if runs[0][0].get("dataset") != runs[1][0].get("dataset") or runs[0][0].get("n_test") != runs[1][0].get("n_test"):
        blocks.append(Note("The two runs measured different data; compare their numbers with care."))
    return Section("Protocols side by side", blocks)


def _replicates(setting: dict) -> str:
    """'3 replicates'; the seeds for a run written before replicates."""
    if isinstance(setting.get("replicates"), int):
        return f"{setting['replicates']} replicate{'s' * (setting['replicates'] != 1)}"
    return f"seeds {', '.join(map(str, setting.get('seeds') or []))}"


def _with_interval(metric, stat: dict | None, interval: dict | None) -> str:
    text = numbers.mean_pm_std(metric, stat)
    if interval and numbers.is_number(interval.get("low")):
        text += f" [{metric.value(interval['low'])}, {metric.value(interval['high'])}]"
    return text
