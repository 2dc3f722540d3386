"""Reference tests (float64 loops) for the ranking losses: NeuralNDCG, ApproxNDCG, ListNet, ListMLE, RankNet."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

import losslab.losses as L
from losslab import ConfigError, DataError

D = torch.float64
RANKING = ["neural_ndcg", "approx_ndcg", "listnet", "listmle", "ranknet"]


def _gain(y, powered=True):
    return 2.0**y - 1.0 if powered else y


def _ndcg_exact(scores, labels, k=None, powered=True):
    """NDCG@k of the order given by the scores (no ties), from the sorted order, one slate of Python floats."""
    n = len(scores)
    k = n if k is None else min(k, n)
    order = sorted(range(n), key=lambda j: -scores[j])
    dcg = sum(_gain(labels[order[r]], powered) / math.log2(r + 2) for r in range(k))
    ideal = sorted(labels, reverse=True)
    idcg = sum(_gain(ideal[r], powered) / math.log2(r + 2) for r in range(k))
    return dcg / idcg


def _distinct_slates(seed, b=3, n=6):
    g = torch.Generator().manual_seed(seed)
    s = torch.stack([torch.randperm(n, generator=g) for _ in range(b)]).to(D) * 0.5
    s = s + 0.05 * torch.rand(b, n, generator=g, dtype=D)  # gaps between scores ≥ 0.45
    y = torch.randint(0, 4, (b, n), generator=g).to(D)
    y[:, 0] = 3.0
    return s, y


# ---------------------------------------------------------------------------------------------------- NeuralNDCG
def _neural_ndcg_loop(s, y, tau, k=None, powered=True, transposed=False, max_iter=50, tol=1e-6):
    """allRank's neuralNDCG on one unpadded slate, written with loops (NeuralSort, Sinkhorn, NDCG@k)."""
    n = len(s)
    p = []
    for i in range(1, n + 1):
        z = [((n + 1 - 2 * i) * s[j] - sum(abs(s[j] - s[q]) for q in range(n))) / tau for j in range(n)]
        top = max(z)
        e = [math.exp(v - top) for v in z]
        p.append([v / sum(e) for v in e])
    for _ in range(max_iter):
        for j in range(n):  # columns, then rows
            c = max(sum(p[i][j] for i in range(n)), 1e-10)
            for i in range(n):
                p[i][j] /= c
        for i in range(n):
            r = max(sum(p[i]), 1e-10)
            p[i] = [v / r for v in p[i]]
        err = max(max(abs(sum(p[i]) - 1) for i in range(n)), max(abs(sum(p[i][j] for i in range(n)) - 1)
                                                                  for j in range(n)))
        if err < tol:
            break
    g = [_gain(v, powered) for v in y]
    kk = n if k is None else min(k, n)
    d = [1 / math.log2(r + 2) if r < kk else 0.0 for r in range(n)]
    if transposed:
        dcg = sum(g[j] * sum(p[r][j] * d[r] for r in range(n)) for j in range(n))
    else:
        dcg = sum(d[r] * sum(p[r][j] * g[j] for j in range(n)) for r in range(n))
    ideal = sorted(g, reverse=True)
    return -dcg / sum(ideal[r] * d[r] for r in range(n))


def test_neural_ndcg_hand_computed_exact_case():
    # scores rank the items 2, 0, 1; labels 1, 2, 0: DCG = 0/1 + 1/log2(3) + 3/2, IDCG = 3/1 + 1/log2(3) + 0
    s, y = torch.tensor([[0.5, 0.2, 0.9]], dtype=D), torch.tensor([[1.0, 2.0, 0.0]], dtype=D)
    exact = (1 / math.log2(3) + 1.5) / (3 + 1 / math.log2(3))
    assert _ndcg_exact([0.5, 0.2, 0.9], [1.0, 2.0, 0.0]) == pytest.approx(exact, abs=1e-15)
    assert float(L.neural_ndcg(s, y, temperature=1e-3)) == pytest.approx(-exact, abs=1e-12)
    assert float(L.neural_ndcg(s, y, temperature=1e-3, transposed=True)) == pytest.approx(-exact, abs=1e-12)
    # NDCG@1: the top item has gain 0
    assert float(L.neural_ndcg(s, y, temperature=1e-3, k=1)) == pytest.approx(0.0, abs=1e-12)
    # linear gains: DCG = 0 + 1/log2(3) + 2/2, IDCG = 2 + 1/log2(3)
    lin = (1 / math.log2(3) + 1.0) / (2 + 1 / math.log2(3))
    assert float(L.neural_ndcg(s, y, temperature=1e-3, powered_relevancies=False)) == pytest.approx(-lin, abs=1e-12)


