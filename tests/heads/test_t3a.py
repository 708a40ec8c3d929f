"""T3A (test-time classifier adjustment): its support-set arithmetic by hand, against a loop written from
the paper, its online and per-call behaviour, and its gain on features of really corrupted images."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax

from vfe.data.split import holdout_index
from vfe.heads import T3AHead, head_class, make_head
from vfe.heads.t3a import T3AClassifier, fit_temperature

# four 2-d test rows; with W = I and b = 0 the logits are the rows themselves, so a row's pseudo-label is
# its larger coordinate and its entropy falls as |z[0] - z[1]| grows: z1 (3) < z4 (2.8) < z2 (1.5) <
# the templates W0, W1 (1) < z3 (0.2)
Z = np.array([[3.0, 0.0], [0.5, 2.0], [1.0, 1.2], [0.2, 3.0]], dtype=np.float32)
N2, N3, N4 = np.sqrt(4.25), np.sqrt(2.44), np.sqrt(9.04)  # |z2|, |z3|, |z4|


def _unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=float)
    return v / np.linalg.norm(v)


def _t3a(weight, bias, temperature: float = 0.5, **params) -> T3AHead:
    """A T3A head with the given Dense layer (no training), through the pipeline's loading path."""
    head = T3AHead(**params)
    weight = torch.tensor(weight, dtype=torch.float32)
    tensors = {"1.weight": weight, "1.bias": torch.tensor(bias, dtype=torch.float32),
               "temperature": torch.tensor([temperature])}
    meta = {"params": head.get_params(), "classes": list(range(len(weight))), "n_features_in": weight.shape[1]}
    return T3AHead.from_state(tensors, meta)


def test_support_sets_filter_and_templates_by_hand():
    identity = [[1.0, 0.0], [0.0, 1.0]]
    # filter_k=1, batches (z1, z2), (z3, z4). Batch 1: z1 (class 0) and z2 (class 1) are more confident
    # than the templates and replace them. Batch 2: z3 and z4 are class 1; z4 is the most confident class-1
    # entry so far and replaces z2 -- for z3 too, which shares its batch; z3 itself is filtered out.
    expected = np.array([[1.0, 0.5 / N2], [0.5 / N2, 1.0],
                         [1.0 / N3, (0.2 * 1.0 + 3.0 * 1.2) / (N3 * N4)], [0.2 / N4, 1.0]])
    head = _t3a(identity, [0.0, 0.0], filter_k=1, adapt_batch_size=2)
    np.testing.assert_allclose(head.cosine_logits(Z), expected, atol=1e-6)
    np.testing.assert_allclose(head.predict_proba(Z), softmax(expected / 0.5, axis=1), atol=1e-6)

    # filter_k=-1 keeps everything: a template is the normalised sum of its class's unit vectors
    t0 = [1.0, 0.0]  # W0 and z1 both point along x
    t1_batch1 = _unit([0.0 + 0.5 / N2, 1.0 + 2.0 / N2])  # W1, z2
    t1_batch2 = _unit([0.5 / N2 + 1.0 / N3 + 0.2 / N4, 1.0 + 2.0 / N2 + 1.2 / N3 + 3.0 / N4])  # W1, z2, z3, z4
    expected = np.array([[_unit(z) @ t0, _unit(z) @ t1] for z, t1 in zip(Z, [t1_batch1] * 2 + [t1_batch2] * 2)])
    np.testing.assert_allclose(_t3a(identity, [0.0, 0.0], filter_k=-1, adapt_batch_size=2).cosine_logits(Z),
                               expected, atol=1e-6)

    # filter_k=2: after batch 2 class 1 keeps its two most confident entries, z4 and z2
    t1_batch2 = _unit(_unit(Z[1]) + _unit(Z[3]))
    expected = np.array([[_unit(z) @ t0, _unit(z) @ t1] for z, t1 in zip(Z, [t1_batch1] * 2 + [t1_batch2] * 2)])
    np.testing.assert_allclose(_t3a(identity, [0.0, 0.0], filter_k=2, adapt_batch_size=2).cosine_logits(Z),
                               expected, atol=1e-6)


