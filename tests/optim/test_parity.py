"""Parity with the authors' update rules (tests/optim/_references.py), float64, >= 50 steps, spikes included."""

from __future__ import annotations

import pytest
import torch

from losslab.optim import SCALE, SGDP, SPAM, AdamP, DiffGrad, MoMo, MoMoAdam, OrthoGrad, SGDSaI
from tests.optim import _references as ref

TOL = 1e-10
SHAPES = [(6, 5), (7,), (3, 2, 2, 2), (1, 4)]


def make_params(seed: int = 0, shapes=SHAPES) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g, dtype=torch.float64) for s in shapes]


def make_grads(params, steps: int, seed: int = 1, spikes=(30, 41), scale: float = 1.0, orthogonal_every: int = 0):
    """Random gradients; at the ``spikes`` steps every gradient is x1000; every k-th step is row-orthogonal to p."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for t in range(steps):
        step = []
        for p in params:
            x = torch.randn(p.shape, generator=g, dtype=torch.float64) * scale
            if t in spikes:
                x = x * 1000
            if orthogonal_every and t % orthogonal_every == 0 and p.ndim > 1:
                rows, x2 = p.reshape(p.shape[0], -1), x.reshape(p.shape[0], -1)
                x2 = x2 - rows * (x2 * rows).sum(1, keepdim=True) / (rows * rows).sum(1, keepdim=True)
                x = x2.reshape(p.shape)
            step.append(x)
        out.append(step)
    return out


def run(opt_factory, params, grads, groups=None):
    ps = [torch.nn.Parameter(p.clone()) for p in params]
    opt = opt_factory(ps if groups is None else groups(ps))
    traj = []
    for step in grads:
        for p, g in zip(ps, step):
            p.grad = g.clone()
        opt.step()
        traj.append([p.detach().clone() for p in ps])
    return traj


def max_diff(a, b) -> float:
    return max(float((x - y).abs().max()) if x.numel() else 0.0 for sa, sb in zip(a, b) for x, y in zip(sa, sb))


FUSED = [None, False]


@pytest.mark.parametrize("fused", FUSED)
@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_spam_matches_authors_rule_across_resets_and_spikes(fused, wd):
    params = make_params()
    grads = make_grads(params, 70, spikes=(12, 30, 47, 66))
    kw = dict(lr=1e-2, eps=1e-6, warmup=8, theta=50.0, delta_t=25, accu=4)
    log: list[int] = []
    expected = ref.spam_reference(params, grads, wd=wd, log=log, **kw)
    got = run(lambda ps: SPAM(ps, lr=1e-2, weight_decay=wd, warmup_steps=8, threshold=50.0, reset_interval=25,
                              grad_accu_steps=4, fused=fused), params, grads)
    assert sum(log) > 0, "the spikes must trigger the clipping, or the test checks nothing"
    assert max_diff(got, expected) <= TOL


@pytest.mark.parametrize("fused", FUSED)
def test_spam_defaults_match_authors_rule(fused):
    params = make_params(shapes=[(4, 3), (5,)])
    grads = make_grads(params, 60, spikes=(25, 40))
    log: list[int] = []
    expected = ref.spam_reference(params, grads, log=log)
    got = run(lambda ps: SPAM(ps, fused=fused), params, grads)
    assert sum(log) > 0
    assert max_diff(got, expected) <= TOL


def test_spam_sparse_momentum_groups_match_authors_rule():
    params = make_params(shapes=[(8, 6), (5,), (4, 4)])
    grads = make_grads(params, 60, spikes=(14, 33))
    expected = ref.spam_reference(params, grads, lr=1e-2, warmup=6, theta=50.0, delta_t=20, accu=3,
                                  densities=[0.5, None, 0.25], seed=3)
    got = run(lambda groups: SPAM(groups, lr=1e-2, warmup_steps=6, threshold=50.0, reset_interval=20,
                                  grad_accu_steps=3, seed=3),
              params, grads,
              groups=lambda ps: [{"params": [ps[0]], "density": 0.5}, {"params": [ps[1]]},
                                 {"params": [ps[2]], "density": 0.25}])
    assert max_diff(got, expected) <= TOL


def test_spam_warmup_schedule_is_the_authors_not_the_peer_one():
    from losslab.optim.spam import spam_warmup_scale

    scales = [spam_warmup_scale(c, 10) for c in range(12)]
    assert scales[:3] == pytest.approx([0.01, 0.0301, 0.0886], abs=1e-4)  # the peer starts at 0.0301
    assert scales[9] < 1 and scales[10] == 1.0 and scales[11] == 1.0
    for c in (0, 7, 9, 149):
        assert spam_warmup_scale(c, 150) == pytest.approx(1 - ref._cosine_death_rate(c, 150), abs=1e-15)


@pytest.mark.parametrize("fused", FUSED)
@pytest.mark.parametrize("kw", [dict(), dict(weight_decay=0.1, nesterov=True), dict(weight_decay=0.05)])
def test_adamp_matches_authors_rule(fused, kw):
    params = make_params()
    grads = make_grads(params, 60, orthogonal_every=3)
    log: list[int] = []
    expected = ref.adamp_reference(params, grads, lr=1e-2, wd=kw.get("weight_decay", 0.0),
                                   nesterov=kw.get("nesterov", False), log=log)
    got = run(lambda ps: AdamP(ps, lr=1e-2, fused=fused, **kw), params, grads)
    assert log, "the projection must fire on the orthogonal steps"
    assert max_diff(got, expected) <= TOL


@pytest.mark.parametrize("fused", FUSED)
def test_adamp_tiny_gradients_keep_the_authors_epsilon_placement(fused):
    params = make_params()
    grads = make_grads(params, 50, scale=1e-6, spikes=())
    expected = ref.adamp_reference(params, grads, lr=1e-2)
    got = run(lambda ps: AdamP(ps, lr=1e-2, fused=fused), params, grads)
    assert max_diff(got, expected) <= TOL


@pytest.mark.parametrize("kw", [dict(momentum=0.9), dict(momentum=0.9, nesterov=True, weight_decay=0.1),
                                dict(momentum=0.5, dampening=0.1, weight_decay=0.01)])
def test_sgdp_matches_authors_rule(kw):
    params = make_params()
    grads = make_grads(params, 60, orthogonal_every=3)
    log: list[int] = []
    expected = ref.sgdp_reference(params, grads, lr=1e-2, momentum=kw["momentum"], dampening=kw.get("dampening", 0.0),
                                  wd=kw.get("weight_decay", 0.0), nesterov=kw.get("nesterov", False), log=log)
    got = run(lambda ps: SGDP(ps, lr=1e-2, **kw), params, grads)
    assert log
    assert max_diff(got, expected) <= TOL


@pytest.mark.parametrize("fused", FUSED)
@pytest.mark.parametrize("wd", [0.0, 0.01])
def test_diffgrad_matches_authors_v2(fused, wd):
    params = make_params()
    grads = make_grads(params, 60)
    expected = ref.diffgrad_reference(params, grads, lr=1e-2, wd=wd)
    got = run(lambda ps: DiffGrad(ps, lr=1e-2, weight_decay=wd, fused=fused), params, grads)
    assert max_diff(got, expected) <= TOL


def _loss_fn(seed: int = 5):
    g = torch.Generator().manual_seed(seed)
    targets = [torch.randn(s, generator=g, dtype=torch.float64) for s in SHAPES]

    def grad_fn(ps):
        xs = [p.detach().clone().requires_grad_(True) for p in ps]
        loss = sum(((x - t) ** 2).sum() + 0.1 * torch.sin(3 * x).sum() + 1.0 for x, t in zip(xs, targets))
        grads = torch.autograd.grad(loss, xs)
        return float(loss.detach()), [gr.detach() for gr in grads]

    return grad_fn


def run_with_loss(opt_factory, params, grad_fn, steps):
    ps = [torch.nn.Parameter(p.clone()) for p in params]
    opt = opt_factory(ps)
    traj = []
    for _ in range(steps):
        loss, grads = grad_fn([p.detach() for p in ps])
        for p, g in zip(ps, grads):
            p.grad = g.clone()
        opt.step(loss=torch.tensor(loss, dtype=torch.float64))
        traj.append([p.detach().clone() for p in ps])
    return traj, opt


@pytest.mark.parametrize("kw", [dict(), dict(weight_decay=0.1, bias_correction=True), dict(use_fstar=True, lb=-5.0),
                                dict(lr=0.5, weight_decay=0.01, use_fstar=True)])
def test_momo_matches_authors_rule(kw):
    params = make_params()
    fn = _loss_fn()
    expected, _, lb = ref.momo_reference(params, fn, 50, lr=kw.get("lr", 1.0), wd=kw.get("weight_decay", 0.0),
                                         bias_correction=kw.get("bias_correction", False),
                                         use_fstar=kw.get("use_fstar", False), lb=kw.get("lb", 0.0))
    got, opt = run_with_loss(lambda ps: MoMo(ps, **kw), params, fn, 50)
    assert max_diff(got, expected) <= TOL
    assert opt.fstar == pytest.approx(lb, abs=1e-9)


@pytest.mark.parametrize("kw", [dict(), dict(weight_decay=0.1), dict(weight_decay=0.1, divide=False),
                                dict(use_fstar=True, lb=-3.0)])
def test_momo_adam_matches_authors_rule(kw):
    params = make_params()
    fn = _loss_fn()
    expected = ref.momo_adam_reference(params, fn, 50, lr=0.1, wd=kw.get("weight_decay", 0.0),
                                       divide=kw.get("divide", True), use_fstar=kw.get("use_fstar", False),
                                       lb=kw.get("lb", 0.0))
    got, _ = run_with_loss(lambda ps: MoMoAdam(ps, lr=0.1, **kw), params, fn, 50)
    assert max_diff(got, expected) <= TOL


@pytest.mark.parametrize("kw", [dict(), dict(momentum=0.0, weight_decay=0.0), dict(momentum=0.5, weight_decay=0.1)])
def test_sgd_sai_matches_authors_rule(kw):
    params = make_params()
    grads = make_grads(params, 50)
    expected = ref.sgd_sai_reference(params, grads, lr=1e-2, momentum=kw.get("momentum", 0.9),
                                     wd=kw.get("weight_decay", 1e-2))
    got = run(lambda ps: SGDSaI(ps, lr=1e-2, **kw), params, grads)
    assert max_diff(got, expected) <= TOL


def test_sgd_sai_one_element_tensor_follows_the_authors_nan_rule():
    p = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
    opt = SGDSaI([p], lr=1e-2, weight_decay=0.0, eps=1e-8)
    p.grad = torch.tensor([2.0], dtype=torch.float64)
    opt.step()
    assert p.item() == pytest.approx(-1e-2 * 2.0 / 1e-8 * 2.0)  # gsnr = |g| / eps, buffer = g


@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_scale_matches_authors_rule(wd):
    params = make_params(shapes=[(6, 5), (7,), (3, 2, 2, 2), (9, 4), (5, 3)])
    roles = ["main", "oned", "main", "embed", "last"]
    grads = make_grads(params, 50)
    expected = ref.scale_reference(params, grads, roles, lr=1e-2, wd=wd, adam_lr=3e-2)
    got = run(lambda ps: SCALE(ps, lr=1e-2, weight_decay=wd, adam_lr=3e-2), params, grads,
              groups=lambda ps: [{"params": [ps[0], ps[1], ps[2]]}, {"params": [ps[3]], "col_dim": 0},
                                 {"params": [ps[4]], "last_layer": True}])
    assert max_diff(got, expected) <= TOL


def test_orthograd_matches_authors_rule():
    params = make_params()
    grads = make_grads(params, 50)
    expected = ref.orthograd_sgd_reference(params, grads, lr=0.05)
    got = run(lambda ps: OrthoGrad(ps, torch.optim.SGD, lr=0.05), params, grads)
    assert max_diff(got, expected) <= TOL


def test_orthograd_gradient_is_orthogonal_and_keeps_its_norm():
    p = torch.nn.Parameter(torch.randn(5, 4, dtype=torch.float64))
    g = torch.randn(5, 4, dtype=torch.float64)
    p.grad = g.clone()
    from losslab.optim import orthogonalize_

    orthogonalize_([p])
    assert abs(float((p.grad * p.detach()).sum())) < 1e-12
    assert float(p.grad.norm()) == pytest.approx(float(g.norm()), rel=1e-12)