@pytest.mark.parametrize("k", [None, 1, 3, 10])
@pytest.mark.parametrize("powered", [True, False])
@pytest.mark.parametrize("transposed", [False, True])
def test_neural_ndcg_tends_to_exact_ndcg_as_temperature_goes_to_zero(k, powered, transposed):
    s, y = _distinct_slates(1)
    exact = torch.tensor([_ndcg_exact(s[b].tolist(), y[b].tolist(), k, powered) for b in range(s.shape[0])], dtype=D)
    errors = []
    for tau in (1.0, 0.1, 1e-3):
        out = L.neural_ndcg(s, y, temperature=tau, k=k, powered_relevancies=powered, transposed=transposed,
                            reduction="none")
        errors.append(float((out + exact).abs().max()))
    torch.testing.assert_close(out, -exact, rtol=0, atol=1e-9)
    assert errors[0] > errors[1] > errors[2]


@pytest.mark.parametrize("k", [None, 2])
@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("tau", [1.0, 0.3])
def test_neural_ndcg_matches_allrank_algorithm_written_as_loops(k, transposed, tau):
    g = torch.Generator().manual_seed(3)
    s = torch.randn(3, 5, generator=g, dtype=D)
    y = torch.randint(0, 4, (3, 5), generator=g).to(D)
    y[:, 1] = 2.0
    out = L.neural_ndcg(s, y, temperature=tau, k=k, transposed=transposed, reduction="none")
    ref = [_neural_ndcg_loop(s[b].tolist(), y[b].tolist(), tau, k, True, transposed) for b in range(3)]
    torch.testing.assert_close(out, torch.tensor(ref, dtype=D), rtol=0, atol=1e-12)
    # a fixed number of Sinkhorn rounds (tol 0) and none at all (plain NeuralSort)
    for iters, tol in ((7, 0.0), (0, 0.0)):
        out = L.neural_ndcg(s, y, temperature=tau, k=k, transposed=transposed, sinkhorn_iters=iters,
                            sinkhorn_tol=tol, reduction="none")
        ref = [_neural_ndcg_loop(s[b].tolist(), y[b].tolist(), tau, k, True, transposed, iters, -1.0)
               for b in range(3)]
        torch.testing.assert_close(out, torch.tensor(ref, dtype=D), rtol=0, atol=1e-12)


def test_neural_ndcg_is_minus_ndcg_in_range_and_gradcheck_of_transposed_variant():
    s, y = _distinct_slates(4)
    out = L.neural_ndcg(s, y, reduction="none")
    assert ((out <= 0) & (out >= -1 - 1e-9)).all()
    x = torch.randn(2, 4, dtype=D, requires_grad=True)
    yy = torch.tensor([[0.0, 1.0, 2.0, 3.0], [1.0, 0.0, 0.0, 2.0]], dtype=D)
    mask = torch.tensor([[True, True, False, True], [True, True, True, True]])
    assert torch.autograd.gradcheck(lambda a: L.neural_ndcg(a, yy, mask, transposed=True, k=2, sinkhorn_tol=0.0),
                                    (x,))


