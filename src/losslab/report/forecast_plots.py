"""Plots of loss-curve fits and forecasts (matplotlib, Agg-safe); every function returns a Figure.

Save with ``fig.savefig("fit.png", dpi=110)`` and close with ``matplotlib.pyplot.close(fig)``. The y-axis of the
loss panels is zoomed on the run after its warmup and the first 5 % of the remaining steps (the early loss, often
2-5x larger, would flatten everything that matters); the clipped start is still drawn, just off-axis.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from losslab._errors import DataError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from losslab.forecast import Curve

__all__ = ["plot_curve_fit", "plot_loss_prediction", "plot_schedule_plan"]

_BAND_LABEL = "{:.0%} interval"


class _Predictor(Protocol):
    law: str

    def predict(self, lr: np.ndarray) -> np.ndarray: ...


def _figure(nrows: int, heights: Sequence[float], width: float = 8.0) -> tuple[Figure, Any]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, 1.6 + 2.0 * sum(heights)), layout="constrained")
    axes = fig.subplots(nrows, 1, sharex=True, gridspec_kw={"height_ratios": list(heights)}, squeeze=False)[:, 0]
    return fig, axes


def _zoom_start(lr: np.ndarray) -> int:
    """First step shown at full scale: past the warmup (steps before the peak lr) plus 5 % of the rest."""
    warmup = int(np.argmax(lr))
    return max(1, warmup + int(0.05 * (lr.size - warmup)))


def _limits(series: Sequence[tuple[np.ndarray, np.ndarray]], start: int) -> tuple[float, float] | None:
    vals = [v[(s >= start) & np.isfinite(v)] for s, v in series]
    vals = [v for v in vals if v.size]
    if not vals:
        return None
    allv = np.concatenate(vals)
    return float(allv.min()), float(allv.max())


def _zoom(ax: Any, series: Sequence[tuple[np.ndarray, np.ndarray]], start: int,
          band: Sequence[tuple[np.ndarray, np.ndarray]] = ()) -> None:
    """y-limits from the curves from step ``start`` on (see the module docstring).

    An interval ``band`` widens the view by at most the curves' own span on each side, so that a very wide
    band shows as filling the panel instead of flattening the curves.
    """
    limits = _limits(series, start)
    if limits is None:
        return
    lo, hi = limits
    span = hi - lo if hi > lo else 0.01 * abs(hi) + 1e-12
    band_limits = _limits(band, start)
    if band_limits is not None:
        lo = max(min(lo, band_limits[0]), lo - span)
        hi = min(max(hi, band_limits[1]), hi + span)
    pad = 0.08 * (hi - lo)
    ax.set_ylim(lo - pad, hi + pad)


def _display_points(curve: Curve, max_points: int = 400) -> tuple[np.ndarray, np.ndarray, bool]:
    """Measured (step, loss); a dense log is shown as medians of consecutive bins (True when binned)."""
    steps = curve.measured
    values = curve.loss[steps - 1]
    if steps.size <= max_points:
        return steps, values, False
    bins = np.array_split(np.arange(steps.size), max_points)
    return (np.array([int(np.median(steps[b])) for b in bins]), np.array([np.median(values[b]) for b in bins]), True)


def plot_curve_fit(fit: _Predictor, curves: Sequence[Curve], *, title: str | None = None) -> Figure:
    """Measured loss against the fitted law for each run, the lr on a twin axis, and the relative residuals.

    Args:
        fit: a fitted law (:class:`losslab.forecast.fit.CurveFit` or anything with ``law`` and ``predict(lr)``).
        curves: the runs to draw (usually the ones the law was fitted on).
        title: figure title (default: the law's name and the number of runs).

    Returns:
        A Figure with two panels: loss (points = measured, lines = fit; dotted lines on the right axis = lr) and
        ``(measured - fit) / fit`` in percent. A run with more than 400 measured steps is drawn as the medians of
        400 consecutive bins, so that dense per-step logs stay readable.

    Example:
        >>> fig = plot_curve_fit(fit, curves)           # doctest: +SKIP
        >>> fig.savefig("fit.png", dpi=110)             # doctest: +SKIP
    """
    if not curves:
        raise DataError("plot_curve_fit needs at least one curve")
    fig, (ax, ax_res) = _figure(2, [2.2, 1.0])
    ax_lr = ax.twinx()
    series, residuals = [], []
    binned = False
    start = max(_zoom_start(c.lr) for c in curves)
    for i, curve in enumerate(curves):
        color = f"C{i % 10}"
        pred = np.asarray(fit.predict(curve.lr), dtype=np.float64)
        steps, meas, was_binned = _display_points(curve)
        binned |= was_binned
        ax.plot(steps, meas, ".", ms=2.5, color=color, alpha=0.45)
        ax.plot(curve.steps, pred, "-", lw=1.6, color=color, label=curve.name, zorder=3)
        ax_lr.plot(curve.steps, curve.lr, ":", lw=1.0, color=color, alpha=0.8)
        rel = 100.0 * (meas - pred[steps - 1]) / pred[steps - 1]
        ax_res.plot(steps, rel, ".", ms=2.5, color=color, alpha=0.6)
        series += [(steps, meas), (curve.steps, pred)]
        residuals.append((steps, rel))
    _zoom(ax, series, start)
    _zoom(ax_res, residuals, start)
    ax.set_ylabel("loss  (points: measured" + (", bin medians" if binned else "") + "; lines: fit)")
    ax_lr.set_ylabel("learning rate (dotted)")
    ax_lr.set_ylim(bottom=0)
    ax.legend(loc="upper right", fontsize=8, ncol=2 if len(curves) > 4 else 1)
    ax_res.axhline(0.0, color="0.3", lw=0.8)
    ax_res.set_ylabel("residual (%)")
    ax_res.set_xlabel("step")
    ax.set_title(title or f"{fit.law} law fitted on {len(curves)} run{'s' * (len(curves) != 1)}")
    return fig


def plot_loss_prediction(
    lr: np.ndarray,
    loss: np.ndarray,
    lower: np.ndarray | None = None,
    upper: np.ndarray | None = None,
    *,
    measured: Curve | None = None,
    level: float = 0.9,
    title: str | None = None,
) -> Figure:
    """A predicted loss curve with its interval band, the schedule underneath, and measured points if given.

    Args:
        lr: per-step learning rate of steps ``1..T`` (the schedule that was predicted).
        loss: predicted loss, shape ``(T,)``; ``lower`` / ``upper``: the interval (drawn as a band when given).
        measured: a measured run on the same schedule to compare with (drawn as points; a log with more than 400
            measured steps is drawn as the medians of 400 consecutive bins).
        level: coverage of the interval, for the legend only.
        title: figure title.

    Returns:
        A Figure with the loss panel on top and the learning rate below.

    Example:
        >>> import numpy as np
        >>> lr = np.full(100, 1e-3); loss = 3 + 1 / np.arange(1, 101) ** 0.5
        >>> fig = plot_loss_prediction(lr, loss, loss - 0.01, loss + 0.01)
        >>> len(fig.axes)
        2
    """
    lr, loss = np.asarray(lr, dtype=np.float64), np.asarray(loss, dtype=np.float64)
    if lr.ndim != 1 or loss.shape != lr.shape:
        raise DataError(f"lr and loss must be 1-D arrays of the same length, got {lr.shape} and {loss.shape}")
    steps = np.arange(1, lr.size + 1)
    fig, (ax, ax_lr) = _figure(2, [2.2, 0.8])
    series = [(steps, loss)]
    if lower is not None and upper is not None:
        lo, hi = np.asarray(lower, dtype=np.float64), np.asarray(upper, dtype=np.float64)
        if lo.shape != loss.shape or hi.shape != loss.shape:
            raise DataError(f"lower and upper must have shape {loss.shape}, got {lo.shape} and {hi.shape}")
        ax.fill_between(steps, lo, hi, color="C0", alpha=0.2, lw=0, label=_BAND_LABEL.format(level))
        band = [(steps, lo), (steps, hi)]
    else:
        band = []
    ax.plot(steps, loss, "-", color="C0", lw=1.5, label="predicted", zorder=3)
    if measured is not None:
        m, y, binned = _display_points(measured)
        keep = m <= lr.size
        label = f"measured ({measured.name}{', bin medians' if binned else ''})"
        ax.plot(m[keep], y[keep], ".", ms=3, color="C3", alpha=0.6, label=label)
        series.append((m[keep], y[keep]))
    _zoom(ax, series, _zoom_start(lr), band)
    ax.set_ylabel("loss")
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title(title or f"predicted loss, final {loss[-1]:.4g}")
    ax_lr.plot(steps, lr, color="0.25", lw=1.2)
    ax_lr.set_ylim(bottom=0)
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("step")
    return fig


def plot_schedule_plan(fit: _Predictor, schedules: dict[str, np.ndarray], *, title: str | None = None) -> Figure:
    """Compare schedules: each one's lr (bottom) and the loss the fitted law predicts for it (top).

    Args:
        fit: a fitted law with ``predict(lr)``.
        schedules: label -> per-step lr (e.g. the planned schedule and the cosine / WSD baselines).
        title: figure title.

    Returns:
        A Figure; the legend gives each schedule's predicted final loss.

    Example:
        >>> fig = plot_schedule_plan(fit, {"cosine": lr_cos, "planned": lr_best})   # doctest: +SKIP
    """
    if not schedules:
        raise DataError("plot_schedule_plan needs at least one schedule")
    fig, (ax, ax_lr) = _figure(2, [2.0, 1.0])
    series = []
    start = max(_zoom_start(np.asarray(v, dtype=np.float64)) for v in schedules.values())
    for i, (label, lr_) in enumerate(schedules.items()):
        lr = np.asarray(lr_, dtype=np.float64)
        steps = np.arange(1, lr.size + 1)
        pred = np.asarray(fit.predict(lr), dtype=np.float64)
        ax.plot(steps, pred, color=f"C{i % 10}", lw=1.4, label=f"{label}: final {pred[-1]:.4f}")
        ax_lr.plot(steps, lr, color=f"C{i % 10}", lw=1.2)
        series.append((steps, pred))
    _zoom(ax, series, start)
    ax.set_ylabel(f"predicted loss ({fit.law})")
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title(title or "schedules compared by predicted loss")
    ax_lr.set_ylim(bottom=0)
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("step")
    return fig
