"""Reference tests for LCRON (cascade ranking): the authors' two- and three-stage code transcribed in float64,
hand-computed hard-sort cases, padding, gradients, the learnable uncertainty weights and bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import losslab.losses as L
from losslab import ConfigError, DataError

D = torch.float64
EPS = 1e-6
LOG_EPS = -math.log(EPS)


# ------------------------------------------------------------------ the authors' code (kwai/LCRON), float64
def _neuralsort(s, tau):
    """``deep_components/loss/sorting.py::neuralsort``: (M, n) -> (M, n rank rows, n item columns)."""
    s = s.unsqueeze(-1)
    a_s = torch.abs(s - s.transpose(1, 2))
    n = s.size(1)
    one = torch.ones((n, 1), dtype=D)
    b = torch.einsum("mij,jk->mik", a_s, one @ one.T)
    k = torch.arange(n) + 1
    c = torch.einsum("mij,jk->mik", s, (n + 1 - 2 * k).to(D).unsqueeze(0))
    p = (c - b).transpose(1, 2)
    return torch.softmax(p / tau, dim=-1)


def _sequence_mask(count, padding_to_len):
    r = torch.arange(padding_to_len).unsqueeze(0).expand(count.size(0), padding_to_len)
    return (count.unsqueeze(-1) > r).to(D)


def _l_single(p, info, top_k, support_m):
    """``LsingleLoss.loss_graph``."""
    s2 = info["label_mask"].unsqueeze(1) * info["label_mask"].unsqueeze(2)
    p = p * s2
    lab = info["label_permutation_matrix"] * s2
    raw = torch.sum(p.detach(), dim=-2)
    up = torch.sum(p[:, :support_m, :], dim=-2) / (raw + 1e-6)
    up_lab = torch.sum(lab[:, :top_k, :], dim=-2)
    up_loss = torch.mean(-torch.log(up + 1e-6) * up_lab * info["label_mask"], dim=-1)
    down = torch.sum(p[:, support_m:, :], dim=-2) / (raw + 1e-6)
    down_lab = torch.sum(lab[:, top_k:, :], dim=-2)
    down_loss = torch.mean(-torch.log(down + 1e-6) * down_lab * info["label_mask"], dim=-1)
    per_sample = (up_loss + down_loss) * (info["count"] > support_m).to(D)
    return torch.mean(per_sample)


def _joint(mats, info, ks, gt_num):
    """``JointUltraLoss.loss_graph`` (two-stage file; the three-stage file multiplies a third stage in)."""
    s2 = info["label_mask"].unsqueeze(1) * info["label_mask"].unsqueeze(2)
    up_all, down_all = 1.0, 1.0
    for p, k in zip(mats, ks):
        pm = p * s2
        total = torch.sum(pm.detach(), dim=-2)
        up_all = up_all * (torch.sum(pm[:, :k, :], dim=-2) / (total + 1e-6))
        down_all = down_all * (1 - torch.sum(pm[:, k:, :], dim=-2) / (total + 1e-6))
    lab = info["label_permutation_matrix"] * s2
    up_lab = torch.sum(lab[:, :gt_num, :], dim=-2)
    up_loss = torch.mean(-torch.log(up_all + 1e-6) * up_lab, dim=-1)
    down_lab = torch.clamp(1 - up_lab, min=0, max=1)
    down_loss = torch.mean(-torch.log((1 - down_all) + 1e-6) * down_lab, dim=-1)
    return torch.mean(up_loss + down_loss)


def _authors_two_stage(prerank, recall, rank_index, count, gt_num, tau, w_pre, w_rec, parts=False):
    """``compute_lcron_metrics`` + ``LCRON`` + ``LcronLossModel`` (two-stage), on padded (B, max_num) inputs."""
    max_num = prerank.shape[1]
    label_mask = _sequence_mask(count, max_num)
    label_permutation_matrix = _neuralsort(rank_index, 0.0001)
    label_infos = {"label_permutation_matrix": label_permutation_matrix, "label_mask": label_mask, "count": count}
    label_permutation_matrix = (label_permutation_matrix > 0.001).to(D)  # rebinds the name only: never used
    p_pre, p_rec = _neuralsort(prerank, tau), _neuralsort(recall, tau)
    l_pre = _l_single(p_pre, label_infos, gt_num, gt_num)
    l_rec = _l_single(p_rec, label_infos, gt_num, gt_num)
    l_joint = _joint([p_rec, p_pre], label_infos, [gt_num, gt_num], gt_num)  # joint_*_k overridden by gt_num
    if parts:
        return l_pre, l_rec, l_joint
    return (0.5 / w_pre**2) * l_pre + (0.5 / w_rec**2) * l_rec + l_joint + torch.log(w_pre * w_rec)


def _authors_three_stage(rank, prerank, recall, rank_index, count, gt_num, tau, w):
    """``three_stage/lcron.py::compute_lcron_loss``: the label matrix is thresholded before it is stored."""
    label_mask = _sequence_mask(count, rank.shape[1])
    lpm = (_neuralsort(rank_index, 0.0001) > 0.001).to(D)
    info = {"label_permutation_matrix": lpm, "label_mask": label_mask, "count": count}
    mats = [_neuralsort(v, tau) for v in (rank, prerank, recall)]
    singles = [_l_single(p, info, gt_num, gt_num) for p in mats]
    joint = _joint(mats, info, [gt_num] * 3, gt_num)
    return sum((0.5 / w[j] ** 2) * singles[j] for j in range(3)) + joint + torch.log(w[0] * w[1] * w[2])


def _batch(seed, b=3, n=12, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    rec = torch.randn(b, n, generator=g, dtype=D) * scale
    pre = torch.randn(b, n, generator=g, dtype=D) * scale
    y = torch.randint(0, 6, (b, n), generator=g).to(D)  # ties: tied items share the rows they span
    return rec, pre, y


# ------------------------------------------------------------------------------- against the authors' code
@pytest.mark.parametrize(("tau", "scale", "k"), [(50.0, 40.0, 4), (1.0, 2.0, 3), (5.0, 3.0, 1)])
def test_two_stage_matches_the_authors_code_values_and_gradients(tau, scale, k):
    rec, pre, y = _batch(0, scale=scale)
    w = torch.tensor([0.8, 1.3], dtype=D)  # (recall, prerank)
    leaves = [t.clone().requires_grad_(True) for t in (rec, pre, w)]
    out = L.lcron_loss(leaves[:2], y, top_k=k, tau=tau, stage_weights=leaves[2])
    out.backward()
    ref_leaves = [t.clone().requires_grad_(True) for t in (rec, pre, w)]
    ref = _authors_two_stage(ref_leaves[1], ref_leaves[0], y, torch.full((3,), 12.0, dtype=D), k, tau,
                             ref_leaves[2][1], ref_leaves[2][0])
    ref.backward()
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    for a, r in zip(leaves, ref_leaves):
        torch.testing.assert_close(a.grad, r.grad, rtol=1e-10, atol=1e-12)
    assert all(float(a.grad.abs().sum()) > 0 for a in leaves)  # gradient reaches both stages and both weights


def test_per_query_value_is_the_authors_loss_on_that_query_alone():
    rec, pre, y = _batch(1)
    none = L.lcron_loss(torch.stack([rec, pre]), y, top_k=4, reduction="none")
    for q in range(3):
        one = _authors_two_stage(pre[q:q + 1], rec[q:q + 1], y[q:q + 1], torch.tensor([12.0], dtype=D), 4, 50.0,
                                 torch.tensor(1.0, dtype=D), torch.tensor(1.0, dtype=D))
        torch.testing.assert_close(none[q], one, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(none.mean(), L.lcron_loss([rec, pre], y, top_k=4), rtol=1e-12, atol=1e-12)


def test_padded_queries_match_the_authors_code_on_their_real_items():
    rec, pre, y = _batch(2, b=4, scale=2.0)
    counts = [12, 9, 4, 3]  # m = 4 and 3 ≤ top_k = 4: single-stage terms off, as in the authors' code
    g = torch.Generator().manual_seed(7)
    mask = torch.zeros(4, 12, dtype=torch.bool)
    for q, m in enumerate(counts):  # padding scattered through the query
        mask[q, torch.randperm(12, generator=g)[:m]] = True
    w = torch.tensor([1.4, 0.6], dtype=D)
    none = L.lcron_loss([rec, pre], y, mask, top_k=4, tau=2.0, stage_weights=w, reduction="none")
    for q, m in enumerate(counts):
        sel = mask[q]
        one = _authors_two_stage(pre[q, sel][None], rec[q, sel][None], y[q, sel][None], torch.tensor([float(m)], dtype=D),
                                 4, 2.0, w[1], w[0])
        torch.testing.assert_close(none[q], one, rtol=1e-12, atol=1e-12)


def test_the_authors_padded_width_scales_values_by_m_over_n_plus_a_constant():
    """What the docstring says of the authors' own padding: their batch sorts all n slots and averages over n."""
    rec, pre, y = _batch(3, b=3, scale=2.0)
    counts = torch.tensor([12.0, 8.0, 6.0], dtype=D)
    pad = _sequence_mask(counts, 12) == 0  # the authors' masks are prefixes of length count
    rec_p, pre_p, y_p = (torch.where(pad, -1e6, t) for t in (rec, pre, y))  # padding scored lowest
    l_pre, l_rec, l_joint = _authors_two_stage(pre_p, rec_p, y_p, counts, 4, 2.0, None, None, parts=True)
    exp_pre, exp_rec, exp_joint = 0.0, 0.0, 0.0
    for q, m in enumerate(counts.long().tolist()):
        c = (slice(q, q + 1), slice(0, m))
        s_pre, s_rec, s_joint = _authors_two_stage(pre[c], rec[c], y[c], counts[q:q + 1], 4, 2.0, None, None, parts=True)
        exp_pre += m / 12 * s_pre / 3
        exp_rec += m / 12 * s_rec / 3
        exp_joint += (m / 12 * s_joint + (12 - m) / 12 * LOG_EPS) / 3
    for got, exp in ((l_pre, exp_pre), (l_rec, exp_rec), (l_joint, exp_joint)):
        torch.testing.assert_close(got, exp, rtol=1e-10, atol=1e-12)


