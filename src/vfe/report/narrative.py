""""What this says": sentences generated from the summary's numbers and verdicts, nothing else.

Every statement quotes a difference with its spread and the verdict of `paired_comparison`
(does the difference exceed the seed spread), so the text cannot claim more than the numbers. Attacks
quote each head's 95 % interval over images and seeds instead where results.json holds one
("adversarial_intervals"): the attacked subset is small, and its sampling error exceeds the seed spread.
"""
from __future__ import annotations

from dataclasses import replace

from vfe.report import numbers
from vfe.report.document import Bullets
from vfe.report.names import OOD_SCORE_LABELS, hardest_telling_budget, metric_of, parse_attack

HEADLINE = ("clean_accuracy", "corruption_accuracy", "mCE", "relative_mCE", "clean_ece", "clean_nll")
BETTER, WORSE = "better than baseline", "worse than baseline"
ATTACK_PREFIX = "adversarial accuracy, "


def what_this_says(results: dict) -> list[Bullets]:
    """One list per compared head (its paired differences, then what EOT does to them), then the rest."""
    summary = results.get("summary") or {}
    table = summary.get("table") or {}
    if not table:
        return [Bullets(["The results hold no summary, so there is nothing to conclude."])]
    baseline = summary.get("baseline", "baseline")
    comparisons = summary.get("vs_baseline") or {}
    intervals = results.get("adversarial_intervals") or {}
    blocks = []
    for head, per_metric in comparisons.items():
        n = max((c.get("n", 0) for c in per_metric.values()), default=0)
        items = [_difference(k, per_metric[k]) for k in HEADLINE if k in per_metric]
        items += [_attack_difference(k, per_metric[k], head, baseline, intervals)
                  for k in _strongest_attacks(per_metric, table)]
        items += _eot_survival(head, per_metric, baseline, intervals)
        items.append(_tally(head, baseline, per_metric, intervals))
        blocks.append(Bullets(items, f"{head} vs {baseline}, paired over {n} seeds (difference of {head} minus "
                                     f"{baseline}, ± the std of the per-seed differences; verdict in brackets):"))
    other = _eot_effect(table, _sampling_heads(results), intervals) + _ood_selected(results)
    if not comparisons:
        other.insert(0, f"No paired comparison: the run has no {baseline} head, or no other head beside it.")
    missing = [stage for stage in ("corruptions", "adversarial", "ood") if stage not in results]
    if missing:
        other.append(f"Not measured in this run (stage skipped): {', '.join(missing)}.")
    if other:
        blocks.append(Bullets(other, "Beyond the paired differences:" if comparisons else ""))
    return blocks


def _short(key: str) -> str:
    return metric_of(key).label.removeprefix(ATTACK_PREFIX)


def _difference(key: str, comparison: dict) -> str:
    metric = metric_of(key)
    return f"{metric.label}: {numbers.signed_difference(metric, comparison)} ({comparison.get('verdict', '?')})"


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
    """'19.0 [12.5, 26.0]' (unit " %": '19.0 % [12.5, 26.0]'): mean accuracy over seeds in percent and its
    95 % interval over images and seeds."""
    if not _has_interval(interval):
        return numbers.MISSING
    return f"{interval['mean'] * 100:.1f}{unit} [{interval['low'] * 100:.1f}, {interval['high'] * 100:.1f}]"


def _with_clean(intervals: dict, head: str, key: str) -> str:
    """A head's attacked accuracy with its interval, and the same images' accuracy before attack."""
    text = interval_text(_interval_of(intervals, head, key), " %")
    clean = _interval_of(intervals, head, "clean")
    return f"{text} ({clean['mean'] * 100:.1f} % before attack)" if clean and key != "adv:clean" else text


def _has_interval(interval: dict | None) -> bool:
    return bool(interval) and all(numbers.is_number(interval.get(k)) for k in ("mean", "low", "high"))


