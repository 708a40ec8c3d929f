"""The report's "Adversarial robustness" section, from results.json's "adversarial" and "adversarial_intervals":
accuracy against the attack radius, the intervals over replicates and attacked images, the adaptive attacks'
worst case and the EOT gap."""
from __future__ import annotations

from dataclasses import replace

from vfe.report import figures, numbers
from vfe.report.document import Figure, Note, Paragraph, Section, Table
from vfe.report.names import metric_of, parse_attack
from vfe.report.narrative import TEST_LABELS, interval_text
from vfe.report.sections import Context, skipped
from vfe.robustness.stats import N_RESAMPLES, mean_std, paired_attack


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