def test_three_stages_with_thresholded_labels_match_the_three_stage_code():
    g = torch.Generator().manual_seed(4)
    rank, pre, rec = (torch.randn(3, 10, generator=g, dtype=D) * 2 for _ in range(3))
    y = torch.randint(0, 4, (3, 10), generator=g).to(D)
    w = torch.tensor([0.9, 1.2, 1.1], dtype=D)
    out = L.lcron_loss([rank, pre, rec], y, top_k=3, tau=1.5, stage_weights=w, label_threshold=1e-3)
    ref = _authors_three_stage(rank, pre, rec, y, torch.full((3,), 10.0, dtype=D), 3, 1.5, w)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    soft = L.lcron_loss([rank, pre, rec], y, top_k=3, tau=1.5, stage_weights=w)
    assert not torch.allclose(out, soft)  # ties present: the two label rules differ


# ------------------------------------------------------------------------------------- hand-computed cases
def test_hard_sorts_by_hand():
    # tau tiny: each stage's NeuralSort is the exact permutation; colsum 1, so h, t ∈ {0, a}, a = 1/(1 + ε)
    a = 1 / (1 + EPS)
    hit = -math.log(a + EPS)  # ≈ 0: an item on the right side of rank k
    s1 = torch.tensor([[3.0, 1.0, 2.0]], dtype=D)  # order 0, 2, 1: h = (a, 0, 0), t = (0, a, a)
    s2 = torch.tensor([[1.0, 3.0, 2.0]], dtype=D)  # order 1, 2, 0: h = (0, a, 0), t = (a, 0, a)
    y = torch.tensor([[2.0, 1.0, 0.0]], dtype=D)  # true top-1: item 0
    single1 = 3 * hit / 3
    single2 = (LOG_EPS + LOG_EPS + hit) / 3  # item 0 out of stage 2's top 1, item 1 in it
    joint = (-math.log(a * 0 + EPS)  # item 0 does not survive stage 2
             - math.log(1 - (1 - 0) * (1 - a) + EPS)  # item 1 is dropped by stage 1
             - math.log(1 - (1 - a) * (1 - a) + EPS)) / 3  # item 2 by both
    expected = 0.5 * single1 + 0.5 * single2 + joint
    out = L.lcron_loss([s1, s2], y, top_k=1, tau=1e-6)
    assert out.item() == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(2 / 3 * LOG_EPS, rel=1e-6)
    w = torch.tensor([2.0, 0.5], dtype=D)
    out_w = L.lcron_loss([s1, s2], y, top_k=1, tau=1e-6, stage_weights=w)
    assert out_w.item() == pytest.approx(single1 / 8 + single2 * 2 + joint + math.log(1.0), rel=1e-12)