def _interval_of(intervals: dict, head: str, key: str) -> dict | None:
    """A head's interval for a summary key 'adv:<attack>'; None when the results hold none."""
    interval = (intervals.get(head) or {}).get(key.removeprefix("adv:"))
    return interval if _has_interval(interval) else None


def _overlap(a: dict, b: dict) -> str:
    """How two 95 % intervals relate: the attack verdict, since the seed spread leaves out the images' error."""
    if a["high"] < b["low"] or b["high"] < a["low"]:
        return "intervals do not overlap"
    if a["low"] <= b["mean"] <= a["high"] and b["low"] <= a["mean"] <= b["high"]:
        return "within the interval"
    return "intervals overlap"


def _attack_verdict(key: str, head: str, baseline: str, intervals: dict, comparison: dict) -> str | None:
    """BETTER / WORSE / 'no clear difference' by the two heads' intervals; the seed verdict without them."""
    a, b = _interval_of(intervals, head, key), _interval_of(intervals, baseline, key)
    if a is None or b is None:
        return comparison.get("verdict")
    if _overlap(a, b) != "intervals do not overlap":
        return "no clear difference"
    return BETTER if a["mean"] > b["mean"] else WORSE


def _attack_difference(key: str, comparison: dict, head: str, baseline: str, intervals: dict) -> str:
    """Both heads' accuracy with 95 % intervals over images and seeds; the seed-spread line without them."""
    a, b = _interval_of(intervals, head, key), _interval_of(intervals, baseline, key)
    if a is None or b is None:
        return _difference(key, comparison)
    return (f"{metric_of(key).label}: {head} {_with_clean(intervals, head, key)} against {baseline} "
            f"{_with_clean(intervals, baseline, key)} (95 % intervals over images and seeds; {_overlap(a, b)})")


def _eot_survival(head: str, per_metric: dict, baseline: str = "baseline", intervals: dict | None = None) -> list[str]:
    """Where the head beats the baseline under a naive attack, say whether that survives EOT (judged by the
    95 % intervals where the results hold them, else by the seed spread)."""
    intervals = intervals or {}
    out = []
    for key, naive in per_metric.items():
        twin = _eot_twin(key, per_metric)
        if twin is None or _attack_verdict(key, head, baseline, intervals, naive) != BETTER:
            continue
        eot = per_metric[twin]
        if _interval_of(intervals, head, key) and _interval_of(intervals, baseline, key):
            def quote(k):
                return (f"{interval_text(_interval_of(intervals, head, k), ' %')} against "
                        f"{interval_text(_interval_of(intervals, baseline, k), ' %')}")
        else:
            def quote(k):
                return numbers.signed_difference(metric_of(k), per_metric[k])
        gain = f"{head}'s advantage under {_short(key)} ({quote(key)})"
        verdict = _attack_verdict(twin, head, baseline, intervals, eot)
        if verdict == BETTER:
            out.append(f"{gain} survives EOT ({quote(twin)}).")
        else:
            out.append(f"{gain} does not survive EOT ({quote(twin)}, {verdict or '?'}): the naive attack "
                       "missed the head's randomness.")
    return out


def _tally(head: str, baseline: str, per_metric: dict, intervals: dict | None = None) -> str:
    """How many differences count; an attack counts by its 95 % intervals where the results hold them."""
    intervals = intervals or {}
    verdicts = {k: _attack_verdict(k, head, baseline, intervals, c) if k.startswith("adv:") else c.get("verdict")
                for k, c in per_metric.items()}
    by_interval = any(_interval_of(intervals, head, k) and _interval_of(intervals, baseline, k) for k in verdicts)
    rule = "exceed the seed spread (attacks: their 95 % intervals do not overlap)" if by_interval else \
        "exceed the seed spread"
    better = [_short(k) for k, v in verdicts.items() if v == BETTER]
    worse = [_short(k) for k, v in verdicts.items() if v == WORSE]
    total = len(per_metric)
    if not better and not worse:
        return (f"None of the {total} paired differences between {head} and {baseline} "
                f"{rule.replace('exceed', 'exceeds', 1)}.")
    parts = [f"better on {len(better)} ({'; '.join(better)})" if better else "",
             f"worse on {len(worse)} ({'; '.join(worse)})" if worse else ""]
    return (f"Over all {total} metrics, {len(better) + len(worse)} differences {rule}: "
            f"{head} is {', and '.join(p for p in parts if p)}.")


