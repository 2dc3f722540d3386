"""losslab.report diagnostics plots: the drawn data is what was given (chord, barrier, thresholds, slopes), and
empty or all-non-finite input raises a DataError naming the argument instead of drawing an empty figure."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
from matplotlib.figure import Figure

from losslab._errors import DataError
from losslab.diagnostics import (
    Interpolation,
    LossLandscape,
    SampleSizeChange,
    SharpnessRecord,
    SpectralDensity,
)
from losslab.report import (
    plot_interpolation,
    plot_layerwise_barriers,
    plot_loss_line,
    plot_loss_plane,
    plot_sample_size_change,
    plot_sharpness,
    plot_spectral_density,
)

nan, inf = float("nan"), float("inf")


def _line(alphas, losses):
    return LossLandscape(np.asarray(alphas, dtype=float), None, np.asarray(losses, dtype=float), 1.0, 0)


def _plane(losses, n=5):
    g = np.linspace(-1, 1, n)
    return LossLandscape(g, g, np.asarray(losses, dtype=float), 1.0, 0)


def _record(step, sharpness, threshold=None, rule="gd", preconditioned=None):
    return SharpnessRecord(step=step, loss=1.0, sharpness=sharpness, preconditioned=preconditioned,
                           threshold=threshold, ratio=None, rule=rule, lr=0.1, n_matvec=10)


class _Density:
    """Stand-in with the one method the plot uses."""

    def __init__(self, t, phi):
        self.t, self.phi = np.asarray(t, dtype=float), np.asarray(phi, dtype=float)

    def density(self, sigma=None):
        return self.t, self.phi


def test_interpolation_chord_joins_the_loss_at_the_smallest_and_largest_alpha():
    a = np.linspace(0, 1, 6)
    losses = np.array([1.0, 2.5, 3.5, 3.8, 3.6, 3.0])  # end points differ: a reversed chord would not match
    fig = plot_interpolation(Interpolation(a, losses, barrier=1.3))
    assert isinstance(fig, Figure)
    (ax,) = fig.axes
    curve, chord = ax.get_lines()
    np.testing.assert_array_equal(curve.get_xydata(), np.column_stack([a, losses]))
    assert chord.get_label() == "chord"
    np.testing.assert_allclose(chord.get_xydata(), np.column_stack([a, 1.0 + 2.0 * a]))
    (note,) = ax.texts
    assert note.get_text() == "barrier 1.3"
    assert note.xy == (a[2], losses[2])  # the highest point above the chord


def test_interpolation_chord_with_alphas_in_decreasing_order():
    a = np.array([1.0, 0.5, 0.0])
    losses = np.array([5.0, 4.0, 1.0])
    _curve, chord = plot_interpolation(Interpolation(a, losses, barrier=0.0)).axes[0].get_lines()
    np.testing.assert_allclose(chord.get_ydata(), [5.0, 3.0, 1.0])


def test_loss_line_draws_each_landscape_with_its_label_and_log_axis():
    lines = [_line([-1, 0, 1], [3.0, 1.0, 2.0]), _line([-1, 0, 1], [4.0, 1.0, inf])]
    (ax,) = plot_loss_line(lines, labels=["a", "b"], log=True).axes
    np.testing.assert_array_equal(ax.get_lines()[0].get_xydata(), [[-1, 3.0], [0, 1.0], [1, 2.0]])
    assert ax.get_yscale() == "log"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["a", "b"]


def test_loss_plane_contours_the_finite_losses_with_log_levels():
    z = np.add.outer(np.linspace(-1, 1, 5) ** 2, np.linspace(-1, 1, 5) ** 2) + 0.1
    z[0, 0] = inf  # a diverged corner is left out, not drawn
    fig = plot_loss_plane(_plane(z))
    ax = fig.axes[0]
    levels = ax.collections[0].levels
    assert levels[0] == pytest.approx(0.1) and levels[-1] == pytest.approx(np.max(z[np.isfinite(z)]))
    np.testing.assert_allclose(np.diff(np.log(levels)), np.log(levels[1] / levels[0]))  # geometric
    np.testing.assert_array_equal(ax.get_lines()[-1].get_xydata(), [[0, 0]])  # the centre star


@pytest.mark.parametrize("log", [True, False])
def test_flat_loss_plane_says_so_and_draws_one_colour(log):
    z = np.full((5, 5), 2.0)
    z[4, 4] = nan
    with pytest.warns(RuntimeWarning, match="loss is 2 at every point"):
        fig = plot_loss_plane(_plane(z), log=log)
    ax, cbar = fig.axes
    assert [t.get_text() for t in ax.texts] == ["flat: loss = 2 everywhere"]
    assert [t.get_text() for t in cbar.get_yticklabels()] == ["2"]
    fig.savefig(io.BytesIO(), format="png")  # renders without a further warning


def test_nearly_flat_plane_is_not_flagged():
    z = np.full((5, 5), 2.0)
    z[2, 2] = 2.0 - 1e-6
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fig = plot_loss_plane(_plane(z))
    assert not fig.axes[0].texts


def test_spectral_density_skips_non_finite_values_and_floors_for_the_log_axis():
    t = np.linspace(-1, 1, 5)
    (ax,) = plot_spectral_density(_Density(t, [0.0, 1.0, nan, 2.0, 0.5]), eigenvalues=[0.7]).axes
    assert ax.get_yscale() == "log"
    y = ax.get_lines()[0].get_ydata()
    np.testing.assert_allclose(y[[0, 1, 3, 4]], [2e-8, 1.0, 2.0, 0.5])
    assert [tuple(ln.get_xdata()) for ln in ax.get_lines()[1:]] == [(0.7, 0.7), (0.0, 0.0)]


def test_sharpness_draws_values_and_the_threshold():
    records = [_record(10, 1.0, 20.0), _record(20, 5.0, 20.0), _record(30, 19.0, 20.0)]
    (ax,) = plot_sharpness(records).axes
    values, threshold = ax.get_lines()
    np.testing.assert_array_equal(values.get_xydata(), [[10, 1.0], [20, 5.0], [30, 19.0]])
    np.testing.assert_array_equal(threshold.get_ydata(), [20.0] * 3)
    assert threshold.get_label() == "stability threshold"


def test_sample_size_change_drops_non_positive_deltas_and_draws_a_1_over_n_guide():
    res = SampleSizeChange(n=np.array([1.0, 2, 4, 8]), delta=np.array([0.5, 0.0, 0.125, 0.0625]), slope=-1.0,
                           n_points=4)
    (ax,) = plot_sample_size_change(res).axes
    data, guide = ax.get_lines()
    np.testing.assert_array_equal(data.get_xydata(), [[1, 0.5], [4, 0.125], [8, 0.0625]])
    np.testing.assert_allclose(guide.get_ydata(), 0.5 / np.array([1, 4, 8]))
    assert ax.get_xscale() == ax.get_yscale() == "log"


def test_layerwise_barriers_bars_and_labels():
    barriers = {"fc1": Interpolation(np.zeros(1), np.zeros(1), 0.25), "fc2": Interpolation(np.zeros(1), np.zeros(1),
                                                                                          -0.1)}
    (ax,) = plot_layerwise_barriers(barriers).axes
    assert [p.get_height() for p in ax.patches] == [0.25, -0.1]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["fc1", "fc2"]


@pytest.mark.parametrize(("call", "match"), [
    (lambda: plot_loss_line([]), r"plot_loss_line: .*`lines` is an empty sequence"),
    (lambda: plot_loss_line(_line([], [])), r"plot_loss_line: .*`lines` is empty"),
    (lambda: plot_loss_line(_line([-1, 0, 1], [nan, inf, nan])), r"`lines` has no finite point among its 3"),
    (lambda: plot_loss_line([_line([0, 1], [1, 2]), _line([0, 1], [nan, nan])]), r"`lines\[1\]` has no finite"),
    (lambda: plot_loss_line(_line([0, 1, 2], [1.0, 2.0])), r"`lines` needs one y value per x"),
    (lambda: plot_loss_line([_line([0, 1], [1, 2])], labels=["a", "b"]), r"`labels` has 2 names for 1 lines"),
    (lambda: plot_loss_plane(_plane(np.full((5, 5), nan))), r"`plane.losses` has no finite value among its 25"),
    (lambda: plot_loss_plane(_plane(np.full((5, 5), inf))), r"`plane.losses` has no finite value"),
    (lambda: plot_loss_plane(_plane(np.ones((4, 5)))), r"`plane.losses` has shape \(4, 5\) for 5 alphas"),
    (lambda: plot_interpolation(Interpolation(np.array([]), np.array([]), 0.0)), r"`interp` .* is empty"),
    (lambda: plot_interpolation(Interpolation(np.linspace(0, 1, 5), np.full(5, nan), nan)), r"no finite point"),
    (lambda: plot_layerwise_barriers({}), r"`barriers` is empty"),
    (lambda: plot_layerwise_barriers({"fc": Interpolation(np.zeros(1), np.zeros(1), nan)}), r"no finite barrier"),
    (lambda: plot_sharpness([]), r"`records` is empty"),
    (lambda: plot_sharpness([_record(i, nan) for i in range(3)]), r"`records` \(step, sharpness\) has no finite"),
    (lambda: plot_sharpness([_record(1, 1.0, rule="adam")]), r"`records` \(step, preconditioned\) has no finite"),
    (lambda: plot_spectral_density(_Density([], [])), r"plot_spectral_density: .*density.density\(\).* is empty"),
    (lambda: plot_spectral_density(_Density(np.linspace(-1, 1, 10), np.full(10, nan))), r"no finite point"),
    (lambda: plot_sample_size_change(SampleSizeChange(np.arange(1, 6), np.zeros(5), nan, 5)),
     r"`result.delta` has no positive finite value"),
    (lambda: plot_sample_size_change(SampleSizeChange(np.array([]), np.array([]), nan, 0)), r"`result` .* is empty"),
])
def test_nothing_to_draw_raises_a_data_error_naming_the_argument(call, match):
    with pytest.raises(DataError, match=match):
        call()


def test_spectral_density_of_a_real_density_with_nan_nodes_raises():
    dens = SpectralDensity(nodes=[np.array([nan, nan])], weights=[np.array([0.5, 0.5])], n=10, n_matvec=2)
    with pytest.raises(DataError, match="plot_spectral_density"):
        plot_spectral_density(dens)
