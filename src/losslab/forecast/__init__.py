"""Loss-curve laws across learning-rate schedules: fitting, prediction, intervals and schedule planning.

NumPy/SciPy only (never imports torch). Typical use::

    from losslab.forecast import Curve, fit_curves, plan_schedule
    fit = fit_curves([Curve(lr, loss, "cosine")], law="auto")
    loss = fit.predict(other_lr)
"""

from losslab.forecast._curve import Curve
from losslab.forecast.fit import CurveFit, fit_curves
from losslab.forecast.io import load_curve, load_schedule, write_prediction_csv
from losslab.forecast.plan import SchedulePlan, plan_schedule

__all__ = [
    "Curve",
    "CurveFit",
    "SchedulePlan",
    "fit_curves",
    "load_curve",
    "load_schedule",
    "plan_schedule",
    "write_prediction_csv",
]