def test_tied_labels_by_hand_both_label_rules():
    a = 1 / (1 + EPS)
    s1 = torch.tensor([[3.0, 1.0, 2.0]], dtype=D)  # h = (a, 0, 0), t = (0, a, a)
    s2 = torch.tensor([[3.0, 2.0, 1.0]], dtype=D)  # same top 1
    y = torch.tensor([[1.0, 1.0, 0.0]], dtype=D)  # items 0 and 1 tied for rank 1 (and 2)
    lg = lambda v: -math.log(v + EPS)  # noqa: E731
    # two-stage rule: rows 1, 2 give 1/2 to items 0 and 1 -> y_top = (½, ½, 0), y_rest = (½, ½, 1)
    single = (0.5 * lg(a) + 0.5 * lg(0) + 0.5 * lg(0) + 0.5 * lg(a) + lg(a)) / 3
    joint = (0.5 * lg(a * a) + 0.5 * lg(1 - 1) + 0.5 * lg(0) + 0.5 * lg(1 - (1 - a) ** 2) + lg(1 - (1 - a) ** 2)) / 3
    out = L.lcron_loss([s1, s2], y, top_k=1, tau=1e-6)
    assert out.item() == pytest.approx(single + joint, rel=1e-12)
    # threshold rule (three-stage code): every shared row counts 1 -> y_top = (1, 1, 0), y_rest = (1, 1, 1)
    single_t = (lg(a) + lg(0) + lg(0) + lg(a) + lg(a)) / 3
    joint_t = (lg(a * a) + lg(0) + lg(1 - (1 - a) ** 2)) / 3
    out_t = L.lcron_loss([s1, s2], y, top_k=1, tau=1e-6, label_threshold=1e-3)
    assert out_t.item() == pytest.approx(single_t + joint_t, rel=1e-12)


