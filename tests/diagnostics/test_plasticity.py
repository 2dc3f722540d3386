"""Plasticity metrics on constructed features with known ranks and dead/dormant units."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from losslab._errors import ConfigError, DataError
from losslab.diagnostics import (
    collect_features,
    dead_units,
    dormant_units,
    effective_rank,
    feature_norm,
    gradient_covariance,
    plasticity_report,
    redo_dormant_units,
    srank,
    weight_magnitude,
)
from tests.diagnostics.helpers import assert_same_state, bn_net, regression_batch, snapshot


def _features():
    f = torch.ones(50, 4)
    f[:, 0] = 0.0  # dead
    f[:, 1] = 0.0
    f[0, 1] = 5.0  # active on exactly 2 % of inputs
    f[:, 2] = 0.01  # always active, tiny
    return f


def test_dead_dormant_redo_on_constructed_features():
    f = _features()
    assert dead_units(f).tolist() == [True, False, False, False]
    assert dormant_units(f, 0.02).tolist() == [True, False, False, False]  # 0.02 < 0.02 is false: strict
    assert dormant_units(f, 0.0201).tolist() == [True, True, False, False]
    assert dormant_units(f, 0.0).tolist() == [False] * 4
    # ReDo: scores are mean |h|: [0, 0.1, 0.01, 1]; normalised by their mean 0.2775
    s = np.array([0.0, 0.1, 0.01, 1.0]) / (0.2775 + 1e-9)
    for tau in (0.0, 0.03, s[2], 0.4):
        assert redo_dormant_units(f, tau).tolist() == (s <= tau).tolist()


def test_boundary_all_dead_and_none_dead():
    z = torch.zeros(10, 3)
    assert dead_units(z).all() and dormant_units(z).all() and redo_dormant_units(z).all()
    assert effective_rank(z) == 0.0 and srank(z) == 0
    pos = torch.rand(10, 3, generator=torch.Generator().manual_seed(0)) + 0.1
    assert not dead_units(pos).any() and not dormant_units(pos, 1.0).any()
    assert not redo_dormant_units(pos, 0.0).any()


def test_conv_maps_one_unit_per_channel():
    f = torch.ones(4, 3, 5, 5)
    f[:, 0] = 0.0
    f[:, 1] = 0.0
    f[0, 1, 0, 0] = 1.0  # active at 1 of 100 positions
    assert dead_units(f).tolist() == [True, False, False]
    assert dormant_units(f, 0.011).tolist() == [True, True, False]
    assert dormant_units(f, 0.01).tolist() == [True, False, False]


def _with_singular_values(s, n=20, m=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(n, len(s), generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(m, len(s), generator=g, dtype=torch.float64))
    return u @ torch.diag(torch.tensor(s, dtype=torch.float64)) @ v.T


def test_effective_rank_known_spectra():
    assert effective_rank(torch.eye(7)) == pytest.approx(7.0)
    assert effective_rank(torch.outer(torch.arange(1.0, 6.0), torch.ones(4))) == pytest.approx(1.0)  # rank 1
    s = [4.0, 2.0, 1.0, 1.0]
    p = np.array(s) / sum(s)
    assert effective_rank(_with_singular_values(s)) == pytest.approx(math.exp(-(p * np.log(p)).sum()), rel=1e-9)


def test_srank_known_spectra():
    s = [5.0, 3.0, 1.0, 0.5, 0.01]
    X = _with_singular_values(s)
    frac = np.cumsum(s) / sum(s)
    for delta in (0.0, 0.001, 0.01, 0.05, 0.2, 0.5):
        expected = int(np.argmax(frac >= 1 - delta - 1e-12)) + 1
        assert srank(X, delta) == expected, delta
    assert srank(torch.eye(100), 0.01) == 99  # 99 / 100 >= 0.99
    assert srank(torch.outer(torch.ones(6), torch.ones(3))) == 1
    assert srank(torch.eye(5), 0.0) == 5


def test_feature_norm_and_weight_magnitude_by_hand():
    assert feature_norm(torch.tensor([[3.0, 4.0], [6.0, 8.0]])) == pytest.approx(7.5)
    lin = nn.Linear(3, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, -2.0, 3.0], [0.0, 0.0, -1.0]]))
        lin.bias.copy_(torch.tensor([0.5, -0.5]))
    assert weight_magnitude(lin) == pytest.approx((1 + 2 + 3 + 1 + 0.5 + 0.5) / 8)


def test_collect_features_and_report_leave_model_alone():
    model, (x, _) = bn_net(), regression_batch()
    with torch.no_grad():
        model[0].bias[0] = -100.0  # unit 0 of the ReLU is dead
    model.train()
    snap = snapshot(model)
    feats = collect_features(model, x)
    assert list(feats) == ["2"]
    model.eval()
    with torch.no_grad():
        expected = model[2](model[1](model[0](x)))
    model.train()
    torch.testing.assert_close(feats["2"], expected)
    rep = plasticity_report(model, (x,))
    assert_same_state(model, snap)
    assert model.training
    assert all(len(m._forward_hooks) == 0 for m in model.modules())
    layer = rep["layers"]["2"]
    assert layer["units"] == 4 and layer["dead_fraction"] >= 0.25
    assert layer["srank"] == srank(expected) and layer["effective_rank"] == pytest.approx(effective_rank(expected))
    assert rep["weight_magnitude"] == pytest.approx(weight_magnitude(model))
    assert list(collect_features(model, x, ["0"])) == ["0"]


def test_gradient_covariance_by_hand():
    lin = nn.Linear(3, 1, bias=False).double()
    x = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 2.0]], dtype=torch.float64)
    g = gradient_covariance(lin, lambda m, b: m(b).squeeze(1), x)  # per-sample gradients are x_i
    xn = x / x.norm(dim=1, keepdim=True)
    torch.testing.assert_close(g.matrix, xn @ xn.T)
    ev = torch.linalg.eigvalsh(xn @ xn.T)
    assert g.condition == pytest.approx(float(ev[-1] / ev[0]))
    colinear = gradient_covariance(lin, lambda m, b: m(b).squeeze(1), torch.stack([x[0], 2 * x[0]]))
    assert math.isinf(colinear.condition)
    zero = gradient_covariance(lin, lambda m, b: m(b).squeeze(1) * torch.tensor([1.0, 0.0, 1.0]), x)
    assert zero.n_zero == 1 and float(zero.matrix[1].abs().sum()) == 0.0


def test_bad_inputs_plasticity():
    for bad in (torch.ones(5), torch.ones(0, 3), torch.ones(3, 0), torch.tensor([[float("nan")]]), [[1.0]]):
        with pytest.raises(DataError):
            dead_units(bad)
    with pytest.raises(ConfigError, match="threshold"):
        dormant_units(torch.ones(2, 2), 1.5)
    with pytest.raises(ConfigError, match="tau"):
        redo_dormant_units(torch.ones(2, 2), -0.1)
    with pytest.raises(ConfigError, match="delta"):
        srank(torch.ones(2, 2), 1.0)
    model = bn_net()
    with pytest.raises(ConfigError, match="unknown module"):
        collect_features(model, torch.ones(2, 3, dtype=torch.float64), ["nope"])
    with pytest.raises(ConfigError, match="no activation"):
        collect_features(nn.Linear(2, 2), torch.ones(2, 2))
    with pytest.raises(DataError, match="0 rows"):
        collect_features(model, torch.ones(0, 3, dtype=torch.float64))
    with pytest.raises(DataError, match="one loss per example"):
        gradient_covariance(model, lambda m, b: m(b).sum(), torch.ones(2, 3, dtype=torch.float64))
    with pytest.raises(ConfigError, match=r"nn\.Module"):
        weight_magnitude("model")
