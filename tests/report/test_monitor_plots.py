"""losslab.report.plot_monitor: what the panels draw (data, log scale, non-finite markers, events), bad input raises."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.figure import Figure

from losslab._errors import DataError
from losslab.report import plot_monitor


def _labelled(ax, label):
    return [ln for ln in ax.get_lines() if ln.get_label() == label]


def _legend_texts(ax):
    legend = ax.get_legend()
    return [t.get_text() for t in legend.get_texts()] if legend is not None else []


def test_loss_panel_draws_the_finite_points_on_a_linear_scale_when_the_loss_is_narrow():
    fig = plot_monitor({"step": [1, 2, 3, 4], "loss": [3.0, None, 2.5, 2.0]})
    assert isinstance(fig, Figure)
    (ax,) = fig.axes
    assert ax.get_yscale() == "linear"  # spans less than a factor 20
    np.testing.assert_array_equal(ax.get_lines()[0].get_xydata(), [[1, 3.0], [3, 2.5], [4, 2.0]])
    assert ax.get_ylabel() == "loss" and ax.get_xlabel() == "step"


def test_loss_spanning_more_than_a_factor_20_and_the_gradient_norm_are_on_log_axes():
    steps = np.arange(1, 51)
    fig = plot_monitor({"step": steps, "loss": 100.0 / steps ** 1.5, "grad_norm": np.full(50, 1.5),
                        "update_ratio": np.full(50, -1.0)})
    ax_loss, ax_grad, ax_ratio = fig.axes
    assert ax_loss.get_yscale() == "log"
    assert ax_grad.get_yscale() == "log"  # norms always, even when flat
    assert ax_ratio.get_yscale() == "linear"  # non-positive values cannot go on a log axis
    assert [ax.get_ylabel() for ax in fig.axes] == ["loss", "gradient norm", "update / parameter norm"]
    np.testing.assert_allclose(ax_grad.get_lines()[0].get_ydata(), 1.5)


def test_non_finite_values_are_marked_at_the_top_of_their_panel():
    nan, inf = float("nan"), float("inf")
    columns = {"step": [1, 2, 3, 4, 5, 6], "loss": [3.0, inf, 2.0, nan, 1.5, nan]}
    events = [{"step": 4, "metric": "loss", "value": nan}]  # NaN at an event step is a real non-finite loss
    (ax,) = plot_monitor(columns, events).axes
    (marks,) = _labelled(ax, "non-finite")
    assert marks.get_marker() == "^"
    # the inf at step 2 and the flagged NaN at step 4; the NaN at step 6 is "not sampled", left unmarked
    np.testing.assert_array_equal(marks.get_xydata(), [[2, 3.0], [4, 3.0]])
    assert "non-finite" in _legend_texts(ax)


def test_no_marker_when_every_value_is_finite():
    (ax,) = plot_monitor({"step": [1, 2, 3], "loss": [3.0, 2.0, 1.0]}).axes
    assert _labelled(ax, "non-finite") == []


def test_events_are_vertical_lines_on_every_panel_and_circles_on_their_metric():
    columns = {"step": [1, 2, 3], "loss": [3.0, 9.0, 2.0], "grad_norm": [1.0, 5.0, 1.0]}
    fig = plot_monitor(columns, [{"step": 2, "metric": "loss", "value": 9.0}])
    ax_loss, ax_grad = fig.axes
    for ax in (ax_loss, ax_grad):
        vlines = [ln for ln in ax.get_lines() if ln.get_linestyle() == "--"]
        assert [tuple(ln.get_xdata()) for ln in vlines] == [(2.0, 2.0)]
    circles = [ln for ln in ax_loss.get_lines() if ln.get_marker() == "o"]
    np.testing.assert_array_equal(circles[0].get_xydata(), [[2, 9.0]])
    assert not [ln for ln in ax_grad.get_lines() if ln.get_marker() == "o"]
    assert "loss event" in _legend_texts(ax_loss)


def test_a_metric_without_finite_values_gets_no_panel():
    fig = plot_monitor({"step": [1, 2], "loss": [None, None], "grad_norm": [1.0, 2.0]})
    assert [ax.get_ylabel() for ax in fig.axes] == ["gradient norm"]


@pytest.mark.parametrize(("columns", "match"), [
    ({"step": [], "loss": []}, r"no finite value in 'loss'.*0 steps"),
    ({"step": [1, 2, 3], "loss": [float("nan")] * 3}, r"no finite value in 'loss'.*given: 'loss'"),
    ({"step": [1, 2, 3], "loss": [None, float("inf"), None]}, r"no finite value"),
    ({"step": [1, 2, 3]}, r"no finite value.*given: none"),
    ({"step": [1, 2, 3], "loss": [1.0, 2.0]}, r"column 'loss' of `columns` has 2 values but 'step' has 3"),
    ({"step": [1, 2], "loss": [1.0, 2.0], "grad_norm": [1.0]}, r"column 'grad_norm'.*1 values but 'step' has 2"),
    ({"step": [1, 2, 3], "loss": ["a", "b", "c"]}, r"column 'loss' of `columns` holds non-numeric"),
    ({"loss": [1.0]}, r"needs a 'step' column"),
])
def test_bad_columns_raise_a_data_error(columns, match):
    with pytest.raises(DataError, match=match):
        plot_monitor(columns)
