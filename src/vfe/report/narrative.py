""""What this says": sentences generated from the summary's numbers and paired verdicts, nothing else.

Every "better" or "worse" quotes the paired 95 % interval of (head − baseline) it rests on, as the summary
computed it (`vfe.experiment.summary`): the Student-t interval over replicates, or for an attack the paired
bootstrap over the replicates and each replicate's attacked images. Attacked accuracies also quote each
head's own 95 % interval ("adversarial_intervals": a bootstrap over replicates, then their own images).
EOT sentences appear only for heads that sample at prediction time: for the others the EOT number is a copy
of the plain attack. An adaptively attacked head's accuracy is its worst case over attacks, and the report
names the attack that set it.
"""
from __future__ import annotations

from dataclasses import replace

from vfe.report import numbers
from vfe.report.document import Bullets
from vfe.report.names import OOD_SCORE_LABELS, hardest_telling_budget, metric_of, parse_attack
from vfe.robustness.stats import BOOTSTRAP_TEST, T_TEST, VERDICTS, mean_std, paired_attack

HEADLINE = ("clean_accuracy", "corruption_accuracy", "mCE", "relative_mCE", "summed_relative_mCE", "clean_ece",
            "clean_nll")
BETTER, WORSE, NO_DIFFERENCE = VERDICTS
ATTACK_PREFIX = "adversarial accuracy, "
TEST_LABELS = {T_TEST: "paired t over replicates", BOOTSTRAP_TEST: "paired bootstrap over replicates and images"}


def what_this_says(results: dict) -> list[Bullets]:
    """One list per compared head (its paired differences, what EOT and adaptive attacks do to them), then
    the rest."""
    summary = results.get("summary") or {}
    table = summary.get("table") or {}
    if not table:
        return [Bullets(["The results hold no summary, so there is nothing to conclude."])]
    baseline = summary.get("baseline", "baseline")
    comparisons = summary.get("vs_baseline") or {}
    intervals = results.get("adversarial_intervals") or {}
    adversarial = results.get("adversarial") or {}
    sampling = _sampling_heads(results)
    blocks = []
    for head, per_metric in comparisons.items():
        n = max((c.get("n", 0) for c in per_metric.values()), default=0)
        if head in adversarial and not numbers.samples_randomly(adversarial[head]):
            per_metric = _without_eot_copies(per_metric)  # EOT is the plain attack for it: the same numbers
        attacks = _strongest_attacks(per_metric, table)
        items = [_difference(k, per_metric[k]) for k in HEADLINE if k in per_metric]
        items += [_attack_difference(k, per_metric[k], head, baseline, table, intervals, adversarial)
                  for k in attacks]
        if head in sampling:
            items += _eot_survival(head, per_metric)
        items += _adaptive_removal(head, baseline, per_metric, attacks, adversarial)
        items.append(_tally(head, baseline, per_metric, head in sampling))
        level = numbers.level_text(next(iter(per_metric.values()), {}))
        blocks.append(Bullets(items, f"{head} vs {baseline}, paired over {n} replicate{'s' * (n != 1)} (the mean "
                                     f"difference {head} − {baseline} with its {level} paired interval: "
                                     f"{_tests_text(per_metric)}; the verdict in brackets is \"better\" or "
                                     "\"worse\" only where that interval excludes 0):"))
    other = _eot_effect(table, sampling, intervals, adversarial) + _ood_selected(results)
    if not comparisons:
        other.insert(0, f"No paired comparison: the run has no {baseline} head, or no other head beside it.")
    missing = [stage for stage in ("corruptions", "adversarial", "ood") if stage not in results]
    if missing:
        other.append(f"Not measured in this run (stage skipped): {', '.join(missing)}.")
    if other:
        blocks.append(Bullets(other, "Beyond the paired differences:" if comparisons else ""))
    return blocks


def _without_eot_copies(per_metric: dict) -> dict:
    """A deterministic head's comparisons less each EOT attack whose plain twin is there: a copy of it."""
    plain = {parse_attack(k[4:]) for k in per_metric if k.startswith("adv:")}
    return {k: c for k, c in per_metric.items()
            if not (k.startswith("adv:") and (a := parse_attack(k[4:])) is not None and a.eot
                    and replace(a, eot=False) in plain)}


def _tests_text(per_metric: dict) -> str:
    """Which paired tests the comparisons used: the t for most metrics, the bootstrap for attacks."""
    attack_tests = {c.get("test") for k, c in per_metric.items() if k.startswith("adv:")}
    if BOOTSTRAP_TEST not in attack_tests:
        return TEST_LABELS[T_TEST]
    text = f"{TEST_LABELS[T_TEST]}; attacks: {TEST_LABELS[BOOTSTRAP_TEST]}"
    return text + (" where the results hold per-image correctness" if T_TEST in attack_tests else "")


