"""The report reads metric keys written by other stages; these tests pin that contract to their code."""
from __future__ import annotations

import pytest

from vfe.report.names import metric_of, ordered, parse_attack, parse_ood
from vfe.robustness.attacks import AttackSpec


@pytest.mark.parametrize("method, norm, eps, eot", [("fgsm", "linf", 2 / 255, False), ("pgd", "linf", 8 / 255, True),
                                                    ("pgd", "l2", 0.5, False), ("pgd", "l2", 0.25, True)])
def test_attack_keys_of_the_adversarial_stage_parse_back(method, norm, eps, eot):
    spec = AttackSpec(method, norm, eps, eot)
    assert parse_attack(spec.key) == spec
    assert metric_of(f"adv:{spec.key}").label == f"adversarial accuracy, {spec.label}"
    assert parse_attack("clean") is None


def test_ood_keys_split_into_score_statistic_and_dataset():
    ood = parse_ood("relative_mahalanobis_fpr95_gaussian_noise_s5")
    assert (ood.score, ood.stat, ood.dataset) == ("relative_mahalanobis", "fpr95", "gaussian_noise_s5")
    assert not metric_of("ood:msp_fpr95_mnist").higher_is_better
    assert metric_of("ood:msp_auroc_mnist").higher_is_better


def test_metrics_are_ordered_for_reading_and_unknown_keys_survive():
    keys = ["ood:msp_auroc_mnist", "clean_nll", "adv:pgd_linf_8/255_eot", "adv:pgd_linf_8/255", "adv:fgsm_linf_2/255",
            "adv:pgd_l2_0.5", "new_metric", "adv:clean", "clean_accuracy"]
    assert [m.key for m in ordered(keys)] == [
        "clean_accuracy", "adv:clean", "adv:fgsm_linf_2/255", "adv:pgd_linf_8/255", "adv:pgd_linf_8/255_eot",
        "adv:pgd_l2_0.5", "clean_nll", "ood:msp_auroc_mnist", "new_metric"]
    assert metric_of("new_metric").label == "new_metric"
