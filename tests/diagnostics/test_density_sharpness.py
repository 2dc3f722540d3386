"""Hutchinson, SLQ, class-wise spectra and sharpness tracking against dense references and closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from losslab._errors import ConfigError, DataError
from losslab.diagnostics import (
    HessianOperator,
    SharpnessTracker,
    adam_preconditioned_sharpness,
    classwise_spectra,
    hutchinson_trace,
    lanczos,
    spectral_density,
    stability_threshold,
)
from tests.diagnostics.helpers import (
    assert_same_state,
    bn_net,
    ce,
    dense_hessian,
    mse,
    regression_batch,
    rotated,
    snapshot,
    tiny_mlp,
    wishart,
)


@pytest.mark.parametrize("distribution", ["rademacher", "gaussian"])
def test_hutchinson_within_three_standard_errors(distribution):
    H = wishart(50, 30, seed=4)
    for seed in range(3):
        r = hutchinson_trace(H, 200, distribution=distribution, seed=seed)
        assert abs(r.estimate - float(torch.trace(H))) <= 3 * r.stderr
        assert r.samples.shape == (200,) and r.n_matvec == 200
        assert r.stderr == pytest.approx(r.samples.std(ddof=1) / math.sqrt(200))


def test_hutchinson_on_mlp_hessian():
    model, batch = tiny_mlp(), regression_batch()
    tr = float(torch.trace(dense_hessian(model, mse, batch)))
    r = hutchinson_trace(HessianOperator(model, mse, batch), 100, seed=1)
    assert abs(r.estimate - tr) <= 3 * r.stderr


def test_slq_integrates_to_one_and_matches_dense_moments():
    H = rotated(torch.linspace(-2.0, 6.0, 40).tolist(), seed=3)
    ev = torch.linalg.eigvalsh(H).numpy()
    d = spectral_density(H, n_iter=12, n_vectors=200, seed=0)
    for w in d.weights:
        assert w.sum() == pytest.approx(1.0, abs=1e-12)
    t, phi = d.density()
    assert np.trapezoid(phi, t) == pytest.approx(1.0, abs=1e-6)
    for p in (1, 2, 3, 4):
        per_probe = np.array([np.sum(w * nd ** p) for nd, w in zip(d.nodes, d.weights)])
        se = per_probe.std(ddof=1) / math.sqrt(len(per_probe))
        assert abs(d.moment(p) - np.mean(ev ** p)) <= 4 * se
    assert d.trace() == pytest.approx(float(ev.sum()), rel=0.1)
    lo, hi = d.support()
    # Ritz values lie inside the spectrum and approach its ends
    assert ev.min() - 1e-9 <= lo <= ev.min() + 1e-3 and ev.max() - 1e-3 <= hi <= ev.max() + 1e-9


def test_slq_full_lanczos_recovers_the_spectrum():
    H = rotated([1.0, 2.0, 2.0, 5.0], seed=1)
    d = spectral_density(H, n_iter=4, seed=2)
    heavy = d.nodes[0][d.weights[0] > 1e-12]
    np.testing.assert_allclose(np.unique(np.round(heavy, 8)), [1.0, 2.0, 5.0])


def test_classwise_spectra_match_dense_per_class():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    g = torch.Generator().manual_seed(2)
    x = torch.randn(30, 3, generator=g, dtype=torch.float64)
    y = torch.tensor([0] * 20 + [1] * 7 + [2] * 3)
    out = classwise_spectra(model, ce, (x, y), tol=1e-12, n_iter=100, density=True)
    assert sorted(out) == [0, 1, 2]
    for c, spec in out.items():
        ev = torch.linalg.eigvalsh(dense_hessian(model, ce, (x[y == c], y[y == c])))
        assert spec.n_samples == int((y == c).sum())
        assert spec.lambda_max == pytest.approx(float(ev.max()), rel=1e-6)
        assert spec.lambda_min == pytest.approx(float(ev.min()), rel=1e-6, abs=1e-9)
        assert spec.density is not None and spec.density.weights[0].sum() == pytest.approx(1.0)
    with pytest.raises(ConfigError, match="no samples"):
        classwise_spectra(model, ce, (x, y), classes=[7])
    with pytest.raises(DataError, match="labels"):
        classwise_spectra(model, ce, (x, y.double()))


class Quadratic(nn.Module):
    def __init__(self, A: torch.Tensor, x0: torch.Tensor) -> None:
        super().__init__()
        self.A = A
        self.x = nn.Parameter(x0.clone())

    def forward(self, _):
        return 0.5 * self.x @ self.A @ self.x


def _quad_loss(m, b):
    return m(b)


def _run_gd(A, lr, momentum=0.0, nesterov=False, steps=400):
    model = Quadratic(A, torch.ones(A.shape[0], dtype=torch.float64))
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, nesterov=nesterov)
    for _ in range(steps):
        opt.zero_grad()
        model(None).backward()
        opt.step()
    return float(model.x.norm())


@pytest.mark.parametrize(("momentum", "nesterov"), [(0.0, False), (0.9, False), (0.5, True)])
def test_gd_on_quadratic_diverges_exactly_beyond_the_threshold(momentum, nesterov):
    A = rotated([7.0, 3.0, 1.0, 0.5], seed=0)
    model = Quadratic(A, torch.ones(4, dtype=torch.float64))
    lam = float(lanczos(HessianOperator(model, _quad_loss, torch.zeros(1)), tol=1e-12).eigenvalues[0])
    assert lam == pytest.approx(7.0, rel=1e-10)
    # lr at which the threshold equals lam: threshold(lr) = c / lr
    crit = stability_threshold(1.0, momentum, nesterov=nesterov) / lam
    assert _run_gd(A, crit * 0.98, momentum, nesterov) < 1.0
    assert _run_gd(A, crit * 1.02, momentum, nesterov) > 1e3


def test_tracker_records_thresholds_for_sgd_and_state_roundtrip():
    model, batch = tiny_mlp(), regression_batch()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    tracker = SharpnessTracker(mse, batch, every=2, optimizer=opt, seed=0)
    recs = []
    for step in range(5):
        opt.zero_grad()
        mse(model, batch).backward()
        opt.step()
        recs.append(tracker(model, step))
    assert [r is None for r in recs] == [False, True, False, True, False]
    r = recs[-1]
    ev = float(torch.linalg.eigvalsh(dense_hessian(model, mse, batch)).max())
    assert r.sharpness == pytest.approx(ev, rel=1e-5)
    assert r.threshold == pytest.approx(3.8 / 0.05) and r.rule == "heavy-ball"
    assert r.ratio == pytest.approx(r.sharpness / r.threshold)
    t2 = SharpnessTracker(mse, batch, every=2, optimizer=opt, seed=5)
    t2.load_state_dict(tracker.state_dict())
    assert t2.records == tracker.records
    assert torch.equal(t2._gen.get_state(), tracker._gen.get_state())


def test_tracker_rules_for_other_optimizers_and_amsgrad():
    model, batch = tiny_mlp(), regression_batch()
    rms = torch.optim.RMSprop(model.parameters(), lr=0.01, momentum=0.9)
    rec = SharpnessTracker(mse, batch, optimizer=rms)(model, 0)
    assert rec.rule == "unsupported" and rec.threshold is None and rec.ratio is None and rec.sharpness > 0
    nest = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.5, nesterov=True)
    rec = SharpnessTracker(mse, batch, optimizer=nest)(model, 0)
    assert rec.rule == "nesterov" and rec.threshold == pytest.approx(3.0 / (2.0 * 0.1))
    assert rec.to_dict()["rule"] == "nesterov"
    with pytest.raises(ConfigError, match="dampening"):
        SharpnessTracker(mse, batch, optimizer=torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9,
                                                               dampening=0.1))
    ams = torch.optim.Adam(model.parameters(), lr=0.01, amsgrad=True)
    for _ in range(2):
        ams.zero_grad()
        mse(model, batch).backward()
        ams.step()
    H = dense_hessian(model, mse, batch)
    vmax = torch.cat([ams.state[p]["max_exp_avg_sq"].reshape(-1) / (1 - 0.999 ** 2) for p in model.parameters()])
    P = torch.diag((vmax.sqrt() + 1e-8) / 0.01)
    expected = float(torch.linalg.eigvals(torch.linalg.solve(P, H)).real.max())
    rec = SharpnessTracker(mse, batch, optimizer=ams, tol=1e-12, max_iter=200)(model, 0)
    assert rec.preconditioned == pytest.approx(expected, rel=1e-6)


def test_edge_crossings():
    tracker = SharpnessTracker(mse, regression_batch(), every=1)
    from losslab.diagnostics import SharpnessRecord

    for i, ratio in enumerate([0.5, 1.1, 1.2, 0.9, 1.0]):
        tracker.records.append(SharpnessRecord(i, 0.0, ratio, None, 1.0, ratio, "gd", 1.0, 0))
    assert tracker.edge_crossings() == [1, 4]


def test_adam_preconditioned_sharpness_against_the_rule_written_out():
    model, batch = tiny_mlp(), regression_batch()
    opt = torch.optim.Adam(model.parameters(), lr=0.01, betas=(0.8, 0.99), eps=1e-6)
    for _ in range(3):
        opt.zero_grad()
        mse(model, batch).backward()
        opt.step()
    H = dense_hessian(model, mse, batch)
    vhat = torch.cat([opt.state[p]["exp_avg_sq"].reshape(-1) / (1 - 0.99 ** 3) for p in model.parameters()])
    P = torch.diag((vhat.sqrt() + 1e-6) / 0.01)
    expected = float(torch.linalg.eigvals(torch.linalg.solve(P, H)).real.max())
    value, threshold = adam_preconditioned_sharpness(model, mse, batch, opt, tol=1e-12, max_iter=200)
    assert value == pytest.approx(expected, rel=1e-6)
    assert threshold == pytest.approx((2 + 2 * 0.8) / (1 - 0.8))
    rec = SharpnessTracker(mse, batch, every=1, optimizer=opt, tol=1e-12, max_iter=200)(model, 0)
    assert rec.rule == "adam" and rec.preconditioned == pytest.approx(expected, rel=1e-6)
    assert rec.ratio == pytest.approx(expected / threshold, rel=1e-6)
    fresh = torch.optim.Adam(model.parameters())
    with pytest.raises(ConfigError, match=r"first optimizer\.step"):
        adam_preconditioned_sharpness(model, mse, batch, fresh)


def test_tracker_leaves_batchnorm_and_mode_untouched():
    model, batch = bn_net(), regression_batch()
    model.train()
    snap = snapshot(model)
    SharpnessTracker(mse, batch, every=1)(model, 0)
    hutchinson_trace(HessianOperator(model, mse, batch, mode="train"), 4)
    spectral_density(HessianOperator(model, mse, batch, mode="train"), 5)
    assert_same_state(model, snap)
    assert model.training


def test_bad_inputs_density_and_sharpness():
    H = wishart(5, 8)
    with pytest.raises(ConfigError, match="n_samples"):
        hutchinson_trace(H, 1)
    with pytest.raises(ConfigError, match="distribution"):
        hutchinson_trace(H, 10, distribution="uniform")
    with pytest.raises(ConfigError, match="seed"):
        hutchinson_trace(H, 10, seed=0.5)
    with pytest.raises(ConfigError, match="n_iter"):
        spectral_density(H, n_iter=6)
    with pytest.raises(ConfigError, match="n_iter"):
        spectral_density(H, n_iter=0)
    with pytest.raises(ConfigError, match="seed"):
        spectral_density(H, 3, seed="1")
    with pytest.raises(ConfigError, match="lr"):
        stability_threshold(0.0)
    with pytest.raises(ConfigError, match="momentum"):
        stability_threshold(0.1, 1.0)
    with pytest.raises(ConfigError, match="every"):
        SharpnessTracker(mse, regression_batch(), every=0)
    with pytest.raises(DataError, match="0 rows"):
        SharpnessTracker(mse, (torch.ones(0, 3), torch.ones(0, 2)))
    with pytest.raises(ConfigError, match="Optimizer"):
        SharpnessTracker(mse, regression_batch(), optimizer="sgd")
    d = spectral_density(H, 3)
    with pytest.raises(ConfigError, match="sigma"):
        d.density(sigma=-1.0)


def test_lla_criteria_by_hand():
    from losslab.diagnostics import SpectralDensity

    d = SpectralDensity([np.array([-2.0, 1.0, 4.0]), np.array([-1.0, 3.0])],
                        [np.array([0.25, 0.25, 0.5]), np.array([0.5, 0.5])], 3, 0)
    out = d.lla_criteria(0.5)
    neg = (2.0 * 0.25) ** 0.5 + (1.0 * 0.5) ** 0.5
    pos = (1.0 * 0.25) ** 0.5 + (4.0 * 0.5) ** 0.5 + (3.0 * 0.5) ** 0.5
    assert out["re"] == pytest.approx(0.5) and out["kh"] == pytest.approx(neg / pos)
    psd = spectral_density(wishart(10, 20), 10)
    assert psd.lla_criteria()["kh"] < 1e-3  # a PSD matrix has (almost) no negative mass
    with pytest.raises(ConfigError, match="n must"):
        d.lla_criteria(0.0)


def test_dataset_operator_sums_batches_like_the_full_batch():
    from losslab.diagnostics import DatasetHessianOperator

    model = tiny_mlp()
    x, y = regression_batch(n=12)
    full = dense_hessian(model, mse, (x, y))
    parts = [(x[:4], y[:4]), (x[4:], y[4:])]  # unequal sizes: weights 1/3 and 2/3
    op = DatasetHessianOperator(model, mse, parts)
    torch.testing.assert_close(torch.stack([op.matvec(e) for e in torch.eye(op.n, dtype=torch.float64)]), full)
    assert op.loss == pytest.approx(float(mse(model, (x, y)).detach()))
    custom = DatasetHessianOperator(model, mse, parts, weights=[1.0, 0.0])
    torch.testing.assert_close(custom.matvec(torch.ones(op.n, dtype=torch.float64)),
                               dense_hessian(model, mse, parts[0]) @ torch.ones(op.n, dtype=torch.float64))
    t_full = SharpnessTracker(mse, (x, y), tol=1e-10)(model, 0)
    t_parts = SharpnessTracker(mse, batches=parts, tol=1e-10)(model, 0)
    assert t_parts.sharpness == pytest.approx(t_full.sharpness, rel=1e-8)
    with pytest.raises(DataError, match="non-empty"):
        DatasetHessianOperator(model, mse, [])
    with pytest.raises(ConfigError, match="one per batch"):
        DatasetHessianOperator(model, mse, parts, weights=[1.0])
    with pytest.raises(ConfigError, match="exactly one"):
        SharpnessTracker(mse, (x, y), batches=parts)
    with pytest.raises(DataError, match="0 rows"):
        DatasetHessianOperator(model, mse, [(x[:0], y[:0])])
