"""Every registered law: formula vs an independent float64 reference, analytic gradient vs finite differences,
parameter recovery on synthetic data (clean, noisy, near bounds)."""

from __future__ import annotations

import numpy as np
import pytest

from losslab.forecast.scaling import fit_scaling_law, get_law, registry
from losslab.forecast.scaling._fit import make_objective
from tests.scaling._cases import CASES, synthetic

NAMES = registry.names()


def test_every_registered_law_has_a_case():
    assert sorted(CASES) == NAMES


def _theta(law, params):
    """Fit-space theta from natural parameters by inverting ``natural`` numerically (log for positive scales)."""
    names = law.theta_names
    out = []
    for t in names:
        if t.startswith("log_"):
            key = {"log_Nc": "Nc", "log_Dc": "Dc", "log_Sc": "Sc", "log_Bstar": "Bstar", "log_E": "E", "log_a": "a",
                   "log_b": "b", "log_k": "k", "log_x0": "x0", "log_alpha": "alpha", "log_Linf": "L_inf",
                   "log_K": "K", "log_Ey": "E_y", "log_Cmid": "C_mid"}[t]
            out.append(np.log(params[key]))
        elif t in ("a", "b", "e"):
            out.append(np.log(params[t.upper()]))
        else:
            out.append(params[t])
    theta = np.array(out, dtype=np.float64)
    nat = law.natural(theta[None, :])
    for k, v in nat.items():
        assert np.isclose(v[0], params[k], rtol=1e-12), k
    return theta


@pytest.mark.parametrize("name", NAMES)
def test_prediction_matches_independent_formula(name):
    case = CASES[name]
    law = get_law(name, **case["settings"])
    X = case["design"]()
    theta = _theta(law, case["params"])
    np.testing.assert_allclose(law.predict_theta(theta[None, :], X)[0], case["truth"](X, case["params"]),
                               rtol=1e-9)


@pytest.mark.parametrize("name", NAMES)
def test_gradient_matches_finite_differences(name):
    case = CASES[name]
    law = get_law(name, **case["settings"])
    data = synthetic(name, noise=0.02)
    from losslab.forecast.scaling import ScalingData

    d = ScalingData.from_columns(data)
    law.configure(d)
    X, y = law.prepare(d)
    theta = _theta(law, case["params"]) * 1.01 + 0.01
    fun = make_objective(law, X, y, delta=law.delta * 3)
    rows = np.zeros(1, dtype=np.int64)
    _, g = fun(theta[None, :], rows)
    num = np.zeros_like(theta)
    for i in range(theta.size):
        h = 1e-6 * max(1.0, abs(theta[i]))
        tp, tm = theta.copy(), theta.copy()
        tp[i] += h
        tm[i] -= h
        num[i] = (fun(tp[None, :], rows)[0][0] - fun(tm[None, :], rows)[0][0]) / (2 * h)
    np.testing.assert_allclose(g[0], num, rtol=2e-4, atol=1e-7 * max(1.0, np.abs(num).max()))


@pytest.mark.parametrize("name", NAMES)
def test_recovers_parameters_from_clean_data(name):
    case = CASES[name]
    fit = fit_scaling_law(synthetic(name), name, starts="coarse", quiet=True, **case["settings"])
    for k, v in case["params"].items():
        assert fit.params[k] == pytest.approx(v, rel=2e-3), k
    assert fit.objective < 1e-8


@pytest.mark.parametrize("name", NAMES)
def test_recovers_parameters_from_noisy_data_within_bootstrap_intervals(name):
    case = CASES[name]
    info = registry.info(name)
    noise = 0.002
    fit = fit_scaling_law(synthetic(name, noise=noise), name, starts="coarse", bootstrap=40, seed=3, quiet=True,
                          **case["settings"])
    truth = {c: v for c, v in case["params"].items()}
    pred_true = case["truth"](case["design"](), truth)
    pred_fit = fit.predict(case["design"]())
    # the fitted curve stays within a few noise levels of the truth everywhere on the design
    scale = np.abs(pred_true) if info.space == "log" else 1.0
    assert np.max(np.abs(pred_fit - pred_true) / scale) < 5 * noise
    assert fit.bootstrap is not None and fit.bootstrap_failed <= 2
    se = fit.standard_errors()
    for k in law_free_params(name):
        assert 0 < se[k] < np.inf, k


