"""Common suite on every registered optimizer (driven by the registry and the spec table in _specs.py)."""

from __future__ import annotations

import copy
import io

import pytest
import torch

from losslab import ConfigError
from losslab.optim import create, registry
from tests.optim._specs import SPECS

NAMES = registry.names()


def test_every_registered_optimizer_has_a_spec():
    assert sorted(SPECS) == NAMES


def _step(opt, loss_value=None, closure=None):
    if closure is not None and hasattr(opt, "first_step"):
        return opt.step(closure)
    if SPECS_BY_OPT.get(id(opt)):
        return opt.step(loss=loss_value)
    return opt.step()


SPECS_BY_OPT: dict[int, bool] = {}


def _build(name, params, **override):
    spec = SPECS[name]
    opt = create(name, params, **{**spec.kwargs, **override})
    SPECS_BY_OPT[id(opt)] = spec.needs_loss
    return opt


def _quadratic_params(dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    return [torch.nn.Parameter(torch.randn(4, 3, generator=g, dtype=torch.float64).to(dtype)),
            torch.nn.Parameter(torch.randn(5, generator=g, dtype=torch.float64).to(dtype))]


def _quadratic_loss(ps):
    scales = [torch.linspace(0.5, 2.0, p.numel(), dtype=torch.float64).view(p.shape) for p in ps]
    return sum((s * (p - 0.3) ** 2).sum() for s, p in zip(scales, ps))


def _train(name, params, loss_fn, steps, **override):
    opt = _build(name, params, **override)
    for _ in range(steps):
        opt.zero_grad()
        loss = loss_fn(params)
        loss.backward()
        _step(opt, loss.detach(), closure=lambda: loss_fn(params).backward())
    return float(loss_fn(params).detach())


@pytest.mark.parametrize("name", NAMES)
def test_converges_on_a_quadratic(name):
    ps = _quadratic_params()
    start = float(_quadratic_loss(ps).detach())
    end = _train(name, ps, _quadratic_loss, SPECS[name].steps)
    assert end < SPECS[name].quad_ratio * start


@pytest.mark.parametrize("name", NAMES)
def test_makes_progress_on_rosenbrock(name):
    # Rosenbrock in a 2-row matrix (so matrix-only rules such as SCALE's normalisation apply) plus a 1-D copy
    x = torch.nn.Parameter(torch.tensor([[-1.5, 2.0]], dtype=torch.float64).repeat(2, 1))
    y = torch.nn.Parameter(torch.tensor([-1.5, 2.0], dtype=torch.float64))

    def rosen(ps):
        total = 0.0
        for v in (ps[0][0], ps[0][1], ps[1]):
            total = total + (1 - v[0]) ** 2 + 100 * (v[1] - v[0] ** 2) ** 2
        return total + 1e-3

    start = float(rosen([x, y]).detach())
    end = _train(name, [x, y], rosen, 300, **SPECS[name].rosen_kwargs)
    assert end < SPECS[name].rosen_ratio * start


def _run_steps(name, ps, opt, steps, seed):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        for p in ps:
            p.grad = torch.randn(p.shape, generator=g, dtype=p.dtype)
        _step(opt, torch.tensor(1.0 + torch.rand((), generator=g).item(), dtype=torch.float64))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip_continues_bit_identically(name, dtype):
    # float32 too: torch casts floating state to the parameter's dtype on load, which must not change the run
    ps = _quadratic_params(dtype)
    opt = _build(name, ps)
    _run_steps(name, ps, opt, 7, seed=1)
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    clone = [torch.nn.Parameter(p.detach().clone()) for p in ps]
    opt2 = _build(name, clone)
    opt2.load_state_dict(torch.load(io.BytesIO(buf.getvalue()), weights_only=False))
    _run_steps(name, ps, opt, 6, seed=2)
    _run_steps(name, clone, opt2, 6, seed=2)
    for a, b in zip(ps, clone):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", NAMES)
def test_parameters_without_gradient_are_untouched(name):
    ps = _quadratic_params()
    opt = _build(name, ps)
    before = [p.detach().clone() for p in ps]
    ps[0].grad = torch.ones_like(ps[0])
    _step(opt, torch.tensor(2.0, dtype=torch.float64))
    assert torch.equal(ps[1], before[1])
    assert not torch.equal(ps[0], before[0])


@pytest.mark.parametrize("name", NAMES)
def test_zero_size_parameter(name):
    empty = torch.nn.Parameter(torch.zeros(0, 3, dtype=torch.float64))
    full = torch.nn.Parameter(torch.ones(3, 2, dtype=torch.float64))
    opt = _build(name, [empty, full])
    for _ in range(3):
        empty.grad = torch.zeros_like(empty)
        full.grad = torch.full_like(full, 0.5) + torch.arange(6, dtype=torch.float64).view(3, 2)
        _step(opt, torch.tensor(1.0, dtype=torch.float64))
    assert empty.shape == (0, 3) and torch.isfinite(full).all()


@pytest.mark.parametrize("name", NAMES)
def test_multiple_param_groups_use_their_own_lr(name):
    ps = _quadratic_params()
    twin = [torch.nn.Parameter(p.detach().clone()) for p in ps]
    lr = SPECS[name].kwargs["lr"]
    opt = _build(name, [{"params": [ps[0]]}, {"params": [ps[1]], "lr": 0.0}])
    ref = _build(name, [twin[0]])
    for _ in range(3):
        for p, q in zip(ps, twin):
            p.grad = torch.ones_like(p)
            q.grad = torch.ones_like(q)
        _step(opt, torch.tensor(3.0, dtype=torch.float64))
        _step(ref, torch.tensor(3.0, dtype=torch.float64))
    assert opt.param_groups[0]["lr"] == lr
    if name not in ("momo", "momo_adam"):  # MoMo's step size couples all groups through shared sums
        assert torch.equal(ps[0], twin[0])
    assert torch.equal(ps[1], _quadratic_params()[1])  # lr = 0 leaves the second group alone


@pytest.mark.parametrize(("name", "bad", "arg"), [(n, b, a) for n in NAMES for b, a in SPECS[n].bad])
def test_bad_hyperparameters_raise_config_error_naming_the_argument(name, bad, arg):
    ps = _quadratic_params()
    before = [p.detach().clone() for p in ps]
    kwargs = {**SPECS[name].kwargs, **bad}
    with pytest.raises(ConfigError) as info:
        create(name, ps, **kwargs)
    message = str(info.value)
    assert isinstance(info.value, ValueError)
    assert arg in message
    assert all(torch.equal(p, b) for p, b in zip(ps, before))


@pytest.mark.parametrize("name", [n for n in NAMES if n not in ("sam", "orthograd")])
def test_bad_value_in_a_later_param_group_is_refused(name):
    ps = _quadratic_params()
    opt = _build(name, [ps[0]])
    groups = copy.copy(opt.param_groups)
    with pytest.raises(ConfigError, match="lr"):
        opt.add_param_group({"params": [ps[1]], "lr": -1.0})
    assert opt.param_groups == groups


def test_unknown_name_suggests_the_closest():
    with pytest.raises(KeyError, match="spam"):
        create("spma", [torch.nn.Parameter(torch.zeros(1))])