def _short(key: str) -> str:
    return metric_of(key).label.removeprefix(ATTACK_PREFIX)


def _difference(key: str, comparison: dict) -> str:
    metric = metric_of(key)
    return f"{metric.label}: {numbers.paired_difference(metric, comparison)} ({numbers.verdict(comparison)})"


def _quote(key: str, comparison: dict) -> str:
    """'+30.0 points [20.0, 40.0], paired bootstrap over replicates and images': a difference and its test."""
    test = TEST_LABELS.get(comparison.get("test"), comparison.get("test") or "paired test")
    return f"{numbers.paired_difference(metric_of(key), comparison)}, {test}"


def _strongest_attacks(keys, table: dict | None = None) -> list[str]:
    """Per norm, the largest radius at which some head of `table` keeps accuracy above 0 (the largest radius
    when none does; PGD preferred), naive then EOT: where robustness is tested hardest and heads still differ."""
    attacks = {k: a for k in keys if k.startswith("adv:") and (a := parse_attack(k[4:])) is not None}
    chosen = []
    for norm in sorted({a.norm for a in attacks.values()}, key=lambda n: (n != "linf", n)):
        in_norm = {k: a for k, a in attacks.items() if a.norm == norm}
        top = hardest_telling_budget(in_norm, [table or {}])
        at_top = {k: a for k, a in in_norm.items() if a.eps == top}
        kinds = {a.method for a in at_top.values()}
        kind = "pgd" if "pgd" in kinds else min(kinds)
        chosen += sorted((k for k, a in at_top.items() if a.method == kind), key=lambda k: at_top[k].eot)
    return chosen


def _eot_twin(key: str, keys) -> str | None:
    attack = parse_attack(key[4:]) if key.startswith("adv:") else None
    if attack is None or attack.eot:
        return None
    return next((k for k in keys if k.startswith("adv:") and (a := parse_attack(k[4:])) is not None and a.eot
                 and replace(a, eot=False) == attack), None)


def interval_text(interval: dict | None, unit: str = "") -> str:
    """'19.0 [12.5, 26.0]' (unit " %": '19.0 % [12.5, 26.0]'): mean accuracy over replicates in percent and
    its 95 % interval over replicates and their attacked images."""
    if not _has_interval(interval):
        return numbers.MISSING
    return f"{interval['mean'] * 100:.1f}{unit} [{interval['low'] * 100:.1f}, {interval['high'] * 100:.1f}]"


def _has_interval(interval: dict | None) -> bool:
    return bool(interval) and all(numbers.is_number(interval.get(k)) for k in ("mean", "low", "high"))


def _interval_of(intervals: dict, head: str, key: str) -> dict | None:
    """A head's interval for a summary key 'adv:<attack>'; None when the results hold none."""
    interval = (intervals.get(head) or {}).get(key.removeprefix("adv:"))
    return interval if _has_interval(interval) else None


def _accuracy(head: str, key: str, table: dict, intervals: dict, adversarial: dict | None = None) -> str:
    """A head's attacked accuracy (with its interval where the results hold one, else mean ± std over
    replicates); with `adversarial`, the same images' accuracy before attack and, for an adaptively attacked
    head, that its figure is the worst case over attacks and which single attack was strongest."""
    interval = _interval_of(intervals, head, key)
    text = (interval_text(interval, " %") if interval
            else f"{numbers.mean_pm_std(metric_of(key), (table.get(head) or {}).get(key))} %")
    if adversarial is None:
        return text
    notes = []
    clean = _interval_of(intervals, head, "clean")
    if clean and key != "adv:clean":
        notes.append(f"{clean['mean'] * 100:.1f} % before attack")
    strongest = numbers.strongest_text(adversarial.get(head) or {}, key[4:])
    if strongest:
        notes.append(f"worst case per image over its attacks; strongest single attack: {strongest}")
    return text + (f" ({'; '.join(notes)})" if notes else "")


def _attack_difference(key: str, comparison: dict, head: str, baseline: str, table: dict, intervals: dict,
                       adversarial: dict) -> str:
    """Both heads' attacked accuracy, then the paired difference with its interval, test and verdict."""
    both = _interval_of(intervals, head, key) and _interval_of(intervals, baseline, key)
    each = "mean [95 % interval over replicates and images]" if both else "mean ± std over replicates"
    shown = intervals if both else {}
    return (f"{metric_of(key).label}: {head} {_accuracy(head, key, table, shown, adversarial)} against "
            f"{baseline} {_accuracy(baseline, key, table, shown, adversarial)} ({each}); {head} − {baseline} "
            f"{_quote(key, comparison)} ({numbers.verdict(comparison)})")


