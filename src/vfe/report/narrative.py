""""What this says": sentences generated from the summary's numbers and verdicts, nothing else.

Every statement quotes a difference with its spread and the verdict of `paired_comparison`
(does the difference exceed the seed spread), so the text cannot claim more than the numbers.
"""
from __future__ import annotations

from dataclasses import replace

from vfe.report import numbers
from vfe.report.document import Bullets
from vfe.report.names import metric_of, parse_attack, parse_ood

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
    blocks = []
    for head, per_metric in comparisons.items():
        n = max((c.get("n", 0) for c in per_metric.values()), default=0)
        keys = [k for k in HEADLINE if k in per_metric] + _strongest_attacks(per_metric)
        items = [_difference(k, per_metric[k]) for k in keys]
        items += _eot_survival(head, per_metric)
        items.append(_tally(head, baseline, per_metric))
        blocks.append(Bullets(items, f"{head} vs {baseline}, paired over {n} seeds (difference of {head} minus "
                                     f"{baseline}, ± the std of the per-seed differences; verdict in brackets):"))
    other = _eot_effect(table, _sampling_heads(results)) + _ood_best(table)
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


def _strongest_attacks(keys) -> list[str]:
    """Per norm, the largest radius (PGD preferred), naive then EOT: where robustness is tested hardest."""
    attacks = {k: a for k in keys if k.startswith("adv:") and (a := parse_attack(k[4:])) is not None}
    chosen = []
    for norm in sorted({a.norm for a in attacks.values()}, key=lambda n: (n != "linf", n)):
        in_norm = {k: a for k, a in attacks.items() if a.norm == norm}
        top = max(a.eps for a in in_norm.values())
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


def _eot_survival(head: str, per_metric: dict) -> list[str]:
    """Where the head beats the baseline under a naive attack, say whether that survives EOT."""
    out = []
    for key, naive in per_metric.items():
        twin = _eot_twin(key, per_metric)
        if twin is None or naive.get("verdict") != BETTER:
            continue
        metric, eot = metric_of(key), per_metric[twin]
        gain = f"{head}'s advantage under {_short(key)} ({numbers.signed_difference(metric, naive)})"
        if eot.get("verdict") == BETTER:
            out.append(f"{gain} survives EOT ({numbers.signed_difference(metric, eot)}).")
        else:
            out.append(f"{gain} does not survive EOT ({numbers.signed_difference(metric, eot)}, "
                       f"{eot.get('verdict', '?')}): the naive attack missed the head's randomness.")
    return out


def _tally(head: str, baseline: str, per_metric: dict) -> str:
    better = [_short(k) for k, c in per_metric.items() if c.get("verdict") == BETTER]
    worse = [_short(k) for k, c in per_metric.items() if c.get("verdict") == WORSE]
    total = len(per_metric)
    if not better and not worse:
        return f"None of the {total} paired differences between {head} and {baseline} exceeds the seed spread."
    parts = [f"better on {len(better)} ({'; '.join(better)})" if better else "",
             f"worse on {len(worse)} ({'; '.join(worse)})" if worse else ""]
    return (f"Over all {total} metrics, {len(better) + len(worse)} differences exceed the seed spread: "
            f"{head} is {', and '.join(p for p in parts if p)}.")


def _sampling_heads(results: dict) -> set[str]:
    """Heads whose adversarial results say they sample (or do not say): those where EOT can matter."""
    return {h for h, rows in results.get("adversarial", {}).items()
            if any(r.get("samples_randomly", True) for r in rows.values())}


def _eot_effect(table: dict, sampling: set[str]) -> list[str]:
    """For each head that samples, what EOT does to its own accuracy at the strongest radius of each norm."""
    out = []
    for head, per_metric in table.items():
        if head not in sampling:
            continue
        for key in _strongest_attacks(per_metric):
            twin = _eot_twin(key, per_metric)
            if twin is None:
                continue
            a, b = per_metric[key], per_metric[twin]
            if not (numbers.is_number(a.get("mean")) and numbers.is_number(b.get("mean"))):
                continue
            metric, attack = metric_of(key), parse_attack(key[4:])
            if min(a.get("n", 0), b.get("n", 0)) < 2:
                spread = "one seed: no spread to compare with"
            elif abs(a["mean"] - b["mean"]) > a["std"] + b["std"]:
                spread = "beyond the seed spread"
            else:
                spread = "within the seed spread"
            out.append(f"{head}: EOT takes its accuracy under {attack.label} from "
                       f"{numbers.mean_pm_std(metric, a)} % to {numbers.mean_pm_std(metric, b)} % ({spread}).")
    return out


def _ood_best(table: dict) -> list[str]:
    """Per OOD set, each head's best AUROC and the score that reached it."""
    by_set: dict[str, dict[str, tuple[str, dict]]] = {}
    for head, per_metric in table.items():
        for key, stat in per_metric.items():
            ood = parse_ood(key[4:]) if key.startswith("ood:") else None
            if ood is None or ood.stat != "auroc" or not numbers.is_number(stat.get("mean")):
                continue
            best = by_set.setdefault(ood.dataset, {}).get(head)
            if best is None or stat["mean"] > best[1]["mean"]:
                by_set[ood.dataset][head] = (key, stat)
    out = []
    for dataset, per_head in by_set.items():
        parts = [f"{head} best with the {parse_ood(key[4:]).label.rpartition(', ')[2]} "
                 f"({numbers.mean_pm_std(metric_of(key), stat)} %)" for head, (key, stat) in per_head.items()]
        out.append(f"Telling {dataset} from the test set (AUROC, 50 % = chance): {'; '.join(parts)}.")
    return out
