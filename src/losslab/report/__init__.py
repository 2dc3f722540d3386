"""Plots and reports (matplotlib with the Agg backend; every plot function returns a ``matplotlib.figure.Figure``).

- :func:`plot_curve_fit`: measured loss against a fitted loss-curve law, with the lr and the residuals.
- :func:`plot_loss_prediction`: a predicted loss curve with its interval band and the schedule underneath.
- :func:`plot_schedule_plan`: schedules side by side with the loss a fitted law predicts for each.

Figures are built with ``matplotlib.figure.Figure`` directly (no pyplot state), so they work in scripts, servers and
notebooks alike; save them with ``fig.savefig(path)``.
"""

from losslab.report.forecast_plots import plot_curve_fit, plot_loss_prediction, plot_schedule_plan

__all__ = ["plot_curve_fit", "plot_loss_prediction", "plot_schedule_plan"]
