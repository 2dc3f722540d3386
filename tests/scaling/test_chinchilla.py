"""Chinchilla: the published recipe on Epoch AI's 240 points, bootstrap errors, extrapolation, compute-optimal."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from losslab.forecast.scaling import (
    absolute_relative_error,
    chinchilla_optimal,
    fit_scaling_law,
    read_runs,
)
from tests.scaling._cases import CASES, synthetic

# Epoch AI's cell 18 (Hoffmann's L-BFGS grid on their 240 points), and the objective as a SUM of Huber terms
EPOCH = {"A": 477.84, "B": 2143.86, "E": 1.8172, "alpha": 0.3473, "beta": 0.3672}
OBJECTIVE = 1.01827e-3
# Epoch AI's bootstrap standard errors (their maximum-likelihood fit, 4000 resamples)
EPOCH_SE = {"E": 0.026, "alpha": 0.015, "beta": 0.021}


def _epoch_points(shared_data):
    return read_runs(shared_data / "chinchilla-epoch" / "svg_extracted_data.csv").drop_highest(5)


def test_epoch_data_reads_with_flop_and_model_size_columns(shared_data):
    d = _epoch_points(shared_data)
    assert d.n == 240
    np.testing.assert_allclose(d["tokens"], d["flops"] / (6 * d["params"]))


@pytest.mark.slow
def test_full_hoffmann_grid_reproduces_epoch_to_three_significant_digits(shared_data):
    fit = fit_scaling_law(_epoch_points(shared_data), "chinchilla", quiet=True)
    assert fit.n_starts == 4500
    for k, v in EPOCH.items():
        assert float(f"{fit.params[k]:.3g}") == float(f"{v:.3g}"), (k, fit.params[k])
    assert fit.objective == pytest.approx(OBJECTIVE, rel=1e-5)
    assert fit.n_failed_starts < 0.01 * fit.n_starts


def test_coarse_grid_finds_the_same_optimum_and_bootstrap_errors_match_epoch(shared_data):
    fit = fit_scaling_law(_epoch_points(shared_data), "chinchilla", starts="coarse", bootstrap=120, seed=0,
                          quiet=True)
    assert fit.objective == pytest.approx(OBJECTIVE, rel=1e-5)
    se = fit.standard_errors()
    for k, v in EPOCH_SE.items():
        assert 0.6 * v < se[k] < 1.5 * v, (k, se[k])
    lo, hi = fit.intervals(0.95)["alpha"]
    assert lo < fit.params["alpha"] < hi
    assert fit.bootstrap_failed <= 2


def test_extrapolation_from_small_to_large_models(shared_data):
    d = _epoch_points(shared_data)
    small, large = d.subset(d["params"] < 1e9), d.subset(d["params"] >= 1e9)
    fit = fit_scaling_law(small, "chinchilla", starts="coarse", quiet=True)
    are = absolute_relative_error(fit, large)
    assert are < 0.02  # measured 0.6 %: see docs/benchmarks.md


def test_compute_optimal_matches_brute_force_minimisation():
    p = {"A": 406.4, "B": 410.7, "E": 1.69, "alpha": 0.34, "beta": 0.28}
    for C in (1e19, 5.76e23):
        n, d = chinchilla_optimal(p["A"], p["B"], p["alpha"], p["beta"], C)
        grid = np.geomspace(1e6, 1e14, 400001)
        loss = p["E"] + p["A"] / grid ** p["alpha"] + p["B"] / (C / (6 * grid)) ** p["beta"]
        assert float(n) == pytest.approx(grid[np.argmin(loss)], rel=1e-4)
        assert float(n * d * 6) == pytest.approx(C, rel=1e-12)
        G = (p["alpha"] * p["A"] / (p["beta"] * p["B"])) ** (1 / (p["alpha"] + p["beta"]))
        assert float(n) == pytest.approx(G * (C / 6) ** (p["beta"] / (p["alpha"] + p["beta"])), rel=1e-12)


def test_fit_optimal_has_intervals_that_contain_the_point():
    fit = fit_scaling_law(synthetic("chinchilla", noise=0.005), starts="coarse", bootstrap=40, quiet=True)
    out = fit.optimal([1e21, 1e23])
    p = fit.params
    n, _ = chinchilla_optimal(p["A"], p["B"], p["alpha"], p["beta"], np.array([1e21, 1e23]))
    np.testing.assert_allclose(out["params"], n, rtol=1e-12)
    lo, hi = out["params_interval"]
    assert np.all(lo <= out["params"]) and np.all(out["params"] <= hi)
    truth = CASES["chinchilla"]["params"]
    assert out["loss"][0] == pytest.approx(
        truth["E"] + truth["A"] / out["params"][0] ** truth["alpha"] + truth["B"] / out["tokens"][0] ** truth["beta"],
        rel=2e-2)


@settings(max_examples=60, deadline=None)
@given(A=st.floats(1.0, 1e4), B=st.floats(1.0, 1e4), alpha=st.floats(0.05, 1.5), beta=st.floats(0.05, 1.5),
       C=st.floats(1e15, 1e27))
def test_compute_optimal_spends_the_budget_and_is_a_minimum(A, B, alpha, beta, C):
    n, d = chinchilla_optimal(A, B, alpha, beta, C)
    assert float(6 * n * d) == pytest.approx(C, rel=1e-9)

    def loss(m):
        return A / m**alpha + B / (C / (6 * m)) ** beta

    assert loss(float(n)) <= min(loss(float(n) * 1.01), loss(float(n) / 1.01))


def test_fit_is_deterministic_and_ignores_row_order():
    d = synthetic("chinchilla", noise=0.01)
    a = fit_scaling_law(d, starts="coarse", bootstrap=10, seed=5, quiet=True)
    b = fit_scaling_law(d, starts="coarse", bootstrap=10, seed=5, quiet=True)
    np.testing.assert_array_equal(a.theta, b.theta)
    np.testing.assert_array_equal(a.bootstrap, b.bootstrap)
    c = fit_scaling_law(d, starts="coarse", bootstrap=10, seed=6, quiet=True)
    assert not np.array_equal(a.bootstrap, c.bootstrap)
    perm = np.random.default_rng(0).permutation(d["loss"].size)
    p = fit_scaling_law({k: v[perm] for k, v in d.items()}, starts="coarse", quiet=True)
    assert p.objective == pytest.approx(a.objective, rel=1e-9)
    np.testing.assert_allclose(p.predict(CASES["chinchilla"]["design"]()), a.predict(CASES["chinchilla"]["design"]()),
                               rtol=1e-6)
