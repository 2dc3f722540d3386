"""Prediction intervals for fitted loss-curve laws (cheap: no refits at prediction time).

Method (a linearised parameter ensemble plus a model-error term, both in log space):

1. Parameter uncertainty. At the optimum, the covariance of the parameters is ``Sigma = s^2 (J^T J)^+ * k``,
   with ``J`` the Jacobian of the log residuals, ``s`` a robust scale of the residuals (1.4826 * MAD) and
   ``k = (1 + rho) / (1 - rho)`` the inflation for residuals that are correlated along a curve (``rho`` is their
   lag-1 autocorrelation; neighbouring points of a loss curve share their error). The variance of the log
   prediction at a step is ``g^T Sigma g`` (delta method).
2. Model error. A held-out schedule is mispredicted by more than the in-sample residuals (the law is not exact).
   The fit is repeated (from the best grid start) on the first ``1 - holdout`` of each curve, scored on the
   held-out tails (extrapolation in time), and, with two curves or more, once without each curve, scored on that
   curve (transfer to another schedule). The largest of the three root-mean-square relative errors (in-sample,
   tails, left-out curves) is the model-error scale ``m``. The parameter covariance is rescaled by
   ``(m / s)^2`` as well, so the term that grows with extrapolation grows with the measured transfer error.
3. Interval: ``log Lhat +- z * sqrt(g^T Sigma g + m^2)``, ``z`` the two-sided normal quantile of ``level``.

The calibration runs once, at fit time, and is stored in ``CurveFit.uncertainty`` (a few numbers and the
covariance), so ``predict_interval`` costs one Jacobian evaluation at up to 256 steps. The measured coverage of
90 % intervals on held-out curves is in docs/benchmarks.md ("Forecast").
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.stats import norm

from losslab._errors import ConfigError

__all__ = ["calibrate", "prediction_interval"]

_MAX_JAC_STEPS = 256


def _lag1(residuals: np.ndarray, lengths: Sequence[int]) -> float:
    num = den = 0.0
    start = 0
    for n in lengths:
        r = residuals[start:start + n] - np.median(residuals[start:start + n])
        start += n
        if n > 2:
            num += float(np.sum(r[1:] * r[:-1]))
            den += float(np.sum(r * r))
    return float(np.clip(num / den, 0.0, 0.95)) if den > 0 else 0.0


def calibrate(fit: Any, law: Any, outcome: Any, points: Sequence[Any], *, seed: int = 0,
              holdout: float | None = None) -> dict[str, Any]:
    """Uncertainty block of a fit: covariance, residual scale and the held-out model-error scale.

    Args:
        fit: the :class:`~losslab.forecast.fit.CurveFit` being built (its settings give the hold-out fraction).
        law: the law object; outcome: the multi-start outcome (Jacobian and residuals at the optimum).
        points: the fitting points of every curve.
        seed: unused by the deterministic method, kept in the record for provenance.
        holdout: fraction of each curve held out for the model-error scale (default: the fit's ``holdout``).

    Returns:
        A JSON-safe dict with ``cov`` (list of lists), ``scale``, ``rho``, ``model_error`` and the method name.
    """
    from losslab.forecast._points import split_tail
    from losslab.forecast.fit import _fit_points, _rel_errors

    r = np.asarray(outcome.residuals, dtype=np.float64)
    j = np.asarray(outcome.jac, dtype=np.float64)
    scale = float(1.4826 * np.median(np.abs(r - np.median(r)))) or float(np.std(r)) or 1e-12
    rho = _lag1(r, [p.steps.size for p in points])
    inflation = (1.0 + rho) / (1.0 - rho)
    cov = scale**2 * inflation * np.linalg.pinv(j.T @ j)
    model_error = float(np.sqrt(np.mean(r**2)))
    holdout_rms = None
    frac = float(fit.settings.get("holdout", 0.2) if holdout is None else holdout)
    heads, tails = split_tail(points, frac) if frac > 0 else (list(points), [])
    if tails:
        try:
            lw, out = _fit_points(law.name, heads, law.options, fit.settings.get("huber_delta", 1e-3), True, 1)
            if np.all(np.isfinite(out.theta)):
                errs = np.concatenate([_rel_errors(lw, out.theta, p) for p in tails])
                holdout_rms = float(np.sqrt(np.mean(errs**2)))
                model_error = max(model_error, holdout_rms)
        except Exception:  # a failed calibration fit leaves the in-sample scale (recorded below)
            holdout_rms = None
    # leave-one-curve-out: schedule transfer, the error a user meets when predicting a new schedule
    loco_rms = None
    if frac > 0 and len(points) >= 2:
        errs_all = []
        for i in range(len(points)):
            rest = [p for j, p in enumerate(points) if j != i]
            try:
                lw, out = _fit_points(law.name, rest, law.options, fit.settings.get("huber_delta", 1e-3), True, 1)
            except Exception:  # a failed calibration fit is skipped (recorded as None when all fail)
                continue
            if np.all(np.isfinite(out.theta)):
                errs_all.append(_rel_errors(lw, out.theta, points[i]))
        if errs_all:
            loco_rms = float(np.sqrt(np.mean(np.concatenate(errs_all) ** 2)))
            model_error = max(model_error, loco_rms)
    # the parameter covariance is scaled with the held-out error too: a law that mispredicts held-out points
    # by more than its residuals is less certain of its parameters than the residuals say, and this term is the
    # one that widens with extrapolation (longer horizons, deeper drops than in the fitted curves)
    cov *= (model_error / scale) ** 2
    return {"method": "delta+holdout", "cov": cov.tolist(), "scale": scale, "rho": rho,
            "model_error": model_error, "holdout_rms": holdout_rms, "loco_rms": loco_rms, "holdout": frac, "seed": seed}


def prediction_interval(fit: Any, lr: np.ndarray, level: float = 0.9, *,
                        steps: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(loss, lower, upper)`` at every step (or at ``steps``) for a run with per-step ``lr``.

    Args:
        fit: a :class:`~losslab.forecast.fit.CurveFit` with an ``uncertainty`` block.
        lr: per-step learning rate of steps ``1..T``.
        level: two-sided coverage of the interval, in (0, 1).
        steps: optional 1-based steps.

    Returns:
        Three float64 arrays of the same shape: prediction, lower and upper bound.

    Example:
        >>> import numpy as np
        >>> from losslab.forecast import Curve
        >>> from losslab.forecast.fit import fit_curves
        >>> t = np.arange(1, 3001)
        >>> noisy = 2.0 + 3.0 * t ** -0.5 + np.random.default_rng(0).normal(0, 0.01, t.size)
        >>> fit = fit_curves([Curve(np.full(3000, 1e-3), noisy)], "power", quiet=True)
        >>> mid, lo, hi = fit.predict_interval(np.full(3000, 1e-3))
        >>> bool(np.all(lo < mid) and np.all(mid < hi))
        True
    """
    if not (isinstance(level, (int, float)) and 0.0 < level < 1.0):
        raise ConfigError(f"level must be a coverage in (0, 1), e.g. 0.9; got {level!r}")
    u = fit.uncertainty
    if not u or "cov" not in u:
        raise ConfigError("this fit has no uncertainty block (it was saved by an older version); fit it again")
    law = fit.law_object()
    theta = fit.theta
    at = np.arange(1, lr.size + 1) if steps is None else np.asarray(steps, dtype=np.int64)
    pred = np.asarray(law.predict(theta, lr, at), dtype=np.float64)
    # Jacobian of log prediction at up to _MAX_JAC_STEPS steps; the variance is interpolated in between
    uniq = np.unique(at)
    sub = uniq if uniq.size <= _MAX_JAC_STEPS else np.unique(np.linspace(uniq[0], uniq[-1], _MAX_JAC_STEPS).round()
                                                             .astype(np.int64))
    with np.errstate(all="ignore"):
        p_sub, j_sub = law.evaluate(theta, law.features(lr, sub), jac=True)
    g = j_sub / p_sub[:, None]
    cov = np.asarray(u["cov"], dtype=np.float64)
    var = np.einsum("ij,jk,ik->i", g, cov, g)
    var_at = np.interp(at, sub, np.maximum(var, 0.0))
    z = float(norm.ppf(0.5 + level / 2.0))
    half = z * np.sqrt(var_at + float(u["model_error"]) ** 2)
    return pred, pred * np.exp(-half), pred * np.exp(half)
