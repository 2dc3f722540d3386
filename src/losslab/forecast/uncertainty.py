"""Prediction intervals for fitted loss-curve laws (cheap: no refits at prediction time).

Method (a linearised parameter ensemble plus a model-error term, both in log space):

1. Parameter uncertainty. At the optimum, the covariance of the parameters is ``Sigma = s^2 (J^T J)^+ * k``,
   with ``J`` the Jacobian of the log residuals, ``s`` a robust scale of the residuals (1.4826 * MAD) and
   ``k = (1 + rho) / (1 - rho)`` the inflation for residuals that are correlated along a curve (``rho`` is their
   lag-1 autocorrelation; neighbouring points of a loss curve share their error). The variance of the log
   prediction at a step is ``g^T Sigma g`` (delta method).
2. Model error. A held-out schedule is mispredicted by more than the in-sample residuals (the law is not exact).
   The fit is repeated (from the best grid start) on the first ``1 - holdout`` and on the first half of each
   curve, scored on the held-out tails (extrapolation in time), and, with three curves or more, once without each
   curve, scored on that curve (transfer to another schedule). A refit whose curves never anneal (constant LR
   after warmup, e.g. the first half of a WSD run) is skipped when its scored points do: it cannot identify the
   annealing terms, so its error would measure that, not the law (a WSD run's long hold-out gave a growth slope
   of 2.3 per e-fold, intervals of x13 at twice the horizon). The largest of the in-sample, tail
   (``1 - holdout`` split) and left-out-curve root-mean-square log errors is the in-range scale ``m0``. The
   parameter covariance is rescaled by ``(m0 / s)^2`` as well.
3. Growth with extrapolation. Each predicted step gets two excess features over the fitted data (see
   :func:`excess`): the horizon ``x_h = max(0, log(t / T_fit), log(S1(t) / S1_fit))`` and the annealing depth
   ``x_lr = max(0, log(lr_fit_min / lr(t)))``. The model-error scale is ``m(x) = m0 + k_h x_h + k_lr x_lr``,
   with slopes fitted (non-negative least squares of ``sqrt(pi/2)|e| - m0``) on the held-out points that
   extrapolate, and floored at ``m0``: the error is assumed to grow by at least ``m0`` per e-fold of
   extrapolation (an assumption, not a fit: the hold-outs reach at most 2x the fitted horizon and, with few
   curves, see too little of the growth to bound it from below).
4. Interval: ``log Lhat +- z * sqrt(g^T Sigma g + m(x)^2)``, ``z`` the two-sided normal quantile of ``level``.

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

__all__ = ["calibrate", "excess", "extent", "law_predict", "prediction_interval"]

_MAX_JAC_STEPS = 256
LONG_HOLDOUT = 0.5  # the second tail hold-out, for the growth of the error with the horizon


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
    from losslab.forecast._points import MIN_CURVES_FOR_LOCO, split_tail
    from losslab.forecast.fit import _fit_points

    r = np.asarray(outcome.residuals, dtype=np.float64)
    j = np.asarray(outcome.jac, dtype=np.float64)
    scale = float(1.4826 * np.median(np.abs(r - np.median(r)))) or float(np.std(r)) or 1e-12
    rho = _lag1(r, [p.steps.size for p in points])
    inflation = (1.0 + rho) / (1.0 - rho)
    cov = scale**2 * inflation * np.linalg.pinv(j.T @ j)
    model_error = float(np.sqrt(np.mean(r**2)))
    frac = float(fit.settings.get("holdout", 0.2) if holdout is None else holdout)
    delta = fit.settings.get("huber_delta", 1e-3)
    calib: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (log error, x_horizon, x_lr) per held-out part

    def held_out(fitted: Sequence[Any], scored: Sequence[Any]) -> float | None:
        if law.has_annealing_term and not any(map(_anneals, fitted)) and any(map(_anneals, scored)):
            return None  # the refit cannot identify the annealing terms it is scored on (a constant-LR head)
        try:
            lw, out = _fit_points(law.name, fitted, law.options, delta, True, 1)
        except Exception:  # a failed calibration fit is skipped (the in-sample scale stays)
            return None
        if not np.all(np.isfinite(out.theta)):
            return None
        ext = extent(fitted)
        errs = []
        for p in scored:
            with np.errstate(all="ignore"):
                e = np.log(law_predict(lw, out.theta, p)) - np.log(p.y)
            if not np.all(np.isfinite(e)):
                continue
            calib.append((e, *excess(p.lr, p.steps, ext)))
            errs.append(e)
        return float(np.sqrt(np.mean(np.concatenate(errs) ** 2))) if errs else None

    heads, tails = split_tail(points, frac) if frac > 0 else (list(points), [])
    # tails: extrapolation in time from the first 1 - holdout of every curve
    holdout_rms = held_out(heads, tails) if tails else None
    # a second, longer hold-out (the last half of every curve) measures how the error grows with the horizon
    if frac > 0 and frac < LONG_HOLDOUT:
        long_heads, long_tails = split_tail(points, LONG_HOLDOUT)
        if long_tails:
            held_out(long_heads, long_tails)
    # leave-one-curve-out: schedule transfer, the error a user meets when predicting a new schedule
    loco_rms = None
    if frac > 0 and len(points) >= MIN_CURVES_FOR_LOCO:
        start = len(calib)
        for i in range(len(points)):
            held_out([p for j, p in enumerate(points) if j != i], [points[i]])
        if len(calib) > start:
            loco_rms = float(np.sqrt(np.mean(np.concatenate([c[0] for c in calib[start:]]) ** 2)))
    in_range = [float(v) for v in (holdout_rms, loco_rms) if v is not None]
    model_error = max([model_error, *in_range])
    growth = [max(model_error, k) for k in _growth(calib, model_error)]
    # the parameter covariance is scaled with the held-out error too: a law that mispredicts held-out points
    # by more than its residuals is less certain of its parameters than the residuals say
    cov *= (model_error / scale) ** 2
    return {"method": "delta+holdout+extrapolation", "cov": cov.tolist(), "scale": scale, "rho": rho,
            "model_error": model_error, "growth": growth, "extent": extent(points),
            "holdout_rms": holdout_rms, "loco_rms": loco_rms, "holdout": frac, "seed": seed,
            "n_calibration_points": int(sum(c[0].size for c in calib))}


def _anneals(p: Any) -> bool:
    """Whether the learning rate of curve ``p`` falls below its peak within the steps it is fitted or scored on."""
    end = int(p.steps[-1])
    peak = int(np.argmax(p.lr[:end]))
    return bool(end > peak + 1 and np.min(p.lr[peak:end]) < p.lr[peak] * (1.0 - 1e-9))


def law_predict(law: Any, theta: np.ndarray, p: Any) -> np.ndarray:
    """Prediction of ``law`` at the fitting points ``p`` (float64)."""
    return np.asarray(law.predict(theta, p.lr, p.steps), dtype=np.float64)


def extent(points: Sequence[Any]) -> dict[str, float]:
    """How far the fitted data reach: last step, largest area ``S1``, smallest LR after warmup and largest LR.

    >>> from types import SimpleNamespace as P
    >>> extent([P(lr=np.array([1.0, 2.0, 1.0, 0.5]), steps=np.array([2, 3]))])
    {'steps': 3.0, 's1': 4.0, 'lr_min': 1.0, 'lr_max': 2.0}
    """
    last, s1, lr_min, lr_max = 0.0, 0.0, np.inf, 0.0
    for p in points:
        end = int(p.steps[-1])
        w = int(np.argmax(p.lr[:end]))  # the peak within the fitted steps (a curve may end inside its warmup)
        last = max(last, float(end))
        s1 = max(s1, float(np.sum(p.lr[:end])))
        lr_min = min(lr_min, float(np.min(p.lr[w:end])))
        lr_max = max(lr_max, float(np.max(p.lr[:end])))
    return {"steps": last, "s1": s1, "lr_min": lr_min, "lr_max": lr_max}


def excess(lr: np.ndarray, steps: np.ndarray, ext: dict[str, float]) -> tuple[np.ndarray, np.ndarray]:
    """Extrapolation of a prediction at ``steps`` of a run with per-step ``lr`` beyond the fitted ``ext``.

    ``x_h = max(0, log(t / T_fit), log(S1(t) / S1_fit))`` (horizon: steps or LR area beyond the longest fitted
    curve) and ``x_lr = max(0, log(lr_fit_min / lr(t)), log(lr(t) / lr_fit_max))`` (annealing deeper than any
    fitted LR, or a rate above any fitted one; ``lr`` is floored at 1 % of ``lr_fit_min``). Both are 0 inside the
    fitted range.

    >>> x_h, x_lr = excess(np.full(8, 1.0), np.array([2, 8]), {"steps": 4.0, "s1": 4.0, "lr_min": 1.0})
    >>> np.round(x_h, 4).tolist(), x_lr.tolist()
    ([0.0, 0.6931], [0.0, 0.0])
    """
    s1 = np.cumsum(lr)[steps - 1]
    now = lr[steps - 1]
    with np.errstate(divide="ignore", invalid="ignore"):
        x_h = np.maximum.reduce([np.zeros(steps.size), np.log(steps / ext["steps"]), np.log(s1 / ext["s1"])])
        x_lr = np.zeros(steps.size)
        if ext["lr_min"] > 0:  # a fit down to lr 0 has nothing deeper to extrapolate to
            x_lr = np.maximum(x_lr, np.log(ext["lr_min"] / np.maximum(now, ext["lr_min"] * 1e-2)))
        if ext.get("lr_max", 0.0) > 0:  # fits saved before lr_max was recorded skip this term
            x_lr = np.maximum(x_lr, np.log(now / ext["lr_max"]))
        x_h = np.nan_to_num(x_h, nan=0.0)
    # rounding of the cumulative sum must not count as extrapolation
    return np.where(x_h > 1e-9, x_h, 0.0), np.where(x_lr > 1e-9, x_lr, 0.0)


def _growth(calib: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], m0: float) -> list[float]:
    """Slopes ``(k_h, k_lr) >= 0`` of the model-error scale ``m(x) = m0 + k_h x_h + k_lr x_lr``.

    Least squares (non-negative) of ``sqrt(pi/2) |e| - m0`` on ``(x_h, x_lr)`` over the held-out points that
    extrapolate (``sqrt(pi/2) |e|`` estimates the standard deviation of a normal error ``e``). Each held-out
    part weighs the same whatever its number of points.
    """
    from scipy.optimize import nnls

    rows, rhs = [], []
    for e, x_h, x_lr in calib:
        out = (x_h > 0) | (x_lr > 0)
        if not out.any():
            continue
        w = 1.0 / np.sqrt(out.sum())
        rows.append(w * np.column_stack([x_h[out], x_lr[out]]))
        rhs.append(w * (np.sqrt(np.pi / 2) * np.abs(e[out]) - m0))
    if not rows:
        return [0.0, 0.0]
    a, b = np.concatenate(rows), np.concatenate(rhs)
    keep = np.any(a > 0, axis=0)
    k = np.zeros(2)
    if keep.any():
        k[keep] = nnls(a[:, keep], b)[0]
    return [float(v) for v in k]


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
    m = np.full(at.size, float(u["model_error"]))
    if u.get("growth") and u.get("extent"):
        x_h, x_lr = excess(lr, at, u["extent"])
        m = m + float(u["growth"][0]) * x_h + float(u["growth"][1]) * x_lr
    half = z * np.sqrt(var_at + m**2)
    return pred, pred * np.exp(-half), pred * np.exp(half)
