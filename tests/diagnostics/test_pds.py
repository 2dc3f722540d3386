"""PDS scores against independent float64 references: autograd through the unrolled SGD run (the exact
hypergradient), a closed form for linear regression, the authors' backward loop written out with dense Hessians;
the Gumbel selection against the authors' rule; a real run where flipped labels score lowest; side effects and bad
inputs."""

from __future__ import annotations

import doctest
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from losslab._errors import ConfigError, DataError
from losslab.diagnostics import PDSResult, _pds, pds_scores, pds_select

D_IN, WIDTH, CLASSES = 3, 4, 2


@pytest.fixture(autouse=True)
def _one_thread():  # tiny models: one thread is ~10x faster than two on a shared machine
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(D_IN, WIDTH), nn.Tanh(), nn.Linear(WIDTH, CLASSES)).double()


def ce(model, batch):
    """Per-example cross-entropy as logsumexp - logit (on CPU ~10x faster than F.cross_entropy under torch.func)."""
    x, y = batch
    z = model(x)
    return torch.logsumexp(z, 1) - z.gather(1, y[:, None])[:, 0]


def data(n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, D_IN, generator=g, dtype=torch.float64), torch.randint(0, CLASSES, (n,), generator=g)


def forward(w, x):
    """The MLP written out by hand: tanh(x W1^T + b1) W2^T + b2."""
    w1, b1, w2, b2 = w
    return torch.tanh(x @ w1.T + b1) @ w2.T + b2


def unrolled(model, train, score, target, *, steps, lr, order, objective="area", interval=1, gamma=False):
    """-dJ/d(eps) through T SGD steps by plain autograd (create_graph), float64.

    ``gamma=False``: step t minimises mean_batch(l) + sum_n eps_n l(score_n) (eps = 0, only at t % interval == 0).
    ``gamma=True``: full-batch steps on sum_n g_n l_n with g_n = 1/N (the paper's weights); d/dg_n is returned.
    """
    w = [p.detach().clone().requires_grad_(True) for p in model.parameters()]
    n = score[0].shape[0]
    eps = torch.full((n,), 1.0 / n if gamma else 0.0, dtype=torch.float64, requires_grad=True)

    def losses(w, x, y):
        return F.cross_entropy(forward(w, x), y, reduction="none")

    total = torch.zeros((), dtype=torch.float64)
    for t in range(steps):
        if gamma:
            loss = (eps * losses(w, *score)).sum()
        else:
            idx = order[t]
            loss = losses(w, train[0][idx], train[1][idx]).mean()
            if t % interval == 0:
                loss = loss + (eps * losses(w, *score)).sum()
        grads = torch.autograd.grad(loss, w, create_graph=True)
        w = [p - lr * g for p, g in zip(w, grads)]
        if objective == "area" or t == steps - 1:
            total = total + losses(w, *target).mean()
    return -torch.autograd.grad(total, eps)[0]


@pytest.mark.parametrize("objective", ["area", "final"])
def test_full_batch_scores_equal_the_hypergradient_of_the_paper_weights(objective):
    model, train, target = mlp(0), data(12, 1), data(7, 2)
    r = pds_scores(model, ce, train, [target], steps=5, lr=0.5, batch_size=12, objective=objective, quiet=True)
    ref = unrolled(model, train, train, target, steps=5, lr=0.5, order=None, objective=objective, gamma=True)
    assert r.scores.dtype == torch.float64 and r.scores.shape == (12,)
    assert torch.allclose(r.scores, ref, rtol=0, atol=1e-10), (r.scores - ref).abs().max()
    assert r.scores.abs().max() > 1e-3  # not trivially zero


def test_minibatch_scores_equal_the_hypergradient_over_all_proxy_examples():
    """Batches of 4 out of 12 (3 per epoch, T=5 wraps around); the scored set is a separate proxy set."""
    model, train, proxy, target = mlp(1), data(12, 3), data(9, 4), data(6, 5)
    r = pds_scores(model, ce, train, [target], steps=5, lr=0.4, batch_size=4,
                   score_data=proxy, quiet=True)
    assert r.batch_indices.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [0, 1, 2, 3], [4, 5, 6, 7]]
    ref = unrolled(model, train, proxy, target, steps=5, lr=0.4, order=r.batch_indices)
    assert torch.allclose(r.scores, ref, rtol=0, atol=1e-10), (r.scores - ref).abs().max()
    # the target batches may be split: J is the mean over all target examples
    split = pds_scores(model, ce, train, [(target[0][:2], target[1][:2]), (target[0][2:], target[1][2:])],
                       steps=5, lr=0.4, batch_size=4, score_data=proxy, quiet=True)
    assert torch.allclose(split.scores, r.scores, rtol=0, atol=1e-12)