def _sampling_heads(results: dict) -> set[str]:
    """Heads whose adversarial results say they sample (or do not say): those where EOT can matter."""
    return {h for h, rows in results.get("adversarial", {}).items()
            if any(r.get("samples_randomly", True) for r in rows.values())}


def _eot_effect(table: dict, sampling: set[str], intervals: dict | None = None) -> list[str]:
    """For each head that samples, what EOT does to its own accuracy at the strongest radius of each norm
    (with 95 % intervals over images and seeds where the results hold them)."""
    intervals = intervals or {}
    out = []
    for head, per_metric in table.items():
        if head not in sampling:
            continue
        for key in _strongest_attacks(per_metric, table):
            twin = _eot_twin(key, per_metric)
            if twin is None:
                continue
            a, b = per_metric[key], per_metric[twin]
            if not (numbers.is_number(a.get("mean")) and numbers.is_number(b.get("mean"))):
                continue
            metric, attack = metric_of(key), parse_attack(key[4:])
            ia, ib = _interval_of(intervals, head, key), _interval_of(intervals, head, twin)
            if ia and ib:
                out.append(f"{head}: EOT takes its accuracy under {attack.label} from {interval_text(ia, ' %')} "
                           f"to {interval_text(ib, ' %')} (95 % intervals over images and seeds; "
                           f"{_overlap(ia, ib)}).")
                continue
            if min(a.get("n", 0), b.get("n", 0)) < 2:
                spread = "one seed: no spread to compare with"
            elif abs(a["mean"] - b["mean"]) > a["std"] + b["std"]:
                spread = "beyond the seed spread"
            else:
                spread = "within the seed spread"
            out.append(f"{head}: EOT takes its accuracy under {attack.label} from "
                       f"{numbers.mean_pm_std(metric, a)} % to {numbers.mean_pm_std(metric, b)} % ({spread}).")
    return out


def ood_choice(per_seed: dict, ood_set: str) -> str:
    """The score(s) chosen on validation for one head and OOD set, with their seeds when they differ."""
    seeds: dict[str, list[str]] = {}
    for seed in numbers.seed_keys(per_seed):
        chosen = (per_seed[seed].get(ood_set) or {}).get("chosen")
        if chosen is not None:
            seeds.setdefault(OOD_SCORE_LABELS.get(chosen, chosen), []).append(seed)
    if len(seeds) <= 1:
        return next(iter(seeds), numbers.MISSING)
    return ", ".join(f"{label} (seed{'s' if len(s) > 1 else ''} {', '.join(s)})"
                     for label, s in seeds.items())


def ood_sets_of(ood: dict) -> list[str]:
    """The OOD sets the selection covers, in the results' order."""
    selection = ood.get("selection") or {}
    found = dict.fromkeys(selection.get("feature_baselines") or {})
    for per_seed in (selection.get("per_head") or {}).values():
        for row in per_seed.values():
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
        baseline = (ood.get("feature_baselines") or {}).get(f"selected_auroc_{ood_set}")
        chosen = ((selection.get("feature_baselines") or {}).get(ood_set) or {}).get("chosen")
        if numbers.is_number(baseline) and chosen:
            parts.append(f"head-free {OOD_SCORE_LABELS.get(chosen, chosen)} on the backbone features "
                         f"{metric_of(key).value(baseline)} %")
        if parts:
            out.append(f"Telling {ood_set} from the test set (AUROC on a held-out test half, 50 % = chance; "
                       f"each score chosen per seed on a separate validation half): {'; '.join(parts)}.")
    return out
