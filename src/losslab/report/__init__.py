"""Plots and reports (matplotlib with the Agg backend; every plot function returns a ``matplotlib.figure.Figure``).

Forecast:
- :func:`plot_curve_fit`: measured loss against a fitted loss-curve law, with the lr and the residuals.
- :func:`plot_loss_prediction`: a predicted loss curve with its interval band and the schedule underneath.
- :func:`plot_schedule_plan`: schedules side by side with the loss a fitted law predicts for each.
- :func:`plot_scaling_fit`: loss against compute per model size with a fitted scaling law and its frontier.

Monitor: :func:`plot_monitor` (loss, gradient norm, update ratio and detected events of a training log).

Diagnostics: :func:`plot_spectral_density`, :func:`plot_loss_line`, :func:`plot_loss_plane`,
:func:`plot_interpolation`, :func:`plot_layerwise_barriers`, :func:`plot_sharpness`, :func:`plot_sample_size_change`.

Figures are built with ``matplotlib.figure.Figure`` directly (no pyplot state), so they work in scripts, servers and
notebooks alike; save them with ``fig.savefig(path)``. None of these modules imports torch.
"""

from losslab.report.diagnostics_plots import (
    plot_interpolation,
    plot_layerwise_barriers,
    plot_loss_line,
    plot_loss_plane,
    plot_sample_size_change,
    plot_sharpness,
    plot_spectral_density,
)
from losslab.report.forecast_plots import plot_curve_fit, plot_loss_prediction, plot_schedule_plan
from losslab.report.monitor_plots import plot_monitor
from losslab.report.scaling_plots import plot_scaling_fit

__all__ = [
    "plot_curve_fit",
    "plot_interpolation",
    "plot_layerwise_barriers",
    "plot_loss_line",
    "plot_loss_plane",
    "plot_loss_prediction",
    "plot_monitor",
    "plot_sample_size_change",
    "plot_scaling_fit",
    "plot_schedule_plan",
    "plot_sharpness",
    "plot_spectral_density",
]
