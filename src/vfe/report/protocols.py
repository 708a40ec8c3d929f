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

PROTOCOL_LABELS = {"frozen": "frozen ImageNet backbone", "reference": "fine-tuned top (the reference's protocol)"}
SIDE_BY_SIDE = ("clean_accuracy", "corruption_accuracy", "mCE", "relative_mCE", "clean_ece")


def finetune_section(results: dict) -> Section | None:
    """What stage 0 of the reference protocol did; None for a frozen-protocol run."""
    ft = results.get("finetune")
    if not ft:
        return None
    s = ft.get("settings", {})
    records = (ft.get("history") or {}).get("records") or []
    last = records[-1] if records else {}
    shape = " x ".join(map(str, ft.get("activation_shape", [])))
    storage = (f"{shape}, cached as {ft.get('activation_storage')} (min cosine of features vs fp32 "
               f"{ft.get('storage_min_cosine')})")
    training = f"{s.get('finetune_epochs')}, {s.get('finetune_batch_size')}, {s.get('finetune_lr')}"
    last_epoch = f"{numbers.general(last.get('loss'))}, {numbers.general(last.get('acc'))}" if last else None
    weights = (f"{'read from the cache' if ft.get('loaded_from_cache') else 'trained in this run'}, "
               f"sha256 {str(ft.get('weights_sha256'))[:16]}…")
    rows = [["trainable top starts at", ft.get("cut_point")],
            ["share of the backbone's parameters trained", f"{100 * ft['trainable_fraction']:.1f} %"],
            ["activations at the cut", storage],
            ["epochs, batch size, Adam learning rate", training],
            ["input augmentation", "yes (whole backbone every epoch)" if s.get("finetune_augment") else "none"],
            ["last epoch: training loss, accuracy", last_epoch],
            ["compare model (fine-tuned top + its own Dense) test accuracy",
             numbers.general(ft.get("compare_model_test_accuracy"))],
            ["fine-tuning wall time", numbers.seconds(ft.get("seconds"))],
            ["weights", weights]]
    return Section("Fine-tuning (reference protocol)", [
        Paragraph("Stage 0 trained the top of the backbone together with Dropout(0.3) -> Dense, as the reference's "
                  "compare model, for a fixed number of epochs with BatchNorm of the top in training mode. The heads "
                  "of this run were then fitted on the features of the fine-tuned, frozen backbone; its `linear` "
                  "head is the compare model's Dropout -> Dense retrained per seed on those features, and the "
                  "corruptions, attacks and OOD sets all run through the fine-tuned backbone."),
        Table(["", "value"], [[k, numbers.general(v)] for k, v in rows]),
        Table(["epoch", "training loss", "training accuracy", "seconds since start"],
              [[str(r.get("epoch")), numbers.general(r.get("loss")), numbers.general(r.get("acc")),
                numbers.general(r.get("seconds"))] for r in records], "Fine-tuning, epoch by epoch.")])


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
                f"{s.get('dataset')}, n_train={s.get('n_train')}, n_test={s.get('n_test')}, seeds "
                f"{', '.join(map(str, s.get('seeds') or []))}" for s, _ in runs]
    blocks = [Paragraph("Each column is one head under one protocol, every number from its own run: "
                        + "; ".join(PROTOCOL_LABELS.get(s.get("protocol", "frozen"), "?") + f" ({line})"
                                    for (s, _), line in zip(runs, settings, strict=True)) + "."),
              Table(["metric", *columns], rows,
                    "Mean ± std over seeds; the attack row adds the 95 % bootstrap interval over images and seeds. "
                    "Relative mCE and mCE are normalised by each run's own linear head.")]
    if runs[0][0].get("dataset") != runs[1][0].get("dataset") or runs[0][0].get("n_test") != runs[1][0].get("n_test"):
        blocks.append(Note("The two runs measured different data; compare their numbers with care."))
    return Section("Protocols side by side", blocks)


def _with_interval(metric, stat: dict | None, interval: dict | None) -> str:
    text = numbers.mean_pm_std(metric, stat)
    if interval and numbers.is_number(interval.get("low")):
        text += f" [{metric.value(interval['low'])}, {metric.value(interval['high'])}]"
    return text
