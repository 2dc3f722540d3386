"""losslab.report.plot_scaling_fit: the (N, D) view (compute axis, per-size fits, compute-optimal frontier), the
one-input view (fitted curve), and observed vs predicted for laws over several inputs."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from matplotlib.figure import Figure

from losslab.forecast.scaling import fit_scaling_law
from losslab.report import plot_scaling_fit
from tests.scaling._cases import CASES, synthetic


def _fit(name):
    data = synthetic(name, noise=0.005)
    return fit_scaling_law(data, name, starts="coarse", quiet=True, **CASES[name]["settings"]), data


@pytest.fixture(scope="module")
def chinchilla():
    return _fit("chinchilla")


@pytest.fixture(scope="module")
def kaplan_ns():
    return _fit("kaplan_ns")


def _by_label(ax, label):
    return [ln for ln in ax.get_lines() if ln.get_label() == label]


def test_params_tokens_law_draws_compute_axis_per_size_fits_and_the_frontier(chinchilla):
    fit, data = chinchilla
    fig = plot_scaling_fit(fit, data, n_curves=3)
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert ax.get_xscale() == ax.get_yscale() == "log"
    np.testing.assert_allclose(ax.collections[0].get_offsets(), np.column_stack([6 * data["params"] * data["tokens"],
                                                                                 data["loss"]]))
    (frontier,) = _by_label(ax, "compute-optimal frontier")
    cc = frontier.get_xdata()
    np.testing.assert_allclose(frontier.get_ydata(), fit.optimal(cc)["loss"])
    assert frontier.get_linestyle() == "--"
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "compute-optimal frontier" in legend
    fits = [ln for ln in ax.get_lines() if ln.get_label().startswith("fit at N=")]
    assert len(fits) == 3
    n = float(np.max(data["params"]))  # the last curve is the largest model
    np.testing.assert_allclose(fits[-1].get_ydata(), fit.predict(params=np.full(cc.size, n), tokens=cc / (6 * n)))


def test_multi_input_law_draws_observed_against_predicted(kaplan_ns):
    fit, data = kaplan_ns
    fig = plot_scaling_fit(fit, data)
    (ax,) = [a for a in fig.axes if a.get_xlabel().startswith("predicted loss")]
    assert ax.get_ylabel() == "observed loss"
    pred = fit.predict({c: data[c] for c in fit.law.inputs})
    (points,) = ax.collections
    np.testing.assert_allclose(points.get_offsets(), np.column_stack([pred, data["loss"]]))
    (diag,) = ax.get_lines()  # only y = x: no line through the runs sorted on one input
    x, y = diag.get_xdata(), diag.get_ydata()
    np.testing.assert_array_equal(x, y)
    assert x[0] <= min(pred.min(), data["loss"].min()) and x[-1] >= max(pred.max(), data["loss"].max())
    assert ax.get_xlim() == ax.get_ylim()
    assert ax.get_xscale() == "linear"  # 3 to 6: less than a decade


def _toy(span):
    rng = np.random.default_rng(0)
    data = {"params": np.geomspace(1e6, 1e6 * span, 20), "steps": rng.uniform(1e3, 1e5, 20)}

    def predict(X):
        return 1e3 * X["params"] ** -0.5 * (X["steps"] / 1e4) ** -0.1

    data["loss"] = predict(data) * np.exp(0.05 * rng.standard_normal(20))
    law = SimpleNamespace(name="toy", inputs=("params", "steps"), target="loss")
    return SimpleNamespace(law=law, params={"a": 1.0}, predict=predict), data


def test_observed_vs_predicted_goes_log_when_the_values_span_a_decade():
    fit, data = _toy(1e4)  # loss spans two decades
    ax = plot_scaling_fit(fit, data).axes[0]
    assert ax.get_xscale() == ax.get_yscale() == "log"
    np.testing.assert_allclose(ax.collections[0].get_offsets(), np.column_stack([fit.predict(data), data["loss"]]))
    fit, data = _toy(10.0)  # a factor ~3
    ax = plot_scaling_fit(fit, data).axes[0]
    assert ax.get_xscale() == ax.get_yscale() == "linear"


def test_one_input_law_keeps_the_fitted_curve_against_its_input():
    fit, data = _fit("downstream_error")
    (ax,) = plot_scaling_fit(fit, data).axes
    assert ax.get_xlabel() == "loss" and ax.get_ylabel() == "error"
    (line,) = _by_label(ax, "fit")
    order = np.argsort(data["loss"])
    np.testing.assert_allclose(line.get_xydata(), np.column_stack([data["loss"][order],
                                                                   fit.predict(loss=data["loss"])[order]]))
