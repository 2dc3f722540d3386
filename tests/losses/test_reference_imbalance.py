"""Reference tests (float64) for the imbalance family: LDAM, logit-adjusted CE, Balanced Softmax, class-balanced weights.

Oracles: hand-computed tiny cases, the authors' formulas written out here with loops (kaidic/LDAM-DRW ``LDAMLoss`` and
its DRW weights, google-research ``logit_adjustment`` ``build_loss_fn``, Balanced Softmax's ``balanced_softmax_loss``,
Cui et al.'s effective-number weights), ``F.cross_entropy`` where a loss reduces to it, and the Bayes-optimality of
the adjusted losses (zero expected gradient at logits = log(posterior / prior)).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import losslab.losses as L
from losslab import ConfigError, DataError

D = torch.float64
COUNTS = [500, 120, 40, 9, 2]
CIFAR10_LT = [int(5000 * 0.01 ** (i / 9)) for i in range(10)]  # the authors' exponential profile, imbalance 100


def _data(n=9, c=5, seed=0, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, generator=g, dtype=D) * scale
    y = torch.randint(0, c, (n,), generator=g)
    return x, y


def _reduce_ref(losses, weights, keep, reduction):
    """F.cross_entropy semantics written out: 0 at ignored rows, weighted sum / sum of weights of kept rows."""
    per = [v * w if k else torch.zeros((), dtype=D) for v, w, k in zip(losses, weights, keep)]
    if reduction == "none":
        return torch.stack(per)
    if reduction == "sum":
        return sum(per)
    return sum(per) / sum(w for w, k in zip(weights, keep) if k)


# ------------------------------------------------------------------------------------------------------------- LDAM
def _ldam_authors(x, y, counts, max_m, s, weight, reduction, ignore_index=-100):
    """kaidic/LDAM-DRW LDAMLoss.forward, row by row: margins 1/n^(1/4) scaled to max_m, subtracted from the target
    logit, then everything scaled by s and passed to cross-entropy with the class weights."""
    m_list = [1.0 / math.sqrt(math.sqrt(n)) for n in counts]
    top = max(m_list)
    m_list = [m * max_m / top for m in m_list]
    losses, weights, keep = [], [], []
    for i in range(x.shape[0]):
        t = int(y[i])
        keep.append(t != ignore_index)
        t = t if t != ignore_index else 0
        out = [float(x[i, k]) - (m_list[k] if k == t else 0.0) for k in range(x.shape[1])]
        out = [s * v for v in out]
        lse = math.log(sum(math.exp(v - max(out)) for v in out)) + max(out)
        losses.append(torch.tensor(lse - out[t], dtype=D))
        weights.append(1.0 if weight is None else float(weight[t]))
    return _reduce_ref(losses, weights, keep, reduction)


def test_ldam_hand_computed():
    x = torch.zeros(1, 2, dtype=D)  # counts 16 and 1: n^(-1/4) = 1/2 and 1, margins 0.25 and 0.5
    assert float(L.ldam(x, torch.tensor([0]), class_counts=[16, 1], s=1.0)) == pytest.approx(
        math.log(1 + math.exp(0.25)), abs=1e-12)
    assert float(L.ldam(x, torch.tensor([1]), class_counts=[16, 1], s=1.0)) == pytest.approx(
        math.log(1 + math.exp(0.5)), abs=1e-12)
    # the default s = 30 scales the margin too: CE of (-7.5, 0) for class 0
    assert float(L.ldam(x, torch.tensor([0]), class_counts=[16, 1])) == pytest.approx(
        math.log(1 + math.exp(7.5)), abs=1e-12)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("beta", [None, 0.0, 0.9999])
def test_ldam_matches_authors_code_with_drw_weights(reduction, beta):
    x, y = _data(n=12, c=10, scale=0.5)
    y[4] = -100
    w = None if beta is None else L.class_balanced_weights(CIFAR10_LT, beta=beta, dtype=D)
    ours = L.ldam(x, y, class_counts=CIFAR10_LT, weight=w, reduction=reduction)
    ref = _ldam_authors(x, y, CIFAR10_LT, 0.5, 30.0, w, reduction)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)


def test_ldam_gradient_matches_the_margin_cross_entropy():
    x, y = _data()
    m = torch.tensor([n ** -0.25 for n in COUNTS], dtype=D)
    m = 0.3 * m / m.max()
    a = x.clone().requires_grad_(True)
    b = x.clone().requires_grad_(True)
    L.ldam(a, y, class_counts=COUNTS, max_m=0.3, s=7.0).backward()
    F.cross_entropy(7.0 * (b - F.one_hot(y, 5).to(D) * m[y].unsqueeze(1)), y).backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_ldam_with_zero_margin_and_unit_scale_is_cross_entropy(reduction):
    x, y = _data()
    y[2] = -100
    w = torch.rand(5, dtype=D) + 0.1
    ours = L.ldam(x, y, class_counts=COUNTS, max_m=0.0, s=1.0, weight=w, reduction=reduction)
    torch.testing.assert_close(ours, F.cross_entropy(x, y, weight=w, reduction=reduction), rtol=1e-12, atol=1e-12)


def test_ldam_with_equal_counts_is_cross_entropy_with_a_constant_margin():
    x, y = _data()
    ours = L.ldam(x, y, class_counts=[7] * 5, max_m=0.4, s=3.0)
    ref = F.cross_entropy(3.0 * (x - 0.4 * F.one_hot(y, 5).to(D)), y)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)


def test_ldam_margins_depend_on_count_ratios_only_and_rarest_gets_max_m():
    x, y = _data()
    a = L.ldam(x, y, class_counts=COUNTS, reduction="none")
    b = L.ldam(x, y, class_counts=[17 * n for n in COUNTS], reduction="none")
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    # with s = 1 and a zero row, the loss of class j is log(1 + (C - 1) e^{m_j}): solve for m_j
    z = torch.zeros(5, 5, dtype=D)
    per = L.ldam(z, torch.arange(5), class_counts=COUNTS, max_m=0.5, s=1.0, reduction="none")
    margins = torch.log((per.exp() - 1) / 4)
    expected = torch.tensor([0.5 * (2 / n) ** 0.25 for n in COUNTS], dtype=D)
    torch.testing.assert_close(margins, expected, rtol=1e-10, atol=1e-12)


def test_ldam_spatial_and_single_row_shapes():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 5, 3, generator=g, dtype=D)
    y = torch.randint(0, 5, (2, 3), generator=g)
    flat = L.ldam(x.movedim(1, -1).reshape(-1, 5), y.reshape(-1), class_counts=COUNTS, reduction="none")
    torch.testing.assert_close(L.ldam(x, y, class_counts=COUNTS, reduction="none"), flat.reshape(2, 3))
    torch.testing.assert_close(L.ldam(x[0, :, 0], y[0, 0], class_counts=COUNTS), flat[0])


def test_ldam_module_keeps_tensor_counts_as_a_buffer():
    x, y = _data()
    counts = torch.tensor(COUNTS)
    crit = L.LDAMLoss(class_counts=counts, s=5.0)
    assert "class_counts" in dict(crit.named_buffers())
    torch.testing.assert_close(crit(x, y), L.ldam(x, y, class_counts=COUNTS, s=5.0))


# --------------------------------------------------------------------------------------- logit adjustment / BALMS
def _la_authors(x, y, base_probs, tau):
    """google-research logit_adjustment build_loss_fn: logits + log(base_probs**tau + 1e-12), mean softmax CE."""
    losses = []
    for i in range(x.shape[0]):
        z = [float(x[i, k]) + math.log(base_probs[k] ** tau + 1e-12) for k in range(x.shape[1])]
        lse = math.log(sum(math.exp(v) for v in z))
        losses.append(lse - z[int(y[i])])
    return sum(losses) / len(losses)


def _balms_authors(x, y, spc):
    """balanced_softmax_loss: logits + log(sample_per_class), softmax CE, per row."""
    out = []
    for i in range(x.shape[0]):
        z = [float(x[i, k]) + math.log(spc[k]) for k in range(x.shape[1])]
        out.append(math.log(sum(math.exp(v) for v in z)) - z[int(y[i])])
    return torch.tensor(out, dtype=D)


def test_logit_adjusted_and_balanced_softmax_hand_computed():
    x = torch.zeros(1, 2, dtype=D)  # counts (3, 1): prior (3/4, 1/4); n_y e^0 / Σ n_k e^0
    for fn in (L.logit_adjusted_cross_entropy, L.balanced_softmax):
        assert float(fn(x, torch.tensor([1]), class_counts=[3, 1])) == pytest.approx(math.log(4), abs=1e-12)
        assert float(fn(x, torch.tensor([0]), class_counts=[3, 1])) == pytest.approx(-math.log(0.75), abs=1e-12)
    # τ = 2: adjusted logits (2 log 3/4, 2 log 1/4) -> p_1 = 1/16 / (9/16 + 1/16) = 1/10
    out = L.logit_adjusted_cross_entropy(x, torch.tensor([1]), class_counts=[3, 1], tau=2.0)
    assert float(out) == pytest.approx(math.log(10), abs=1e-12)


@pytest.mark.parametrize("tau", [0.5, 1.0, 2.0])
def test_logit_adjusted_matches_authors_code(tau):
    x, y = _data(n=16, c=10)
    prior = [n / sum(CIFAR10_LT) for n in CIFAR10_LT]
    ours = L.logit_adjusted_cross_entropy(x, y, class_counts=CIFAR10_LT, tau=tau)
    # the authors' +1e-12 guard shifts each logit by < 1e-12 / prior^τ (priors here ≥ 1.6e-3): below 1e-6
    assert float(ours) == pytest.approx(_la_authors(x, y, prior, tau), abs=1e-6)


def test_logit_adjusted_is_the_paper_formula_exactly():
    x, y = _data(n=16, c=10)
    log_prior = torch.tensor([math.log(n / sum(CIFAR10_LT)) for n in CIFAR10_LT], dtype=D)
    ref = F.cross_entropy(x + 1.7 * log_prior, y, reduction="none")
    ours = L.logit_adjusted_cross_entropy(x, y, class_counts=CIFAR10_LT, tau=1.7, reduction="none")
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_balanced_softmax_matches_authors_code(reduction):
    x, y = _data(n=16, c=10)
    ref = _balms_authors(x, y, CIFAR10_LT)
    ref = ref.mean() if reduction == "mean" else ref.sum() if reduction == "sum" else ref
    ours = L.balanced_softmax(x, y, class_counts=CIFAR10_LT, reduction=reduction)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)


def test_balanced_softmax_is_the_count_weighted_softmax():
    x, y = _data()
    n = torch.tensor(COUNTS, dtype=D)
    expected = torch.stack([-torch.log(n[t] * torch.exp(r[t]) / (n * torch.exp(r)).sum()) for r, t in zip(x, y)])
    torch.testing.assert_close(L.balanced_softmax(x, y, class_counts=COUNTS, reduction="none"), expected)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weighted", [False, True])
def test_logit_adjusted_at_tau_one_equals_balanced_softmax(reduction, weighted):
    x, y = _data(n=11)
    y[5] = -100
    w = torch.rand(5, dtype=D) + 0.1 if weighted else None
    a = L.logit_adjusted_cross_entropy(x, y, class_counts=COUNTS, tau=1.0, weight=w, reduction=reduction)
    b = L.balanced_softmax(x, y, class_counts=COUNTS, weight=w, reduction=reduction)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    L.logit_adjusted_cross_entropy(xa, y, class_counts=COUNTS, weight=w).backward()
    L.balanced_softmax(xb, y, class_counts=COUNTS, weight=w).backward()
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-12, atol=1e-12)


def test_logit_adjusted_tau_is_a_power_of_the_counts():
    x, y = _data()
    a = L.logit_adjusted_cross_entropy(x, y, class_counts=COUNTS, tau=0.6, reduction="none")
    b = L.balanced_softmax(x, y, class_counts=[n ** 0.6 for n in COUNTS], reduction="none")
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_tau_zero_and_equal_counts_reduce_to_cross_entropy(reduction):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 5, 3, generator=g, dtype=D)  # spatial shape too
    y = torch.randint(0, 5, (2, 3), generator=g)
    y[0, 1] = -100
    w = torch.rand(5, dtype=D) + 0.1
    ref = F.cross_entropy(x, y, weight=w, reduction=reduction)
    outs = [L.logit_adjusted_cross_entropy(x, y, class_counts=COUNTS, tau=0.0, weight=w, reduction=reduction),
            L.logit_adjusted_cross_entropy(x, y, class_counts=[4] * 5, tau=2.5, weight=w, reduction=reduction),
            L.balanced_softmax(x, y, class_counts=[4] * 5, weight=w, reduction=reduction)]
    for out in outs:
        torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["balanced_softmax", "logit_adjusted_cross_entropy"])
def test_bayes_optimal_logits_are_the_balanced_posterior(name):
    # training labels ~ q ∝ n_y p_bal(y); the expected loss is minimised where softmax(x) = p_bal = (q/n) normalised
    n = torch.tensor(COUNTS, dtype=D)
    p_bal = torch.tensor([0.1, 0.3, 0.2, 0.15, 0.25], dtype=D)
    q = n * p_bal / (n * p_bal).sum()
    x = torch.log(p_bal).unsqueeze(0).expand(5, 5).clone().requires_grad_(True)
    per = L.get(name)(x, torch.arange(5), class_counts=COUNTS, reduction="none")
    (per * q).sum().backward()
    torch.testing.assert_close(x.grad.sum(0), torch.zeros(5, dtype=D), atol=1e-12, rtol=0)


# ------------------------------------------------------------------------------------------ class-balanced weights
def _cb_authors(counts, beta):
    """richardaecn/class-balanced-loss cifar_main.py (and LDAM-DRW's Reweight/DRW rules), in NumPy."""
    effective_num = 1.0 - np.power(beta, counts)
    weights = (1.0 - beta) / np.array(effective_num)
    return weights / np.sum(weights) * len(counts)


def test_class_balanced_weights_hand_computed():
    # counts (1, 2), β = 1/2: 1/E = (1/2)/(1/2) = 1 and (1/2)/(3/4) = 2/3, sum 5/3, scaled to sum 2 -> (6/5, 4/5)
    torch.testing.assert_close(L.class_balanced_weights([1, 2], beta=0.5, dtype=D),
                               torch.tensor([1.2, 0.8], dtype=D), rtol=1e-15, atol=0)
    # counts (1, 1, 3), β = 1/2: 1/E = (1, 1, 4/7), sum 18/7, scaled to sum 3 -> (7/6, 7/6, 2/3)
    torch.testing.assert_close(L.class_balanced_weights([1, 1, 3], beta=0.5, dtype=D),
                               torch.tensor([7 / 6, 7 / 6, 2 / 3], dtype=D), rtol=1e-15, atol=0)


@pytest.mark.parametrize("beta", [0.0, 0.5, 0.9, 0.99, 0.999, 0.9999])
def test_class_balanced_weights_match_authors_code(beta):
    ours = L.class_balanced_weights(CIFAR10_LT, beta=beta, dtype=D)
    torch.testing.assert_close(ours, torch.from_numpy(_cb_authors(np.array(CIFAR10_LT), beta)), rtol=1e-12, atol=0)
    assert float(ours.sum()) == pytest.approx(10, abs=1e-12)
    assert bool((ours[1:] >= ours[:-1]).all())  # rarer classes (later in CIFAR10_LT) never weigh less
    if beta >= 0.99:  # for small β, 1 - β^n is 1 to round-off for every count above ~40
        assert bool((ours[1:] > ours[:-1]).all())


def test_class_balanced_weights_limits():
    counts = np.array(COUNTS, dtype=np.float64)
    inverse = torch.from_numpy(1 / counts / np.sum(1 / counts) * len(counts))
    assert torch.equal(L.class_balanced_weights(COUNTS, beta=0.0, dtype=D), torch.ones(5, dtype=D))
    torch.testing.assert_close(L.class_balanced_weights(COUNTS, beta=1.0, dtype=D), inverse, rtol=1e-15, atol=0)
    torch.testing.assert_close(L.class_balanced_weights(COUNTS, beta=1 - 1e-12, dtype=D), inverse, rtol=1e-8, atol=0)
    torch.testing.assert_close(L.class_balanced_weights(COUNTS, beta=1e-12, dtype=D), torch.ones(5, dtype=D),
                               rtol=1e-10, atol=0)
    # tiny β (β - 1 rounds to -1) and β close to 1 (where 1 - β^n cancels in the literal formula) stay finite
    assert torch.isfinite(L.class_balanced_weights(COUNTS, beta=1e-300)).all()


def test_class_balanced_weights_inputs_dtype_device():
    ref = L.class_balanced_weights(COUNTS, beta=0.99)
    assert ref.dtype == torch.float32 and ref.shape == (5,)
    for same in (tuple(COUNTS), np.array(COUNTS), np.array(COUNTS, dtype=np.float32), torch.tensor(COUNTS),
                 torch.tensor(COUNTS, dtype=torch.int32)):
        torch.testing.assert_close(L.class_balanced_weights(same, beta=np.float32(0.99)), ref)
    assert L.class_balanced_weights(COUNTS, dtype=torch.bfloat16).dtype == torch.bfloat16


def test_class_balanced_weights_as_weight_for_cross_entropy():
    x, y = _data()
    w = L.class_balanced_weights(COUNTS, beta=0.999, dtype=D)
    torch.testing.assert_close(L.cross_entropy(x, y, weight=w), F.cross_entropy(x, y, weight=w))


# ------------------------------------------------------------------------------------------- properties and errors
IMBALANCE = {"ldam": {"max_m": 0.5, "s": 5.0}, "logit_adjusted_cross_entropy": {"tau": 1.3}, "balanced_softmax": {}}


@pytest.mark.parametrize("name", sorted(IMBALANCE))
@pytest.mark.parametrize("seed", range(4))
def test_losses_are_non_negative_and_finite_for_large_logits(name, seed):
    x, y = _data(seed=seed, scale=10.0 ** seed)
    out = L.get(name)(x, y, class_counts=COUNTS, reduction="none", **IMBALANCE[name])
    assert torch.isfinite(out).all() and (out >= 0).all()


@pytest.mark.parametrize("name", sorted(IMBALANCE))
@pytest.mark.parametrize("counts", [np.array(COUNTS), torch.tensor(COUNTS, dtype=torch.float32), tuple(COUNTS),
                                    [float(n) for n in COUNTS]])
def test_counts_of_any_container_agree(name, counts):
    x, y = _data()
    ref = L.get(name)(x, y, class_counts=COUNTS, **IMBALANCE[name])
    torch.testing.assert_close(L.get(name)(x, y, class_counts=counts, **IMBALANCE[name]), ref)


@pytest.mark.parametrize("name", sorted(IMBALANCE))
@pytest.mark.parametrize(("counts", "match"), [
    ([500, 120, 40, 9], "4 entries but the input has 5 classes"),
    ([500, 120, 0, 9, 2], "positive, got 0.0 for class 2"),
    ([500, 120, -4, 9, 2], "positive"),
    ([500, float("nan"), 40, 9, 2], "finite and positive"),
    ([500, float("inf"), 40, 9, 2], "finite and positive"),
    ([[500, 120, 40, 9, 2]], "1-D"),
    ([True, True, False, True, True], "real numbers"),
    ("5", "real numbers"),
    (None, "real numbers"),
    (torch.tensor([1 + 1j] * 5), "real numbers"),
])
def test_bad_class_counts_are_config_errors(name, counts, match):
    x, y = _data()
    with pytest.raises(ConfigError, match=match):
        L.get(name)(x, y, class_counts=counts, **IMBALANCE[name])


@pytest.mark.parametrize(("name", "option", "value", "match"), [
    ("ldam", "max_m", -0.1, r"max_m=-0.1 is out of range"),
    ("ldam", "s", 0.0, r"s=0.0 is out of range"),
    ("ldam", "s", "30", "finite real number"),
    ("logit_adjusted_cross_entropy", "tau", -1.0, r"tau=-1.0 is out of range"),
    ("logit_adjusted_cross_entropy", "tau", float("inf"), "finite real number"),
])
def test_bad_hyperparameters_are_config_errors(name, option, value, match):
    x, y = _data()
    with pytest.raises(ConfigError, match=match):
        L.get(name)(x, y, class_counts=COUNTS, **dict(IMBALANCE[name], **{option: value}))


@pytest.mark.parametrize(("name", "option", "value"), [("ldam", "max_m", 0.3), ("ldam", "s", 8.0),
                                                        ("logit_adjusted_cross_entropy", "tau", 0.7)])
def test_numpy_scalars_and_0d_tensors_are_numbers(name, option, value):
    x, y = _data()
    ref = L.get(name)(x, y, class_counts=COUNTS, **{option: value})
    for same in (np.float64(value), torch.tensor(value, dtype=D)):
        torch.testing.assert_close(L.get(name)(x, y, class_counts=COUNTS, **{option: same}), ref)


def test_class_balanced_weights_bad_inputs():
    with pytest.raises(ConfigError, match=r"beta=1.5 is out of range"):
        L.class_balanced_weights(COUNTS, beta=1.5)
    with pytest.raises(ConfigError, match=r"beta=-0.1 is out of range"):
        L.class_balanced_weights(COUNTS, beta=-0.1)
    with pytest.raises(ConfigError, match="positive"):
        L.class_balanced_weights([3, 0, 1])
    with pytest.raises(ConfigError, match="1-D"):
        L.class_balanced_weights([])
    with pytest.raises(ConfigError, match=r"floating torch\.dtype"):
        L.class_balanced_weights(COUNTS, dtype=torch.int64)


def test_weight_and_target_errors_still_come_from_the_shared_checks():
    x, y = _data()
    with pytest.raises(DataError, match="one weight per class"):
        L.ldam(x, y, class_counts=COUNTS, weight=torch.ones(4, dtype=D))
    with pytest.raises(DataError, match="every index must lie in"):
        L.balanced_softmax(x, torch.full_like(y, 5), class_counts=COUNTS)


@pytest.mark.parametrize("cast", [torch.bfloat16, torch.float16])
def test_module_counts_keep_their_dtype_under_module_casts(cast):
    counts = torch.tensor([70000.0, 5000.0, 7.0])  # 70000 overflows float16, 5000 rounds to 4992 in bfloat16
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2, 0])
    for module, fn, kw in ((L.BalancedSoftmaxLoss(class_counts=counts), L.balanced_softmax, {}),
                           (L.LDAMLoss(class_counts=counts, s=1.0), L.ldam, {"s": 1.0}),
                           (L.LogitAdjustedCrossEntropyLoss(class_counts=counts), L.logit_adjusted_cross_entropy, {})):
        cast_module = module.to(cast)
        assert cast_module.class_counts.dtype == torch.float32 and torch.equal(cast_module.class_counts, counts)
        torch.testing.assert_close(cast_module(x, y), fn(x, y, class_counts=counts, **kw))
    with pytest.raises(ConfigError, match="per call"):
        L.LDAMLoss(class_counts=counts)(x, y, s=2.0)


def test_class_balanced_weights_default_beta_is_ldam_drw():
    got = L.class_balanced_weights([10, 100, 1000], dtype=torch.float64)
    beta = 0.9999
    raw = [(1 - beta) / (1 - beta**n) for n in (10, 100, 1000)]
    expected = [3 * r / sum(raw) for r in raw]
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=0)
    assert got[0].item() == pytest.approx(2.7003825, abs=1e-6)