def test_labels_a_hundredth_apart_are_sorted_hard():
    # the labels' NeuralSort runs at τ = 1e-4: gaps of 0.01 already give the hard order of integer ranks
    rec, pre, _ = _batch(12, b=2, n=6, scale=2.0)
    ranks = torch.stack([torch.randperm(6, generator=torch.Generator().manual_seed(q)) for q in range(2)]).to(D)
    hard = L.lcron_loss([rec, pre], ranks, top_k=2, tau=1.0, reduction="none")
    close = L.lcron_loss([rec, pre], 0.01 * ranks, top_k=2, tau=1.0, reduction="none")
    torch.testing.assert_close(close, hard, rtol=1e-12, atol=1e-12)


def test_a_perfect_cascade_costs_about_zero_and_a_missed_item_costs_minus_log_eps():
    s = torch.tensor([[4.0, 3.0, 2.0, 1.0]], dtype=D)
    y = torch.tensor([[4.0, 3.0, 2.0, 1.0]], dtype=D)
    assert abs(L.lcron_loss([s, s], y, top_k=2, tau=1e-6).item()) < 1e-9
    worse = torch.tensor([[4.0, 1.0, 2.0, 3.0]], dtype=D)  # item 1 (true top 2) ranked last by stage 2
    out = L.lcron_loss([s, worse], y, top_k=2, tau=1e-6).item()
    # stage 2 swaps items 1 and 3 across rank k: 2·(−log ε)/4 in its single loss (×½); joint: item 1 is lost
    # (−log ε), item 3 is still dropped by stage 1 (≈ 0)
    assert out == pytest.approx(0.5 * 2 * LOG_EPS / 4 + LOG_EPS / 4, rel=1e-6)