def test_neural_ndcg_slates_without_relevant_items_are_left_out():
    s = torch.tensor([[0.3, 0.1, 0.2], [0.5, 0.4, 0.0]], dtype=D, requires_grad=True)
    y = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 2.0]], dtype=D)
    none = L.neural_ndcg(s, y, reduction="none")
    assert float(none[0].detach()) == 0.0
    torch.testing.assert_close(L.neural_ndcg(s, y), none[1])
    zero = L.neural_ndcg(s, torch.zeros_like(y))
    zero.backward()
    assert float(zero.detach()) == 0.0 and torch.equal(s.grad, torch.zeros_like(s))


# ------------------------------------------------------------------------------------------------------ ApproxNDCG
def _approx_ndcg_loop(s, y, alpha):
    n = len(s)
    pos = [1 + sum(1 / (1 + math.exp(-alpha * (s[q] - s[j]))) for q in range(n) if q != j) for j in range(n)]
    dcg = sum(_gain(y[j]) / math.log2(1 + pos[j]) for j in range(n))
    ideal = sorted(y, reverse=True)
    return -dcg / sum(_gain(ideal[r]) / math.log2(r + 2) for r in range(n))


@pytest.mark.parametrize("alpha", [1.0, 3.0])
def test_approx_ndcg_matches_formula_loop(alpha):
    g = torch.Generator().manual_seed(5)
    s = torch.randn(3, 5, generator=g, dtype=D)
    y = torch.randint(0, 4, (3, 5), generator=g).to(D)
    y[:, 0] = 1.0
    out = L.approx_ndcg(s, y, alpha=alpha, reduction="none")
    ref = torch.tensor([_approx_ndcg_loop(s[b].tolist(), y[b].tolist(), alpha) for b in range(3)], dtype=D)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)


def test_approx_ndcg_tends_to_exact_ndcg_for_steep_sigmoid_and_matches_allrank_formula():
    s, y = _distinct_slates(6)
    exact = torch.tensor([_ndcg_exact(s[b].tolist(), y[b].tolist()) for b in range(3)], dtype=D)
    torch.testing.assert_close(L.approx_ndcg(s, y, alpha=200.0, reduction="none"), -exact, rtol=0, atol=1e-12)
    # allRank's approxNDCGLoss: σ floored at 1e-10, mean over slates
    sig = torch.sigmoid(-(s[:, :, None] - s[:, None, :])).clamp(min=1e-10)
    pos = 1 + (sig * (1 - torch.eye(6, dtype=D))).sum(2)
    idcg = ((2 ** y.sort(1, descending=True).values - 1) / torch.log2(torch.arange(2, 8, dtype=D))).sum(1)
    allrank = -(((2**y - 1) / idcg[:, None]) / torch.log2(1 + pos)).sum(1).mean()
    torch.testing.assert_close(L.approx_ndcg(s, y), allrank, rtol=0, atol=1e-9)


# ---------------------------------------------------------------------------------------------------------- ListNet
def _listnet_loop(s, y):
    zs, zy = sum(math.exp(v) for v in s), sum(math.exp(v) for v in y)
    return -sum(math.exp(y[j]) / zy * math.log(math.exp(s[j]) / zs) for j in range(len(s)))


