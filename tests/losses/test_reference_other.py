"""Per-entry reference tests (float64): number token loss, OKO, SFace, decoupled softmax, EnsLoss."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import losslab.losses as L
from losslab import ConfigError, DataError

D = torch.float64


# --------------------------------------------------------------------------------------------- number token loss
def _ntl_oracle(logits, labels, tokens, values, kind):
    """ntloss rule rewritten: softmax over number-token logits only; loss where the label is a number token."""
    per, keep = [], []
    tok = tokens.tolist()
    for i in range(logits.shape[0]):
        lab = int(labels[i])
        if lab == -100 or lab not in tok:
            per.append(0.0)
            keep.append(False)
            continue
        q = torch.softmax(logits[i, tokens], 0)
        v_y = float(values[tok.index(lab)])
        if kind == "mse":
            per.append(float(((q * values).sum() - v_y) ** 2))
        else:
            per.append(float((q * (values - v_y).abs()).sum()))
        keep.append(True)
    return torch.tensor(per, dtype=D), torch.tensor(keep)


@pytest.mark.parametrize("kind", ["mse", "was"])
def test_number_token_losses_match_ntloss_rule(kind):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 9, generator=g, dtype=D)
    labels = torch.tensor([[3, 4, 0, -100, 8], [5, 5, 1, 3, 2]])
    tokens = torch.tensor([3, 4, 5, 8])
    values = torch.tensor([0.0, 1.0, 2.0, 7.0], dtype=D)
    fn = L.ntl_mse if kind == "mse" else L.ntl_wasserstein
    per, keep = _ntl_oracle(logits.reshape(10, 9), labels.reshape(10), tokens, values, kind)
    none = fn(logits, labels, number_tokens=tokens, number_values=values, reduction="none")
    assert none.shape == labels.shape
    torch.testing.assert_close(none.reshape(10), per)
    torch.testing.assert_close(fn(logits, labels, number_tokens=tokens, number_values=values), per.sum() / keep.sum())


def test_number_token_loss_is_zero_without_number_targets_and_validates_the_map():
    logits = torch.randn(3, 6, dtype=D)
    labels = torch.tensor([0, 1, -100])
    out = L.ntl_mse(logits, labels, number_tokens=torch.tensor([4, 5]), number_values=torch.tensor([1.0, 2.0]))
    assert float(out) == 0.0
    with pytest.raises(DataError, match="number_values"):
        L.ntl_mse(logits, labels, number_tokens=torch.tensor([4, 5]), number_values=torch.tensor([1.0]))
    with pytest.raises(DataError, match="duplicate"):
        L.ntl_wasserstein(logits, labels, number_tokens=torch.tensor([4, 4]), number_values=torch.tensor([1.0, 2.0]))
    with pytest.raises(DataError, match="number_tokens"):
        L.ntl_wasserstein(logits, labels, number_tokens=torch.tensor([4, 9]), number_values=torch.tensor([1.0, 2.0]))
    with pytest.raises(DataError, match="empty"):
        L.ntl_mse(logits, labels, number_tokens=torch.tensor([], dtype=torch.long), number_values=torch.tensor([]))


@pytest.mark.parametrize("fn", [L.ntl_mse, L.ntl_wasserstein])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.int16, torch.int32])
def test_number_token_ids_of_any_integer_dtype_are_ids_not_a_mask(fn, dtype):
    # uint8 number_tokens indexed the lookup table as a boolean mask
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(6, 9, generator=g, dtype=D)
    labels = torch.tensor([3, 4, 0, -100, 8, 5])
    tokens = torch.tensor([3, 4, 5, 8])
    values = torch.tensor([0.0, 1.0, 2.0, 7.0], dtype=D)
    ref = fn(logits, labels, number_tokens=tokens, number_values=values, reduction="none")
    out = fn(logits, labels.to(torch.int32), number_tokens=tokens.to(dtype), number_values=values, reduction="none")
    torch.testing.assert_close(out, ref)


@pytest.mark.parametrize("fn", [L.ntl_mse, L.ntl_wasserstein])
def test_number_token_loss_ignore_index_none_or_int_only(fn):
    logits = torch.randn(4, 6, dtype=D, generator=torch.Generator().manual_seed(5))
    labels = torch.tensor([4, 5, 0, 4])
    kw = {"number_tokens": torch.tensor([4, 5]), "number_values": torch.tensor([1.0, 2.0], dtype=D)}
    # None: no position is skipped for being ignore_index; the same as an ignore_index that never occurs
    torch.testing.assert_close(fn(logits, labels, ignore_index=None, **kw), fn(logits, labels, **kw))
    torch.testing.assert_close(fn(logits, labels, ignore_index=np.int64(5), **kw),
                               fn(logits, labels, ignore_index=5, **kw))
    for bad in (1.5, "4", True, torch.tensor(4)):
        with pytest.raises(ConfigError, match="ignore_index"):
            fn(logits, labels, ignore_index=bad, **kw)


# ------------------------------------------------------------------------------------------------------------ OKO
def test_oko_hard_targets_are_cross_entropy_of_summed_logits():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 4, 6, generator=g, dtype=D)
    y = torch.tensor([0, 5, 2])
    torch.testing.assert_close(L.oko(x, y, reduction="none"), F.cross_entropy(x.sum(1), y, reduction="none"))


def test_oko_soft_targets_match_authors_generalised_kl():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 5, 4, generator=g, dtype=D)  # k = 3 odd examples
    y = torch.tensor([1, 3])
    odd = torch.tensor([[0, 2, 2], [3, 1, 0]])  # an odd class may repeat, or equal... any class index
    rows = []
    for s in range(2):
        t = [0.0] * 4
        t[int(y[s])] += 2
        for o in odd[s].tolist():
            t[o] += 1
        t = [v / 5 for v in t]
        p = torch.softmax(x[s].sum(0), 0).tolist()
        rows.append(sum((ti * (math.log(ti) - math.log(pi)) if ti > 0 else 0.0) - ti + pi for ti, pi in zip(t, p)))
    out = L.oko(x, y, odd_target=odd, reduction="none")
    torch.testing.assert_close(out, torch.tensor(rows, dtype=D))
    with pytest.raises(DataError, match="odd_target"):
        L.oko(x, y, odd_target=odd[:, :2])
    with pytest.raises(DataError, match=r"k \+ 2"):
        L.oko(x[:, :2], y)


def test_oko_odd_targets_of_any_integer_dtype():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 5, 4, generator=g, dtype=D)
    y = torch.tensor([1, 3])
    odd = torch.tensor([[0, 2, 2], [3, 1, 0]])
    ref = L.oko(x, y, odd_target=odd, reduction="none")
    torch.testing.assert_close(L.oko(x, y.to(torch.uint8), odd_target=odd.to(torch.int16), reduction="none"), ref)


# ---------------------------------------------------------------------------------------------------------- SFace
def _sface_authors(x, w, label, s, k, a, b):
    """zhongyy/SFace SFaceLoss.forward rewritten (weights under no_grad), per-sample values."""
    cosine = F.normalize(x) @ F.normalize(w).t()
    output = cosine * s
    one_hot = F.one_hot(label, w.shape[0]).to(x.dtype)
    zero_hot = 1 - one_hot
    wyix = (one_hot * output).sum(1)
    with torch.no_grad():
        th = torch.acos((wyix / s).clamp(-1 + 1e-7, 1 - 1e-7))
        weight_yi = 1.0 / (1.0 + torch.exp(-k * (th - a)))
    intra = -weight_yi * wyix
    wj = zero_hot * output
    with torch.no_grad():
        thj = torch.acos((wj / s).clamp(-1 + 1e-7, 1 - 1e-7))
        weight_j = 1.0 / (1.0 + torch.exp(k * (thj - b)))
    inter = (weight_j * wj).sum(1)
    return intra + inter


def test_sface_accepts_int32_labels():
    # one_hot only takes int64: int32 labels passed validation, then crashed
    g = torch.Generator().manual_seed(3)
    x = torch.randn(6, 4, generator=g, dtype=D)
    w = torch.randn(5, 4, generator=g, dtype=D)
    y = torch.randint(0, 5, (6,), generator=g)
    ref = L.sface(x, w, y, reduction="none")
    for dtype in (torch.int32, torch.int16, torch.uint8):
        torch.testing.assert_close(L.sface(x, w, y.to(dtype), reduction="none"), ref)


def test_sface_matches_authors_code_value_and_gradient():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(6, 4, generator=g, dtype=D)
    w = torch.randn(5, 4, generator=g, dtype=D)
    y = torch.randint(0, 5, (6,), generator=g)
    kw = {"s": 64.0, "k": 80.0, "a": 0.8, "b": 1.23}
    xa, wa = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
    xb, wb = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
    out = L.sface(xa, wa, y, reduction="none", **kw)
    ref = _sface_authors(xb, wb, y, **kw)
    torch.testing.assert_close(out, ref)
    out.mean().backward()
    ref.mean().backward()
    torch.testing.assert_close(xa.grad, xb.grad)
    torch.testing.assert_close(wa.grad, wb.grad)


# ----------------------------------------------------------------------------------------------- decoupled softmax
def test_decoupled_softmax_matches_definition():
    g = torch.Generator().manual_seed(4)
    s = torch.randn(4, 6, generator=g, dtype=D)
    t = torch.tensor([[1, 0, 1, 0, 0, 0], [0, 0, 0, 0, 0, 1], [0] * 6, [1, 1, 1, 0, 1, 0]])
    tau = 0.5
    rows, keep = [], []
    for q in range(4):
        pos = [j for j in range(6) if t[q, j]]
        neg = [j for j in range(6) if not t[q, j]]
        if not pos:
            rows.append(0.0)
            keep.append(False)
            continue
        vals = []
        for pl in pos:
            num = math.exp(float(s[q, pl]) / tau)
            den = num + sum(math.exp(float(s[q, j]) / tau) for j in neg)
            vals.append(-math.log(num / den))
        rows.append(sum(vals) / len(vals))
        keep.append(True)
    ref = torch.tensor(rows, dtype=D)
    torch.testing.assert_close(L.decoupled_softmax(s, t, temperature=tau, reduction="none"), ref)
    torch.testing.assert_close(L.decoupled_softmax(s, t, temperature=tau), ref.sum() / sum(keep))


def test_decoupled_softmax_sampling_uses_one_positive_and_the_generator():
    s = torch.randn(3, 5, dtype=D, generator=torch.Generator().manual_seed(5))
    t = torch.tensor([[1, 1, 0, 0, 0], [0, 0, 1, 1, 1], [0, 0, 0, 1, 0]])
    full = s.new_zeros(3, 5)
    for q in range(3):
        for j in range(5):
            if t[q, j]:
                neg = torch.logsumexp(s[q][t[q] == 0], 0)
                full[q, j] = F.softplus(neg - s[q, j])
    out1 = L.decoupled_softmax(s, t, sample_positive=True, generator=torch.Generator().manual_seed(7),
                               reduction="none")
    out2 = L.decoupled_softmax(s, t, sample_positive=True, generator=torch.Generator().manual_seed(7),
                               reduction="none")
    torch.testing.assert_close(out1, out2)
    for q in range(3):
        assert any(torch.isclose(out1[q], full[q, j]) for j in range(5) if t[q, j])
    with pytest.raises(DataError, match="multi-hot"):
        L.decoupled_softmax(s, t * 2)


def _sampled_positive(rows, n_pos, seed):
    """Which positive decoupled_softmax(sample_positive=True) used in each of ``rows`` identical rows.

    Positives 0..n_pos-1 have distinct scores (so distinct per-positive losses), the last 4 labels are negatives;
    the positive is recovered by matching each row's loss against the per-positive losses.
    """
    n_lab = n_pos + 4
    s = torch.zeros(rows, n_lab, dtype=D)
    s[:, :n_pos] = torch.arange(n_pos, dtype=D) * 0.5
    t = torch.zeros(rows, n_lab, dtype=torch.long)
    t[:, :n_pos] = 1
    per_pos = F.softplus(torch.logsumexp(s[0, n_pos:], 0) - s[0, :n_pos])
    out = L.decoupled_softmax(s, t, sample_positive=True, generator=torch.Generator().manual_seed(seed),
                              reduction="none")
    dist = (out.unsqueeze(1) - per_pos.unsqueeze(0)).abs()
    assert float(dist.min(1).values.max()) < 1e-12  # every row's loss is one positive's loss
    return dist.argmin(1)


def test_decoupled_softmax_sampling_depends_on_the_seed():
    # argmax (or any deterministic rule) picks the same positive whatever the generator
    picks = [_sampled_positive(1, 8, seed) for seed in range(10)]
    assert len({int(p) for p in picks}) > 1
    assert not torch.equal(_sampled_positive(200, 8, 0), _sampled_positive(200, 8, 1))


def test_decoupled_softmax_sampling_is_uniform_over_the_positives():
    # 4000 draws over 8 positives (distinct scores: a score-weighted rule would fail too); binomial counts,
    # tolerance 5 sigma; a fixed generator makes the test deterministic
    n, k = 4000, 8
    counts = torch.bincount(_sampled_positive(n, k, 123), minlength=k).to(D)
    sigma = math.sqrt(n * (1 / k) * (1 - 1 / k))
    assert ((counts - n / k).abs() <= 5 * sigma).all(), counts


# --------------------------------------------------------------------------------------------------------- EnsLoss
def _ensloss_authors(f, y01, z, lam):
    """statmlben/ensLoss ensLoss.forward rewritten with given normal draws z (derivatives, then Σ sg[d]·s / B)."""
    s = (2 * y01.to(f.dtype) - 1) * f
    inv = torch.exp(z) if lam == 0 else torch.clamp(1 + lam * z, min=0) ** (1 / lam)
    d = torch.sort(-inv).values
    d = torch.maximum(d, torch.tensor(-1.0, dtype=f.dtype))
    order = torch.argsort(s.detach())
    dd = torch.zeros_like(d)
    for rank, idx in enumerate(order.tolist()):
        dd[idx] = d[rank]
    big = s.detach() > 1
    dd[big] = dd[big] / s.detach()[big]
    dd = dd - 1e-6
    return (dd * s).mean(), dd


@pytest.mark.parametrize("lam", [0.0, 0.5, -0.5])
def test_ensloss_matches_authors_rule(lam):
    g = torch.Generator().manual_seed(0)
    f = (torch.randn(10, generator=g, dtype=D) * 2).requires_grad_(True)
    y = torch.randint(0, 2, (10,), generator=g)
    z = torch.randn(10, generator=torch.Generator().manual_seed(42), dtype=D)
    ref, d = _ensloss_authors(f.detach(), y, z, lam)
    out = L.ensloss(f, y, lam=lam, generator=torch.Generator().manual_seed(42))
    torch.testing.assert_close(out, ref)
    out.backward()
    torch.testing.assert_close(f.grad, d * (2 * y.to(D) - 1) / 10)


def test_ensloss_derivatives_are_calibrated_and_convex():
    g = torch.Generator().manual_seed(1)
    f = torch.randn(200, generator=g, dtype=D).requires_grad_(True)
    y = torch.ones(200, dtype=torch.long)
    L.ensloss(f, y, generator=torch.Generator().manual_seed(3), reduction="sum").backward()
    d = f.grad  # y = 1: margin = f
    order = torch.argsort(f.detach())
    small = f.detach()[order] <= 1  # below s = 1 the derivative is the sorted draw: non-decreasing in the margin
    ds = d[order][small]
    assert (ds[1:] >= ds[:-1]).all()
    assert (d < 0).all() and (d >= -1 - 1e-6).all()


def test_ensloss_is_seeded_by_generator_only():
    f = torch.randn(16, dtype=D)
    y = (torch.arange(16) % 2)
    a = L.ensloss(f, y, generator=torch.Generator().manual_seed(5), reduction="none")
    b = L.ensloss(f, y, generator=torch.Generator().manual_seed(5), reduction="none")
    c = L.ensloss(f, y, generator=torch.Generator().manual_seed(6), reduction="none")
    assert torch.equal(a, b) and not torch.equal(a, c)
    with pytest.raises(DataError, match="0/1"):
        L.ensloss(f, y * 2 - 1)
