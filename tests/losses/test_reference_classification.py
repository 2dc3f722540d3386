"""Per-entry reference tests (float64): cross-entropy, focal, squentropy, PolyLoss, spherical Z-loss, StableMax.

Each oracle is the paper's / authors' formula written out independently here (loops, explicit one-hot), or a public
peer (torch.nn.functional) where one exists.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import losslab.losses as L
from losslab import ConfigError

D = torch.float64


def _data(n=7, c=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, generator=g, dtype=D) * 3
    y = torch.randint(0, c, (n,), generator=g)
    return x, y


# ----------------------------------------------------------------------------------------------- cross-entropy
def test_cross_entropy_hand_computed():
    x = torch.tensor([[2.0, 0.0, -1.0]], dtype=D)
    expected = math.log(math.exp(2) + 1 + math.exp(-1)) - 2
    assert float(L.cross_entropy(x, torch.tensor([0]))) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("smoothing", [0.0, 0.15])
@pytest.mark.parametrize("weighted", [False, True])
def test_cross_entropy_matches_torch(reduction, smoothing, weighted):
    x, y = _data(n=9)
    y[3] = -100
    w = torch.rand(5, dtype=D) + 0.1 if weighted else None
    ours = L.cross_entropy(x.float(), y, weight=None if w is None else w.float(), label_smoothing=smoothing,
                           reduction=reduction)
    ref = F.cross_entropy(x.float(), y, weight=None if w is None else w.float(), label_smoothing=smoothing,
                          reduction=reduction)
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=1e-6)


def test_cross_entropy_spatial_shape_matches_torch():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 3, 5, generator=g)
    y = torch.randint(0, 4, (2, 3, 5), generator=g)
    y[0, 1, 2] = -100
    for red in ("mean", "none"):
        torch.testing.assert_close(L.cross_entropy(x, y, reduction=red), F.cross_entropy(x, y, reduction=red),
                                   atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(L.cross_entropy(x[0, :, 0, 0], y[0, 0, 0]), F.cross_entropy(x[0, :, 0, 0], y[0, 0, 0]))


def test_cross_entropy_gradient_matches_torch():
    x, y = _data()
    a = x.clone().requires_grad_(True)
    b = x.clone().requires_grad_(True)
    L.cross_entropy(a, y, label_smoothing=0.1).backward()
    F.cross_entropy(b, y, label_smoothing=0.1).backward()
    torch.testing.assert_close(a.grad, b.grad, atol=1e-12, rtol=1e-12)


def test_z_loss_is_masked_mean_of_log_z_squared():
    x, y = _data(n=8)
    y[[1, 5]] = -100
    lam = 1e-4
    keep = y != -100
    lse = torch.stack([torch.log(torch.exp(row).sum()) for row in x])
    expected = F.cross_entropy(x, y) + lam * (lse[keep] ** 2).sum() / keep.sum()
    total, z = L.cross_entropy(x, y, z_loss=lam, return_z_loss=True)
    torch.testing.assert_close(total, expected)
    torch.testing.assert_close(z, lam * (lse[keep] ** 2).mean())
    # z-loss is not scaled by class weights (PaLM / Liger / OLMo)
    w = torch.rand(5, dtype=D) + 0.5
    torch.testing.assert_close(L.cross_entropy(x, y, weight=w, z_loss=lam),
                               F.cross_entropy(x, y, weight=w) + lam * (lse[keep] ** 2).mean())
    none = L.cross_entropy(x, y, z_loss=lam, reduction="none")
    torch.testing.assert_close(none, F.cross_entropy(x, y, reduction="none") + lam * lse**2 * keep)


def test_logit_softcap_is_tanh_cap():
    x, y = _data()
    x = x * 20
    cap = 30.0
    torch.testing.assert_close(L.cross_entropy(x, y, logit_softcap=cap), F.cross_entropy(cap * torch.tanh(x / cap), y))


@pytest.mark.parametrize("bad", [{"z_loss": -1.0}, {"label_smoothing": 1.5}, {"logit_softcap": 0.0},
                                 {"label_smoothing": float("nan")}, {"ignore_index": 1.5}])
def test_cross_entropy_bad_options(bad):
    x, y = _data()
    with pytest.raises(ConfigError):
        L.cross_entropy(x, y, **bad)


# ------------------------------------------------------------------------------------------------------- focal
def _focal_oracle(x, y, gamma, alpha=None):
    rows = []
    for i in range(x.shape[0]):
        p = torch.exp(x[i]) / torch.exp(x[i]).sum()
        a = 1.0 if alpha is None else alpha[y[i]]
        rows.append(-a * (1 - p[y[i]]) ** gamma * torch.log(p[y[i]]))
    return torch.stack(rows)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
def test_focal_matches_formula(gamma):
    x, y = _data()
    alpha = torch.rand(5, dtype=D) + 0.2
    per = _focal_oracle(x, y, gamma, alpha)
    torch.testing.assert_close(L.focal(x, y, gamma=gamma, weight=alpha, reduction="none"), per)
    torch.testing.assert_close(L.focal(x, y, gamma=gamma, weight=alpha), per.sum() / alpha[y].sum())
    if gamma == 0:
        torch.testing.assert_close(L.focal(x, y, gamma=0.0), F.cross_entropy(x, y))


def _torchvision_sigmoid_focal(inputs, targets, alpha=0.25, gamma=2.0):
    """torchvision.ops.sigmoid_focal_loss (v0.28, torchvision/ops/focal_loss.py), reduction='none', rewritten."""
    p = torch.sigmoid(inputs)
    ce_loss = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce_loss * ((1 - p_t) ** gamma)
    if alpha >= 0:
        alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
        loss = alpha_t * loss
    return loss


@pytest.mark.parametrize("alpha,gamma", [(0.25, 2.0), (-1.0, 2.0), (0.6, 0.0), (0.25, 1.5), (0.25, 0.5)])
def test_sigmoid_focal_matches_torchvision_formula(alpha, gamma):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 6, generator=g, dtype=D) * 3
    t = (torch.rand(4, 6, generator=g) > 0.5).to(D)
    ref = _torchvision_sigmoid_focal(x, t, alpha, gamma)
    torch.testing.assert_close(L.sigmoid_focal(x, t, alpha=alpha, gamma=gamma, reduction="none"), ref)
    torch.testing.assert_close(L.sigmoid_focal(x, t, alpha=alpha, gamma=gamma), ref.mean())
    if alpha < 0:
        torch.testing.assert_close(L.sigmoid_focal(x, t, alpha=None, gamma=gamma), ref.mean())


def _focal_grad(fn, x, t, dtype):
    xx = torch.tensor([x], dtype=dtype, requires_grad=True)
    loss = fn(xx, torch.tensor([t], dtype=dtype), gamma=0.5)
    loss.backward()
    return loss.detach(), xx.grad


@pytest.mark.parametrize("fn", [L.sigmoid_focal, L.poly1_focal])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("x", [17.0, 40.0, 1e4, -1e4])
@pytest.mark.parametrize("t", [0.0, 1.0])
def test_sigmoid_focal_gamma_below_one_has_finite_gradients_for_confident_logits(fn, dtype, x, t):
    # 1 - p_t written literally rounds to 0 here and 0**0.5 has an infinite derivative (NaN gradient before the fix)
    loss, grad = _focal_grad(fn, x, t, dtype)
    assert torch.isfinite(loss).all() and torch.isfinite(grad).all(), (loss, grad)


@pytest.mark.parametrize("x", [17.0, 40.0])
def test_sigmoid_focal_keeps_precision_for_confident_correct_logits(x):
    # exact value 0.25 · log1p(e^{-x}) · σ(-x)^γ; the cancelling 1 - p_t gave 0 in float32 (x = 40: also in float64).
    # Positive targets only: for t = 0, x < 0 torch's own BCE-with-logits already rounds to 0 in float32.
    ref = 0.25 * math.log1p(math.exp(-x)) * (1 / (1 + math.exp(x))) ** 0.5
    for dtype in (torch.float32, torch.float64):
        loss, _ = _focal_grad(L.sigmoid_focal, x, 1.0, dtype)
        assert float(loss) == pytest.approx(ref, rel=1e-5)


def test_sigmoid_focal_rejects_targets_outside_unit_interval():
    with pytest.raises(Exception, match=r"\[0, 1\]"):
        L.sigmoid_focal(torch.zeros(3), torch.tensor([0.0, 2.0, 1.0]))


# -------------------------------------------------------------------------------------------------- squentropy
def test_squentropy_matches_definition():
    x, y = _data()
    rows = []
    for i in range(x.shape[0]):
        ce = -torch.log_softmax(x[i], 0)[y[i]]
        wrong = [x[i, k] ** 2 for k in range(5) if k != y[i]]
        rows.append(ce + sum(wrong) / 4)
    torch.testing.assert_close(L.squentropy(x, y, reduction="none"), torch.stack(rows))


# ------------------------------------------------------------------------------------------------------- poly
def _poly1_listing(logits, labels_onehot, epsilon):
    """PolyLoss paper listing (poly1_cross_entropy): CE(labels, logits) + ε·(1 - Σ labels·softmax)."""
    pt = (labels_onehot * torch.softmax(logits, -1)).sum(-1)
    ce = -(labels_onehot * torch.log_softmax(logits, -1)).sum(-1)
    return ce + epsilon * (1 - pt)


@pytest.mark.parametrize("eps,smooth", [(2.0, 0.0), (-1.0, 0.0), (1.0, 0.1)])
def test_poly1_cross_entropy_matches_listing(eps, smooth):
    x, y = _data()
    onehot = F.one_hot(y, 5).to(D)
    labels = onehot * (1 - smooth) + smooth / 5
    ref = _poly1_listing(x, labels, eps)
    torch.testing.assert_close(L.poly1_cross_entropy(x, y, epsilon=eps, label_smoothing=smooth, reduction="none"), ref)


def test_poly_n_matches_expansion():
    x, y = _data()
    p = torch.softmax(x, -1)[torch.arange(7), y]
    eps = (1.0, 0.5, -0.2)
    ref = -torch.log(p) + sum(e * (1 - p) ** (j + 1) for j, e in enumerate(eps))
    torch.testing.assert_close(L.poly_cross_entropy(x, y, epsilons=eps, reduction="none"), ref)
    torch.testing.assert_close(L.poly_cross_entropy(x, y, epsilons=(2.0,)), L.poly1_cross_entropy(x, y, epsilon=2.0))


def _poly1_focal_listing(logits, labels, epsilon, gamma, alpha):
    """PolyLoss paper listing (poly1_focal_loss): α_t multiplies the focal term only."""
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
    pt = labels * p + (1 - labels) * (1 - p)
    fl = ce * (1 - pt) ** gamma
    if alpha >= 0:
        fl = (alpha * labels + (1 - alpha) * (1 - labels)) * fl
    return fl + epsilon * (1 - pt) ** (gamma + 1)


def test_poly1_focal_matches_listing():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(5, 3, generator=g, dtype=D) * 2
    t = (torch.rand(5, 3, generator=g) > 0.5).to(D)
    for eps, gamma, alpha in [(1.0, 2.0, 0.25), (-1.0, 2.0, -1.0), (0.5, 1.0, 0.5), (1.0, 0.5, 0.25)]:
        ref = _poly1_focal_listing(x, t, eps, gamma, alpha)
        out = L.poly1_focal(x, t, epsilon=eps, gamma=gamma, alpha=alpha, reduction="none")
        torch.testing.assert_close(out, ref)


def test_poly_bad_epsilon():
    x, y = _data()
    with pytest.raises(ConfigError, match="epsilon"):
        L.poly1_cross_entropy(x, y, epsilon=-2.0)
    with pytest.raises(ConfigError, match="epsilons"):
        L.poly_cross_entropy(x, y, epsilons=())


@pytest.mark.parametrize("bad", ["2", b"2", ["2"], 2.0, [True], [1.0, float("nan")]])
def test_poly_epsilons_must_be_a_sequence_of_numbers(bad):
    x, y = _data()
    with pytest.raises(ConfigError, match="epsilon"):
        L.poly_cross_entropy(x, y, epsilons=bad)


def test_poly_epsilons_accept_numpy_and_tensor_coefficients():
    x, y = _data()
    ref = L.poly_cross_entropy(x, y, epsilons=(1.0, 0.5))
    for eps in (np.array([1.0, 0.5]), torch.tensor([1.0, 0.5]), [np.float32(1.0), np.int64(0) + 0.5]):
        torch.testing.assert_close(L.poly_cross_entropy(x, y, epsilons=eps), ref)


# ------------------------------------------------------------------------------------------- spherical Z-loss
def test_spherical_z_loss_matches_paper_formula():
    x, y = _data()
    a, b = 2.0, 0.7
    rows = []
    for i in range(7):
        o = x[i].tolist()
        mu = sum(o) / 5
        sigma = math.sqrt(sum(v * v for v in o) / 5 - mu * mu)
        z = (o[int(y[i])] - mu) / sigma
        rows.append(math.log1p(math.exp(a * (b - z))) / a)
    torch.testing.assert_close(L.spherical_z_loss(x, y, a=a, b=b, reduction="none"), torch.tensor(rows, dtype=D),
                               atol=1e-10, rtol=1e-10)


@settings(max_examples=30, deadline=None)
@given(shift=st.floats(-50, 50), scale=st.floats(1e-2, 1e2), seed=st.integers(0, 1000))
def test_spherical_z_loss_is_shift_and_scale_invariant(shift, scale, seed):
    # σ = sqrt(var + ε²) scales with the logits only if ε does too; then the invariance is exact
    x, y = _data(seed=seed)
    base = L.spherical_z_loss(x, y, reduction="none")
    moved = L.spherical_z_loss(x * scale + shift, y, eps=1e-6 * scale, reduction="none")
    torch.testing.assert_close(moved, base, atol=1e-8, rtol=1e-8)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_spherical_z_loss_zero_logits_give_finite_loss_and_gradient(dtype):
    # an all-zero row (zero-initialised head) had σ = 0 and gave 0/0 = NaN in value and gradient
    x = torch.zeros(2, 4, dtype=dtype, requires_grad=True)
    loss = L.spherical_z_loss(x, torch.tensor([0, 1]), a=2.0, b=0.5)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()
    assert float(loss.detach()) == pytest.approx(math.log1p(math.exp(2.0 * 0.5)) / 2.0, rel=1e-6)  # z = 0


@pytest.mark.parametrize("eps", [0.0, -1e-6, float("inf"), float("nan"), 1e-25, "1e-6", True])
def test_spherical_z_loss_rejects_bad_eps(eps):
    x, y = _data()
    with pytest.raises(ConfigError, match="eps"):
        L.spherical_z_loss(x, y, eps=eps)


def test_spherical_z_loss_equal_logits_do_not_give_nan():
    x = torch.ones(2, 4, dtype=D, requires_grad=True)
    loss = L.spherical_z_loss(x, torch.tensor([0, 1]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()
    assert float(loss.detach()) == pytest.approx(math.log1p(math.exp(1.0)))  # z = 0, a = b = 1


# ---------------------------------------------------------------------------------------------------- StableMax
def _authors_stablemax_ce(logits, labels):
    """grokking-at-the-edge-of-numerical-stability utils.py: s(x) = x+1 (x≥0), 1/(1-x+1e-30) (x<0), rewritten."""
    s = torch.where(logits >= 0, logits + 1, 1 / (1 - logits + 1e-30))
    probs = s / s.sum(-1, keepdim=True)
    return -torch.log(probs[torch.arange(len(labels)), labels])


def test_stablemax_cross_entropy_matches_authors_code():
    x, y = _data()
    torch.testing.assert_close(L.stablemax_cross_entropy(x, y, reduction="none"), _authors_stablemax_ce(x, y))
    torch.testing.assert_close(L.stablemax(x), torch.where(x >= 0, x + 1, 1 / (1 - x)) /
                               torch.where(x >= 0, x + 1, 1 / (1 - x)).sum(-1, keepdim=True))


def test_stablemax_is_continuously_differentiable_at_zero():
    x = torch.tensor([[-1e-7, 0.3], [1e-7, 0.3]], dtype=D, requires_grad=True)
    L.stablemax_cross_entropy(x, torch.tensor([1, 1]), reduction="sum").backward()
    torch.testing.assert_close(x.grad[0], x.grad[1], atol=1e-6, rtol=1e-6)


# ----------------------------------------------------------------------------------- integer target dtypes
def test_cross_entropy_accepts_uint8_segmentation_targets():
    # (N, C, H, W) logits with a uint8 (N, H, W) mask: validation passed, then gather crashed on the uint8 index
    g = torch.Generator().manual_seed(6)
    x = torch.randn(2, 3, 4, 4, generator=g, dtype=D, requires_grad=True)
    y = torch.randint(0, 3, (2, 4, 4), generator=g, dtype=torch.uint8)
    out = L.cross_entropy(x, y, reduction="none")
    torch.testing.assert_close(out, F.cross_entropy(x, y.long(), reduction="none"))
    L.cross_entropy(x, y).backward()
    assert torch.isfinite(x.grad).all()
    y255 = y.clone()
    y255[0, 0, 0] = 255  # the usual "void" label of uint8 masks
    torch.testing.assert_close(L.cross_entropy(x, y255, ignore_index=255),
                               F.cross_entropy(x, y255.long(), ignore_index=255))


def test_uint8_class_156_is_not_taken_for_ignore_index_minus_100():
    # -100 wraps to 156 in uint8 arithmetic; the target must be widened before it is compared with ignore_index
    x = torch.randn(3, 200, dtype=D, generator=torch.Generator().manual_seed(2))
    y = torch.tensor([156, 3, 199], dtype=torch.uint8)
    torch.testing.assert_close(L.cross_entropy(x, y, reduction="none"), F.cross_entropy(x, y.long(), reduction="none"))