def test_shuffled_order_is_seeded_and_matches_the_hypergradient():
    model, train, target = mlp(2), data(12, 6), data(5, 7)
    a = pds_scores(model, ce, train, [target], steps=4, lr=0.3, batch_size=5, shuffle=True, seed=3, quiet=True)
    b = pds_scores(model, ce, train, [target], steps=4, lr=0.3, batch_size=5, shuffle=True, seed=3, quiet=True)
    assert torch.equal(a.scores, b.scores) and torch.equal(a.batch_indices, b.batch_indices)
    epochs = a.batch_indices.reshape(2, 10)  # 2 batches of 5 per epoch; each epoch a different permutation
    assert all(len(set(e.tolist())) == 10 for e in epochs) and not torch.equal(epochs[0], epochs[1])
    ref = unrolled(model, train, train, target, steps=4, lr=0.3, order=a.batch_indices)
    assert torch.allclose(a.scores, ref, rtol=0, atol=1e-10)


def test_trajectory_losses_are_those_of_the_sgd_run():
    model, train, target = mlp(0), data(12, 1), data(7, 2)
    r = pds_scores(model, ce, train, [target], steps=3, lr=0.5, batch_size=6, quiet=True)
    w = [p.detach().clone().requires_grad_(True) for p in model.parameters()]
    for t in range(3):
        idx = r.batch_indices[t]
        with torch.no_grad():
            assert math.isclose(float(F.cross_entropy(forward(w, target[0]), target[1])), r.target_losses[t],
                                rel_tol=1e-12)
        loss = F.cross_entropy(forward(w, train[0][idx]), train[1][idx])
        assert math.isclose(float(loss.detach()), r.train_losses[t], rel_tol=1e-12)
        grads = torch.autograd.grad(loss, w)
        w = [(p - 0.5 * g).detach().requires_grad_(True) for p, g in zip(w, grads)]
    assert math.isclose(float(F.cross_entropy(forward(w, target[0]), target[1])), r.target_losses[3], rel_tol=1e-12)
    assert r.provenance["settings"]["steps"] == 3 and r.provenance["settings"]["objective"] == "area"


