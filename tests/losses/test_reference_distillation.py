"""Reference tests (float64) for the distillation family: KD, DKD, NKD, BinaryKL-Norm, AlphaNet's α-divergence.

Each loss is compared with its definition written out as plain loops over rows and classes (math module, no
vectorised code), with the authors' code rewritten where it computes something the definition does not say, and
with the properties that pin it down (zero at the teacher, the DKD decomposition of KD, limits in T and α).
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
ALL = ["kd", "dkd", "nkd", "binary_kl_norm", "alpha_divergence"]
WITH_TARGET = {"dkd", "nkd"}


def _data(n=6, c=5, seed=0, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(n, c, generator=g, dtype=D) * scale
    t = torch.randn(n, c, generator=g, dtype=D) * scale
    y = torch.randint(0, c, (n,), generator=g)
    return s, t, y


def _call(name, s, t, y, **kw):
    fn = L.get(name)
    return fn(s, t, y, **kw) if name in WITH_TARGET else fn(s, t, **kw)


def _rows(x):
    return [[float(v) for v in row] for row in x]


def _softmax(row, temp=1.0):
    m = max(v / temp for v in row)
    e = [math.exp(v / temp - m) for v in row]
    z = sum(e)
    return [v / z for v in e]


def _kl(p, q):
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q) if pi > 0)


# ----------------------------------------------------------------------------------------------------------- KD
def _kd_loop(s, t, temp):
    out = []
    for si, ti in zip(_rows(s), _rows(t)):
        out.append(temp**2 * _kl(_softmax(ti, temp), _softmax(si, temp)))
    return torch.tensor(out, dtype=D)


@pytest.mark.parametrize("temp", [1.0, 2.0, 4.0, 0.5])
def test_kd_matches_loop_and_kl_div_batchmean(temp):
    s, t, _ = _data()
    out = L.kd(s, t, temperature=temp, reduction="none")
    torch.testing.assert_close(out, _kd_loop(s, t, temp), rtol=1e-12, atol=1e-12)
    ref = F.kl_div(F.log_softmax(s / temp, 1), F.softmax(t / temp, 1), reduction="batchmean") * temp**2
    torch.testing.assert_close(L.kd(s, t, temperature=temp), ref, rtol=1e-12, atol=1e-12)


def test_kd_default_temperature_is_four_and_hand_value():
    s, t, _ = _data()
    torch.testing.assert_close(L.kd(s, t), L.kd(s, t, temperature=4.0), rtol=0, atol=0)
    # p^t = (1/4, 3/4), p^s = (1/2, 1/2) at T = 1
    val = L.kd(torch.zeros(1, 2, dtype=D), torch.tensor([[0.0, math.log(3.0)]], dtype=D), temperature=1.0)
    assert abs(float(val) - (0.25 * math.log(0.5) + 0.75 * math.log(1.5))) < 1e-14


def test_kd_zero_at_teacher_non_negative_and_shift_invariant():
    s, t, _ = _data()
    assert float(L.kd(t.clone(), t).abs()) < 1e-14
    assert (L.kd(s, t, reduction="none") >= 0).all()
    shift = torch.randn(6, 1, dtype=D, generator=torch.Generator().manual_seed(3)) * 10
    torch.testing.assert_close(L.kd(s + shift, t - shift), L.kd(s, t), rtol=1e-12, atol=1e-12)


def test_kd_high_temperature_limit_is_logit_matching():
    # Hinton et al., section 2.1: for large T, T² · KL → (1 / 2C) Σ_k ((s_k - mean s) - (t_k - mean t))²
    s, t, _ = _data()
    c = s.shape[1]
    sc, tc = s - s.mean(1, keepdim=True), t - t.mean(1, keepdim=True)
    limit = ((sc - tc) ** 2).sum(1) / (2 * c)
    torch.testing.assert_close(L.kd(s, t, temperature=1e3, reduction="none"), limit, rtol=3e-3, atol=0)


@pytest.mark.parametrize("temperature", [1.0, 4.0, 100.0, 1000.0])
def test_kd_float32_keeps_its_precision_at_high_temperature(temperature):
    # the KL of two near-uniform distributions is of size 1/T²: float32 must not lose it to log-probability rounding
    s, t, _ = _data()
    exact = L.kd(s, t, temperature=temperature, reduction="none")
    low = L.kd(s.float(), t.float(), temperature=temperature, reduction="none")
    # relative error ~ float32 epsilon * T (the differences t/T - s/T carry it): 3e-4 at T = 1000 (was 17 %)
    torch.testing.assert_close(low.double(), exact, rtol=3e-7 * temperature + 1e-6, atol=0)


@pytest.mark.parametrize("temperature", [1e-45, 1e-3, 1e4, float("inf")])
def test_temperatures_outside_the_usable_range_are_config_errors(temperature):
    s, t, y = _data()
    for call in (lambda: L.kd(s, t, temperature=temperature), lambda: L.dkd(s, t, y, temperature=temperature),
                 lambda: L.nkd(s, t, y, temperature=temperature),
                 lambda: L.binary_kl_norm(s, t, temperature=temperature)):
        with pytest.raises(ConfigError, match="temperature"):
            call()


def test_kd_spatial_and_1d_inputs():
    g = torch.Generator().manual_seed(5)
    s, t = torch.randn(2, 4, 3, 3, generator=g, dtype=D), torch.randn(2, 4, 3, 3, generator=g, dtype=D)
    out = L.kd(s, t, reduction="none")
    assert out.shape == (2, 3, 3)
    flat = L.kd(s.movedim(1, -1).reshape(-1, 4), t.movedim(1, -1).reshape(-1, 4), reduction="none")
    torch.testing.assert_close(out.reshape(-1), flat, rtol=0, atol=0)
    one = L.kd(s[0, :, 0, 0], t[0, :, 0, 0], reduction="none")
    assert one.shape == () and abs(float(one) - float(out[0, 0, 0])) < 1e-14


# ---------------------------------------------------------------------------------------------------------- DKD
def _dkd_loop(s, t, y, alpha, beta, temp):
    """The paper's definitions: binary (target, rest) KL and the KL among the renormalised non-target classes."""
    out = []
    for si, ti, yi in zip(_rows(s), _rows(t), y.tolist()):
        ps, pt = _softmax(si, temp), _softmax(ti, temp)
        rest_ps = sum(v for k, v in enumerate(ps) if k != yi)  # 1 - p_y without cancellation
        rest_pt = sum(v for k, v in enumerate(pt) if k != yi)
        tckd = _kl([pt[yi], rest_pt], [ps[yi], rest_ps])
        rest_s = [v for k, v in enumerate(si) if k != yi]
        rest_t = [v for k, v in enumerate(ti) if k != yi]
        nckd = _kl(_softmax(rest_t, temp), _softmax(rest_s, temp))
        out.append(temp**2 * (alpha * tckd + beta * nckd))
    return torch.tensor(out, dtype=D)