# ------------------------------------------------------------------------------------ padding and gradients
def test_masked_items_and_empty_queries_change_nothing():
    rec, pre, y = _batch(5, b=3, n=8, scale=2.0)
    mask = torch.ones(3, 8, dtype=torch.bool)
    mask[0, [1, 6]] = False
    mask[2, 0] = False
    leaves = [t.clone().requires_grad_(True) for t in (rec, pre)]
    out = L.lcron_loss(leaves, y, mask, top_k=3, tau=2.0)
    out.backward()
    # wild values at the padded slots: same loss, and no gradient there
    wild = [torch.where(mask, t, 1e4 * torch.sign(torch.randn_like(t))).requires_grad_(True) for t in (rec, pre)]
    out2 = L.lcron_loss(wild, torch.where(mask, y, 1e3), mask, top_k=3, tau=2.0)
    out2.backward()
    torch.testing.assert_close(out2, out, rtol=1e-12, atol=1e-12)
    for a, b in zip(leaves, wild):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-10, atol=1e-14)
        assert float(b.grad[~mask].abs().max()) == 0.0
    # appended padded items and a fully padded query: same mean, the empty query gives 0
    ext = [torch.cat([torch.cat([t, torch.randn(3, 4, dtype=D)], 1), torch.randn(1, 12, dtype=D)]) for t in (rec, pre)]
    y_ext = torch.cat([torch.cat([y, torch.full((3, 4), 9.0, dtype=D)], 1), torch.zeros(1, 12, dtype=D)])
    m_ext = torch.cat([torch.cat([mask, torch.zeros(3, 4, dtype=torch.bool)], 1), torch.zeros(1, 12, dtype=torch.bool)])
    torch.testing.assert_close(L.lcron_loss(ext, y_ext, m_ext, top_k=3, tau=2.0), out.detach(), rtol=1e-12, atol=1e-12)
    none = L.lcron_loss(ext, y_ext, m_ext, top_k=3, tau=2.0, reduction="none")
    assert none.shape == (4,) and none[3] == 0
    allpad = torch.zeros(2, 8, dtype=torch.bool)
    assert L.lcron_loss([rec[:2], pre[:2]], y[:2], allpad, top_k=3).item() == 0.0


def test_item_order_does_not_matter():
    rec, pre, y = _batch(6, b=2, n=9, scale=2.0)
    mask = torch.rand(2, 9, generator=torch.Generator().manual_seed(0)) > 0.3
    perm = torch.randperm(9, generator=torch.Generator().manual_seed(1))
    a = L.lcron_loss([rec, pre], y, mask, top_k=2, tau=3.0, reduction="none")
    b = L.lcron_loss([rec[:, perm], pre[:, perm]], y[:, perm], mask[:, perm], top_k=2, tau=3.0, reduction="none")
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("big", [1e4, 1e30])
def test_finite_loss_and_gradients_on_extreme_scores(dtype, big):
    g = torch.Generator().manual_seed(8)
    stages = [(torch.sign(torch.randn(3, 7, generator=g, dtype=D)) * big).to(dtype).requires_grad_(True)
              for _ in range(2)]
    y = torch.randint(0, 3, (3, 7), generator=g).float()
    out = L.lcron_loss(stages, y, top_k=2, tau=1e-6 if big < 1e10 else 50.0)
    out.backward()
    assert torch.isfinite(out)
    assert all(torch.isfinite(s.grad).all() for s in stages)


