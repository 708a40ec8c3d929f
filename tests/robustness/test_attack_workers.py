"""The local engine attacks heads x replicates in worker processes (vfe.experiment.processes), one thread each: the
results must be those of the same attacks run here, bit for bit, on Fashion-MNIST through EfficientNet-Lite0 with
its ImageNet weights. Here they run at one thread too, whatever the process's count: a backward pass's sums follow
the thread count, and in the full main job one image in 100 flipped in 5 of 108 attack cells at two threads."""
from __future__ import annotations

import pytest
import torch

from vfe.experiment.stages.adversarial import stage as adversarial
from vfe.experiment.stages.adversarial.settings import AttackSettings
from vfe.experiment.stages.adversarial.stage import AttackDraw, attack_draws

HEADS = ["linear", "vfe"]


@pytest.mark.slow
def test_attacks_in_worker_processes_equal_attacks_here_whatever_its_thread_count(fashion_mnist, small_backbone, fashion_heads):
    """A worker runs each attack at one thread; here, with the process at two threads, too."""
    _, test = fashion_mnist
    _, _, models = fashion_heads
    settings = AttackSettings(n_attack=24, attack_eps_linf=[1 / 255, 4 / 255], attack_eps_l2=[0.5], attack_steps=4,
                              n_eot=3)
    draws = [AttackDraw(small_backbone, {(h, r): models[(h, 0)] for h in HEADS}, test, seed)
             for r, seed in enumerate((5, 6))]
    before, threads_seen = torch.get_num_threads(), []
    real = adversarial.attack_one

    def spy(*args, **kwargs):
        threads_seen.append(torch.get_num_threads())
        return real(*args, **kwargs)

    try:
        torch.set_num_threads(2)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(adversarial, "attack_one", spy)
            here = attack_draws(settings, draws, "cpu", progress=False, workers=1)
        assert threads_seen == [1, 1, 1, 1] and torch.get_num_threads() == 2  # one thread inside, restored after
    finally:
        torch.set_num_threads(before)
    there = attack_draws(settings, draws, "cpu", progress=False, workers=2)
    assert list(there) == list(here) == [("linear", 0), ("vfe", 0), ("linear", 1), ("vfe", 1)]
    for key in here:
        assert there[key]["correct"] == here[key]["correct"], key
        assert there[key]["accuracy"] == here[key]["accuracy"], key
        assert there[key]["images"] == here[key]["images"], key
    # each replicate attacks its own draw of test images
    assert here[("linear", 0)]["images"] != here[("linear", 1)]["images"]


def test_heads_that_sample_are_attacked_first_and_the_generator_is_left_alone(fashion_mnist, small_backbone,
                                                                              fashion_heads):
    """The VFE head samples, so its EOT attacks draw n_eot times a step: its jobs start first on the workers."""
    _, test = fashion_mnist
    _, _, models = fashion_heads
    draws = [AttackDraw(small_backbone, {(h, r): models[(h, 0)] for h in HEADS}, test, seed)
             for r, seed in enumerate((5, 6))]
    items = [(key, k) for k, d in enumerate(draws) for key in d.models]
    torch.manual_seed(3)
    want = torch.rand(4)
    torch.manual_seed(3)
    assert adversarial.longest_first(items, draws, n_eot=3) == [1, 3, 0, 2]  # vfe 0, vfe 1, linear 0, linear 1
    assert torch.equal(torch.rand(4), want)  # the sampling head's draws came from a forked generator
    deterministic = [(key, k) for key, k in items if key[0] == "linear"]
    assert adversarial.longest_first(deterministic, draws, n_eot=3) == [0, 1]  # equal costs: their own order