def _dkd_mdistiller(s, t, y, alpha, beta, temp):
    """mdistiller's dkd_loss (cat_mask of the probabilities, -1000 on the target logit for NCKD), per row."""
    gt = F.one_hot(y, s.shape[1]).to(s.dtype)
    ps, pt = F.softmax(s / temp, 1), F.softmax(t / temp, 1)
    bs = torch.stack([(ps * gt).sum(1), (ps * (1 - gt)).sum(1)], 1)
    bt = torch.stack([(pt * gt).sum(1), (pt * (1 - gt)).sum(1)], 1)
    tckd = F.kl_div(torch.log(bs), bt, reduction="none").sum(1)
    nckd = F.kl_div(F.log_softmax(s / temp - 1000.0 * gt, 1), F.softmax(t / temp - 1000.0 * gt, 1),
                    reduction="none").sum(1)
    return temp**2 * (alpha * tckd + beta * nckd)


@pytest.mark.parametrize(("alpha", "beta", "temp"), [(1.0, 8.0, 4.0), (0.5, 2.0, 1.0), (1.0, 0.0, 2.0)])
def test_dkd_matches_definition_and_mdistiller(alpha, beta, temp):
    s, t, y = _data()
    out = L.dkd(s, t, y, alpha=alpha, beta=beta, temperature=temp, reduction="none")
    torch.testing.assert_close(out, _dkd_loop(s, t, y, alpha, beta, temp), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out, _dkd_mdistiller(s, t, y, alpha, beta, temp), rtol=1e-10, atol=1e-12)
    # mdistiller's reduction: the batch sum divided by the batch size
    torch.testing.assert_close(L.dkd(s, t, y, alpha=alpha, beta=beta, temperature=temp), out.sum() / 6)


