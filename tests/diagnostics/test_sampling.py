"""Clustering-based sensitivity sampling: hand-computed weights, exact unbiasedness, the error bound, bad input."""

from __future__ import annotations

import doctest

import numpy as np
import pytest
import torch

from losslab import ConfigError, DataError
from losslab.diagnostics import LossSample, _sampling, kmeans, sensitivity_sample


def _blobs(n_per=300, d=6, k=5, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 8, (k, d))
    return np.concatenate([c + rng.normal(0, 1, (n_per, d)) for c in centres]), np.repeat(np.arange(k), n_per)


def test_hand_computed_weights_on_two_pairs():
    emb = np.array([[0.0], [1.0], [10.0], [11.0]])
    s = sensitivity_sample(emb, k=2, m=1, seed=3)
    # clusters {0, 1} and {2, 3}, centres 0.5 and 10.5: every distance is 0.5, so p = 1/4 whatever u
    np.testing.assert_allclose(s.probabilities, [0.25] * 4)
    assert s.cost == pytest.approx(4 * 0.25)
    reps, draw = s.indices[:2], int(s.indices[2])
    assert sorted(int(s.labels[r]) for r in reps) == [0, 1]  # one member of each pair (both are nearest: a tie)
    # representative weights |C_j|/n = 1/2 minus 1/(n m p) = 1 for the cluster of the draw; the draw gets 1
    expected = {int(r): 0.5 - (1.0 if s.labels[r] == s.labels[draw] else 0.0) for r in reps}
    np.testing.assert_allclose(s.weights[:2], [expected[int(r)] for r in reps])
    assert s.weights[2] == pytest.approx(1.0)
    loss = np.array([3.0, 5.0, 7.0, 13.0])
    rep_of = {int(s.labels[r]): int(r) for r in reps}
    by_hand = (2 * loss[reps[0]] + 2 * loss[reps[1]] + (loss[draw] - loss[rep_of[int(s.labels[draw])]]) / 0.25) / 4
    assert s.estimate(loss[s.indices]) == pytest.approx(by_hand)
    assert s.estimate(torch.tensor(loss[s.indices], requires_grad=True)) == pytest.approx(by_hand)


@pytest.mark.parametrize("z, uniform", [(2.0, 0.5), (1.0, 0.1), (2.0, 1.0)])
def test_unbiased_exactly_over_every_draw(z, uniform):
    emb, _ = _blobs(n_per=6, d=2, k=3, seed=1)
    loss = np.random.default_rng(2).gamma(2.0, size=emb.shape[0])  # not Hölder at all
    s = sensitivity_sample(emb, k=3, m=1, z=z, uniform=uniform, seed=0)
    reps = s.indices[:3]
    expectation = 0.0
    for row in range(emb.shape[0]):  # E over the single draw, summed exactly
        w = _sampling._weights(s.labels, reps, s.probabilities, np.array([row]))
        expectation += s.probabilities[row] * float(w @ loss[np.concatenate([reps, [row]])])
    assert expectation == pytest.approx(loss.mean(), rel=1e-12)


def test_error_on_a_lipschitz_loss_is_far_below_uniform_sampling_and_within_the_bound():
    emb, _ = _blobs()
    loss = np.linalg.norm(emb - emb[0], axis=1) + 1.0  # 1-Lipschitz in the embedding
    k, m = 5, 40
    ours, uniform = [], []
    for seed in range(60):
        s = sensitivity_sample(emb, k=k, m=m, seed=seed)
        ours.append(s.estimate(loss[s.indices]) - loss.mean())
        pick = np.random.default_rng(seed).choice(emb.shape[0], size=k + m)
        uniform.append(loss[pick].mean() - loss.mean())
    rms_ours, rms_uniform = np.sqrt(np.mean(np.square(ours))), np.sqrt(np.mean(np.square(uniform)))
    assert rms_ours < 0.3 * rms_uniform
    # each correction term is at most λ 2^z Φ' / (1 - u) with Φ' = Σ ||e - c|| (z = 1 here: Lipschitz)
    s = sensitivity_sample(emb, k=k, m=m, z=1.0, seed=0)
    bound = 1.0 * 2 * s.cost / (1 - 0.5) / emb.shape[0]
    assert abs(s.estimate(loss[s.indices]) - loss.mean()) <= bound / np.sqrt(m) * 4  # four standard deviations at most


