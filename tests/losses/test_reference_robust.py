"""Per-entry reference tests (float64): comp-sum family, smooth adversarial comp-sum, LDR-KL, ALDR-KL."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import losslab.losses as L
from losslab import ConfigError, DataError

D = torch.float64


def _data(n=7, c=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, generator=g, dtype=D) * 2, torch.randint(0, c, (n,), generator=g)


def _phi(u, tau):
    """Mao, Mohri & Zhong's Φ^τ, written on u = Σ_{k≠y} exp(h_k - h_y)."""
    if tau == 1:
        return math.log1p(u)
    return ((1 + u) ** (1 - tau) - 1) / (1 - tau)


@pytest.mark.parametrize("tau", [0.0, 0.5, 1.0, 1.3, 2.0, 3.0])
def test_comp_sum_matches_phi_tau(tau):
    x, y = _data()
    rows = []
    for i in range(7):
        u = sum(math.exp(float(x[i, k] - x[i, y[i]])) for k in range(5) if k != int(y[i]))
        rows.append(_phi(u, tau))
    torch.testing.assert_close(L.comp_sum(x, y, tau=tau, reduction="none"), torch.tensor(rows, dtype=D))


def test_comp_sum_special_cases():
    x, y = _data()
    p = torch.softmax(x, 1)[torch.arange(7), y]
    torch.testing.assert_close(L.comp_sum(x, y, tau=1.0), F.cross_entropy(x, y))
    torch.testing.assert_close(L.comp_sum(x, y, tau=2.0, reduction="none"), 1 - p)
    torch.testing.assert_close(L.softmax_mae(x, y, reduction="none"), 1 - p)
    torch.testing.assert_close(L.comp_sum(x, y, tau=0.0, reduction="none"), 1 / p - 1)
    for q in (0.3, 0.7, 1.0):
        gce = (1 - p**q) / q
        torch.testing.assert_close(L.generalized_cross_entropy(x, y, q=q, reduction="none"), gce)
        torch.testing.assert_close(L.comp_sum(x, y, tau=1 + q, reduction="none"), gce)


def test_comp_sum_bad_hyperparameters():
    x, y = _data()
    with pytest.raises(ConfigError, match="tau"):
        L.comp_sum(x, y, tau=-0.5)
    with pytest.raises(ConfigError, match="q"):
        L.generalized_cross_entropy(x, y, q=0.0)


def test_adversarial_comp_sum_matches_definition():
    x, y = _data()
    xa = x + torch.randn(7, 5, generator=torch.Generator().manual_seed(9), dtype=D)
    tau, nu = 1.5, 0.3
    rows = []
    for i in range(7):
        yi = int(y[i])
        u = sum(math.exp(float(x[i, k] - x[i, yi])) for k in range(5) if k != yi)
        d = [float((xa[i, k] - xa[i, yi]) - (x[i, k] - x[i, yi])) for k in range(5)]
        rows.append(_phi(u, tau) + nu * math.sqrt(sum(v * v for v in d)))
    out = L.adversarial_comp_sum(x, xa, y, tau=tau, nu=nu, reduction="none")
    torch.testing.assert_close(out, torch.tensor(rows, dtype=D))
    # identical clean and adversarial logits: the smooth term vanishes
    torch.testing.assert_close(L.adversarial_comp_sum(x, x, y, tau=tau), L.comp_sum(x, y, tau=tau), atol=1e-12,
                               rtol=0)
    with pytest.raises(DataError, match="input_adv"):
        L.adversarial_comp_sum(x, xa[:, :3], y)


def _ldr_v1(y_pred, y_true_onehot, threshold, lam):
    """Authors' LDRLoss_V1 (softplus, divide by row mean, threshold·(1 - onehot) + f - f_y, λ·log-mean-exp)."""
    y_pred = F.softplus(y_pred)
    y_pred = y_pred / y_pred.mean(1, keepdim=True)
    diff = threshold * (1 - y_true_onehot) + y_pred - (y_pred * y_true_onehot).sum(1, keepdim=True)
    diff = diff / lam
    mx = diff.max(1, keepdim=True).values
    return (lam * (torch.log(torch.exp(diff - mx).mean(1, keepdim=True)) + mx)).squeeze(1)


@pytest.mark.parametrize("lam,margin", [(1.0, 2.0), (0.3, 1.0), (5.0, 0.0)])
def test_ldr_kl_matches_authors_code(lam, margin):
    x, y = _data()
    ref = _ldr_v1(x, F.one_hot(y, 5).to(D), margin, lam)
    torch.testing.assert_close(L.ldr_kl(x, y, lam=lam, margin=margin, reduction="none"), ref)


