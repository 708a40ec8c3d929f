"""Readable names, units and order for the metric keys the summary stage produces.

Keys: clean_accuracy, clean_nll, clean_ece, corruption_accuracy(_all), corruption_nll,
corruption_ece, mCE, relative_mCE, summed_relative_mCE, adv:<attack>_<norm>_<eps>[_eot] (and adv:clean),
ood:<score>_<statistic>_<ood set>. Unknown keys keep their raw name, so a new stage still shows.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from vfe.robustness.attack_spec import AttackSpec
from vfe.robustness.stats import higher_is_better

OOD_NAME = re.compile(r"^(?P<score>.+?)_(?P<stat>auroc|fpr95|aupr(?:_in|_out)?)_(?P<dataset>.+)$")

OOD_STAT_LABELS = {"auroc": "AUROC", "fpr95": "FPR at 95% TPR", "aupr": "AUPR", "aupr_in": "AUPR-in",
                   "aupr_out": "AUPR-out"}
OOD_SCORE_LABELS = {"msp": "max softmax", "energy": "energy", "entropy": "entropy",
                    "recon": "reconstruction error", "elbo": "−ELBO", "mahalanobis": "Mahalanobis",
                    "relative_mahalanobis": "relative Mahalanobis", "knn": "k-NN distance",
                    "selected": "validation-selected"}
FIXED = {  # key: (group, label, shown in percent)
    "clean_accuracy": ("accuracy", "clean accuracy", True),
    "corruption_accuracy": ("accuracy", "mean corruption accuracy (benchmark set)", True),
    "corruption_accuracy_all": ("accuracy", "mean corruption accuracy (all)", True),
    "mCE": ("accuracy", "mCE", True),
    "relative_mCE": ("accuracy", "relative mCE", True),
    "summed_relative_mCE": ("accuracy", "summed relative mCE", True),
    "clean_ece": ("calibration", "clean ECE", True),
    "clean_nll": ("calibration", "clean NLL", False),
    "corruption_ece": ("calibration", "ECE under corruption", True),
    "corruption_nll": ("calibration", "NLL under corruption", False),
}
GROUP_ORDER = ("accuracy", "adversarial", "calibration", "ood", "other")


def parse_attack(name: str) -> AttackSpec | None:
    """The attack a result key names, None for any other key (e.g. "clean")."""
    try:
        return AttackSpec.parse(name)
    except ValueError:
        return None


@dataclass(frozen=True)
class OODMetric:
    score: str
    stat: str
    dataset: str

    @property
    def label(self) -> str:
        return (f"OOD {OOD_STAT_LABELS.get(self.stat, self.stat)} vs {self.dataset}, "
                f"{OOD_SCORE_LABELS.get(self.score, self.score)} score")


def hardest_telling_budget(keys, tables) -> float | None:
    """The largest attack budget among `keys` ('adv:<attack>') at which some head of `tables` (summary tables,
    head -> metric -> {"mean"}) keeps a mean accuracy above 0: the hardest test that still tells heads apart.
    The largest budget when every head is at 0 everywhere; None without attacks."""
    budgets = {spec.eps for k in keys if k.startswith("adv:") and (spec := parse_attack(k[4:])) is not None}
    if not budgets:
        return None
    alive = {parse_attack(k[4:]).eps for k in keys if k.startswith("adv:") and parse_attack(k[4:]) is not None
             and any(((table.get(head) or {}).get(k) or {}).get("mean", 0) > 0
                     for table in tables for head in table)}
    return max(alive or budgets)


def parse_ood(name: str) -> OODMetric | None:
    m = OOD_NAME.match(name)
    return OODMetric(m["score"], m["stat"], m["dataset"]) if m else None


@dataclass(frozen=True)
class Metric:
    key: str
    group: str
    label: str
    percent: bool
    sort_key: tuple

    @property
    def higher_is_better(self) -> bool:
        return higher_is_better(self.key)

    def value(self, x: float) -> str:
        """A value in the metric's unit (percent numbers carry no % sign; the label says it)."""
        return f"{x * 100:.1f}" if self.percent else f"{x:.3f}"

    @property
    def unit_label(self) -> str:
        return f"{self.label} (%)" if self.percent else self.label

    @property
    def difference_unit(self) -> str:
        return " points" if self.percent else ""


def metric_of(key: str) -> Metric:
    """The label, unit and reading position of a summary metric key."""
    if key in FIXED:
        group, label, percent = FIXED[key]
        return Metric(key, group, label, percent, (GROUP_ORDER.index(group), list(FIXED).index(key)))
    kind, _, name = key.partition(":")
    if kind == "adv":
        rank = GROUP_ORDER.index("adversarial")
        attack = parse_attack(name)
        if name == "clean":
            return Metric(key, "adversarial", "accuracy on the attacked images, before attack", True, (rank, 0))
        if attack is not None:
            return Metric(key, "adversarial", f"adversarial accuracy, {attack.label}", True,
                          (rank, 1, attack.norm != "linf", attack.norm, attack.method, attack.eps, attack.eot))
        return Metric(key, "adversarial", f"adversarial accuracy, {name}", True, (rank, 2, name))
    if kind == "ood":
        rank = GROUP_ORDER.index("ood")
        ood = parse_ood(name)
        if ood is not None:
            return Metric(key, "ood", ood.label, True, (rank, ood.dataset, ood.stat != "auroc", ood.stat, ood.score))
        return Metric(key, "ood", f"OOD {name}", False, (rank, "~", True, name, ""))
    return Metric(key, "other", key, False, (GROUP_ORDER.index("other"), key))


def ordered(keys) -> list[Metric]:
    """Metrics in reading order: accuracies, attacks (by norm, attack, eps), calibration, OOD."""
    return sorted((metric_of(k) for k in keys), key=lambda m: m.sort_key)