def test_dkd_defaults_are_mdistiller_cfg():
    s, t, y = _data()
    torch.testing.assert_close(L.dkd(s, t, y), L.dkd(s, t, y, alpha=1.0, beta=8.0, temperature=4.0), rtol=0, atol=0)


@pytest.mark.parametrize("temp", [1.0, 4.0])
def test_kd_decomposes_into_tckd_plus_weighted_nckd(temp):
    # Zhao et al., Eq. (1)-(2): KD = TCKD + (1 - p^t_y) NCKD, both at temperature T (the T² factor is common)
    s, t, y = _data(seed=2)
    tckd = L.dkd(s, t, y, alpha=1.0, beta=0.0, temperature=temp, reduction="none")
    nckd = L.dkd(s, t, y, alpha=0.0, beta=1.0, temperature=temp, reduction="none")
    pt_y = F.softmax(t / temp, 1)[torch.arange(6), y]
    torch.testing.assert_close(tckd + (1 - pt_y) * nckd, L.kd(s, t, temperature=temp, reduction="none"),
                               rtol=1e-12, atol=1e-12)


def test_dkd_two_classes_is_kd_and_zero_at_teacher():
    s, t, y = _data(c=2)
    torch.testing.assert_close(L.dkd(s, t, y, alpha=1.0, beta=5.0, temperature=3.0),
                               L.kd(s, t, temperature=3.0), rtol=1e-12, atol=1e-12)
    s, t, y = _data()
    assert float(L.dkd(t.clone(), t, y).abs()) < 1e-13
    assert (L.dkd(s, t, y, reduction="none") >= 0).all()


def test_dkd_confident_student_stays_finite():
    # a student with p_y = 1 in float32: mdistiller's log(Σ_{k≠y} p_k) is log 0 there; here it is a logsumexp
    s = torch.tensor([[200.0, 0.0, -3.0], [0.0, 1.0, 2.0]])
    t = torch.tensor([[1.0, 0.5, 0.0], [0.0, 0.2, 0.1]])
    y = torch.tensor([0, 2])
    s.requires_grad_(True)
    out = L.dkd(s, t, y, temperature=1.0, reduction="none")
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(s.grad).all()
    ref = _dkd_loop(s.detach().double(), t.double(), y, 1.0, 8.0, 1.0)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    assert torch.isinf(_dkd_mdistiller(s.detach(), t, y, 1.0, 8.0, 1.0)[0])  # the authors' form, float32