def test_listnet_matches_top_one_cross_entropy_loop_and_allrank():
    g = torch.Generator().manual_seed(7)
    s = torch.randn(4, 5, generator=g, dtype=D)
    y = torch.randint(0, 5, (4, 5), generator=g).to(D)
    ref = torch.tensor([_listnet_loop(s[b].tolist(), y[b].tolist()) for b in range(4)], dtype=D)
    torch.testing.assert_close(L.listnet(s, y, reduction="none"), ref, rtol=0, atol=1e-12)
    allrank = torch.mean(-torch.sum(F.softmax(y, 1) * torch.log(F.softmax(s, 1) + 1e-10), 1))
    torch.testing.assert_close(L.listnet(s, y), allrank, rtol=0, atol=1e-8)
    # minimum over scores: the entropy of softmax(y), reached at s = y + c (shift invariance)
    ent = -(F.softmax(y, 1) * F.log_softmax(y, 1)).sum(1)
    torch.testing.assert_close(L.listnet(y + 3.0, y, reduction="none"), ent, rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------------------------------------- ListMLE
def _pl_log_prob(s, perm):
    """log of the Plackett-Luce probability of the order ``perm`` (best first) under scores s."""
    out = 0.0
    for i in range(len(perm)):
        out += s[perm[i]] - math.log(sum(math.exp(s[perm[j]]) for j in range(i, len(perm))))
    return out


def test_listmle_is_plackett_luce_nll_over_all_permutations():
    g = torch.Generator().manual_seed(8)
    s = torch.randn(2, 4, generator=g, dtype=D)
    y = torch.tensor([[3.0, 0.0, 2.0, 1.0], [0.0, 1.0, 5.0, 2.0]], dtype=D)
    out = L.listmle(s, y, reduction="none")
    for b in range(2):
        sb, yb = s[b].tolist(), y[b].tolist()
        perms = list(itertools.permutations(range(4)))
        assert sum(math.exp(_pl_log_prob(sb, p)) for p in perms) == pytest.approx(1.0, abs=1e-12)
        truth = max(perms, key=lambda p: [yb[j] for j in p])  # the permutation sorting the labels
        assert float(out[b]) == pytest.approx(-_pl_log_prob(sb, truth), abs=1e-12)


def test_listmle_ties_by_position_or_by_generator():
    s = torch.tensor([[0.3, -1.0, 2.0, 0.5]], dtype=D)
    y = torch.tensor([[1.0, 1.0, 0.0, 1.0]], dtype=D)
    sl = s[0].tolist()
    assert float(L.listmle(s, y)) == pytest.approx(-_pl_log_prob(sl, (0, 1, 3, 2)), abs=1e-12)
    tie_orders = {round(-_pl_log_prob(sl, (*p, 2)), 10) for p in itertools.permutations((0, 1, 3))}
    seen = set()
    for seed in range(40):
        a = float(L.listmle(s, y, generator=torch.Generator().manual_seed(seed)))
        assert a == float(L.listmle(s, y, generator=torch.Generator().manual_seed(seed)))
        seen.add(round(a, 10))
    assert seen == tie_orders  # every tie order is reached, nothing else


# ---------------------------------------------------------------------------------------------------------- RankNet
def test_ranknet_matches_all_pairs_loop_and_pooled_bce():
    g = torch.Generator().manual_seed(9)
    s = torch.randn(3, 5, generator=g, dtype=D)
    y = torch.randint(0, 3, (3, 5), generator=g).to(D)
    per, pairs, diffs = [], 0, []
    for b in range(3):
        tot = 0.0
        for i in range(5):
            for j in range(5):
                if y[b, i] > y[b, j]:
                    tot += math.log1p(math.exp(-(float(s[b, i]) - float(s[b, j]))))
                    pairs += 1
                    diffs.append(float(s[b, i] - s[b, j]))
        per.append(tot)
    torch.testing.assert_close(L.ranknet(s, y, reduction="none"), torch.tensor(per, dtype=D), rtol=0, atol=1e-12)
    torch.testing.assert_close(L.ranknet(s, y, reduction="sum"), torch.tensor(sum(per), dtype=D))
    mean = L.ranknet(s, y)
    assert float(mean) == pytest.approx(sum(per) / pairs, abs=1e-12)
    d = torch.tensor(diffs, dtype=D)  # allRank: BCE-with-logits (target 1) over the pooled pairs
    torch.testing.assert_close(mean, F.binary_cross_entropy_with_logits(d, torch.ones_like(d)))


def test_ranknet_without_pairs_is_zero():
    s = torch.randn(2, 3, dtype=D, requires_grad=True)
    out = L.ranknet(s, torch.ones(2, 3, dtype=D))
    out.backward()
    assert float(out.detach()) == 0.0 and torch.equal(s.grad, torch.zeros_like(s))


# ------------------------------------------------------------------------------------------ padding (every loss)
@pytest.mark.parametrize("name", RANKING)
def test_padding_changes_nothing(name):
    fn = L.get(name)
    s, y = _distinct_slates(11, b=3, n=5)
    ref = fn(s, y, reduction="none")
    torch.testing.assert_close(fn(s, y, torch.ones_like(s, dtype=torch.bool), reduction="none"), ref)
    # append padded items with arbitrary scores and labels (even -1, allRank's padding label)
    g = torch.Generator().manual_seed(12)
    s_pad = torch.cat([s, torch.randn(3, 3, generator=g, dtype=D) * 10], 1)
    y_pad = torch.cat([y, torch.tensor([[-1.0, 5.0, 2.0]] * 3, dtype=D)], 1)
    mask = torch.cat([torch.ones(3, 5, dtype=torch.bool), torch.zeros(3, 3, dtype=torch.bool)], 1)
    torch.testing.assert_close(fn(s_pad, y_pad, mask, reduction="none"), ref, rtol=0, atol=1e-12)
    # padding anywhere: real items keep their order, padded ones go to random places (front and middle)
    slots = torch.randperm(8, generator=g)[:5].sort().values
    perm = torch.full((8,), -1, dtype=torch.long)
    perm[slots] = torch.arange(5)
    perm[perm < 0] = torch.arange(5, 8)
    torch.testing.assert_close(fn(s_pad[:, perm], y_pad[:, perm], mask[:, perm], reduction="none"), ref,
                               rtol=0, atol=1e-12)
    if name != "listmle":  # any order of the items (ListMLE breaks label ties by position, so it is not)
        perm = torch.randperm(8, generator=g)
        torch.testing.assert_close(fn(s_pad[:, perm], y_pad[:, perm], mask[:, perm], reduction="none"), ref,
                                   rtol=0, atol=1e-12)
    # a fully padded slate does not change the mean, and gets 0
    s2, y2 = torch.cat([s_pad, torch.randn(1, 8, dtype=D)]), torch.cat([y_pad, torch.ones(1, 8, dtype=D)])
    m2 = torch.cat([mask, torch.zeros(1, 8, dtype=torch.bool)])
    torch.testing.assert_close(fn(s2, y2, m2), fn(s, y), rtol=0, atol=1e-12)
    assert float(fn(s2, y2, m2, reduction="none")[-1]) == 0.0
    # gradients at padded items are exactly 0
    leaf = s_pad.clone().requires_grad_(True)
    fn(leaf, y_pad, mask).backward()
    assert torch.isfinite(leaf.grad).all() and torch.equal(leaf.grad[:, 5:], torch.zeros(3, 3, dtype=D))


@pytest.mark.parametrize("name", RANKING)
def test_module_form_takes_the_mask_as_third_input(name):
    s, y = _distinct_slates(13)
    mask = torch.ones_like(s, dtype=torch.bool)
    mask[0, 2] = False
    crit = getattr(L, L.info(name).module)(reduction="none")
    torch.testing.assert_close(crit(s, y, mask), L.get(name)(s, y, mask, reduction="none"))


# ------------------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("name", RANKING)
def test_bad_slates_are_data_errors(name):
    fn = L.get(name)
    s, y = _distinct_slates(14)
    with pytest.raises(DataError, match=r"mask=target != -1"):
        fn(s, torch.where(y > 2, -1.0, y))
    with pytest.raises(DataError, match="same shape"):
        fn(s, y[:, :-1])
    with pytest.raises(DataError, match="batch, slate"):
        fn(s[0], y[0])
    with pytest.raises(DataError, match=r"torch\.bool"):
        fn(s, y, torch.ones_like(s))
    with pytest.raises(DataError, match="NaN"):
        fn(s, torch.where(y > 2, float("nan"), y))
    # -1 at padded items is fine, and integer labels equal float labels
    mask = y >= 0
    torch.testing.assert_close(fn(s, y.long(), mask), fn(s, y, mask))


def test_bad_options_are_config_errors():
    s, y = _distinct_slates(15)
    for bad in ({"temperature": 0.0}, {"k": 0}, {"k": 2.5}, {"k": True}, {"sinkhorn_iters": -1},
                {"sinkhorn_iters": 1.5}, {"sinkhorn_tol": -1e-3}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            L.neural_ndcg(s, y, **bad)
    with pytest.raises(ConfigError, match="alpha"):
        L.approx_ndcg(s, y, alpha=-1.0)


def test_neural_ndcg_default_sinkhorn_stop_is_close_to_all_rounds_and_works_in_half_precision():
    g = torch.Generator().manual_seed(16)
    s = torch.randn(4, 7, generator=g, dtype=D)
    y = torch.randint(0, 4, (4, 7), generator=g).to(D)
    y[:, 0] = 2.0
    full = L.neural_ndcg(s, y, sinkhorn_tol=0.0, reduction="none")
    torch.testing.assert_close(L.neural_ndcg(s, y, reduction="none"), full, rtol=0, atol=1e-5)
    # a slate's value does not depend on the other slates of the batch (the stop is per slate)
    alone = torch.stack([L.neural_ndcg(s[b:b + 1], y[b:b + 1]) for b in range(4)])
    torch.testing.assert_close(L.neural_ndcg(s, y, reduction="none"), alone, rtol=0, atol=1e-15)
    for dtype in (torch.float32, torch.bfloat16):
        out = L.neural_ndcg(s.to(dtype), y, reduction="none")
        assert out.dtype == torch.float32
        torch.testing.assert_close(out.double(), L.neural_ndcg(s.to(dtype).double(), y, reduction="none"),
                                   rtol=0, atol=1e-4)


@pytest.mark.parametrize("dtype, label", [(torch.float32, 128.0), (torch.float64, 1100.0)])
def test_exponential_gains_that_overflow_are_a_data_error(dtype, label):
    x = torch.tensor([[2.0, 1.0, 0.5]], dtype=dtype)
    y = torch.tensor([[label, 0.0, 1.0]], dtype=dtype)
    for call in (lambda: L.neural_ndcg(x, y), lambda: L.neural_ndcg(x, y, transposed=True),
                 lambda: L.approx_ndcg(x, y)):
        with pytest.raises(DataError, match="overflow"):
            call()
    assert torch.isfinite(L.neural_ndcg(x, y, powered_relevancies=False))  # linear gains have no such limit
    assert torch.isfinite(L.neural_ndcg(x, y.clamp(max=100.0)))


@pytest.mark.parametrize("name", ["neural_ndcg", "approx_ndcg", "listnet", "listmle", "ranknet"])
def test_empty_slates_give_zero_and_the_module_takes_the_mask_by_keyword(name):
    assert L.get(name)(torch.zeros(2, 0), torch.zeros(2, 0)).item() == 0.0
    x, y = torch.randn(2, 5, generator=torch.Generator().manual_seed(0)), torch.tensor([[3.0, 0, 1, 2, 0]] * 2)
    mask = torch.tensor([[True, True, True, False, False], [True] * 5])
    module = getattr(L, L.info(name).module)()
    torch.testing.assert_close(module(x, y, mask=mask), L.get(name)(x, y, mask))


def test_neural_ndcg_default_temperature_is_allranks_one():
    s = torch.tensor([[2.0, 1.0, 0.0]], dtype=torch.float64)
    y = torch.tensor([[0.0, 1.0, 2.0]], dtype=torch.float64)
    default = L.neural_ndcg(s, y)
    torch.testing.assert_close(default, L.neural_ndcg(s, y, temperature=1.0))
    assert default.item() == pytest.approx(-0.6331015, abs=1e-6)
    assert L.neural_ndcg(s, y, temperature=0.5).item() != pytest.approx(default.item(), abs=1e-3)


def test_neural_sort_without_padding_is_bit_identical_to_the_masked_path():
    from losslab.losses._slate import neural_sort

    for dtype in (torch.float32, torch.float64):
        s = torch.randn(5, 9, generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(dtype) * 3
        valid = torch.ones(5, 9, dtype=torch.bool)
        for tau in (1e-3, 0.7, 50.0):
            assert torch.equal(neural_sort(s, valid, tau, all_valid=True), neural_sort(s, valid, tau))
