"""Reference tests for LegendreTron: the authors' link (khflam/legendretron ``lib/models.py``, ``lib/icnn.py``,
``lib/functional.py``) transcribed in float64 with its autograd gradient map, the properties the construction
guarantees (convex potentials, valid log-probabilities, properness), bad input, state and a small real run."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import losslab.losses as L
from losslab import ConfigError, DataError, LosslabError

D = torch.float64


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # many tiny matrices: one thread is several times faster than two on a busy machine
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------ the authors' code, float64
class _PosLinear(torch.nn.Linear):
    """``icnn.py::PosLinear``: softplus(W) z (+ b), times 1/in_features (the bias is scaled too)."""

    def forward(self, x):
        return F.linear(x, F.softplus(self.weight), self.bias) * (1 / x.size(1))


class _ActNorm(torch.nn.Module):
    """``icnn.py::ActNorm`` (learn_scale, scale 1, logscale_factor 1) with its data-dependent first call."""

    def __init__(self, n):
        super().__init__()
        self.initialized = False
        self.b = torch.nn.Parameter(torch.zeros(1, n, 1, dtype=D))
        self.logs = torch.nn.Parameter(torch.zeros(1, n, 1, dtype=D))

    def forward(self, x):
        shape = x.size()
        x = x.view(shape[0], shape[1], -1)
        if not self.initialized:
            self.initialized = True
            size = x.size(0) * x.size(-1)
            b = -torch.sum(x, dim=(0, -1)) / size
            self.b.data.copy_(b.unsqueeze(0).unsqueeze(-1).detach())
            var = (torch.sum((x + self.b) ** 2, dim=(0, -1)) / size).unsqueeze(0).unsqueeze(-1).detach()
            self.logs.data.copy_(torch.log(1.0 / (torch.sqrt(var) + 1e-6)))
        out = (x + self.b) * (torch.exp(self.logs) + 0.001)
        return out.view(shape)


class _ICNN3(torch.nn.Module):
    """``icnn.py::ICNN3`` with softplus activations (symm_act_first=False, zero_softplus=False)."""

    def __init__(self, dim, dimh, num_hidden_layers):
        super().__init__()
        self.Wzs = torch.nn.ModuleList([torch.nn.Linear(dim, dimh, dtype=D),
                                        *(_PosLinear(dimh, dimh // 2, dtype=D) for _ in range(num_hidden_layers - 1)),
                                        _PosLinear(dimh, 1, bias=False, dtype=D)])
        self.Wxs = torch.nn.ModuleList([*(torch.nn.Linear(dim, dimh // 2, dtype=D)
                                          for _ in range(num_hidden_layers - 1)),
                                        torch.nn.Linear(dim, 1, bias=False, dtype=D)])
        self.Wx2s = torch.nn.ModuleList([torch.nn.Linear(dim, dimh // 2, dtype=D)
                                         for _ in range(num_hidden_layers - 1)])
        self.actnorms = torch.nn.ModuleList([*(_ActNorm(dimh // 2) for _ in range(num_hidden_layers - 1)),
                                             _ActNorm(1)])
        self.actnorms[-1].b.requires_grad_(False)

    def forward(self, x):
        z = F.softplus(self.Wzs[0](x))
        for Wz, Wx, Wx2, an in zip(self.Wzs[1:-1], self.Wxs[:-1], self.Wx2s, self.actnorms[:-1]):
            z = F.softplus(an(Wz(z) + Wx(x)))
            z = torch.cat([z, F.softplus(Wx2(x))], 1)
        return self.actnorms[-1](self.Wzs[-1](z) + self.Wxs[-1](x))


class _DeepConvexFlow(torch.nn.Module):
    """``models.py::DeepConvexFlow`` (identity_diag): the map x ↦ ∇F(x) by autograd with create_graph."""

    def __init__(self, icnn):
        super().__init__()
        self.icnn = icnn
        self.w1 = torch.nn.Parameter(torch.randn(1, dtype=D))
        self.w0 = torch.nn.Parameter(torch.randn(1, dtype=D))

    def get_potential(self, x):
        n = x.size(0)
        return F.softplus(self.w1) * self.icnn(x) + F.softplus(self.w0) * (x.view(n, -1) ** 2).sum(1, keepdim=True) / 2

    def forward(self, x):
        with torch.enable_grad():
            x = x.clone().requires_grad_(True)
            pot = self.get_potential(x)
            return torch.autograd.grad(pot.sum(), x, create_graph=True)[0]


def _log_softmax_plus(a):
    """``functional.py::log_softmax_plus``: append a 0 logit; the max is taken over a only."""
    a_max = a.max(-1)[0].view(-1, 1)
    b = torch.cat((a, torch.zeros(a.shape[0], 1, dtype=a.dtype)), -1)
    return b - a_max - torch.log(torch.exp(b - a_max).sum(-1).view(-1, 1))


class _LegendreLink(torch.nn.Module):
    """``models.py::LegendreLink`` (K = C − 1 inner outputs)."""

    def __init__(self, n_blocks, K, dim_hidden, depth):
        super().__init__()
        self.cpflows = torch.nn.ModuleList([_DeepConvexFlow(_ICNN3(K, dim_hidden, depth)) for _ in range(n_blocks)])

    def forward(self, x):
        z = x
        for flow in self.cpflows:
            z = flow(z)
        return _log_softmax_plus(z)


def _pairs(link, ref):
    """(ours, the authors') parameter pairs; the authors' ActNorm tensors are (1, m, 1)."""
    out = []
    for blk, flow in zip(link.blocks, ref.cpflows):
        ic = flow.icnn
        for ours, theirs in zip(blk.wz, ic.Wzs):
            out += [(ours.weight, theirs.weight)] + ([(ours.bias, theirs.bias)] if ours.bias is not None else [])
        for group, tgroup in ((blk.wx, ic.Wxs), (blk.wx2, ic.Wx2s)):
            for ours, theirs in zip(group, tgroup):
                out += [(ours.weight, theirs.weight)] + ([(ours.bias, theirs.bias)] if ours.bias is not None else [])
        for i in range(len(blk.norm_shift)):
            out += [(blk.norm_shift[i], ic.actnorms[i].b), (blk.norm_logscale[i], ic.actnorms[i].logs)]
        out += [(blk.out_shift, ic.actnorms[-1].b), (blk.out_logscale, ic.actnorms[-1].logs),
                (blk.w1, flow.w1), (blk.w0, flow.w0)]
    return out


def _copy_into(link, ref):
    with torch.no_grad():
        for ours, theirs in _pairs(link, ref):
            theirs.copy_(ours.reshape(theirs.shape))
    for flow in ref.cpflows:
        for an in flow.icnn.actnorms:
            an.initialized = True


def _random_link(c, seed, blocks=2, depth=4, hidden=2, scale=0.7):
    """A float64 link with every parameter (ActNorm ones included) drawn at random, marked initialised."""
    torch.manual_seed(seed)
    link = L.LegendreTronLink(c, blocks=blocks, depth=depth, hidden=hidden, data_init=False, dtype=D)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in [*link.parameters(), *(b.out_shift for b in link.blocks)]:
            p.copy_(torch.randn(p.shape, generator=g, dtype=D) * scale)
    return link


# ------------------------------------------------------------------ fidelity to the authors' code
@pytest.mark.parametrize("blocks,depth,hidden", [(2, 4, 2), (1, 4, 4), (3, 2, 4), (1, 1, 2)])
def test_same_seed_gives_the_authors_initial_parameters(blocks, depth, hidden):
    torch.manual_seed(11)
    link = L.LegendreTronLink(5, blocks=blocks, depth=depth, hidden=hidden, dtype=D)
    torch.manual_seed(11)
    ref = _LegendreLink(blocks, 4, hidden, depth)
    pairs = _pairs(link, ref)
    assert len(pairs) == sum(1 for _ in ref.parameters())
    for ours, theirs in pairs:
        assert torch.equal(ours.reshape(theirs.shape), theirs)


@pytest.mark.parametrize("c,blocks,depth,hidden,scale", [(5, 2, 4, 2, 2.0), (3, 1, 4, 4, 2.0), (2, 2, 4, 2, 2.0),
                                                         (4, 3, 2, 6, 2.0), (4, 2, 4, 2, 40.0)])
def test_log_probabilities_loss_and_gradients_match_the_authors_code(c, blocks, depth, hidden, scale):
    # scale 40: many pre-activations above 20, where torch's softplus is linear (derivative exactly 1)
    link = _random_link(c, seed=3 + c, blocks=blocks, depth=depth, hidden=hidden)
    ref = _LegendreLink(blocks, c - 1, hidden, depth)
    _copy_into(link, ref)
    g = torch.Generator().manual_seed(c)
    v = (torch.randn(9, c - 1, generator=g, dtype=D) * scale).requires_grad_(True)
    v_ref = v.detach().clone().requires_grad_(True)
    y = torch.randint(0, c, (9,), generator=g)
    y[0] = c - 1
    logp, logp_ref = link(v), ref(v_ref)
    torch.testing.assert_close(logp, logp_ref, rtol=0, atol=1e-12)
    loss = L.legendretron_loss(v, y, link=link)
    loss_ref = torch.nn.NLLLoss(reduction="mean")(ref(v_ref), y)
    torch.testing.assert_close(loss, loss_ref, rtol=0, atol=1e-12)
    loss.backward()
    loss_ref.backward()
    torch.testing.assert_close(v.grad, v_ref.grad, rtol=0, atol=1e-10)
    for ours, theirs in _pairs(link, ref):
        if theirs.requires_grad:
            assert ours.grad is not None
            torch.testing.assert_close(ours.grad.reshape(theirs.shape), theirs.grad, rtol=1e-10, atol=1e-10)


def test_first_batch_initialisation_matches_the_authors_actnorm():
    torch.manual_seed(5)
    link = L.LegendreTronLink(4, dtype=D)
    torch.manual_seed(5)
    ref = _LegendreLink(2, 3, 2, 4)
    g = torch.Generator().manual_seed(0)
    v = torch.randn(32, 3, generator=g, dtype=D) * 3
    assert not bool(link.initialized)
    torch.testing.assert_close(link(v), ref(v), rtol=0, atol=1e-12)  # both initialise from this batch, then run
    assert bool(link.initialized)
    for ours, theirs in _pairs(link, ref):
        torch.testing.assert_close(ours.detach().reshape(theirs.shape), theirs.detach(), rtol=0, atol=1e-12)
    w = torch.randn(7, 3, generator=g, dtype=D)  # later batches leave the parameters alone
    torch.testing.assert_close(link(w), ref(w), rtol=0, atol=1e-12)


def test_half_and_float32_inputs_follow_the_float64_reference():
    link = _random_link(4, seed=1)
    v = torch.randn(6, 3, generator=torch.Generator().manual_seed(2), dtype=D)
    ref = link(v)
    for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 5e-2), (torch.float16, 1e-2)):
        out = link(v.to(dtype))
        assert out.dtype == torch.float32
        torch.testing.assert_close(out.double(), link(v.to(dtype).double()), rtol=tol, atol=tol)
    torch.testing.assert_close(link(v.float()).double(), ref, rtol=1e-5, atol=1e-5)


def test_the_authors_log_softmax_plus_overflows_where_ours_does_not():
    u = torch.full((1, 3), -800.0, dtype=D)
    assert not torch.isfinite(_log_softmax_plus(u)).all()
    ours = torch.log_softmax(torch.cat([u, torch.zeros(1, 1, dtype=D)], 1), 1)
    torch.testing.assert_close(ours, torch.tensor([[-800.0, -800.0, -800.0, 0.0]], dtype=D))


# ------------------------------------------------------------------ properties guaranteed by the construction
def test_outputs_are_log_probabilities():
    link = _random_link(6, seed=4, scale=1.5)
    v = torch.randn(50, 5, generator=torch.Generator().manual_seed(0), dtype=D) * 10
    logp = link(v)
    torch.testing.assert_close(logp.logsumexp(1), torch.zeros(50, dtype=D), rtol=0, atol=1e-12)
    assert (logp < 0).all()
    loss = L.legendretron_loss(v, torch.arange(50) % 6, link=link, reduction="none")
    assert (loss > 0).all()


def test_each_block_is_the_gradient_of_a_strongly_convex_potential():
    link = _random_link(5, seed=8, scale=1.2)
    g = torch.Generator().manual_seed(1)
    for blk in link.blocks:
        mu = float(F.softplus(blk.w0.detach()))
        for _ in range(5):
            x = torch.randn(1, 4, generator=g, dtype=D) * 3
            jac = torch.autograd.functional.jacobian(lambda t, b=blk: b(t), x).reshape(4, 4)
            hess = torch.autograd.functional.hessian(lambda t, b=blk: b.potential(t).sum(), x).reshape(4, 4)
            torch.testing.assert_close(jac, jac.T, rtol=0, atol=1e-12)  # symmetric: a gradient field
            torch.testing.assert_close(jac, hess, rtol=0, atol=1e-12)  # of this very potential
            assert float(torch.linalg.eigvalsh(jac).min()) >= mu * (1 - 1e-9)  # positive definite, ≥ softplus(w0)
            # the ICNN alone is convex
            assert float(torch.linalg.eigvalsh(torch.autograd.functional.hessian(
                lambda t, b=blk: b.icnn(t).sum(), x).reshape(4, 4)).min()) >= -1e-12
        x, y = (torch.randn(200, 4, generator=g, dtype=D) * 3 for _ in range(2))
        gap = ((blk(x) - blk(y)) * (x - y)).sum(1)
        assert (gap >= mu * (x - y).square().sum(1) * (1 - 1e-9)).all()  # strongly monotone, hence invertible


def test_one_block_link_is_a_convex_gradient_and_two_blocks_a_product_of_two():
    g = torch.Generator().manual_seed(3)
    one = _random_link(4, seed=2, blocks=1)
    two = _random_link(4, seed=2, blocks=2)
    for _ in range(4):
        v = torch.randn(1, 3, generator=g, dtype=D) * 2
        j1 = torch.autograd.functional.jacobian(one.transform, v).reshape(3, 3)
        torch.testing.assert_close(j1, j1.T, rtol=0, atol=1e-12)
        assert float(torch.linalg.eigvalsh(j1).min()) > 0
        j = torch.autograd.functional.jacobian(two.transform, v).reshape(3, 3)
        ja = torch.autograd.functional.jacobian(two.blocks[0], v).reshape(3, 3)
        jb = torch.autograd.functional.jacobian(two.blocks[1], two.blocks[0](v)).reshape(3, 3)
        torch.testing.assert_close(j, jb @ ja, rtol=0, atol=1e-12)  # chain rule: product of two SPD matrices
        eig = torch.linalg.eigvals(j)
        assert float(eig.imag.abs().max()) < 1e-8 and float(eig.real.min()) > 0  # real, positive: invertible
        assert float((j - j.T).abs().max()) > 1e-6  # but not symmetric: not itself a convex gradient (see docs)


def test_the_link_is_invertible():
    link = _random_link(4, seed=6)
    v = torch.randn(3, 3, generator=torch.Generator().manual_seed(4), dtype=D) * 2
    u = link.transform(v).detach()
    x = u.clone()
    for blk in reversed(link.blocks):  # solve ∇F(x) = target row by row with Newton's method (F strongly convex)
        target = x
        for i in range(len(x)):
            xi = target[i:i + 1].clone()
            for _ in range(12):  # quadratic convergence
                jac = torch.autograd.functional.jacobian(blk, xi).reshape(3, 3)
                xi = xi - torch.linalg.solve(jac, (blk(xi) - target[i:i + 1]).reshape(3)).reshape(1, 3)
            x = torch.cat([x[:i], xi.detach(), x[i + 1:]])
    torch.testing.assert_close(x, v, rtol=0, atol=1e-10)
    torch.testing.assert_close(link.transform(x), u, rtol=0, atol=1e-12)


@pytest.mark.parametrize("p", [[0.5, 0.2, 0.2, 0.1], [0.05, 0.15, 0.7, 0.1], [0.25, 0.25, 0.25, 0.25]])
def test_the_loss_is_proper_for_the_learned_link(p):
    link = _random_link(4, seed=9)
    for q in link.parameters():
        q.requires_grad_(False)
    p = torch.tensor(p, dtype=D)
    v = torch.zeros(1, 3, dtype=D, requires_grad=True)
    opt = torch.optim.LBFGS([v], lr=1, max_iter=500, tolerance_grad=1e-13, tolerance_change=1e-16,
                            line_search_fn="strong_wolfe")

    def expected_loss():  # E_{y∼p} ℓ(v, y)
        return (p * L.legendretron_loss(v.expand(4, 3), torch.arange(4), link=link, reduction="none")).sum()

    def closure():
        opt.zero_grad()
        val = expected_loss()
        val.backward()
        return val

    for _ in range(3):
        opt.step(closure)
    probs = link(v.detach()).exp()[0]
    torch.testing.assert_close(probs, p, rtol=0, atol=1e-7)  # minimised where the prediction equals p
    entropy = -(p * p.log()).sum()
    torch.testing.assert_close(expected_loss().detach(), entropy, rtol=0, atol=1e-12)


# ------------------------------------------------------------------ weights, ignore_index, reductions
def test_weights_and_ignore_index_follow_nll_loss():
    link = _random_link(5, seed=12)
    g = torch.Generator().manual_seed(9)
    v = torch.randn(10, 4, generator=g, dtype=D)
    y = torch.randint(0, 5, (10,), generator=g)
    y[3] = -100
    w = torch.rand(5, generator=g, dtype=D) + 0.1
    logp = link(v)
    for red in ("mean", "sum", "none"):
        torch.testing.assert_close(L.legendretron_loss(v, y, link=link, weight=w, reduction=red),
                                   F.nll_loss(logp, y, weight=w, reduction=red), rtol=0, atol=1e-12)


# ------------------------------------------------------------------ training, state, modes
def test_every_link_parameter_is_trained_with_the_model():
    torch.manual_seed(0)
    inner, crit = torch.nn.Linear(6, 3, dtype=D), L.LegendreTronLoss(num_classes=4, dtype=D)
    x, y = torch.randn(32, 6, dtype=D), torch.randint(0, 4, (32,))
    crit(inner(x), y)  # the first call initialises the link
    before = copy.deepcopy(crit.state_dict())
    names = {n for n, _ in crit.named_parameters()}
    assert names == {f"link.{n}" for n, _ in crit.link.named_parameters()} and len(names) == 2 * 31  # per block: 9 + 7 + 6 layer tensors, 3 + 3 + 1 ActNorm, w1, w0
    opt = torch.optim.Adam([*inner.parameters(), *crit.parameters()], lr=0.01)
    crit(inner(x), y).backward()
    for n, p in crit.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and bool(p.grad.abs().sum() > 0), n
    opt.step()
    after = crit.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert set(changed) == names  # every parameter moved; the buffers (flag, last shift) did not


def test_state_dict_round_trip_keeps_the_initialisation():
    torch.manual_seed(1)
    link = L.LegendreTronLink(3, dtype=D)
    g = torch.Generator().manual_seed(0)
    link(torch.randn(20, 2, generator=g, dtype=D))
    torch.manual_seed(2)
    other = L.LegendreTronLink(3, dtype=D)
    assert not bool(other.initialized)
    other.load_state_dict(link.state_dict())
    assert bool(other.initialized)
    v = torch.randn(5, 2, generator=g, dtype=D) * 4  # a new batch: no re-initialisation on it
    assert torch.equal(other(v), link(v))
    crit = L.LegendreTronLoss(link=link)
    crit2 = L.LegendreTronLoss(num_classes=3, dtype=D)
    crit2.load_state_dict(crit.state_dict())
    y = torch.tensor([0, 1, 2, 2, 0])
    assert torch.equal(crit2(v, y), crit(v, y))


def test_no_grad_and_inference_mode_give_the_same_values():
    link = _random_link(4, seed=5)
    v = torch.randn(7, 3, generator=torch.Generator().manual_seed(1), dtype=D)
    ref = link(v).detach()
    with torch.no_grad():
        assert torch.equal(link(v), ref)
    with torch.inference_mode():
        assert torch.equal(link(v), ref)


def test_data_init_false_starts_from_unit_scales():
    torch.manual_seed(0)
    link = L.LegendreTronLink(3, data_init=False, dtype=D)
    assert bool(link.initialized)
    before = copy.deepcopy(link.state_dict())
    link(torch.randn(1, 2, dtype=D))  # one row is fine: nothing to initialise
    assert all(torch.equal(before[k], v) for k, v in link.state_dict().items())


def test_module_repr_and_options():
    crit = L.LegendreTronLoss(num_classes=4, blocks=1, hidden=4, reduction="sum")
    assert crit.link.blocks_count == 1 and crit.link.hidden == 4 and "reduction='sum'" in repr(crit)
    assert "num_classes=4" in repr(crit.link)


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize("kw,match", [
    ({"num_classes": 1}, "num_classes"), ({"num_classes": 0}, "num_classes"), ({"num_classes": True}, "num_classes"),
    ({"num_classes": 2.5}, "num_classes"), ({"num_classes": "3"}, "num_classes"),
    ({"num_classes": 3, "blocks": 0}, "blocks"), ({"num_classes": 3, "depth": 0}, "depth"),
    ({"num_classes": 3, "hidden": 3}, "even"), ({"num_classes": 3, "hidden": 0}, "hidden"),
    ({"num_classes": 3, "data_init": 1}, "data_init"),
])
def test_bad_link_options(kw, match):
    with pytest.raises(ConfigError, match=match):
        L.LegendreTronLink(**kw)


def _bad_call(link, v, y, err, match, **kw):
    state = copy.deepcopy(link.state_dict())
    v_before = v.clone() if isinstance(v, torch.Tensor) else v
    with pytest.raises(err, match=match):
        L.legendretron_loss(v, y, link=link, **kw)
    assert all(torch.equal(state[k], t) for k, t in link.state_dict().items())  # the link is left alone
    if isinstance(v, torch.Tensor):
        assert torch.equal(v, v_before) or bool(torch.isnan(v).any())


def test_bad_targets_inputs_and_links_raise_and_change_nothing():
    torch.manual_seed(0)
    link = L.LegendreTronLink(4, dtype=D)  # not yet initialised: a failed call must not initialise it
    v = torch.randn(6, 3, dtype=D)
    y = torch.tensor([0, 1, 2, 3, 3, 0])
    _bad_call(link, v, torch.tensor([0, 1, 2, 4, 3, 0]), DataError, r"4 classes.*\[0, 3\]")  # K' + 1 = C
    _bad_call(link, v, torch.tensor([0, 1, 2, -1, 3, 0]), DataError, "index")
    _bad_call(link, v, y.double(), DataError, "integer class indices")
    _bad_call(link, v, y[:-1], DataError, "one class index per row")
    _bad_call(link, torch.randn(6, 4, dtype=D), y, DataError, "num_classes − 1")  # C outputs instead of C − 1
    _bad_call(link, torch.randn(6, dtype=D), y, DataError, "num_classes − 1")
    _bad_call(link, torch.randn(2, 6, 3, dtype=D), y, DataError, "num_classes − 1")
    nan = v.clone()
    nan[2, 1] = float("nan")
    _bad_call(link, nan, y, DataError, "NaN")
    _bad_call(link, v[:1], y[:1], DataError, "at least 2 rows")  # the data init needs a batch
    _bad_call(link, v.long(), y, DataError, "floating")
    _bad_call(link, v.tolist(), y, DataError, r"torch\.Tensor")
    _bad_call(link, v, y, LosslabError, "reduction", reduction="avg")
    assert not bool(link.initialized)
    with pytest.raises(ConfigError, match="LegendreTronLink"):
        L.legendretron_loss(v, y, link=torch.nn.Linear(3, 4))
    with pytest.raises(TypeError):
        L.legendretron_loss(v, y)  # the link is required


def test_bad_module_options():
    link = L.LegendreTronLink(3)
    with pytest.raises(ConfigError, match="num_classes"):
        L.LegendreTronLoss()
    with pytest.raises(ConfigError, match="blocks"):
        L.LegendreTronLoss(link=link, blocks=1)
    with pytest.raises(ConfigError, match="3 classes"):
        L.LegendreTronLoss(num_classes=4, link=link)
    with pytest.raises(ConfigError, match="LegendreTronLink"):
        L.LegendreTronLoss(link=torch.nn.Linear(2, 3))
    with pytest.raises(ConfigError, match="unknown option"):
        L.LegendreTronLoss(num_classes=3, margin=1.0)
    crit = L.LegendreTronLoss(link=link)
    with pytest.raises(ConfigError, match="per call"):
        crit(torch.randn(4, 2), torch.tensor([0, 1, 2, 0]), link=link)


# ------------------------------------------------------------------ a small real run
def _task(seed, n_train=400, n_test=4000, d=5, c=4):
    """Labels drawn from p = softmax([φ(Ax), 0]) with φ(s) = s³/3 + s: a non-logistic (but convex-gradient) link."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(c - 1, d, generator=g, dtype=D) * 0.8
    x = torch.randn(n_train + n_test, d, generator=g, dtype=D)
    s = x @ a.T
    logits = torch.cat([s**3 / 3 + s, torch.zeros(len(x), 1, dtype=D)], 1)
    y = torch.multinomial(torch.softmax(logits, 1), 1, generator=g).squeeze(1)
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


def _fit(seed, legendretron, steps=100):
    xtr, ytr, xte, yte = _task(seed)
    c = 4
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        inner = torch.nn.Linear(xtr.shape[1], c - 1 if legendretron else c, dtype=D)
        link = L.LegendreTronLink(c, dtype=D) if legendretron else None
    params = [*inner.parameters(), *(link.parameters() if link is not None else [])]
    opt = torch.optim.Adam(params, lr=0.05, weight_decay=0.01, foreach=True)  # wd: the authors' 0.5·wd·Σθ² term

    def logp(x):
        return link(inner(x)) if link is not None else torch.log_softmax(inner(x), 1)

    for _ in range(steps):  # full batch
        opt.zero_grad()
        F.nll_loss(logp(xtr), ytr).backward()
        opt.step()
    with torch.no_grad():
        out = logp(xte)
        return float((out.argmax(1) == yte).double().mean()), float(F.nll_loss(out, yte))


def test_small_run_against_multinomial_logistic_regression():
    rows = [(seed, *_fit(seed, True), *_fit(seed, False)) for seed in range(3)]
    for seed, acc_lt, ll_lt, acc_mlr, ll_mlr in rows:
        print(f"seed {seed}: LegendreTron acc {acc_lt:.4f} log loss {ll_lt:.4f} | "
              f"softmax CE acc {acc_mlr:.4f} log loss {ll_mlr:.4f}")
        assert acc_lt > 0.25 + 0.2 and ll_lt < math.log(4)  # learns: far above chance, below the uniform log loss
        assert acc_lt > acc_mlr - 0.03
    assert np.mean([r[2] for r in rows]) < np.mean([r[4] for r in rows])  # better calibrated on average