def test_templates_are_labelled_by_the_classifier_bias_included():
    # b = (0, 2.5): the classifier calls both weight rows class 1 (logits (1, 2.5) and (0, 3.5)), so class 0
    # starts with no support. z = (3, 0) has logits (3, 2.5): class 0, its only support.
    head = _t3a([[1.0, 0.0], [0.0, 1.0]], [0.0, 2.5], filter_k=-1, adapt_batch_size=1)
    np.testing.assert_allclose(head.cosine_logits(Z[:1]), [[1.0, 3.0 / (3.0 * np.sqrt(2.0))]], atol=1e-6)


def _t3a_by_loops(W: np.ndarray, b: np.ndarray, Z: np.ndarray, filter_k: int, batch: int) -> np.ndarray:
    """T3A written from the paper, one support at a time (float64): per class a list of (entropy, z),
    seeded with the classifier's weight rows; each batch's rows join their pseudo-class, each list keeps
    its filter_k lowest entropies (stable), a row's logit is its cosine with the normalised sum of units."""

    def labelled(z):
        log_p = log_softmax(z @ W.T + b)
        return int(np.argmax(log_p)), float(-(np.exp(log_p) * log_p).sum())

    supports = [[] for _ in range(len(W))]
    for w in W:
        label, entropy = labelled(w)
        supports[label].append((entropy, w))
    out = []
    for start in range(0, len(Z), batch):
        rows = Z[start:start + batch]
        for z in rows:
            label, entropy = labelled(z)
            supports[label].append((entropy, z))
        if filter_k != -1:
            supports = [sorted(s, key=lambda entry: entry[0])[:filter_k] for s in supports]
        templates = [_unit(sum(_unit(v) for _, v in s)) if s else np.zeros(W.shape[1]) for s in supports]
        out += [[_unit(z) @ t for t in templates] for z in rows]
    return np.array(out)


@pytest.mark.slow
@pytest.mark.parametrize("filter_k, batch", [(1, 32), (5, 7), (100, 32), (-1, 50)])
def test_matches_the_algorithm_written_as_loops(digit_backbone_features, filter_k, batch):
    f = digit_backbone_features
    linear = make_head("linear", epochs=5, random_state=0).fit(f["X_train"], f["y_train"]).module_[1]
    W, b = linear.weight.detach().double(), linear.bias.detach().double()
    Z = f["X_zoom"][:300].astype(np.float64)
    classifier = T3AClassifier(torch.nn.Linear(W.shape[1], W.shape[0]).double(), filter_k, batch)
    classifier.linear.load_state_dict({"weight": W, "bias": b})
    with torch.no_grad():
        ours = classifier(torch.from_numpy(Z)).numpy()
    np.testing.assert_allclose(ours, _t3a_by_loops(W.numpy(), b.numpy(), Z, filter_k, batch), atol=1e-10)


def test_adapts_online_in_order_and_resets_at_every_call(digits_features):
    X_train, X_test, y_train, _ = digits_features
    head = make_head("t3a", adapt_batch_size=32, random_state=0).fit(X_train, y_train)
    full = head.predict_proba(X_test)
    np.testing.assert_array_equal(head.predict_proba(X_test), full)  # support sets reset: the same again
    np.testing.assert_array_equal(head.predict_proba(X_test[:64]), full[:64])  # earlier rows never see later ones
    alone = head.predict_proba(X_test[64:])  # the same rows without the first two batches' supports
    assert not np.allclose(alone, full[64:])


@pytest.mark.slow
def test_t3a_gains_on_features_of_corrupted_images(digit_backbone_features):
    """Zoom blur (severity 5) on the digits: measured 55.7 -> 69.6 % (seed 0), and +9.6 to +11.8 points
    for seeds 1-3. On clean features T3A costs accuracy here (90.7 -> 79.4 %, seed 0): nearest template
    by cosine is a weaker rule than the trained Dense layer when nothing has shifted."""
    f = digit_backbone_features
    linear = make_head("linear", random_state=0).fit(f["X_train"], f["y_train"])
    t3a = make_head("t3a", random_state=0).fit(f["X_train"], f["y_train"])
    np.testing.assert_array_equal(t3a.module_[1].weight.detach(), linear.module_[1].weight.detach())  # same fit
    before, after = linear.score(f["X_zoom"], f["y_test"]), t3a.score(f["X_zoom"], f["y_test"])
    assert after > before + 0.07, (before, after)