@pytest.mark.parametrize("objective", ["area", "final"])
def test_linear_regression_matches_the_closed_form(objective):
    """l_n = (x_n.w - y_n)^2 / 2, full batch: theta_t = w* + M^t (w0 - w*), M = I - lr A, lambda by matrix powers."""
    g = torch.Generator().manual_seed(0)
    n, d, steps, lr = 10, 3, 6, 0.3
    x, y = torch.randn(n, d, generator=g, dtype=torch.float64), torch.randn(n, generator=g, dtype=torch.float64)
    xt, yt = torch.randn(5, d, generator=g, dtype=torch.float64), torch.randn(5, generator=g, dtype=torch.float64)
    net = nn.Linear(d, 1, bias=False).double()
    with torch.no_grad():
        net.weight.copy_(torch.randn(1, d, generator=g, dtype=torch.float64))

    def sq(model, batch):
        return 0.5 * (model(batch[0]).squeeze(1) - batch[1]) ** 2

    r = pds_scores(net, sq, (x, y), [(xt, yt)], steps=steps, lr=lr, batch_size=n, objective=objective, quiet=True)
    X, Y, XT, YT = (t.numpy() for t in (x, y, xt, yt))
    A, b = X.T @ X / n, X.T @ Y / n
    C, c = XT.T @ XT / 5, XT.T @ YT / 5
    w_star = np.linalg.solve(A, b)
    M = np.eye(d) - lr * A
    thetas = [w_star + np.linalg.matrix_power(M, t) @ (net.weight.detach().numpy()[0] - w_star)
              for t in range(steps + 1)]
    grad_j = [C @ th - c for th in thetas]
    expected = np.zeros(n)
    for t in range(steps):
        if objective == "final":
            lam = np.linalg.matrix_power(M, steps - 1 - t) @ grad_j[steps]
        else:
            lam = sum(np.linalg.matrix_power(M, s - t - 1) @ grad_j[s] for s in range(t + 1, steps + 1))
        expected += lr * (X * (X @ thetas[t] - Y)[:, None]) @ lam
    np.testing.assert_allclose(r.scores.numpy(), expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(r.target_losses.numpy(), [0.5 * np.mean((XT @ th - YT) ** 2) for th in thetas],
                               rtol=1e-12)


def authors_loop(model, train, proxy, target, *, steps, lr, order, interval):
    """GammaTrainer.inner_backward written out: dense Hessians of the batch loss, per-example gradients by autograd."""
    shapes = [p.shape for p in model.parameters()]
    sizes = [math.prod(s) for s in shapes]

    def unflat(v):
        return [c.view(s) for c, s in zip(v.split(sizes), shapes)]

    def loss_vec(v, x, y):
        return F.cross_entropy(forward(unflat(v), x), y, reduction="none")

    thetas = [torch.cat([p.detach().reshape(-1) for p in model.parameters()])]
    for t in range(steps):  # the i-th update uses the data of index i - 1
        idx = order[t]
        v = thetas[-1].clone().requires_grad_(True)
        (g,) = torch.autograd.grad(loss_vec(v, train[0][idx], train[1][idx]).mean(), v)
        thetas.append(thetas[-1] - lr * g)
    lam, grad_gamma = None, torch.zeros(proxy[0].shape[0], dtype=torch.float64)
    for i in range(steps, -1, -1):
        v = thetas[i].clone().requires_grad_(True)
        (g_dev,) = torch.autograd.grad(loss_vec(v, *target).mean(), v)
        if lam is None:
            lam = g_dev
            continue
        if i % interval == 0:  # compute_proxy_ct over ALL proxy examples, lr * <grad l_n(theta_i), lambda_{i+1}>
            ct = torch.stack([torch.autograd.grad(loss_vec(v, proxy[0][k:k + 1], proxy[1][k:k + 1]).sum(), v)[0]
                              for k in range(proxy[0].shape[0])]) @ lam
            grad_gamma += lr * ct
        idx = order[i]
        hess = torch.autograd.functional.hessian(lambda u, idx=idx: loss_vec(u, train[0][idx], train[1][idx]).mean(),
                                                 thetas[i])
        lam = g_dev + lam - lr * (hess @ lam)
    return grad_gamma


def test_interval_matches_the_authors_subsampled_loop_and_the_hypergradient():
    model, train, proxy, target = mlp(3), data(12, 8), data(8, 9), data(6, 10)
    r = pds_scores(model, ce, train, [target], steps=7, lr=0.4, batch_size=4, interval=3, score_data=proxy,
                   quiet=True)
    ref = authors_loop(model, train, proxy, target, steps=7, lr=0.4, order=r.batch_indices, interval=3)
    assert torch.allclose(r.scores, ref, rtol=0, atol=1e-10), (r.scores - ref).abs().max()
    hyper = unrolled(model, train, proxy, target, steps=7, lr=0.4, order=r.batch_indices, interval=3)
    assert torch.allclose(r.scores, hyper, rtol=0, atol=1e-10)
    every = pds_scores(model, ce, train, [target], steps=7, lr=0.4, batch_size=4, score_data=proxy, quiet=True)
    assert (every.scores - r.scores).abs().max() > 1e-3  # the interval matters


def blobs(n: int, flip: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = torch.randn(n, 2, generator=g, dtype=torch.float64) + 1.5 * (2 * y[:, None] - 1).double()
    flipped = torch.randperm(n, generator=g)[:flip]
    y_noisy = y.clone()
    y_noisy[flipped] = 1 - y_noisy[flipped]
    return x, y_noisy, flipped


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_flipped_labels_get_the_lowest_scores(seed):
    x, y, flipped = blobs(48, 6, seed)
    xd, yd, _ = blobs(48, 0, seed + 100)
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 2)).double()
    r = pds_scores(net, ce, (x, y), [(xd, yd)], steps=20, lr=0.5, batch_size=24, quiet=True)
    bottom = set(torch.argsort(r.scores)[:12].tolist())  # the lowest quarter (seeds 0-5: all 6 in the lowest 6)
    assert len(bottom & set(flipped.tolist())) >= 5
    clean = torch.ones(48, dtype=torch.bool)
    clean[flipped] = False
    assert r.scores[flipped].max() < r.scores[clean].median()
    kept = set(pds_select(r.scores, 0.4, seed=seed).tolist())
    assert len(kept & set(flipped.tolist())) == 0
    assert r.target_losses[-1] < r.target_losses[0]


