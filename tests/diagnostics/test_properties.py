"""Property-based invariants: eigen-solvers against eigvalsh, rank metrics under scaling and permutation."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from losslab.diagnostics import dead_units, effective_rank, hutchinson_trace, lanczos, srank

finite = st.floats(-10, 10, allow_nan=False, allow_infinity=False, width=64)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 10), data=st.data())
def test_lanczos_matches_eigvalsh_on_random_symmetric_matrices(n, data):
    a = data.draw(arrays(np.float64, (n, n), elements=finite))
    H = torch.tensor(a + a.T)
    k = data.draw(st.integers(1, n))
    which = data.draw(st.sampled_from(["LA", "SA", "LM"]))
    ev = torch.linalg.eigvalsh(H)
    order = {"LA": torch.argsort(-ev), "SA": torch.argsort(ev), "LM": torch.argsort(-ev.abs(), stable=True)}[which]
    res = lanczos(H, k, which=which, max_iter=n, tol=1e-12)
    scale = max(float(ev.abs().max()), 1.0)
    if which == "LM":  # ties in |lambda| may be broken either way: compare magnitudes
        np.testing.assert_allclose(res.eigenvalues.abs(), ev[order[:k]].abs(), atol=1e-8 * scale)
    else:
        np.testing.assert_allclose(res.eigenvalues, ev[order[:k]], atol=1e-8 * scale)


@settings(max_examples=20, deadline=None)
@given(diag=arrays(np.float64, st.integers(1, 12), elements=finite), seed=st.integers(0, 2**31 - 1))
def test_rademacher_hutchinson_is_exact_on_diagonal_matrices(diag, seed):
    r = hutchinson_trace(torch.diag(torch.tensor(diag)), 3, seed=seed)
    assert abs(r.estimate - diag.sum()) <= 1e-9 * max(1.0, np.abs(diag).sum()) and r.stderr < 1e-9 * max(
        1.0, np.abs(diag).sum())


@settings(max_examples=30, deadline=None)
@given(feats=arrays(np.float64, st.tuples(st.integers(1, 8), st.integers(1, 6)),
                    elements=st.one_of(st.just(0.0), st.floats(1e-3, 5))),  # no subnormals: scaling them underflows
       scale=st.floats(0.01, 100), seed=st.integers(0, 1000))
def test_rank_metrics_invariant_to_scaling_and_unit_permutation(feats, scale, seed):
    f = torch.tensor(feats)
    perm = torch.randperm(f.shape[1], generator=torch.Generator().manual_seed(seed))
    g = scale * f[:, perm]
    assert abs(effective_rank(g) - effective_rank(f)) < 1e-8
    assert srank(g) == srank(f)
    assert dead_units(g).tolist() == dead_units(f)[perm].tolist()
    rank = int(torch.linalg.matrix_rank(f))
    assert 0 <= effective_rank(f) <= min(f.shape) + 1e-9
    assert srank(f) <= min(f.shape) and (srank(f) == 0) == (rank == 0)
