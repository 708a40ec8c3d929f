"""End-to-end attacks: result names, the log-probability model torchattacks needs, EOT over the head
only, and a real sanity check: PGD at 8/255 breaks a linear probe on real backbone features."""
import subprocess
import sys

import pytest
import torch
from torch import nn

from vfe.experiment.stages.adversarial.settings import AttackSettings
from vfe.experiment.stages.adversarial.stage import run_attacks
from vfe.heads import make_head
from vfe.report.names import parse_attack
from vfe.robustness.attacks import (
    AttackSpec,
    LogProbabilities,
    StraightThroughLogProbabilities,
    attack_specs,
    samples_randomly,
)

DEFAULT_EPS = ([1 / 255, 2 / 255, 4 / 255, 8 / 255], [0.25, 0.5, 1.0])
# budgets whose short decimal is not exact (0.1 + 0.2), tiny, large, whole and off the pixel grid
ODD_EPS = ([3 / 255, 0.01, 0.1 + 0.2, 1e-5, 0.5, 16 / 255, 1 / 3], [0.1 + 0.2, 1e-5, 2.0, 3, 1 / 3, 12.75])


def test_attack_keys_are_stable():
    assert AttackSpec("pgd", "linf", 8 / 255).key == "pgd_linf_8/255"
    assert AttackSpec("pgd", "linf", 8 / 255, eot=True).key == "pgd_linf_8/255_eot"
    assert AttackSpec("fgsm", "linf", 0.01).key == "fgsm_linf_0.01"
    assert AttackSpec("pgd", "l2", 0.5).key == "pgd_l2_0.5"
    assert AttackSpec("pgd", "l2", 1.0).key == "pgd_l2_1"
    assert AttackSpec("pgd", "linf", 0.031372549).key == "pgd_linf_8/255"  # 8/255 to 1e-8: that budget


@pytest.mark.parametrize("eps_linf, eps_l2", [DEFAULT_EPS, ODD_EPS])
def test_every_spec_parses_back_from_its_key_exactly(eps_linf, eps_l2):
    specs = attack_specs(eps_linf, eps_l2, eot=True)
    assert len({s.key for s in specs}) == len(specs) == 3 * len(eps_linf) + 2 * len(eps_l2)
    for spec in specs:
        assert AttackSpec.parse(spec.key) == spec
        assert parse_attack(spec.key) == spec  # the report reads the same spec


def test_labels_and_keys_that_name_no_attack():
    assert AttackSpec.parse("pgd_linf_8/255_eot").label == "PGD L∞ ε=8/255, EOT"
    assert AttackSpec.parse("fgsm_l2_0.5").label == "FGSM L2 ε=0.5"
    for key in ("clean", "pgd_linf", "pgd_linf_x", "pgd_linf_8/255_eot20", "PGD_linf_8/255", "pgd_linf_0.0313725490196",
                "pgd_l2_0.50", "pgd_l2_nan", "pgd_l2_inf"):
        with pytest.raises(ValueError):
            AttackSpec.parse(key)
        assert parse_attack(key) is None


def test_attack_specs_run_budgets_in_increasing_order_with_eot_for_pgd_only():
    keys = [s.key for s in attack_specs([8 / 255, 2 / 255], [0.5], eot=True)]
    assert keys == ["fgsm_linf_2/255", "fgsm_linf_8/255", "pgd_linf_2/255", "pgd_linf_8/255",
                    "pgd_linf_2/255_eot", "pgd_linf_8/255_eot", "pgd_l2_0.5", "pgd_l2_0.5_eot"]
    assert not any(s.eot for s in attack_specs([8 / 255], [0.5], eot=False))


def test_attack_specs_do_not_need_torch():
    code = "import sys, vfe.robustness.attack_spec; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


