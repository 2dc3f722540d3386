"""losslab.report forecast plots: the drawn data is what was given, bad input raises, PNGs are written."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.figure import Figure

from losslab._errors import DataError
from losslab.forecast import Curve
from losslab.report import plot_curve_fit, plot_loss_prediction, plot_schedule_plan


class PowerInArea:
    """A tiny stand-in fit: L = 2 + (sum of lr)^-0.5, enough to check what the plots draw."""

    law = "toy"

    def predict(self, lr):
        return 2.0 + np.cumsum(np.asarray(lr, dtype=np.float64)) ** -0.5


def _curve(name: str, lr: np.ndarray, noise: float, every: int = 10) -> Curve:
    loss = np.full(lr.size, np.nan)
    idx = np.arange(every - 1, lr.size, every)
    rng = np.random.default_rng(0)
    loss[idx] = PowerInArea().predict(lr)[idx] * (1 + noise * rng.standard_normal(idx.size))
    return Curve(lr, loss, name)


@pytest.fixture
def curves():
    t = np.arange(1, 501)
    return [_curve("constant", np.full(500, 0.1), 0.002),
            _curve("cosine", 0.05 + 0.05 * np.cos(np.pi * t / 500), 0.002)]


def test_curve_fit_plot_draws_measured_fit_lr_and_residuals(curves, tmp_path):
    fig = plot_curve_fit(PowerInArea(), curves)
    assert isinstance(fig, Figure)
    ax, ax_res, ax_lr = fig.axes  # loss, residuals, then the twin lr axis
    assert ax.get_title() == "toy law fitted on 2 runs"
    lines = ax.get_lines()
    assert len(lines) == 4  # measured points + fit line per run
    c = curves[1]
    np.testing.assert_array_equal(lines[2].get_xdata(), c.measured)
    np.testing.assert_array_equal(lines[3].get_ydata(), PowerInArea().predict(c.lr))
    pred = PowerInArea().predict(c.lr)[c.measured - 1]
    expected = 100 * (c.loss[c.measured - 1] - pred) / pred
    np.testing.assert_allclose(ax_res.get_lines()[1].get_ydata(), expected)
    np.testing.assert_array_equal(ax_lr.get_lines()[1].get_ydata(), c.lr)
    lo, hi = ax.get_ylim()  # zoomed on the run after its first 5 % of steps
    assert lo < pred[5:].min() and hi > pred[5:].max() and hi < PowerInArea().predict(c.lr)[0]
    out = tmp_path / "fit.png"
    fig.savefig(out, dpi=60)
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_prediction_plot_band_lr_and_measured(curves):
    c = curves[1]
    loss = PowerInArea().predict(c.lr)
    fig = plot_loss_prediction(c.lr, loss, loss - 0.01, loss + 0.02, measured=c, level=0.8)
    ax, ax_lr = fig.axes
    band = ax.collections[0].get_paths()[0].vertices
    assert band[:, 1].min() == pytest.approx((loss - 0.01).min()) and band[:, 1].max() == pytest.approx((loss + 0.02).max())
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["80% interval", "predicted", "measured (cosine)"]
    np.testing.assert_array_equal(ax_lr.get_lines()[0].get_ydata(), c.lr)
    # without an interval there is no band
    assert not plot_loss_prediction(c.lr, loss).axes[0].collections


def test_schedule_plan_plot_reports_each_final_loss(curves):
    fit = PowerInArea()
    fig = plot_schedule_plan(fit, {c.name: c.lr for c in curves})
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels == [f"{c.name}: final {fit.predict(c.lr)[-1]:.4f}" for c in curves]


@pytest.mark.parametrize(("call", "message"), [
    (lambda: plot_curve_fit(PowerInArea(), []), "at least one curve"),
    (lambda: plot_schedule_plan(PowerInArea(), {}), "at least one schedule"),
    (lambda: plot_loss_prediction(np.ones(5), np.ones(4)), "same length"),
    (lambda: plot_loss_prediction(np.ones(5), np.ones(5), np.ones(4), np.ones(5)), "lower and upper must have shape"),
])
def test_bad_input(call, message):
    with pytest.raises(DataError, match=message):
        call()


def test_dense_logs_are_drawn_as_bin_medians():
    lr = np.full(2000, 0.1)
    c = _curve("dense", lr, 0.01, every=1)  # 2000 measured steps
    fig = plot_curve_fit(PowerInArea(), [c])
    points = fig.axes[0].get_lines()[0]
    assert len(points.get_xdata()) == 400
    first_bin = c.loss[:5]  # 2000 points in 400 bins of 5
    assert points.get_ydata()[0] == pytest.approx(np.median(first_bin))
    assert "bin medians" in fig.axes[0].get_ylabel()
    pred = plot_loss_prediction(lr, PowerInArea().predict(lr), measured=c)
    assert "bin medians" in pred.axes[0].get_legend().get_texts()[1].get_text()