def _eot_survival(head: str, per_metric: dict) -> list[str]:
    """For a head that samples: where it beats the baseline under a naive attack, whether that survives EOT,
    both judged by their paired intervals."""
    out = []
    for key, naive in per_metric.items():
        twin = _eot_twin(key, per_metric)
        if twin is None or numbers.verdict(naive) != BETTER:
            continue
        eot = per_metric[twin]
        gain = f"{head}'s advantage under {_short(key)} ({_quote(key, naive)}; better than baseline)"
        if numbers.verdict(eot) == BETTER:
            out.append(f"{gain} survives EOT ({_quote(twin, eot)}; better than baseline).")
        else:
            out.append(f"{gain} does not survive EOT ({_quote(twin, eot)}; {numbers.verdict(eot)}): the naive "
                       "attack missed the head's randomness.")
    return out


def _direct_only(per_replicate: dict, key: str) -> dict:
    """Per-replicate attack results as if `key` had been attacked directly alone: the "direct" entry of an
    adaptively attacked head's "per_attack" (and its "per_attack_correct"), else the head's own result."""
    out = {}
    for r, m in per_replicate.items():
        accuracy = ((m.get("per_attack") or {}).get(key) or {}).get("direct", (m.get("accuracy") or {}).get(key))
        if not numbers.is_number(accuracy):
            continue
        bits = ((m.get("per_attack_correct") or {}).get(key) or {}).get("direct") if m.get("per_attack") else \
            (m.get("correct") or {}).get(key)
        out[r] = {"accuracy": {key: accuracy}, "correct": {key: bits} if bits else {}}
    return out


def _adaptive_removal(head: str, baseline: str, per_metric: dict, keys: list[str], adversarial: dict) -> list[str]:
    """For an adaptively attacked head: where the direct attack alone would leave it better than the baseline
    but its worst case over attacks does not, say so; that advantage is not robustness."""
    rows = adversarial.get(head) or {}
    if not numbers.is_adaptive(rows):
        return []
    out = []
    for key in keys:
        name = key[4:]
        alone = paired_attack(_direct_only(rows, name), _direct_only(adversarial.get(baseline) or {}, name), name)
        worst = per_metric.get(key)
        if not worst or numbers.verdict(alone) != BETTER or numbers.verdict(worst) == BETTER:
            continue
        strongest = numbers.strongest_text(rows, name)
        out.append(f"{head}'s advantage under the direct {_short(key)} ({_quote(key, alone)}; better than "
                   "baseline) is removed by its worst case over attacks"
                   + (f" (strongest single attack: {strongest})" if strongest else "")
                   + f", {_quote(key, worst)} ({numbers.verdict(worst)}): it is not robustness.")
    return out


def _tally(head: str, baseline: str, per_metric: dict, samples: bool = False) -> str:
    """How many paired intervals exclude 0, each listed with its interval; for a head that samples, a naive
    attack's gain that EOT does not keep is marked as such."""
    def listed(verdict: str) -> list[str]:
        out = []
        for k, c in per_metric.items():
            if numbers.verdict(c) != verdict:
                continue
            twin = _eot_twin(k, per_metric) if samples and verdict == BETTER else None
            gone = twin is not None and numbers.verdict(per_metric[twin]) != BETTER
            out.append(f"{_short(k)} {numbers.paired_difference(metric_of(k), c)}"
                       + (" under the naive attack only, not under EOT" if gone else ""))
        return out

    better, worse = listed(BETTER), listed(WORSE)
    total = len(per_metric)
    caveat = (f"{_tests_text(per_metric)}; each at 95 %, uncorrected for testing {total} metrics, so about one "
              "in 20 excludes 0 by chance where the heads do not differ")
    if not better and not worse:
        return f"None of the {total} paired intervals between {head} and {baseline} excludes 0 ({caveat})."
    parts = [f"better on {len(better)} ({'; '.join(better)})" if better else "",
             f"worse on {len(worse)} ({'; '.join(worse)})" if worse else ""]
    k = len(better) + len(worse)
    return (f"Over {total} metric{'s' * (total != 1)}, {k} paired interval{' excludes' if k == 1 else 's exclude'} "
            f"0 ({caveat}): {head} is {', and '.join(p for p in parts if p)}.")


def _sampling_heads(results: dict) -> set[str]:
    """Heads whose adversarial results say they sample: the only ones where EOT is more than a copy."""
    return {h for h, rows in (results.get("adversarial") or {}).items() if numbers.samples_randomly(rows, False)}