def law_free_params(name):
    """Reported parameters that are fitted (not fixed by a setting) for the synthetic case."""
    law = get_law(name, **CASES[name]["settings"])
    return [p for p in CASES[name]["params"] if not (name == "loss_to_loss" and p == "E_y" and law.settings["e_y"])]


def test_flat_data_gives_a_flat_fit():
    # downstream_error on constant error: degenerate (k -> 0), but the prediction must still be the constant
    X = np.linspace(2.0, 5.0, 30)
    fit = fit_scaling_law({"loss": X, "error": 0.4 + 0.0 * X}, "downstream_error", starts="coarse", quiet=True)
    pred = fit.predict(loss=X)
    np.testing.assert_allclose(pred, 0.4, atol=1e-5)


def test_parameters_near_bounds_are_recovered():
    # a small model-size exponent (alpha = 0.05, flat in N) and an over-training exponent near its bound
    d = synthetic("chinchilla")
    case = dict(CASES["chinchilla"]["params"], alpha=0.05)
    y = CASES["chinchilla"]["truth"](CASES["chinchilla"]["design"](), case)
    fit = fit_scaling_law({**d, "loss": y}, "chinchilla", starts="coarse", quiet=True)
    assert fit.params["alpha"] == pytest.approx(0.05, rel=1e-2)
    p = dict(CASES["overtraining"]["params"], eta=0.01)
    y = CASES["overtraining"]["truth"](CASES["overtraining"]["design"](), p)
    fit = fit_scaling_law({**CASES["overtraining"]["design"](), "loss": y}, "overtraining", starts="coarse",
                          quiet=True)
    np.testing.assert_allclose(fit.predict(CASES["overtraining"]["design"]()), y, rtol=1e-4)


def test_kaplan_ns_trajectory_trades_steps_for_tokens_across_batch_sizes():
    case = CASES["kaplan_ns"]
    law = get_law("kaplan_ns")
    theta = _theta(law, case["params"])[None, :]
    S = np.geomspace(1e3, 1e6, 50)
    small = law.predict_theta(theta, {"params": np.full(50, 1e8), "steps": S, "batch_size": np.full(50, 1e5)})[0]
    large = law.predict_theta(theta, {"params": np.full(50, 1e8), "steps": S, "batch_size": np.full(50, 1e7)})[0]
    assert np.all(np.diff(small) < 0) and np.all(large < small)  # the trajectory falls; bigger batches go faster
    # to reach the same loss, the larger batch needs fewer steps but more tokens (Kaplan's trade-off)
    target = small[25]
    s_small = law.steps_for_loss(theta, np.array([target]), 1e8, 1e5)[0, 0]
    s_large = law.steps_for_loss(theta, np.array([target]), 1e8, 1e7)[0, 0]
    assert s_small == pytest.approx(S[25], rel=1e-8)
    assert s_large < s_small and s_large * 1e7 > s_small * 1e5
    bcrit = law.critical_batch(theta, np.array([target]))[0, 0]
    assert bcrit == pytest.approx(case["params"]["Bstar"] / target ** (1 / case["params"]["alpha_B"]), rel=1e-12)


@pytest.mark.parametrize("name", ["chinchilla", "loss_to_loss"])
def test_plot_returns_a_figure(name, tmp_path):
    from matplotlib.figure import Figure

    from losslab.report.scaling_plots import plot_scaling_fit

    fit = fit_scaling_law(synthetic(name, noise=0.005), name, starts="coarse", quiet=True, **CASES[name]["settings"])
    fig = plot_scaling_fit(fit, synthetic(name, noise=0.005))
    assert isinstance(fig, Figure)
    fig.savefig(tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 10_000