def test_round_trip_temperature_and_probability_module(digits_features):
    X_train, X_test, y_train, y_test = digits_features
    head = make_head("t3a", filter_k=20, random_state=0).fit(X_train, y_train)
    assert 1e-3 < float(head.temperature_) < 10
    probs = head.predict_proba(X_test)
    tensors, meta = head.export_state()
    loaded = head_class(meta["head"]).from_state(tensors, meta)
    np.testing.assert_array_equal(loaded.predict_proba(X_test), probs)
    with torch.no_grad():
        np.testing.assert_allclose(head.probability_module()(torch.from_numpy(X_test)).numpy(), probs, atol=1e-7)
    # a given temperature is used as is and changes probabilities, never predictions
    fixed = make_head("t3a", filter_k=20, temperature=0.5, random_state=0).fit(X_train, y_train)
    assert float(fixed.temperature_) == 0.5
    np.testing.assert_array_equal(fixed.predict(X_test), head.predict(X_test))
    assert head.score(X_test, y_test) > 0.8


def test_the_base_module_is_the_dense_layer_row_by_row(digits_features):
    """What the attack stage's transfer and BPDA attacks differentiate: softmax(Dense(z)), no adaptation."""
    X_train, X_test, y_train, _ = digits_features
    head = make_head("t3a", filter_k=20, epochs=5, random_state=0).fit(X_train, y_train)
    W, b = head.module_[1].weight.detach().numpy(), head.module_[1].bias.detach().numpy()
    X = torch.from_numpy(X_test)
    with torch.no_grad():
        base, adaptive = head.base_probability_module().eval(), head.probability_module().eval()
        np.testing.assert_allclose(base(X).numpy(), softmax(X_test @ W.T + b, axis=1), atol=1e-6)
        np.testing.assert_array_equal(base(X[64:]).numpy(), base(X)[64:].numpy())  # each row on its own
        assert not torch.allclose(adaptive(X[64:]), adaptive(X)[64:])  # unlike T3A's


@pytest.mark.parametrize("params, message", [({"filter_k": 0}, "filter_k must be -1"),
                                             ({"adapt_batch_size": 0}, "adapt_batch_size must be at least 1"),
                                             ({"temperature": 0.0}, "temperature must be > 0")])
def test_invalid_settings_are_refused_before_training(digits_features, params, message):
    X_train, _, y_train, _ = digits_features
    with pytest.raises(ValueError, match=message):
        make_head("t3a", epochs=1000, **params).fit(X_train, y_train)


def _best_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """The T with the lowest mean NLL of softmax(logits / T): scipy's log_softmax, unbounded Brent on log T."""
    def nll(log_t: float) -> float:
        return float(-log_softmax(logits / np.exp(log_t), axis=1)[np.arange(len(y)), y].mean())

    return float(np.exp(minimize_scalar(nll, bracket=(np.log(0.01), np.log(1.0)), method="brent").x))


def test_the_fitted_temperature_minimises_the_nll_on_the_held_out_rows(digits_features):
    X_train, _, y_train, _ = digits_features
    head = make_head("t3a", filter_k=20, epochs=2, validation_fraction=0.2, random_state=0).fit(X_train, y_train)
    held_out = holdout_index(len(y_train), 0.2, 0, y_train)[1]
    best = _best_temperature(head.cosine_logits(X_train[held_out]).astype(np.float64), y_train[held_out])
    assert float(head.temperature_) == pytest.approx(best, rel=1e-3)
    on_all = _best_temperature(head.cosine_logits(X_train).astype(np.float64), y_train)
    assert abs(np.log(on_all / best)) > 0.05  # fitted on every training row, T would differ
    # validation_fraction=0 holds nothing out: the temperature is fitted on all the training rows
    whole = make_head("t3a", filter_k=20, epochs=2, validation_fraction=0.0, random_state=0).fit(X_train, y_train)
    expected = _best_temperature(whole.cosine_logits(X_train).astype(np.float64), y_train)
    assert float(whole.temperature_) == pytest.approx(expected, rel=1e-3)


def test_the_fitted_temperature_stays_in_its_documented_range():
    """Nine rows right and one wrong by a cosine margin d: the NLL is least where softmax gives 0.9 to the
    larger cosine, d / T = ln 9, so T = 0.01 / ln 9 = 0.0046 for d = 0.01. Reversed, T runs to the bound 10."""
    cosines = np.tile([0.51, 0.50], (10, 1))
    labels = np.r_[np.zeros(9, int), 1]
    assert fit_temperature(cosines, labels) == pytest.approx(0.01 / np.log(9), rel=1e-3)
    assert fit_temperature(cosines, 1 - labels) == pytest.approx(10.0, rel=1e-3)
