"""Property-based invariants (hypothesis) and SPAM's checkpoint across a reset with sparse momentum."""

from __future__ import annotations

import io

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from losslab.optim import SAM, SPAM, orthogonalize_
from losslab.optim.spam import spam_clip

shapes = st.sampled_from([(3,), (4, 5), (2, 3, 4), (1, 7)])
seeds = st.integers(0, 2**31 - 1)


def _randn(shape, seed, scale=1.0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale


@settings(max_examples=40, deadline=None)
@given(shape=shapes, seed=seeds, theta=st.floats(1e-3, 1e4))
def test_spam_clip_bounds_the_square_and_keeps_the_sign(shape, seed, theta):
    g = _randn(shape, seed, 100.0)
    v = _randn(shape, seed + 1).abs()
    c = spam_clip(g, v, theta)
    assert torch.all(c * c <= theta * v * (1 + 1e-12) + (g * g <= theta * v) * g * g)
    assert torch.all((c.sign() == g.sign()) | (c == 0))
    keep = g**2 <= theta * v
    assert torch.equal(c[keep], g[keep])


@settings(max_examples=40, deadline=None)
@given(shape=shapes, seed=seeds)
def test_orthogonalized_gradient_is_orthogonal_with_the_same_norm(shape, seed):
    p = torch.nn.Parameter(_randn(shape, seed))
    g = _randn(shape, seed + 1)
    p.grad = g.clone()
    orthogonalize_([p])
    assert abs(float((p.grad * p.detach()).sum())) <= 1e-10 * float(g.norm() * p.detach().norm())
    assert float(p.grad.norm()) <= float(g.norm()) * (1 + 1e-12)


@settings(max_examples=30, deadline=None)
@given(shape=shapes, seed=seeds, scale=st.floats(1e-3, 1e6), adaptive=st.booleans())
def test_sam_perturbation_does_not_depend_on_the_gradient_scale(shape, seed, scale, adaptive):
    w0 = _randn(shape, seed)
    g = _randn(shape, seed + 1)
    out = []
    for s in (1.0, scale):
        w = torch.nn.Parameter(w0.clone())
        # eps=1e-300: the rule itself is scale-free; the default eps changes e by eps / ||g||, relative
        opt = SAM([w], torch.optim.SGD, rho=0.1, adaptive=adaptive, lr=0.1, eps=1e-300)
        w.grad = g * s
        opt.first_step()
        out.append(w.detach().clone())
    assert torch.allclose(out[0], out[1], rtol=1e-9, atol=1e-12)


def test_spam_checkpoint_across_a_reset_with_sparse_momentum_continues_bit_identically():
    def build(ps):
        return SPAM([{"params": [ps[0]], "density": 0.5}, {"params": [ps[1]]}], lr=1e-2, reset_interval=6,
                    warmup_steps=3, grad_accu_steps=2, threshold=20.0, seed=7)

    ps = [torch.nn.Parameter(_randn((6, 4), 0)), torch.nn.Parameter(_randn((5,), 1))]
    opt = build(ps)
    gen = torch.Generator().manual_seed(3)

    def steps(params, o, n, g):
        for _ in range(n):
            for p in params:
                p.grad = torch.randn(p.shape, generator=g, dtype=p.dtype) * 10
            o.step()

    steps(ps, opt, 5, gen)  # the next step resets and the masks were redrawn just now
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    twin = [torch.nn.Parameter(p.detach().clone()) for p in ps]
    opt2 = build(twin)
    opt2.load_state_dict(torch.load(io.BytesIO(buf.getvalue()), weights_only=False))
    state = gen.get_state()
    steps(ps, opt, 9, gen)
    gen2 = torch.Generator()
    gen2.set_state(state)
    steps(twin, opt2, 9, gen2)
    for a, b in zip(ps, twin):
        assert torch.equal(a, b)