def test_the_model_and_the_rng_are_untouched():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(D_IN, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Dropout(0.5), nn.Linear(4, 2)).double()
    net.train()
    net[4].bias.requires_grad_(False)  # a frozen parameter stays fixed
    before = {k: v.clone() for k, v in net.state_dict().items()}
    train, target = data(10, 1), data(4, 2)
    rng = torch.get_rng_state()
    a = pds_scores(net, ce, train, [target], steps=3, lr=0.2, batch_size=5, shuffle=True, seed=1, quiet=True)
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert all(m.training for m in net.modules()) and all(p.grad is None for p in net.parameters())
    assert not net[4].bias.requires_grad
    b = pds_scores(net, ce, train, [target], steps=3, lr=0.2, batch_size=5, shuffle=True,
                   seed=torch.Generator().manual_seed(1), quiet=True)
    assert torch.equal(a.scores, b.scores) and a.provenance["settings"]["parameters"] == 16 + 8 + 8


def test_pds_select_follows_the_authors_rule():
    s = torch.randn(50, generator=torch.Generator().manual_seed(0), dtype=torch.float64) ** 3
    kept = pds_select(s, 0.4, tau=0.1, seed=7)
    u = torch.rand(50, generator=torch.Generator().manual_seed(7), dtype=torch.float64).numpy()
    z = np.clip((s.numpy() - s.numpy().mean()) / np.std(s.numpy()), -3, 3)
    noisy = z / 0.1 - np.log(-np.log(u))
    expected = np.sort(np.argsort(-noisy, kind="stable")[:int(0.4 * 50)])
    assert kept.tolist() == expected.tolist() and kept.dtype == torch.int64
    unclipped = pds_select(s, 0.4, tau=0.1, clip=None, seed=7)
    noisy = (s.numpy() - s.numpy().mean()) / np.std(s.numpy()) / 0.1 - np.log(-np.log(u))
    assert unclipped.tolist() == np.sort(np.argsort(-noisy, kind="stable")[:20]).tolist()
    small = torch.tensor([0.3, -1.2, 0.8, 2.0, -0.1, 0.5], dtype=torch.float64)
    for seed in range(20):  # tau = 1: noise and z of the same size, so the std's normalisation matters
        u = torch.rand(6, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).numpy()
        noisy = (small.numpy() - small.numpy().mean()) / np.std(small.numpy()) - np.log(-np.log(u))
        expected = np.sort(np.argsort(-noisy, kind="stable")[:3])
        assert pds_select(small, 0.5, tau=1.0, clip=None, seed=seed).tolist() == expected.tolist()
        noisy = np.clip((small.numpy() - small.numpy().mean()) / np.std(small.numpy()), -0.5, 0.5) - np.log(-np.log(u))
        expected = np.sort(np.argsort(-noisy, kind="stable")[:3])
        assert pds_select(small, 0.5, tau=1.0, clip=0.5, seed=seed).tolist() == expected.tolist()
    assert pds_select(torch.arange(7.0), 0.5, seed=0).numel() == 3  # int(0.5 * 7), not round
    top = pds_select(s, 0.3, tau=1e-9, clip=None, seed=1)  # a tiny temperature keeps the top scores
    assert top.tolist() == torch.sort(torch.argsort(s, descending=True)[:15]).values.tolist()
    assert pds_select(torch.ones(5), 0.4, seed=0).numel() == 2  # equal scores: z = 0, pure noise
    assert pds_select([1.0, 2.0], 0.1).tolist() == [1]  # at least one
    assert not torch.equal(pds_select(s, 0.4, tau=10.0, seed=1), pds_select(s, 0.4, tau=10.0, seed=2))
    r = PDSResult(scores=s, target_losses=torch.zeros(1), train_losses=torch.zeros(0),
                  batch_indices=torch.zeros(0, 1))
    assert torch.equal(r.select(0.4, seed=7), kept)


def test_docstring_examples_run():
    assert doctest.testmod(_pds, optionflags=doctest.NORMALIZE_WHITESPACE).failed == 0


MODEL = mlp(0)
TRAIN, TARGET = data(8, 1), data(4, 2)


def run(**kw):
    args = {"steps": 2, "lr": 0.1, "batch_size": 4, "quiet": True}
    args.update(kw)
    return pds_scores(MODEL, args.pop("loss_fn", ce), args.pop("train", TRAIN), args.pop("target", [TARGET]),
                      **args)


def sq(model, batch):
    return 0.5 * (model(batch[0]).squeeze(1) - batch[1]) ** 2