class CountingIdentity(nn.Module):
    """A stand-in backbone (features in, features out) that counts its calls."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return x


@pytest.fixture(scope="module")
def digit_heads(digits_features):
    X_train, X_test, y_train, y_test = digits_features
    linear = make_head("linear", epochs=10).fit(X_train, y_train)
    vfe = make_head("vfe", latent_dim=8, encoder_units=32, decoder_units=32, vae_epochs=10, epochs=10,
                    recon_weight=10.0).fit(X_train, y_train)
    return linear, vfe, torch.from_numpy(X_test[:64]), torch.from_numpy(y_test[:64])


def test_log_probabilities_turn_torchattacks_cross_entropy_into_the_nll(digit_heads):
    linear, _, X, y = digit_heads
    model = LogProbabilities(CountingIdentity(), linear.probability_module()).eval()
    with torch.no_grad():
        out = model(X)
    probs = torch.from_numpy(linear.predict_proba(X.numpy()))
    # torchattacks applies nn.CrossEntropyLoss to the model's output
    nll = -probs[torch.arange(len(y)), y].log().mean().item()
    assert nn.CrossEntropyLoss()(out, y).item() == pytest.approx(nll, rel=1e-5)


def test_which_heads_sample(digit_heads):
    linear, vfe, X, _ = digit_heads
    assert not samples_randomly(linear.probability_module(), X)
    assert samples_randomly(vfe.probability_module(), X)
    assert not samples_randomly(vfe.set_params(predict_mode="mean").probability_module(), X)
    vfe.set_params(predict_mode="sample")


def test_eot_runs_the_backbone_once_and_averages_the_head_draws(digit_heads):
    _, vfe, X, _ = digit_heads
    backbone = CountingIdentity()
    eot = LogProbabilities(backbone, vfe.probability_module(), n_samples=20).eval()
    plain = LogProbabilities(backbone, vfe.probability_module()).eval()
    with torch.no_grad():
        eot_outputs = torch.stack([eot(X) for _ in range(30)])
        assert backbone.calls == 30
        plain_outputs = torch.stack([plain(X) for _ in range(30)])
    assert torch.allclose(eot_outputs.exp().sum(-1), torch.ones(30, len(X)), atol=1e-5)
    # the mean of 20 draws varies far less between calls than one draw does
    eot_spread = eot_outputs.exp().var(0).mean().item()
    plain_spread = plain_outputs.exp().var(0).mean().item()
    assert plain_spread > 0 and eot_spread < plain_spread / 5


def test_bpda_runs_the_adapting_head_forward_and_differentiates_its_base(digits_features):
    """Straight-through on log probabilities: the value is T3A's, the gradient of torchattacks' cross-entropy
    is (p_t3a - onehot(y)) through the Dense layer's logits, not the base's own gradient (the transfer attack's)."""
    X_train, X_test, y_train, y_test = digits_features
    t3a = make_head("t3a", filter_k=20, epochs=10, random_state=0).fit(X_train, y_train)
    adaptive, base = t3a.probability_module().eval(), t3a.base_probability_module().eval()
    X, y = torch.from_numpy(X_test[:96]).requires_grad_(), torch.from_numpy(y_test[:96])
    out = StraightThroughLogProbabilities(CountingIdentity(), adaptive, base)(X)
    nn.CrossEntropyLoss(reduction="sum")(out, y).backward()
    with torch.no_grad():
        p = adaptive(X)
        assert torch.allclose(out, p.log(), atol=1e-5)
        expected = (p - nn.functional.one_hot(y, p.shape[1])) @ t3a.module_[1].weight
    assert torch.allclose(X.grad, expected, atol=1e-6)
    # the transfer attack's gradient, through the base alone: per row, a different direction
    Xt = X.detach().clone().requires_grad_()
    nn.CrossEntropyLoss(reduction="sum")(LogProbabilities(CountingIdentity(), base)(Xt), y).backward()
    cosine = nn.functional.cosine_similarity(X.grad, Xt.grad, dim=1)
    assert (cosine < 0.95).float().mean() > 0.5, cosine


@pytest.mark.slow
def test_pgd_breaks_a_linear_probe_and_eot_is_reported_for_a_sampling_head(fashion_mnist, small_backbone,
                                                                           fashion_heads):
    _, test = fashion_mnist
    _, _, models = fashion_heads
    settings = AttackSettings(n_attack=32, attack_eps_linf=[1 / 255, 8 / 255], attack_eps_l2=[], attack_steps=10,
                              n_eot=8)
    results = run_attacks(settings, small_backbone, models, test, 0, device="cpu", progress=False)

    linear = results[("linear", 0)]
    acc = linear["accuracy"]
    assert linear["n"] == 32 and not linear["samples_randomly"]
    assert acc["clean"] >= 0.6
    assert acc["pgd_linf_8/255"] <= 0.05  # the sanity check of any attack implementation
    assert acc["clean"] >= acc["pgd_linf_1/255"] >= acc["pgd_linf_8/255"]
    assert acc["fgsm_linf_8/255"] < acc["clean"]
    assert acc["pgd_linf_8/255_eot"] == acc["pgd_linf_8/255"]  # deterministic head: EOT is the plain attack

    vfe = results[("vfe", 0)]
    assert vfe["samples_randomly"] and vfe["n_eot"] == 8
    # a head's numbers do not depend on the heads attacked before it, nor on the global random state (as in a
    # Ray task of its own), and attacking leaves that state alone
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    alone = run_attacks(settings, small_backbone, {("vfe", 0): models[("vfe", 0)]}, test, 0, device="cpu",
                        progress=False)[("vfe", 0)]
    assert torch.equal(torch.random.get_rng_state(), state)
    assert alone["correct"] == vfe["correct"]
    assert set(vfe["accuracy"]) == set(acc)
    assert all(0 <= v <= 1 for v in vfe["accuracy"].values())
    assert vfe["accuracy"]["pgd_linf_8/255_eot"] < vfe["accuracy"]["clean"]
    for r in (linear, vfe):  # one character per image, whose mean is the recorded accuracy
        assert {k: sum(map(int, bits)) / len(bits) for k, bits in r["correct"].items()} == r["accuracy"]