def test_ldr_kl_limits_are_the_two_hinges():
    x, y = _data()
    onehot = F.one_hot(y, 5).to(D)
    d = 1.0 * (1 - onehot) + x - (x * onehot).sum(1, keepdim=True)
    cs = d.max(1).values  # Crammer–Singer (λ → 0)
    torch.testing.assert_close(L.ldr_kl(x, y, lam=1e-4, margin=1.0, normalize="none", reduction="none"), cs,
                               atol=1e-3, rtol=0)
    ww = d.mean(1)  # λ → ∞: mean of the margins (Weston–Watkins-like, without the hinge)
    torch.testing.assert_close(L.ldr_kl(x, y, lam=1e5, margin=1.0, normalize="none", reduction="none"), ww,
                               atol=1e-3, rtol=0)


def _aldr_v1(y_pred, y_true_onehot, lam_prev, threshold, lam_ref, alpha):
    """Authors' ALDRLoss_V1 forward (softplus=False), rewritten; returns per-row loss and new λ."""
    k = y_pred.shape[1]
    y_pred = y_pred / (y_pred.abs().sum(1, keepdim=True) / k)
    q = torch.softmax(y_pred / lam_prev, 1) + 1e-5
    q = q / q.sum(1, keepdim=True)
    kl = (q * torch.log(k * q)).sum(1, keepdim=True)
    logk = math.log(k)
    lam = (lam_ref - lam_ref * kl / (alpha * logk)).detach()
    extra = -0.5 * alpha * logk / lam_ref * (lam - lam_ref) ** 2
    diff = threshold * (1 - y_true_onehot) + y_pred - (y_pred * y_true_onehot).sum(1, keepdim=True)
    diff = diff / lam
    mx = diff.max(1, keepdim=True).values.detach()
    loss = lam * (torch.log(torch.exp(diff - mx).mean(1, keepdim=True)) + mx) + extra
    return loss.squeeze(1), lam.squeeze(1)


@pytest.mark.parametrize("alpha", [1.0, 2.0, 5.0])
def test_aldr_kl_matches_authors_code_and_gradient(alpha):
    x, y = _data()
    lam_prev = torch.linspace(0.5, 1.5, 7, dtype=D)
    a = x.clone().requires_grad_(True)
    b = x.clone().requires_grad_(True)
    ref, lam_ref = _aldr_v1(b, F.one_hot(y, 5).to(D), lam_prev.unsqueeze(1), 1.0, 1.0, alpha)
    out, lam = L.aldr_kl(a, y, alpha=alpha, lam_prev=lam_prev, reduction="none", return_lambda=True)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(lam, lam_ref)
    out.sum().backward()
    ref.sum().backward()
    torch.testing.assert_close(a.grad, b.grad)  # λ carries no gradient, as in the authors' code


def test_aldr_kl_default_lam_prev_is_lam0_and_bad_lam_prev():
    x, y = _data()
    torch.testing.assert_close(L.aldr_kl(x, y, lam0=0.8), L.aldr_kl(x, y, lam0=0.8, lam_prev=torch.full((7,), 0.8,
                                                                                                       dtype=D)))
    with pytest.raises(DataError, match="lam_prev"):
        L.aldr_kl(x, y, lam_prev=torch.ones(3, dtype=D))
    with pytest.raises(DataError, match="positive"):
        L.aldr_kl(x, y, lam_prev=-torch.ones(7, dtype=D))
    with pytest.raises(ConfigError, match="normalize"):
        L.ldr_kl(x, y, normalize="softmax")


def test_aldr_kl_module_keeps_per_example_lambda_like_the_authors_buffer():
    x, y = _data()
    crit = L.ALDRKLLoss(num_examples=10, alpha=2.0, reduction="none")
    idx = torch.tensor([0, 3, 5, 6, 7, 8, 9])
    table = torch.ones(10, dtype=D)
    onehot = F.one_hot(y, 5).to(D)
    for visit in range(3):  # revisit the same examples: λ_prev comes from the previous visit
        xv = x * (1 + 0.3 * visit)
        ref, lam = _aldr_v1(xv, onehot, table[idx].unsqueeze(1), 1.0, 1.0, 2.0)
        table[idx] = lam
        torch.testing.assert_close(crit(xv, y, index=idx), ref)
        torch.testing.assert_close(crit.lam_table, table)
    state = crit.state_dict()
    fresh = L.ALDRKLLoss(num_examples=10, alpha=2.0, reduction="none")
    fresh.load_state_dict(state)
    torch.testing.assert_close(fresh(x, y, index=idx), crit(x, y, index=idx))
    with pytest.raises(ConfigError, match="num_examples"):
        L.ALDRKLLoss()(x, y, index=idx)
    with pytest.raises(DataError, match="index"):
        crit(x, y, index=torch.tensor([0, 1, 2, 3, 4, 5, 10]))


# ---------------------------------------------------------------------------- LDR normalisation floor (eps)
def _zero_head_grad(fn, **kw):
    x = torch.zeros(3, 4, dtype=torch.float32, requires_grad=True)
    loss = fn(x, torch.tensor([0, 1, 2]), **kw)
    loss.backward()
    return loss.detach(), x.grad