def test_kmeans_recovers_separated_blobs_and_keeps_clusters_non_empty():
    emb, truth = _blobs(k=4, seed=3)
    centers, labels = kmeans(emb, 4, seed=0)
    pairs = {(int(a), int(b)) for a, b in zip(truth, labels)}
    assert len(pairs) == 4  # a bijection between blobs and clusters
    for j in range(4):
        np.testing.assert_allclose(centers[j], emb[labels == j].mean(axis=0))
    duplicated = np.repeat(np.array([[0.0, 0.0], [1.0, 1.0]]), 5, axis=0)  # 2 distinct points, k > 2
    for k in (3, 4, 10):
        centers, lab = kmeans(duplicated, k, seed=0)
        assert np.all(np.bincount(lab, minlength=k) > 0) and np.all(np.isfinite(centers))
    tiny = np.array([[0.0], [0.0], [1.0], [5.0]])
    _, lab = kmeans(tiny, 4)
    assert sorted(lab.tolist()) == [0, 1, 2, 3]  # k = n: one row per cluster


def test_reproducible_and_accepts_tensors():
    emb, _ = _blobs(n_per=50)
    a = sensitivity_sample(emb, k=4, m=10, seed=7)
    b = sensitivity_sample(torch.from_numpy(emb).float(), k=4, m=10, seed=7)
    np.testing.assert_array_equal(a.indices, b.indices)
    c = sensitivity_sample(emb, k=4, m=10, seed=8)
    assert not np.array_equal(a.indices, c.indices)
    assert isinstance(a, LossSample) and a.indices.size == a.weights.size == 14
    assert sensitivity_sample(emb, k=4, m=0).weights.sum() == pytest.approx(1.0)


@pytest.mark.parametrize("call, error, match", [
    (lambda e: sensitivity_sample(e[:, 0], k=2, m=3), DataError, r"shape \(n, d\)"),
    (lambda e: sensitivity_sample(np.where(e > 5, np.nan, e), k=2, m=3), DataError, "NaN/Inf"),
    (lambda e: sensitivity_sample(e[:3], k=4, m=3), ConfigError, "at least as many rows"),
    (lambda e: sensitivity_sample(e, k=0, m=3), ConfigError, "k must be an integer >= 1"),
    (lambda e: sensitivity_sample(e, k=2, m=-1), ConfigError, "m must be an integer >= 0"),
    (lambda e: sensitivity_sample(e, k=2, m=3, uniform=0.0), ConfigError, r"\(0, 1\]"),
    (lambda e: sensitivity_sample(e, k=2, m=3, z=0), ConfigError, "z must be"),
    (lambda e: sensitivity_sample(e, k=2, m=3).estimate([1.0, 2.0]), DataError, "one loss per selected row"),
    (lambda e: sensitivity_sample(e, k=2, m=3).estimate(np.ones(e.shape[0])), DataError, r"losses\[sample.indices\]"),
    (lambda e: sensitivity_sample(e, k=2, m=3).estimate(np.ones((5, 1))), DataError, "1-D"),
    (lambda e: sensitivity_sample(e, k=2, m=3).estimate(["1"] * 5), DataError, "real numbers"),
    (lambda e: sensitivity_sample(e.astype(complex), k=2, m=3), DataError, "real numbers"),
    (lambda e: sensitivity_sample(e, k=2, m=3, seed=-1), ConfigError, "seed must be an integer >= 0"),
    (lambda e: sensitivity_sample(e, k=2, m=3, seed=None), ConfigError, "seed must be an integer >= 0"),
    (lambda e: sensitivity_sample(e, k=2, m=3, z=1000), ConfigError, r"z must be a real number in \(0, 8\]"),
    (lambda e: sensitivity_sample(e, k=2, m=3).estimate([np.nan] * 5), DataError, "NaN/Inf"),
])
def test_bad_input(call, error, match):
    emb, _ = _blobs(n_per=20)
    with pytest.raises(error, match=match):
        call(emb)


def test_docstring_examples():
    result = doctest.testmod(_sampling, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0 and result.attempted > 0


def test_numpy_scalars_far_offsets_and_independent_streams():
    emb, truth = _blobs(n_per=100, k=4, seed=5)
    a = sensitivity_sample(emb, k=4, m=10, z=np.float32(2.0), uniform=np.int64(1), seed=np.int64(3))
    b = sensitivity_sample(emb, k=4, m=10, z=2.0, uniform=1.0, seed=3)
    np.testing.assert_array_equal(a.indices, b.indices)
    # a common offset of 1e8 changes nothing (rows are centred before the distance algebra)
    far = sensitivity_sample(emb + 1e8, k=4, m=10, seed=3)
    near = sensitivity_sample(emb, k=4, m=10, seed=3)
    np.testing.assert_array_equal(far.labels, near.labels)
    np.testing.assert_allclose(far.probabilities, near.probabilities, rtol=1e-6)
    assert len({(int(t), int(lab)) for t, lab in zip(truth, far.labels)}) == 4
    # the draws come from a stream of their own (the second child of the seed), none of the k-means seedings' streams
    draw_stream = np.random.SeedSequence(3).spawn(2)[1]
    redrawn = np.random.default_rng(draw_stream).choice(emb.shape[0], size=10, p=near.probabilities)
    np.testing.assert_array_equal(near.indices[4:], redrawn)
