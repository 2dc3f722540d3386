"""The vectorised engine: Huber against scipy, batched L-BFGS against scipy's L-BFGS-B and known minima."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import minimize, rosen, rosen_der
from scipy.special import huber as sp_huber

from losslab.forecast.scaling import batched_lbfgs, get_law, huber
from losslab.forecast.scaling._fit import make_objective
from tests.scaling._cases import synthetic


def test_huber_matches_scipy_and_its_derivative():
    r = np.linspace(-0.01, 0.01, 2001)
    for delta in (1e-3, 0.5):
        h, psi = huber(r, delta)
        np.testing.assert_allclose(h, sp_huber(delta, r), rtol=1e-12, atol=1e-18)
        np.testing.assert_allclose(psi, np.clip(r, -delta, delta))
    h, psi = huber(r, np.inf)
    np.testing.assert_allclose(h, r**2 / 2)


def _rosen_batch(x, rows):
    return np.array([rosen(v) for v in x]), np.array([rosen_der(v) for v in x])


def test_batched_lbfgs_finds_rosenbrock_minimum_from_many_starts():
    x0 = np.random.default_rng(0).uniform(-2, 2, size=(20, 3))
    res = batched_lbfgs(_rosen_batch, x0, max_iter=2000, quiet=True, fscale=1e-12, gtol=1e-9)
    assert res.converged.all()
    np.testing.assert_allclose(res.x, 1.0, atol=1e-4)


def test_batched_lbfgs_solves_bounded_quadratic_with_per_row_optima():
    targets = np.array([[0.5, -3.0], [2.0, 1.0], [-1.0, 0.2]])

    def fun(x, rows):
        d = x - targets[rows]
        return 0.5 * np.sum(d * d * [1.0, 10.0], axis=1), d * [1.0, 10.0]

    res = batched_lbfgs(fun, np.zeros((3, 2)), lower=np.array([-np.inf, -1.0]), upper=np.array([1.0, np.inf]),
                        quiet=True, gtol=1e-10)
    np.testing.assert_allclose(res.x, np.clip(targets, [-np.inf, -1.0], [1.0, np.inf]), atol=1e-7)


def test_batched_lbfgs_matches_scipy_per_start_on_chinchilla_objective():
    law = get_law("chinchilla")
    from losslab.forecast.scaling import ScalingData

    X, y = law.prepare(ScalingData.from_columns(synthetic("chinchilla", noise=0.01)))
    fun = make_objective(law, X, y, 1e-3)
    truth = np.log([480.0, 2100.0, 1.8, 1.0, 1.0])
    truth[3:] = [0.35, 0.37]
    starts = truth + np.random.default_rng(1).uniform(-0.3, 0.3, size=(8, 5)) * [3, 3, 0.3, 0.1, 0.1]
    res = batched_lbfgs(fun, starts, quiet=True, fscale=1e-12, gtol=1e-10, max_iter=5000)
    one = np.zeros(1, dtype=int)
    for i, s in enumerate(starts):
        ref = minimize(lambda t: (lambda fg: (fg[0][0], fg[1][0]))(fun(t[None], one)), s, jac=True,
                       method="L-BFGS-B", options={"ftol": 1e-15, "gtol": 1e-10, "maxiter": 5000})
        # starts in the basin of the optimum: both reach it (the Armijo-only batched search stops within 1e-4 of
        # the objective of scipy's Wolfe search; fit_scaling_law polishes the best rows with scipy afterwards)
        assert res.f[i] == pytest.approx(ref.fun, rel=1e-4)
        # the valley is flat along log A, log B: compare the fitted curves (to 5e-4, noise is 1e-2), not parameters
        np.testing.assert_allclose(law.predict_theta(res.x[i][None], X), law.predict_theta(ref.x[None], X), rtol=5e-4)


def test_non_finite_rows_are_flagged_not_raised():
    def fun(x, rows):
        f = np.where(x[:, 0] > 0, np.sum(x * x, axis=1), np.nan)
        return f, 2 * x

    res = batched_lbfgs(fun, np.array([[1.0, 1.0], [-1.0, 1.0]]), quiet=True)
    assert res.converged[0] and not res.converged[1]
    assert np.isinf(res.f[1])


@pytest.mark.parametrize("delta", [1e-3, 1e-1])
def test_objective_is_the_sum_not_the_mean(delta):
    law = get_law("chinchilla")
    from losslab.forecast.scaling import ScalingData

    X, y = law.prepare(ScalingData.from_columns(synthetic("chinchilla", noise=0.01)))
    theta = np.array([[6.0, 7.5, 0.6, 0.35, 0.37]])
    f, _ = make_objective(law, X, y, delta)(theta, np.zeros(1, dtype=int))
    pred = np.log(np.exp(6.0) / X["params"] ** 0.35 + np.exp(7.5) / X["tokens"] ** 0.37 + np.exp(0.6))
    assert f[0] == pytest.approx(np.sum(sp_huber(delta, pred - y)), rel=1e-12)