@pytest.mark.parametrize("fn,kw", [(L.aldr_kl, {}), (L.ldr_kl, {"normalize": "l1_mean"})])
def test_l1_mean_zero_rows_have_gradient_about_one_over_eps(fn, kw):
    # mean|x| was floored at finfo.tiny: a zero-initialised head got gradients ~1e37
    loss, grad = _zero_head_grad(fn, **kw)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    assert 0 < float(grad.abs().max()) <= 1 / 1e-6
    _, grad_big_eps = _zero_head_grad(fn, eps=1e-2, **kw)
    torch.testing.assert_close(grad_big_eps, grad * 1e-4)  # f = x / eps below the floor: gradient ∝ 1/eps


def test_l1_mean_floor_changes_only_rows_below_eps():
    x, y = _data()
    x[0] = x[0] / x[0].abs().mean() * 2e-6  # mean|x| = 2e-6 ≥ eps: normalised exactly, like the authors
    x[1] = x[1] / x[1].abs().mean() * 1e-8  # below eps: divided by eps instead
    onehot = F.one_hot(y, 5).to(D)
    ref, _ = _aldr_v1(x, onehot, torch.ones(7, 1, dtype=D), 1.0, 1.0, 2.0)
    out = L.aldr_kl(x, y, alpha=2.0, reduction="none")
    torch.testing.assert_close(out[[0, *range(2, 7)]], ref[[0, *range(2, 7)]])
    below = L.ldr_kl(x[1:2], y[1:2], normalize="l1_mean", reduction="none")
    torch.testing.assert_close(below, L.ldr_kl(x[1:2] / 1e-6, y[1:2], normalize="none", reduction="none"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("value", [-110.0, -1e4])
@pytest.mark.parametrize("fn,kw", [(L.ldr_kl, {}), (L.aldr_kl, {"normalize": "softplus_mean"})])
def test_softplus_mean_very_negative_rows_are_finite(dtype, value, fn, kw):
    # softplus underflows to 0 (float32 below -104, float64 below -745): the row mean was 0 and gave 0/0 = NaN
    x = torch.full((2, 4), value, dtype=dtype, requires_grad=True)
    loss = fn(x, torch.tensor([0, 3]), **kw)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("fn", [L.ldr_kl, L.aldr_kl])
@pytest.mark.parametrize("eps", [0.0, -1.0, float("nan"), float("inf"), 1e-40, "1e-6", None])
def test_ldr_eps_is_validated(fn, eps):
    x, y = _data()
    with pytest.raises(ConfigError, match="eps"):
        fn(x, y, eps=eps)


def test_ldr_module_forms_take_eps():
    x, y = _data()
    x[2] = 0.0
    torch.testing.assert_close(L.LDRKLLoss(eps=1e-3, normalize="l1_mean")(x, y),
                               L.ldr_kl(x, y, eps=1e-3, normalize="l1_mean"))
    torch.testing.assert_close(L.ALDRKLLoss(eps=1e-3)(x, y), L.aldr_kl(x, y, eps=1e-3))
    crit = L.ALDRKLLoss(num_examples=7, eps=1e-3, reduction="none")
    torch.testing.assert_close(crit(x, y, index=torch.arange(7)), L.aldr_kl(x, y, eps=1e-3, reduction="none"))


# ------------------------------------------------------------------------------ ALDR λ-table index dtypes
@pytest.mark.parametrize("dtype", [torch.uint8, torch.int16, torch.int32])
def test_aldr_module_reads_every_integer_index_dtype_as_indices(dtype):
    # uint8 used to index lam_table as a boolean mask (wrong entries / shape error)
    x, y = _data(n=3)
    idx = torch.tensor([4, 0, 1])
    ref = L.ALDRKLLoss(num_examples=6, reduction="none")
    out = L.ALDRKLLoss(num_examples=6, reduction="none")
    for visit in range(2):
        torch.testing.assert_close(out(x * (1 + visit), y, index=idx.to(dtype)), ref(x * (1 + visit), y, index=idx))
    torch.testing.assert_close(out.lam_table, ref.lam_table)
    assert out.lam_table[[2, 3, 5]].eq(1.0).all() and not out.lam_table[[0, 1, 4]].eq(1.0).any()


def test_aldr_module_bool_index_is_a_mask_over_the_dataset():
    x, y = _data(n=3)
    mask = torch.tensor([True, False, True, False, True, False])
    by_mask = L.ALDRKLLoss(num_examples=6, reduction="none")
    by_ids = L.ALDRKLLoss(num_examples=6, reduction="none")
    torch.testing.assert_close(by_mask(x, y, index=mask), by_ids(x, y, index=torch.tensor([0, 2, 4])))
    torch.testing.assert_close(by_mask.lam_table, by_ids.lam_table)
    with pytest.raises(DataError, match="mask"):
        by_mask(x, y, index=mask[:3])


def test_aldr_lambda_table_keeps_float64_under_module_casts():
    crit = L.ALDRKLLoss(num_examples=4).half()
    assert crit.lam_table.dtype == torch.float64
    x = torch.tensor([[1.0, -1.0]])
    crit(x, torch.tensor([0]), index=torch.tensor([2]))
    assert crit.lam_table.dtype == torch.float64 and float(crit.lam_table[2]) != 1.0