def nan_after_first(model, batch):  # finite on the first call at step 0, NaN from step 1 on
    out = ce(model, batch)
    return out * float("nan") if batch[0].shape[0] == 4 and not torch.equal(batch[0], TRAIN[0][:4]) else out


BAD = [
    ("steps-0", lambda: run(steps=0), ConfigError, "steps must be >= 1"),
    ("steps-float", lambda: run(steps=2.0), ConfigError, "steps must be an int"),
    ("lr-0", lambda: run(lr=0.0), ConfigError, "lr must be > 0"),
    ("lr-neg", lambda: run(lr=-1.0), ConfigError, "lr must be > 0"),
    ("lr-nan", lambda: run(lr=float("nan")), ConfigError, "lr must be finite"),
    ("lr-inf", lambda: run(lr=float("inf")), ConfigError, "lr must be finite"),
    ("batch-too-big", lambda: run(batch_size=9), ConfigError, "8 rows"),
    ("interval-0", lambda: run(interval=0), ConfigError, "interval"),
    ("objective", lambda: run(objective="sum"), ConfigError, "objective"),
    ("seed", lambda: run(seed=-1), ConfigError, "seed"),
    ("shuffle", lambda: run(shuffle="yes"), ConfigError, "shuffle"),
    ("empty-train", lambda: run(train=(TRAIN[0][:0], TRAIN[1][:0])), DataError, "no examples"),
    ("empty-target", lambda: run(target=[]), DataError, "non-empty list"),
    ("target-not-list", lambda: run(target=TARGET), ConfigError, "wrap one batch in a list"),
    ("empty-target-batch", lambda: run(target=[(TARGET[0][:0], TARGET[1][:0])]), DataError, "0 rows"),
    ("mismatched-rows", lambda: run(train=(TRAIN[0], TRAIN[1][:5])), DataError, "first .example. dimension"),
    ("mismatched-score", lambda: run(score_data=(TRAIN[0][:3], TRAIN[1][:2])), DataError, "score_data"),
    ("train-type", lambda: run(train=[1, 2]), ConfigError, "tuple of tensors"),
    ("nan-input", lambda: run(train=(TRAIN[0] * float("nan"), TRAIN[1])), DataError, "NaN/Inf"),
    ("loss-shape", lambda: run(loss_fn=lambda m, b: ce(m, b).mean()), DataError, r"shape \(4,\)"),
    ("loss-fn", lambda: run(loss_fn=3), ConfigError, "callable"),
    ("model", lambda: pds_scores("net", ce, TRAIN, [TARGET], steps=1, lr=0.1, batch_size=2), ConfigError,
     "torch.nn.Module"),
    ("nan-loss-step", lambda: run(steps=3, loss_fn=nan_after_first), DataError, r"proxy step 1 \(of 3\)"),
    ("diverged", lambda: pds_scores(nn.Linear(3, 1).double(), sq, (TRAIN[0], TRAIN[0][:, 0]), [(TRAIN[0][:2], TRAIN[0][:2, 0])],
                                    steps=40, lr=1e12, batch_size=8, quiet=True), DataError, r"at proxy step \d+ \(of 40\)"),
    ("ratio-0", lambda: pds_select([1.0, 2.0], 0.0), ConfigError, "ratio"),
    ("ratio-big", lambda: pds_select([1.0, 2.0], 1.5), ConfigError, "ratio"),
    ("tau-0", lambda: pds_select([1.0, 2.0], 0.5, tau=0.0), ConfigError, "tau"),
    ("clip-0", lambda: pds_select([1.0, 2.0], 0.5, clip=0.0), ConfigError, "clip"),
    ("select-empty", lambda: pds_select([], 0.5), DataError, "non-empty"),
    ("select-2d", lambda: pds_select(torch.ones(2, 2), 0.5), DataError, "1-D"),
    ("select-nan", lambda: pds_select([1.0, float("nan")], 0.5), DataError, "NaN"),
]


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_inputs_raise_clear_errors_and_change_nothing(case):
    _, call, exc, match = case
    before = {k: v.clone() for k, v in MODEL.state_dict().items()}
    train = (TRAIN[0].clone(), TRAIN[1].clone())
    with pytest.raises(exc, match=match):
        call()
    assert all(torch.equal(before[k], v) for k, v in MODEL.state_dict().items())
    assert torch.equal(train[0], TRAIN[0]) and torch.equal(train[1], TRAIN[1])
