"""Random/Hessian directions, 1-D/2-D landscapes, interpolation barriers and the sample-size loss change."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from losslab._errors import ConfigError, DataError
from losslab.diagnostics import (
    hessian_directions,
    layerwise_barriers,
    linear_interpolation,
    loss_line,
    loss_plane,
    random_direction,
    sample_size_loss_change,
)
from tests.diagnostics.helpers import (
    assert_same_state,
    bn_net,
    mse,
    regression_batch,
    rotated,
    snapshot,
    tiny_mlp,
)


def conv_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))


def test_filter_norms_equal_weight_norms_and_biasbn_zeroed():
    model = conv_net()
    d = random_direction(model, seed=0)
    for name, p in model.named_parameters():
        if p.dim() > 1:
            wn = p.detach().reshape(p.shape[0], -1).norm(dim=1)
            dn = d[name].reshape(p.shape[0], -1).norm(dim=1)
            torch.testing.assert_close(dn, wn, rtol=1e-6, atol=1e-6)
        else:
            assert torch.equal(d[name], torch.zeros_like(p)), name


def test_no_ignore_copies_one_dimensional_weights_and_layer_norm():
    model = conv_net()
    with torch.no_grad():
        model[1].weight.uniform_(0.5, 2.0)
    d = random_direction(model, seed=1, ignore=None)
    assert torch.equal(d["1.weight"], model[1].weight.detach())
    assert torch.equal(d["0.bias"], model[0].bias.detach())
    lay = random_direction(model, seed=1, norm="layer")
    assert float(lay["4.weight"].norm()) == pytest.approx(float(model[4].weight.norm()), rel=1e-6)
    raw = random_direction(model, seed=1, norm="none", ignore=None)
    assert not torch.equal(raw["0.bias"], model[0].bias.detach())


def test_directions_are_gaussian_and_seeded():
    model = nn.Linear(400, 400)
    d = random_direction(model, seed=3)["weight"]
    z = d / model.weight.detach().norm(dim=1, keepdim=True) * (400 ** 0.5)  # about N(0, 1) entries
    assert abs(float(z.mean())) < 4 / 400  # 4 standard errors of the mean of 160000 draws
    assert float(z.std()) == pytest.approx(1.0, rel=0.02)
    assert torch.equal(d, random_direction(model, seed=3)["weight"])
    assert torch.equal(d, random_direction(model, seed=torch.Generator().manual_seed(3))["weight"])
    assert not torch.equal(d, random_direction(model, seed=4)["weight"])
    state = torch.get_rng_state()
    random_direction(model, seed=5)
    assert torch.equal(state, torch.get_rng_state())


def _manual_loss(model, params, batch):
    m = copy.deepcopy(model).eval()
    with torch.no_grad():
        for n, p in m.named_parameters():
            p.copy_(params[n])
        return float(mse(m, batch))


def test_line_and_plane_match_manual_evaluation_and_leave_bn_untouched():
    model, batch = bn_net(), regression_batch()
    model.train()
    snap = snapshot(model)
    d1, d2 = random_direction(model, seed=0), random_direction(model, seed=1)
    line = loss_line(model, mse, batch, d1, alphas=[-0.5, 0.0, 0.25])
    plane = loss_plane(model, mse, batch, d1, d2, alphas=[-0.5, 0.5], betas=[0.0, 1.0, 2.0])
    assert_same_state(model, snap)
    assert model.training and all(m.training for m in model.modules())
    base = {n: p.detach() for n, p in model.named_parameters()}
    for a, val in zip([-0.5, 0.0, 0.25], line.losses):
        assert val == pytest.approx(_manual_loss(model, {n: base[n] + a * d1[n] for n in base}, batch), rel=1e-12)
    assert line.losses[1] == pytest.approx(line.center_loss)
    for i, a in enumerate([-0.5, 0.5]):
        for j, b in enumerate([0.0, 1.0, 2.0]):
            exp = _manual_loss(model, {n: base[n] + a * d1[n] + b * d2[n] for n in base}, batch)
            assert plane.losses[i, j] == pytest.approx(exp, rel=1e-12)
    assert plane.to_dict()["losses"][0][0] == pytest.approx(plane.losses[0, 0])


def test_hessian_direction_curvature_equals_top_eigenvalue():
    A = rotated([4.0, 1.0, -2.0], seed=1)

    class Q(nn.Module):
        def __init__(self):
            super().__init__()
            self.x = nn.Parameter(torch.zeros(3, dtype=torch.float64))

        def forward(self, _):
            return 0.5 * self.x @ A @ self.x

    model = Q()
    (d,) = hessian_directions(model, lambda m, b: m(b), torch.zeros(1), 1, tol=1e-12)
    assert float(d["x"].norm()) == pytest.approx(1.0)
    h = 0.1
    line = loss_line(model, lambda m, b: m(b), torch.zeros(1), d, alphas=[-h, 0.0, h])
    curvature = (line.losses[0] - 2 * line.losses[1] + line.losses[2]) / h ** 2
    assert curvature == pytest.approx(4.0, rel=1e-8)


def test_non_finite_points_are_reported_not_raised():
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.5)
    d = {"weight": torch.ones(1, 1)}
    line = loss_line(model, lambda m, b: 1 / (m(b).sum() - 10), torch.ones(1, 1), d, alphas=[0.0, 9.5])
    assert line.n_nonfinite == 1 and np.isinf(line.losses[1])
    assert line.to_dict()["losses"][1] is None


def test_linear_interpolation_hand_case_and_buffers_interpolated():
    model = nn.Linear(1, 1, bias=False)
    a, b = {"weight": torch.tensor([[-1.0]])}, {"weight": torch.tensor([[1.0]])}
    r = linear_interpolation(model, lambda m, x: (1 - m(x) ** 2).pow(2).sum(), torch.ones(1, 1), a, b,
                             alphas=[0.0, 0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(r.losses, [0.0, (1 - 0.25) ** 2, 1.0, (1 - 0.25) ** 2, 0.0])
    assert r.barrier == pytest.approx(1.0)
    # BatchNorm running statistics are interpolated; the model is never modified
    ma, mb = bn_net(0), bn_net(1)
    with torch.no_grad():
        ma[1].running_mean.fill_(1.0)
        mb[1].running_var.fill_(3.0)
    batch = regression_batch()
    snap = snapshot(ma)
    out = linear_interpolation(ma, mse, batch, ma.state_dict(), mb.state_dict(), alphas=[0.3])
    mix = copy.deepcopy(ma)
    mix.load_state_dict({k: (0.7 * v + 0.3 * mb.state_dict()[k]) if v.is_floating_point() else v
                         for k, v in ma.state_dict().items()})
    mix.eval()
    assert out.losses[0] == pytest.approx(float(mse(mix, batch)), rel=1e-12)
    assert_same_state(ma, snap)


def test_layerwise_barrier_hand_case_is_convex_per_layer():
    model = nn.Sequential(nn.Linear(1, 1, bias=False), nn.Linear(1, 1, bias=False)).double()
    a = {"0.weight": torch.ones(1, 1, dtype=torch.float64), "1.weight": torch.ones(1, 1, dtype=torch.float64)}
    b = {k: -v for k, v in a.items()}
    x = torch.ones(1, 1, dtype=torch.float64)

    def loss(m, x):
        return ((m(x) - 1) ** 2).sum()

    alphas = np.linspace(0, 1, 11)
    full = linear_interpolation(model, loss, x, a, b, alphas=alphas)
    assert full.barrier == pytest.approx(1.0)  # product (1-2a)^2 - 1 squared: 1 at the midpoint
    per = layerwise_barriers(model, loss, x, a, b, alphas=alphas)
    assert sorted(per) == ["0", "1"]
    for r in per.values():
        np.testing.assert_allclose(r.losses, 4 * alphas ** 2, atol=1e-12)  # (1 - 2a - 1)^2
        assert r.barrier == pytest.approx(0.0, abs=1e-12)
    custom = layerwise_barriers(model, loss, x, a, b, alphas=alphas, layers={"both": ["0.weight", "1.weight"]})
    assert custom["both"].barrier == pytest.approx(full.barrier)


def test_sample_size_change_hand_computed_and_decays():
    model = tiny_mlp()
    x, y = regression_batch(n=40)

    def per_sample(m, b):
        return ((m(b[0]) - b[1]) ** 2).mean(dim=1)

    r = sample_size_loss_change(model, per_sample, (x, y), n_points=3, radius=0.0)
    ell = per_sample(model.eval(), (x, y)).detach().numpy()
    L = np.cumsum(ell) / np.arange(1, 41)
    np.testing.assert_allclose(r.delta, np.abs(np.diff(L)), rtol=1e-12)
    r2 = sample_size_loss_change(model, per_sample, (x, y), n_points=4, radius=0.5, seed=1)
    assert -1.6 < r2.slope < -0.5 and r2.n_points == 5
    assert np.array_equal(r2.delta, sample_size_loss_change(model, per_sample, (x, y), n_points=4, radius=0.5,
                                                            seed=1).delta)


def test_bad_inputs_landscape():
    model, batch = tiny_mlp(), regression_batch()
    snap = snapshot(model)
    d = random_direction(model)
    with pytest.raises(DataError, match="misses parameter"):
        loss_line(model, mse, batch, {"0.weight": d["0.weight"]})
    with pytest.raises(DataError, match="shape"):
        loss_line(model, mse, batch, {**d, "0.bias": torch.zeros(7)})
    with pytest.raises(DataError, match="NaN"):
        loss_line(model, mse, batch, {**d, "0.bias": torch.full_like(d["0.bias"], float("nan"))})
    with pytest.raises(ConfigError, match="alphas"):
        loss_line(model, mse, batch, d, alphas=[])
    with pytest.raises(ConfigError, match="betas"):
        loss_plane(model, mse, batch, d, d, betas=[float("inf")])
    with pytest.raises(DataError, match="0 rows"):
        loss_line(model, mse, (batch[0][:0], batch[1][:0]), d)
    with pytest.raises(ConfigError, match="norm"):
        random_direction(model, norm="weight")
    with pytest.raises(ConfigError, match="ignore"):
        random_direction(model, ignore="bn")
    with pytest.raises(ConfigError, match="seed"):
        random_direction(model, seed="a")
    with pytest.raises(ConfigError, match="k must be"):
        hessian_directions(model, mse, batch, k=0)
    with pytest.raises(ConfigError, match="k must be"):
        hessian_directions(model, mse, batch, k=10_000)
    with pytest.raises(DataError, match="misses entries"):
        linear_interpolation(model, mse, batch, model.state_dict(), {})
    bad = {k: v.clone() for k, v in model.state_dict().items()}
    bad["0.weight"][0, 0] = float("nan")
    with pytest.raises(DataError, match="NaN"):
        linear_interpolation(model, mse, batch, model.state_dict(), bad)
    with pytest.raises(ConfigError, match="layer group"):
        layerwise_barriers(model, mse, batch, model, model, layers={"x": ["nope"]})
    with pytest.raises(DataError, match="one loss per sample"):
        sample_size_loss_change(model, mse, batch)
    with pytest.raises(ConfigError, match="radius"):
        sample_size_loss_change(model, mse, batch, radius=-1.0)
    with pytest.raises(DataError, match="non-finite"):
        loss_line(model, lambda m, b: mse(m, b) * float("nan"), batch, d)
    assert_same_state(model, snap)
