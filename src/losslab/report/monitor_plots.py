"""Plot a monitor log: loss, gradient norm (and update ratio when logged) against step, with events marked."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from losslab._errors import DataError

__all__ = ["plot_monitor"]

_COLORS = {"loss": "tab:red", "grad_norm": "tab:purple", "nonfinite_grads": "black", "monitor": "tab:gray"}


def _column(columns: Mapping[str, Any], name: str) -> np.ndarray | None:
    if name not in columns:
        return None
    try:
        col = np.array([np.nan if v is None else v for v in columns[name]], dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DataError(f"plot_monitor: column {name!r} of `columns` holds non-numeric values ({exc}); pass numbers "
                        "or None per step, e.g. MonitorLog.columns from losslab.monitor.read_log") from exc
    if col.ndim != 1:
        raise DataError(f"plot_monitor: column {name!r} of `columns` must be one value per step; got an array of "
                        f"shape {col.shape}")
    return col


def plot_monitor(columns: Mapping[str, Sequence[float | None] | np.ndarray], events: Sequence[Mapping[str, Any]] = (),
                 title: str | None = None) -> Figure:
    """Stacked panels of ``loss``, ``grad_norm`` and, when present, ``update_ratio``, sharing the step axis.

    Events are drawn as vertical lines across every panel (coloured by the metric that fired) and as markers on
    the panel of their metric; non-finite values appear as triangles at the top edge of their panel. Only columns with at least one finite
    value get a panel.

    Args:
        columns: ``MonitorLog.columns`` (from :func:`losslab.monitor.read_log`) or ``TrainingMonitor.history``.
        events: event dicts (``step``, ``metric``, ``value``, ``detector``, ``message``).
        title: figure title.

    Returns:
        A matplotlib ``Figure`` (Agg-safe; the caller saves or closes it).

    Raises:
        DataError: no ``step`` column, a column whose length differs from ``step``, non-numeric values, or no
            finite value in any of ``loss``, ``grad_norm``, ``update_ratio``.

    Example:
        >>> fig = plot_monitor({"step": [1, 2, 3], "loss": [3.0, 9.0, 2.0]},
        ...                    [{"step": 2, "metric": "loss", "value": 9.0}])
        >>> len(fig.axes)
        1
    """
    steps = _column(columns, "step")
    if steps is None:
        raise DataError("plot_monitor needs a 'step' column; pass MonitorLog.columns or TrainingMonitor.history")
    metrics = (("loss", "loss"), ("grad_norm", "gradient norm"), ("update_ratio", "update / parameter norm"))
    values: dict[str, np.ndarray] = {}
    for name, _label in metrics:
        col = _column(columns, name)
        if col is None:
            continue
        if col.size != steps.size:
            raise DataError(f"plot_monitor: column {name!r} of `columns` has {col.size} values but 'step' has "
                            f"{steps.size}; every column needs one value per step (None where not sampled)")
        values[name] = col
    panels = [(name, label) for name, label in metrics if name in values and np.isfinite(values[name]).any()]
    if not panels:
        given = ", ".join(repr(n) for n in values) or "none"
        raise DataError(f"plot_monitor: nothing to draw, `columns` has no finite value in 'loss', 'grad_norm' or "
                        f"'update_ratio' ({steps.size} steps; metric columns given: {given}); pass a log with at "
                        "least one finite loss or gradient norm")
    fig = Figure(figsize=(8, 2.3 * len(panels) + 0.6))
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    for ax, (name, label) in zip(axes, panels):
        y = values[name]
        ok = np.isfinite(y)
        sparse = ok.sum() < 0.5 * len(y)  # a sampled metric (every_n_steps): show the samples
        ax.plot(steps[ok], y[ok], lw=1.1, color="tab:blue", marker="." if sparse else None, ms=4)
        if ok.any() and (y[ok] > 0).all() and (name != "loss" or y[ok].max() > 20 * y[ok].min()):
            ax.set_yscale("log")  # norms always; the loss when it spans more than a factor 20
        event_steps = [float(e["step"]) for e in events if e.get("metric") == name and e.get("step") is not None]
        bad = np.isinf(y) | (np.isnan(y) & np.isin(steps, event_steps))  # NaN alone may just mean "not sampled"
        if bad.any():
            top = np.nanmax(y[ok]) if ok.any() else 1.0
            ax.plot(steps[bad], np.full(bad.sum(), top), "^", color="black", ms=7, label="non-finite")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    seen: set[str] = set()
    for e in events:
        metric = str(e.get("metric", "monitor"))
        color = _COLORS.get(metric, "tab:orange")
        step = e.get("step")
        if step is None:
            continue
        for ax in axes:
            ax.axvline(float(step), color=color, lw=0.9, ls="--", alpha=0.7,
                       label=f"{metric} event" if metric not in seen and ax is axes[0] else None)
        seen.add(metric)
        for ax, (name, _) in zip(axes, panels):
            value = e.get("value")
            if name == metric and isinstance(value, (int, float)) and np.isfinite(value):
                ax.plot([step], [value], "o", mfc="none", mec=color, ms=10, mew=1.5)
    _handles, labels = axes[0].get_legend_handles_labels()
    if labels:
        axes[0].legend(fontsize=8, loc="lower right", bbox_to_anchor=(1.0, 1.0), ncol=4, frameon=False,
                       borderaxespad=0.2)  # above the panel: never hides a spike
    axes[-1].set_xlabel("step")
    n = len(events)
    fig.suptitle(title or f"training monitor: {len(steps)} steps, {n} event{'s' if n != 1 else ''}", fontsize=11,
                 x=0.01, ha="left")
    fig.tight_layout()
    return fig