def test_mixed_dtypes_and_half_precision_stages():
    rec, pre, y = _batch(9, b=2, n=6, scale=1.0)
    out = L.lcron_loss([rec.float(), pre], y, top_k=2)
    assert out.dtype == D
    half = L.lcron_loss([rec.half(), pre.bfloat16()], y, top_k=2)
    assert half.dtype == torch.float32
    ref = L.lcron_loss([rec.half().double(), pre.bfloat16().double()], y, top_k=2)
    torch.testing.assert_close(half.double(), ref, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------- module with learnable weights
def test_module_learns_the_weights_and_round_trips_its_state():
    rec, pre, y = _batch(10, scale=2.0)
    crit = L.LCRONLoss(num_stages=2, top_k=4, tau=2.0)
    assert [n for n, _ in crit.named_parameters()] == ["stage_weights"]
    assert crit.stage_weights.tolist() == [1.0, 1.0] and "num_stages=2" in repr(crit)
    opt = torch.optim.SGD(crit.parameters(), lr=0.05)
    for _ in range(3):
        opt.zero_grad()
        crit(torch.stack([rec, pre]), y).backward()
        opt.step()
    w = crit.stage_weights.detach().clone()
    assert not torch.equal(w, torch.ones(2))
    torch.testing.assert_close(crit(torch.stack([rec, pre]), y),
                               L.lcron_loss([rec, pre], y, top_k=4, tau=2.0, stage_weights=w), rtol=1e-6, atol=1e-6)
    fresh = L.LCRONLoss(num_stages=2, top_k=4, tau=2.0)
    fresh.load_state_dict(crit.state_dict())
    assert torch.equal(fresh.stage_weights, crit.stage_weights)
    assert torch.equal(fresh(torch.stack([rec, pre]), y), crit(torch.stack([rec, pre]), y))
    assert crit.double().stage_weights.dtype == D


def test_weight_gradient_vanishes_at_w_squared_equal_to_the_single_loss():
    rec, pre, y = _batch(11, scale=2.0)
    l_pre, l_rec, _ = _authors_two_stage(pre, rec, y, torch.full((3,), 12.0, dtype=D), 4, 2.0, None, None, parts=True)
    crit = L.LCRONLoss(top_k=4, tau=2.0).double()
    with torch.no_grad():
        crit.stage_weights.copy_(torch.stack([l_rec, l_pre]).sqrt())
    crit([rec, pre], y).backward()
    assert float(crit.stage_weights.grad.abs().max()) < 1e-10
    crit.stage_weights.grad = None
    with torch.no_grad():
        crit.stage_weights.mul_(1.5)  # above the optimum: the gradient pushes the weights down
    crit([rec, pre], y).backward()
    assert (crit.stage_weights.grad > 0).all()


def test_module_rejects_bad_construction_and_mismatched_stage_count():
    with pytest.raises(ConfigError, match="learnable parameter"):
        L.LCRONLoss(stage_weights=torch.ones(2))
    for bad in (1, 2.0, True, "2"):
        with pytest.raises(ConfigError, match="num_stages"):
            L.LCRONLoss(num_stages=bad)
    rec, pre, y = _batch(12, b=2, n=6)
    with pytest.raises(DataError, match="num_stages=2"):
        L.LCRONLoss(num_stages=3, top_k=2)([rec, pre], y)


# ------------------------------------------------------------------------------------------------ bad input
def _ok():
    rec, pre, y = _batch(13, b=2, n=6)
    return [rec, pre], y


@pytest.mark.parametrize(("make", "match"), [
    (lambda s, y: ([s[0], s[1][:, :5]], y), "different shapes"),
    (lambda s, y: ([s[0], s[1][:1]], y), "different shapes"),
    (lambda s, y: ([s[0]], y), "at least 2 stages"),
    (lambda s, y: (torch.stack(s)[0], y), r"\(stages, batch, items\)"),
    (lambda s, y: ([s[0], s[1].tolist()], y), r"torch\.Tensor"),
    (lambda s, y: ("scores", y), r"torch\.Tensor"),
    (lambda s, y: ([s[0], s[1].long()], y), "floating"),
    (lambda s, y: ([s[0], s[1][0]], y), r"\(batch, items\)"),
    (lambda s, y: (s, y[:, :5]), "labels must have the shape"),
    (lambda s, y: (s, y.tolist()), r"labels must be a real torch\.Tensor"),
    (lambda s, y: (s, torch.where(y > 2, float("nan"), y)), "NaN"),
])
def test_bad_tensors_are_data_errors(make, match):
    stages, y = _ok()
    before = [t.clone() for t in (*stages, y)]
    args = make(stages, y)
    with pytest.raises(DataError, match=match):
        L.lcron_loss(*args, top_k=2)
    for t, b in zip((*stages, y), before):
        assert torch.equal(t, b)


@pytest.mark.parametrize("stage", [0, 1])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_scores_of_any_stage_raise(stage, value):
    stages, y = _ok()
    bad = [t.clone() for t in stages]
    bad[stage][1, 3] = value
    with pytest.raises(DataError, match=rf"stage_scores\[{stage}\] contains 1 NaN/Inf"):
        L.lcron_loss(bad, y, top_k=2)


def test_bad_mask_and_stage_weights_are_data_errors():
    stages, y = _ok()
    for mask in (torch.ones(2, 6), torch.ones(2, 5, dtype=torch.bool), [[True] * 6] * 2):
        with pytest.raises(DataError, match=r"mask must be a torch\.bool"):
            L.lcron_loss(stages, y, mask, top_k=2)
    for w, match in ((torch.ones(3, dtype=D), "one weight per stage"), (torch.tensor([1.0, float("nan")]), "NaN"),
                     ([1.0, 0.0], "non-zero"), ([1.0, -1.0], "positive product"), ("1", "list of S real"),
                     (torch.ones(2, dtype=torch.long), "floating")):
        with pytest.raises(DataError, match=match):
            L.lcron_loss(stages, y, top_k=2, stage_weights=w)


def test_bad_options_are_config_errors():
    stages, y = _ok()  # n = 6 items
    for k in (0, -1, 6, 7, 2.0, True, None):
        with pytest.raises(ConfigError, match=r"top_k must be an integer in \[1, n - 1\] = \[1, 5\]"):
            L.lcron_loss(stages, y, top_k=k)
    for tau in (0.0, -1.0, 1e-7, float("nan"), float("inf"), "50", None):
        with pytest.raises(ConfigError, match="tau"):
            L.lcron_loss(stages, y, top_k=2, tau=tau)
    for thr in (0.0, 1.0, -0.1, "0.001"):
        with pytest.raises(ConfigError, match="label_threshold"):
            L.lcron_loss(stages, y, top_k=2, label_threshold=thr)
    with pytest.raises(ConfigError, match="reduction"):
        L.lcron_loss(stages, y, top_k=2, reduction="avg")


def test_numpy_scalars_and_0d_tensors_are_numbers():
    stages, y = _ok()
    ref = L.lcron_loss(stages, y, top_k=2, tau=20.0)
    for tau in (np.float64(20.0), torch.tensor(20.0, dtype=D), 20):
        torch.testing.assert_close(L.lcron_loss(stages, y, top_k=np.int64(2), tau=tau), ref, rtol=1e-12, atol=0)


def test_registry_entry_and_alias():
    rec = L.info("lcron")
    assert rec.family == "ranking" and rec.module == "LCRONLoss" and "arXiv:2503.09492" in rec.reference
    assert L.get("lcron_loss") is L.lcron_loss is L.get("lcron")