def _eot_effect(table: dict, sampling: set[str], intervals: dict, adversarial: dict) -> list[str]:
    """For each head that samples, what EOT does to its own accuracy at the strongest radius of each norm: the
    paired difference (EOT − naive) over the same replicates and images."""
    out = []
    for head, per_metric in table.items():
        if head not in sampling:
            continue
        for key in _strongest_attacks(per_metric, table):
            twin = _eot_twin(key, per_metric)
            rows = adversarial.get(head) or {}
            change = paired_attack(rows, rows, twin[4:], key[4:]) if twin else {"n": 0}
            if not change.get("n"):
                continue
            if numbers.has_interval(change) and change["high"] < 0:
                effect = "EOT removes accuracy the naive attack left: gradient masking, not robustness"
            elif numbers.has_interval(change) and change["low"] > 0:
                effect = "EOT leaves more accuracy than the naive attack"
            else:
                effect = NO_DIFFERENCE
            both = _interval_of(intervals, head, key) and _interval_of(intervals, head, twin)
            each = "mean [95 % interval over replicates and images]" if both else "mean ± std over replicates"
            shown = intervals if both else {}
            out.append(f"{head}: EOT takes its accuracy under {parse_attack(key[4:]).label} from "
                       f"{_accuracy(head, key, table, shown)} to {_accuracy(head, twin, table, shown)} "
                       f"({each}); EOT − naive {_quote(key, change)}: {effect}.")
    return out


def ood_choice(per_replicate: dict, ood_set: str) -> str:
    """The score(s) chosen on validation for one head and OOD set, with their replicates when they differ."""
    chosen_by: dict[str, list[str]] = {}
    for r in numbers.replicate_keys(per_replicate):
        chosen = (per_replicate[r].get(ood_set) or {}).get("chosen")
        if chosen is not None:
            chosen_by.setdefault(OOD_SCORE_LABELS.get(chosen, chosen), []).append(r)
    if len(chosen_by) <= 1:
        return next(iter(chosen_by), numbers.MISSING)
    return ", ".join(f"{label} (replicate{'s' if len(r) > 1 else ''} {', '.join(r)})"
                     for label, r in chosen_by.items())


def feature_baseline(ood: dict, key: str) -> dict | None:
    """Mean ± std over replicates of a head-free baseline's figure ("feature_baselines": {key: {replicate:
    value}}; results from before replicates hold one number, read as one replicate)."""
    value = (ood.get("feature_baselines") or {}).get(key)
    if value is None:
        return None
    stat = mean_std(value.values() if isinstance(value, dict) else [value])
    return stat if stat["n"] else None


def baseline_choices(ood: dict) -> dict:
    """The head-free baseline's validation choices as {replicate: {ood set: choice}} (older results: one
    {ood set: choice}, read as replicate "0")."""
    chosen = (ood.get("selection") or {}).get("feature_baselines") or {}
    flat = any(isinstance(v, dict) and "chosen" in v for v in chosen.values())
    return {"0": chosen} if flat else chosen


def ood_sets_of(ood: dict) -> list[str]:
    """The OOD sets the selection covers, in the results' order."""
    selection = ood.get("selection") or {}
    found: dict = {}
    for row in baseline_choices(ood).values():
        found.update(dict.fromkeys(row))
    for per_replicate in (selection.get("per_head") or {}).values():
        for row in per_replicate.values():
            found.update(dict.fromkeys(row))
    return [name for name in (ood.get("ood_sets") or {}) if name in found] + \
        [name for name in found if name not in (ood.get("ood_sets") or {})]


def _ood_selected(results: dict) -> list[str]:
    """Per OOD set, each head's AUROC for the score chosen on validation (never the best on the test set),
    beside the head-free feature baseline chosen the same way."""
    ood = results.get("ood") or {}
    table = (results.get("summary") or {}).get("table") or {}
    selection = ood.get("selection")
    if not selection:
        if any(k.startswith("ood:") for per_metric in table.values() for k in per_metric):
            return [("No head's OOD figure is quoted: these results predate choosing the score on held-out "
                     "data, and the best of several scores on the test set would overstate it.")]
        return []
    out = []
    for ood_set in ood_sets_of(ood):
        key = f"ood:selected_auroc_{ood_set}"
        parts = [f"{head} {numbers.mean_pm_std(metric_of(key), per_metric[key])} % with the "
                 f"{ood_choice((selection.get('per_head') or {}).get(head, {}), ood_set)} score"
                 for head, per_metric in table.items() if per_metric.get(key, {}).get("n")]
        baseline = feature_baseline(ood, f"selected_auroc_{ood_set}")
        chosen = ood_choice(baseline_choices(ood), ood_set)
        if baseline and chosen != numbers.MISSING:
            parts.append(f"head-free {chosen} on the backbone features "
                         f"{numbers.mean_pm_std(metric_of(key), baseline)} %")
        if parts:
            out.append(f"Telling {ood_set} from the test set (AUROC on a held-out test half, 50 % = chance; "
                       f"mean ± std over replicates; each score chosen per replicate on a separate validation "
                       f"half): {'; '.join(parts)}.")
    return out