def test_dkd_ignore_index_and_spatial_target():
    s, t, y = _data()
    y2 = y.clone()
    y2[1] = -100
    out = L.dkd(s, t, y2, reduction="none")
    assert out[1] == 0
    keep = torch.tensor([i != 1 for i in range(6)])
    torch.testing.assert_close(L.dkd(s, t, y2), L.dkd(s[keep], t[keep], y[keep]), rtol=1e-12, atol=1e-12)
    sp, tp = s.reshape(2, 3, 5).movedim(2, 1), t.reshape(2, 3, 5).movedim(2, 1)
    torch.testing.assert_close(L.dkd(sp, tp, y.reshape(2, 3), reduction="none").reshape(-1),
                               L.dkd(s, t, y, reduction="none"), rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------------------- NKD
def _nkd_loop(s, t, y, gamma, temp):
    """yzd-v/cls_KD NKDLoss, row by row: -T_y log S_y - γ λ² Σ_{k≠y} T̂_k log Ŝ_k."""
    out = []
    for si, ti, yi in zip(_rows(s), _rows(t), y.tolist()):
        ps, pt = _softmax(si), _softmax(ti)
        target = -pt[yi] * math.log(ps[yi])
        rs = _softmax([v for k, v in enumerate(si) if k != yi], temp)
        rt = _softmax([v for k, v in enumerate(ti) if k != yi], temp)
        non = -sum(a * math.log(b) for a, b in zip(rt, rs))
        out.append(target + gamma * temp**2 * non)
    return torch.tensor(out, dtype=D)


@pytest.mark.parametrize(("gamma", "temp"), [(1.5, 1.0), (3.5, 3.0), (0.0, 2.0)])
def test_nkd_matches_authors_loop(gamma, temp):
    s, t, y = _data()
    out = L.nkd(s, t, y, gamma=gamma, temperature=temp, reduction="none")
    torch.testing.assert_close(out, _nkd_loop(s, t, y, gamma, temp), rtol=1e-12, atol=1e-12)
    # the authors average both terms over the batch
    torch.testing.assert_close(L.nkd(s, t, y, gamma=gamma, temperature=temp), out.mean())


def test_nkd_defaults_and_kl_form():
    s, t, y = _data()
    torch.testing.assert_close(L.nkd(s, t, y), L.nkd(s, t, y, gamma=1.5, temperature=1.0), rtol=0, atol=0)
    # cross-entropy form: nkd(s) - nkd(t) = p^t_y log(p^t_y / p^s_y) + γ λ² KL(p̂^t ‖ p̂^s)
    gamma, temp = 2.0, 2.0
    diff = L.nkd(s, t, y, gamma=gamma, temperature=temp, reduction="none") - \
        L.nkd(t.clone(), t, y, gamma=gamma, temperature=temp, reduction="none")
    ref = []
    for si, ti, yi in zip(_rows(s), _rows(t), y.tolist()):
        ps, pt = _softmax(si), _softmax(ti)
        rs = _softmax([v for k, v in enumerate(si) if k != yi], temp)
        rt = _softmax([v for k, v in enumerate(ti) if k != yi], temp)
        ref.append(pt[yi] * math.log(pt[yi] / ps[yi]) + gamma * temp**2 * _kl(rt, rs))
    torch.testing.assert_close(diff, torch.tensor(ref, dtype=D), rtol=1e-12, atol=1e-12)


def test_nkd_non_target_part_ignores_the_target_logit():
    # the normalisation: raising the student's target logit changes only the target term
    s, t, y = _data()
    bumped = s.clone()
    bumped[torch.arange(6), y] += 3.0
    a = L.nkd(s, t, y, gamma=1.0, reduction="none") - L.nkd(s, t, y, gamma=0.0, reduction="none")
    b = L.nkd(bumped, t, y, gamma=1.0, reduction="none") - L.nkd(bumped, t, y, gamma=0.0, reduction="none")
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_nkd_soft_labels_must_be_indices():
    s, t, y = _data()
    with pytest.raises(DataError, match="integer class indices"):
        L.nkd(s, t, F.one_hot(y, 5).to(D))
    torch.testing.assert_close(L.nkd(s, t, F.one_hot(y, 5).argmax(1)), L.nkd(s, t, y), rtol=0, atol=0)


# -------------------------------------------------------------------------------------------------- BinaryKL-Norm
def _binary_kl_norm_authors(s, t, temp, eps=1e-8):
    """penghui-yang/DHKD BinaryKLNorm, row by row: KL(Bern(1/2) ‖ Bern(clamp(σ((s-t)/T)))) summed, times T²."""
    out = []
    for si, ti in zip(_rows(s), _rows(t)):
        total = 0.0
        for a, b in zip(si, ti):
            d = min(max(1 / (1 + math.exp(-(a - b) / temp)), eps), 1 - eps)
            total += 0.5 * math.log(0.5 / d) + 0.5 * math.log(0.5 / (1 - d))
        out.append(temp**2 * total)
    return torch.tensor(out, dtype=D)


@pytest.mark.parametrize("temp", [1.0, 2.0, 4.0])
def test_binary_kl_norm_matches_authors_and_log_cosh(temp):
    s, t, _ = _data()
    out = L.binary_kl_norm(s, t, temperature=temp, reduction="none")
    torch.testing.assert_close(out, _binary_kl_norm_authors(s, t, temp), rtol=1e-10, atol=1e-12)
    log_cosh = [temp**2 * sum(math.log(math.cosh((a - b) / (2 * temp))) for a, b in zip(si, ti))
                for si, ti in zip(_rows(s), _rows(t))]
    torch.testing.assert_close(out, torch.tensor(log_cosh, dtype=D), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(L.binary_kl_norm(s, t, temperature=temp), out.mean())


def test_binary_kl_norm_properties_and_gradient():
    s, t, _ = _data()
    assert float(L.binary_kl_norm(t.clone(), t).abs()) < 1e-14
    torch.testing.assert_close(L.binary_kl_norm(s, t), L.binary_kl_norm(t, s), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(L.binary_kl_norm(s, t), L.binary_kl_norm(s, t, temperature=2.0), rtol=0, atol=0)
    assert float(L.binary_kl_norm(s + 1.0, t)) != pytest.approx(float(L.binary_kl_norm(s, t)))  # sees logits
    # d/ds_k = (T/2) tanh((s_k - t_k) / 2T), also far past the authors' clamp (|s - t| / T = 100 > 18.4)
    temp = 2.0
    x = torch.cat([s, torch.tensor([[200.0, -200.0, 0.0, 1.0, -1.0]], dtype=D)]).requires_grad_(True)
    tt = torch.cat([t, torch.zeros(1, 5, dtype=D)])
    L.binary_kl_norm(x, tt, temperature=temp, reduction="sum").backward()
    torch.testing.assert_close(x.grad, temp / 2 * torch.tanh((x.detach() - tt) / (2 * temp)), rtol=1e-12, atol=1e-14)


def test_binary_kl_norm_past_the_authors_clamp():
    # the authors' clamp makes their float64 loss flat beyond |u| = log((1 - eps)/eps) ≈ 18.42, and their float32
    # loss infinite beyond about 17 (1 - 1e-8 rounds to 1); the exact log cosh keeps growing like |u| / 2
    s = torch.tensor([[40.0, 0.0]], dtype=D)
    t = torch.zeros(1, 2, dtype=D)
    exact = math.log(math.cosh(20.0))
    assert float(L.binary_kl_norm(s, t, temperature=1.0)) == pytest.approx(exact, rel=1e-12)
    assert float(_binary_kl_norm_authors(s, t, 1.0)) < exact - 1.0
    assert float(L.binary_kl_norm(s.float(), t.float(), temperature=1.0)) == pytest.approx(exact, rel=1e-6)


# ------------------------------------------------------------------------------------------------ α-divergence
def _f_divergence_loop(q_row, p_row, alpha, clip):
    """AlphaNet loss_ops.py::f_divergence for one row: (divergence, the weights q_k ρ(w_k) of -Σ q ρ log q)."""
    value, weights = 0.0, []
    for q, p in zip(q_row, p_row):
        w = p / q
        if abs(alpha) < 1e-3:
            w = min(w, clip)
            f, base, rho = -math.log(w), 0.0, math.log(w) - 1.0
        elif abs(alpha - 1.0) < 1e-3:
            f, base, rho = w * math.log(w), 0.0, w
        else:
            wa = min(w**alpha, clip)
            base = 1.0 / alpha / (alpha - 1.0)
            f, rho = wa / alpha / (alpha - 1.0), wa / alpha + base
        value += q * (f - base)
        weights.append(q * rho)
    return value, weights


def _adaptive_loop(s, t, a_min, a_max, clip):
    """AdaptiveLossSoft per row: the value of the chosen divergence and d(surrogate)/d(logits) written out.

    The surrogate is -Σ_k a_k log q_k with a = sg[q ρ(w)], so its gradient is g_j = -a_j + q_j Σ_k a_k.
    """
    values, grads = [], []
    for si, ti in zip(_rows(s), _rows(t)):
        q, p = _softmax(si), _softmax(ti)
        d_lo, a_lo = _f_divergence_loop(q, p, a_min, clip)
        d_hi, a_hi = _f_divergence_loop(q, p, a_max, clip)
        value, a = (d_lo, a_lo) if d_lo > d_hi else (d_hi, a_hi)
        total = sum(a)
        values.append(value)
        grads.append([-a[j] + q[j] * total for j in range(len(q))])
    return torch.tensor(values, dtype=D), torch.tensor(grads, dtype=D)


def _authors_surrogate_grad(s, t, a_min, a_max, clip):
    """The authors' AdaptiveLossSoft written with torch in float64 (p / q directly), differentiated by autograd."""
    x = s.clone().requires_grad_(True)

    def f_div(alpha):
        q, p = F.softmax(x, 1).detach(), F.softmax(t, 1)
        lq = F.log_softmax(x, 1)
        w = p / q
        if abs(alpha) < 1e-3:
            w = w.clamp(0, clip)
            f, base, rho = -w.log(), 0.0, w.log() - 1.0
        elif abs(alpha - 1.0) < 1e-3:
            f, base, rho = w * w.log(), 0.0, w
        else:
            wa = w.pow(alpha).clamp(0, clip)
            base = 1.0 / alpha / (alpha - 1.0)
            f, rho = wa / alpha / (alpha - 1.0), wa / alpha + base
        return (q * (f - base)).sum(1), -(q * rho * lq).sum(1)

    lo, g_lo = f_div(a_min)
    hi, g_hi = f_div(a_max)
    ind = (lo > hi).to(D)
    (ind * g_lo + (1 - ind) * g_hi).sum().backward()
    return x.grad


@pytest.mark.parametrize(("a_min", "a_max", "clip"),
                         [(-1.0, 1.0, 5.0), (-1.0, 1.0, 1e3), (0.0, 1.0, 5.0), (-2.0, 0.5, 2.0), (0.5, 0.5, 5.0),
                          (1.0, 2.0, 5.0)])
def test_alpha_divergence_value_and_gradient_match_authors(a_min, a_max, clip):
    s, t, _ = _data(n=8, seed=4)
    x = s.clone().requires_grad_(True)
    out = L.alpha_divergence(x, t, alpha_min=a_min, alpha_max=a_max, iw_clip=clip, reduction="none")
    values, grads = _adaptive_loop(s, t, a_min, a_max, clip)
    torch.testing.assert_close(out.detach(), values, rtol=1e-12, atol=1e-12)
    out.sum().backward()
    torch.testing.assert_close(x.grad, grads, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(x.grad, _authors_surrogate_grad(s, t, a_min, a_max, clip), rtol=1e-10, atol=1e-12)


def test_alpha_divergence_default_clip_is_active_in_the_reference_case():
    # the default iw_clip = 5 does clip in the data above, so the gradient test covers the clipped surrogate
    s, t, _ = _data(n=8, seed=4)
    w_inv = F.softmax(s, 1) / F.softmax(t, 1)  # w^α for α = -1
    assert (w_inv > 5).any()
    torch.testing.assert_close(L.alpha_divergence(s, t), L.alpha_divergence(s, t, alpha_min=-1.0, alpha_max=1.0,
                                                                              iw_clip=5.0), rtol=0, atol=0)
    clipped, free = s.clone().requires_grad_(True), s.clone().requires_grad_(True)
    L.alpha_divergence(clipped, t, reduction="sum").backward()
    L.alpha_divergence(free, t, iw_clip=1e12, reduction="sum").backward()
    assert (clipped.grad - free.grad).abs().max() > 1.0  # the clip changes the gradient of these rows


def test_alpha_divergence_limits_are_the_two_kl():
    s, t, _ = _data()
    q, p = F.softmax(s, 1), F.softmax(t, 1)
    kl_pq = (p * (p.log() - q.log())).sum(1)
    kl_qp = (q * (q.log() - p.log())).sum(1)
    one = L.alpha_divergence(s, t, alpha_min=1.0, alpha_max=1.0, reduction="none")
    torch.testing.assert_close(one, kl_pq, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(one, L.kd(s, t, temperature=1.0, reduction="none"), rtol=1e-12, atol=1e-12)
    zero = L.alpha_divergence(s, t, alpha_min=0.0, alpha_max=0.0, iw_clip=1e12, reduction="none")
    torch.testing.assert_close(zero, kl_qp, rtol=1e-12, atol=1e-12)
    # the generic formula is continuous into both special branches (the authors switch at 1e-3)
    for a, ref in ((1.0 - 2e-3, kl_pq), (2e-3, kl_qp)):
        near = L.alpha_divergence(s, t, alpha_min=a, alpha_max=a, iw_clip=1e12, reduction="none")
        torch.testing.assert_close(near, ref, rtol=2e-2, atol=1e-3)


def test_alpha_divergence_value_is_divergence_and_gradient_without_clip():
    s, t, _ = _data()
    assert float(L.alpha_divergence(t.clone(), t).abs()) < 1e-14
    x = t.clone().requires_grad_(True)
    L.alpha_divergence(x, t, reduction="sum").backward()
    assert float(x.grad.abs().max()) < 1e-14  # zero gradient at the teacher
    # unclipped: the surrogate's gradient is the gradient of max(D_{-1}, D_{+1}) computed as a plain function
    x = s.clone().requires_grad_(True)
    L.alpha_divergence(x, t, iw_clip=1e12, reduction="sum").backward()
    y = s.clone().requires_grad_(True)
    q, p = F.softmax(y, 1), F.softmax(t, 1)
    d_neg = ((q**2 / p).sum(1) - 1) / 2
    d_pos = (p * (p.log() - q.log())).sum(1)
    torch.maximum(d_neg, d_pos).sum().backward()
    torch.testing.assert_close(x.grad, y.grad, rtol=1e-10, atol=1e-12)


def test_alpha_divergence_explicit_zero_alpha_is_not_the_default():
    s, t, _ = _data()
    zero = L.alpha_divergence(s, t, alpha_min=0.0, alpha_max=1.0, reduction="none")
    values, _ = _adaptive_loop(s, t, 0.0, 1.0, 5.0)
    torch.testing.assert_close(zero, values, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(zero, L.alpha_divergence(s, t, reduction="none"))


def test_alpha_divergence_bad_options():
    s, t, _ = _data()
    with pytest.raises(ConfigError, match="alpha_min"):
        L.alpha_divergence(s, t, alpha_min=2.0, alpha_max=1.0)
    for bad in (0.0, -1.0, float("inf")):
        with pytest.raises(ConfigError, match="iw_clip"):
            L.alpha_divergence(s, t, iw_clip=bad)
    with pytest.raises(ConfigError, match="alpha_max"):
        L.alpha_divergence(s, t, alpha_max=float("nan"))


# --------------------------------------------------------------------------------------------- the whole family
@pytest.mark.parametrize("name", ALL)
def test_teacher_gets_no_gradient(name):
    s, t, y = _data()
    x = s.clone().requires_grad_(True)
    teacher = t.clone().requires_grad_(True)
    _call(name, x, teacher, y).backward()
    assert teacher.grad is None
    assert x.grad is not None and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("name", ALL)
def test_bad_teacher_is_a_data_error(name):
    s, t, y = _data()
    bad = t.clone()
    bad[2, 1] = float("inf")
    with pytest.raises(DataError, match="teacher contains 1 NaN/Inf"):
        _call(name, s, bad, y)
    assert torch.isinf(bad[2, 1])  # left as given
    with pytest.raises(DataError, match=r"teacher must have the same shape as input \(6, 5\)"):
        _call(name, s, t[:, :4], y)
    with pytest.raises(DataError, match="teacher must be a floating tensor"):
        _call(name, s, t.long(), y)
    with pytest.raises(DataError, match=r"teacher must be a torch\.Tensor"):
        _call(name, s, t.tolist(), y)


@pytest.mark.parametrize("name", ["kd", "dkd", "nkd", "binary_kl_norm"])
@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), "2", True])
def test_bad_temperature_is_a_config_error(name, bad):
    s, t, y = _data()
    with pytest.raises(ConfigError, match="temperature"):
        _call(name, s, t, y, temperature=bad)


@pytest.mark.parametrize(("name", "key"), [("dkd", "alpha"), ("dkd", "beta"), ("nkd", "gamma")])
def test_negative_weights_are_config_errors(name, key):
    s, t, y = _data()
    with pytest.raises(ConfigError, match=rf"{key}=-0.5 is out of range"):
        _call(name, s, t, y, **{key: -0.5})


@pytest.mark.parametrize("name", ["dkd", "nkd"])
def test_one_class_is_a_data_error(name):
    s, t, y = _data(c=1)
    with pytest.raises(DataError, match="at least 2"):
        _call(name, s, t, y)


@pytest.mark.parametrize(("name", "key", "value"),
                         [("kd", "temperature", 3.0), ("dkd", "beta", 2.0), ("nkd", "gamma", 2.0),
                          ("binary_kl_norm", "temperature", 3.0), ("alpha_divergence", "iw_clip", 4.0),
                          ("alpha_divergence", "alpha_min", -2.0)])
def test_numpy_scalars_and_0d_tensors_are_numbers(name, key, value):
    s, t, y = _data()
    ref = _call(name, s, t, y, **{key: value})
    for same in (np.float64(value), torch.tensor(value, dtype=D), np.float32(value)):
        torch.testing.assert_close(_call(name, s, t, y, **{key: same}), ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ALL)
def test_mixed_dtypes_follow_the_student(name):
    # a bf16 teacher with a float32 student: computed in float32, equal to casting the teacher first
    s, t, y = _data()
    out = _call(name, s.float(), t.bfloat16(), y)
    ref = _call(name, s.float(), t.bfloat16().float(), y)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


def test_module_forms():
    s, t, y = _data()
    torch.testing.assert_close(L.KDLoss(temperature=2.0)(s, t), L.kd(s, t, temperature=2.0))
    torch.testing.assert_close(L.DKDLoss(beta=2.0)(s, t, y), L.dkd(s, t, y, beta=2.0))
    torch.testing.assert_close(L.NKDLoss()(s, t, y), L.nkd(s, t, y))
    torch.testing.assert_close(L.BinaryKLNormLoss()(s, t), L.binary_kl_norm(s, t))
    torch.testing.assert_close(L.AlphaDivergenceLoss(iw_clip=3.0)(s, t), L.alpha_divergence(s, t, iw_clip=3.0))


def test_alpha_divergence_takes_alpha_max_on_an_exact_tie():
    s = torch.tensor([[0.0, 0.5]], dtype=torch.float64)
    t = torch.tensor([[0.5, 0.0]], dtype=torch.float64)
    kw = {"iw_clip": 1e6}
    low = L.alpha_divergence(s, t, alpha_min=-1.0, alpha_max=-1.0, **kw)
    high = L.alpha_divergence(s, t, alpha_min=2.0, alpha_max=2.0, **kw)
    assert low.item() == high.item()  # the two divergences tie exactly in float64 here
    grads = []
    for a_min, a_max in ((-1.0, 2.0), (2.0, 2.0), (-1.0, -1.0)):
        leaf = s.clone().requires_grad_(True)
        L.alpha_divergence(leaf, t, alpha_min=a_min, alpha_max=a_max, **kw).backward()
        grads.append(leaf.grad)
    torch.testing.assert_close(grads[0], grads[1])  # the tie goes to alpha_max, as documented
    assert not torch.allclose(grads[0], grads[2])
