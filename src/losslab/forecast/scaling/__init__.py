"""Scaling laws across runs: fit, extrapolate, allocate compute, compare, with bootstrap uncertainty.

NumPy/SciPy only (never imports torch). Every law is registered in :data:`registry`
(``losslab list scaling-laws``) and fitted by the same robust recipe: Huber loss on (log) residuals, a grid of
starts run together by a vectorised L-BFGS with analytic gradients, a scipy L-BFGS-B polish of the best optima,
and bootstrap resampling for standard errors and intervals.

Example:
    >>> import numpy as np
    >>> from losslab.forecast.scaling import fit_scaling_law
    >>> N = np.repeat([1e8, 4e8, 1.6e9, 6.4e9], 3); D = np.tile([2e9, 8e9, 3.2e10], 4)
    >>> fit = fit_scaling_law({"N": N, "D": D, "loss": 1.8 + 480 / N**0.35 + 2100 / D**0.37},
    ...                       starts="coarse", quiet=True)
    >>> round(fit.params["beta"], 3)
    0.37
"""

from losslab.forecast.scaling._catalogue import ScalingLawInfo, get_law, registry
from losslab.forecast.scaling._data import ScalingData, read_runs
from losslab.forecast.scaling._engine import BatchResult, batched_lbfgs, huber
from losslab.forecast.scaling._fit import fit_scaling_law
from losslab.forecast.scaling._law import ScalingLaw
from losslab.forecast.scaling._result import ScalingFit
from losslab.forecast.scaling.chinchilla import ChinchillaLaw, chinchilla_optimal
from losslab.forecast.scaling.compare import compare_fits
from losslab.forecast.scaling.gadre import DownstreamErrorLaw, OverTrainingLaw
from losslab.forecast.scaling.henighan import BivariateNMTLaw, PowerLawConstant, optimal_model_size
from losslab.forecast.scaling.kaplan import KaplanNDLaw, KaplanNSLaw
from losslab.forecast.scaling.loss_to_loss import LossToLossLaw
from losslab.forecast.scaling.protocol import absolute_relative_error, hitchhiker_evaluate, select_checkpoints
from losslab.forecast.scaling.rl import SigmoidComputeLaw

__all__ = [
    "BatchResult",
    "BivariateNMTLaw",
    "ChinchillaLaw",
    "DownstreamErrorLaw",
    "KaplanNDLaw",
    "KaplanNSLaw",
    "LossToLossLaw",
    "OverTrainingLaw",
    "PowerLawConstant",
    "ScalingData",
    "ScalingFit",
    "ScalingLaw",
    "ScalingLawInfo",
    "SigmoidComputeLaw",
    "absolute_relative_error",
    "batched_lbfgs",
    "chinchilla_optimal",
    "compare_fits",
    "fit_scaling_law",
    "get_law",
    "hitchhiker_evaluate",
    "huber",
    "optimal_model_size",
    "read_runs",
    "registry",
    "select_checkpoints",
]
