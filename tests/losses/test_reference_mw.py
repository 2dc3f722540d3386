"""MW loss (Sheikholeslami et al., arXiv 2510.00137) against a float64 loop over the positive-negative pairs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import losslab.losses as L
from losslab import ConfigError, DataError
from losslab.losses import auc


def pairs_loop(s: np.ndarray, y: np.ndarray, m: np.ndarray, per_query: bool) -> tuple[float, int]:
    """Sum of log(1 + exp(-(s_p - s_n))) over the pairs, written out; and the number of pairs."""
    total, count = 0.0, 0
    cells = [(i, j) for i in range(s.shape[0]) for j in range(s.shape[1]) if m[i, j]]
    for p in cells:
        for n in cells:
            if y[p] == 1 and y[n] == 0 and (not per_query or p[0] == n[0]):
                total += math.log1p(math.exp(-(s[p] - s[n])))
                count += 1
    return total, count


def batch(seed: int, b: int = 5, m: int = 7):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(b, m, generator=g, dtype=torch.float64) * 2
    y = (torch.rand(b, m, generator=g) < 0.3).to(torch.float64)
    mask = torch.rand(b, m, generator=g) < 0.85
    return s, y, mask


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("pairing", ["global", "per_query"])
def test_matches_the_pair_loop(seed, pairing):
    s, y, mask = batch(seed)
    total, count = pairs_loop(s.numpy(), y.numpy(), mask.numpy(), pairing == "per_query")
    assert count > 0
    got = L.mw_loss(s, y, mask, pairing=pairing)
    assert float(got) == pytest.approx(total / count, rel=1e-12)
    assert float(L.mw_loss(s, y, mask, pairing=pairing, reduction="sum")) == pytest.approx(total, rel=1e-12)
    none = L.mw_loss(s, y, mask, pairing=pairing, reduction="none")
    assert float(none.sum()) == pytest.approx(total, rel=1e-12)
    assert none.shape == ((int((mask & (y == 1)).sum()),) if pairing == "global" else (s.shape[0],))


def test_hand_case_and_diagonal_positives():
    sim = torch.tensor([[2.0, 0.0], [1.0, 3.0]], dtype=torch.float64)
    want = sum(math.log1p(math.exp(-d)) for d in (2.0, 1.0, 3.0, 2.0)) / 4  # (2,0), (2,1), (3,0), (3,1)
    assert float(L.mw_loss(sim, torch.eye(2, dtype=torch.float64))) == pytest.approx(want, rel=1e-14)
    # per query only (2,0) and (3,1) pair up
    per_query = (math.log1p(math.exp(-2.0)) + math.log1p(math.exp(-2.0))) / 2
    assert float(L.mw_loss(sim, torch.eye(2), pairing="per_query")) == pytest.approx(per_query, rel=1e-6)


def test_per_query_pairing_is_ranknet_on_binary_labels():
    s, y, mask = batch(7)
    torch.testing.assert_close(L.mw_loss(s, y, mask, pairing="per_query"), L.ranknet(s, y, mask), rtol=1e-12, atol=0)


@pytest.mark.parametrize("seed", range(20))
def test_bounds_the_area_over_the_roc_curve(seed):
    s, y, mask = batch(seed, 6, 9)
    sp, sn = s[mask & (y == 1)], s[mask & (y == 0)]
    d = sp.unsqueeze(1) - sn.unsqueeze(0)
    aoc = float(((d < 0).double() + 0.5 * (d == 0).double()).mean())
    assert aoc <= float(L.mw_loss(s, y, mask)) / math.log(2) + 1e-12


def test_chunked_global_pairs_match(monkeypatch):
    s, y, mask = batch(3, 8, 16)
    whole = L.mw_loss(s, y, mask, reduction="none")
    monkeypatch.setattr(auc, "_CHUNK", 5)  # blocks of one positive row at a time
    torch.testing.assert_close(L.mw_loss(s, y, mask, reduction="none"), whole, rtol=1e-14, atol=0)


def test_masked_cells_change_nothing_and_get_no_gradient():
    s, y, mask = batch(11)
    s.requires_grad_(True)
    loss = L.mw_loss(s, y, mask)
    loss.backward()
    assert s.grad is not None and torch.all(s.grad[~mask] == 0)
    moved = s.detach().clone()
    moved[~mask] = 1e6
    assert float(L.mw_loss(moved, y, mask)) == pytest.approx(float(loss), rel=1e-14)


def test_no_pair_gives_zero_with_a_gradient():
    s = torch.randn(2, 3, requires_grad=True)
    for y in (torch.ones(2, 3), torch.zeros(2, 3)):
        for pairing in ("global", "per_query"):
            out = L.mw_loss(s, y, pairing=pairing)
            out.backward()
            assert float(out) == 0.0


def test_extreme_and_half_precision_scores():
    y = torch.eye(3)
    for scale in (1e4, 1e30):
        s = (torch.randn(3, 3, generator=torch.Generator().manual_seed(0)) * scale).requires_grad_(True)
        out = L.mw_loss(s, y)
        out.backward()
        assert torch.isfinite(out) and torch.isfinite(s.grad).all()
    half = torch.randn(3, 3, generator=torch.Generator().manual_seed(1)).half()
    assert L.mw_loss(half, y).dtype == torch.float32
    torch.testing.assert_close(L.mw_loss(half, y), L.mw_loss(half.float(), y))


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"input": torch.zeros(3)}, DataError, "score matrix"),
    ({"target": torch.zeros(2, 2)}, DataError, "shape of input"),
    ({"target": torch.full((2, 3), 2.0)}, DataError, "binary"),
    ({"target": torch.full((2, 3), float("nan"))}, DataError, "NaN"),
    ({"input": torch.full((2, 3), float("nan"))}, DataError, "NaN"),
    ({"mask": torch.ones(2, 3)}, DataError, "torch.bool"),
    ({"pairing": "all"}, ConfigError, "pairing"),
    ({"reduction": "avg"}, ConfigError, "reduction"),
])
def test_bad_input(kwargs, error, match):
    args = {"input": torch.zeros(2, 3), "target": torch.eye(2, 3)} | kwargs
    inp = args.pop("input")
    before = inp.clone()
    with pytest.raises(error, match=match):
        L.mw_loss(inp, **args)
    assert torch.equal(inp, before) or bool(torch.isnan(before).any())


def test_docstring_example():
    import doctest

    result = doctest.testmod(auc, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0 and result.attempted > 0
