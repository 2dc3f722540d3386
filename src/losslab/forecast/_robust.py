"""Robust multi-start fitting of a law to several curves at once (Huber loss on the log of the loss).

The recipe is the Chinchilla one (Hoffmann et al. 2022, Approach 3, as replicated by Besiroglu et al. 2024):
minimise ``sum_i Huber_delta(log y_i - log yhat_i)`` over all points of all curves with shared parameters, from a
grid of starting points, inside bounds, and keep the best. Two things are ours:

- starting points: the law's nonlinear parameters are gridded and, for each grid point, the linear ones are
  solved by non-negative least squares on relative residuals (cheap), so only the best few grid points are
  handed to the nonlinear solver;
- solver: ``scipy.optimize.least_squares`` (trust-region reflective) with the law's analytic Jacobian. Its
  ``huber`` loss with ``f_scale = delta`` is exactly ``Huber_delta``, so the objective is the published one while the
  solver uses Gauss-Newton steps instead of L-BFGS; optional quadratic penalty rows (priors) are appended.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import least_squares, nnls

from losslab._progress import progress
from losslab.forecast.laws._base import Law

__all__ = ["FitOutcome", "Problem", "huber", "multistart_fit"]

_FLOOR = 1e-12


def huber(r: np.ndarray, delta: float) -> np.ndarray:
    """Elementwise Huber loss: ``r^2/2`` for ``|r| <= delta``, ``delta*|r| - delta^2/2`` beyond."""
    a = np.abs(r)
    return np.where(a <= delta, 0.5 * r * r, delta * a - 0.5 * delta * delta)


@dataclass
class Problem:
    """One curve's evaluation points: features for the law, the measured loss and its log."""

    name: str
    feats: Any
    y: np.ndarray

    @property
    def log_y(self) -> np.ndarray:
        return np.log(self.y)


@dataclass
class FitOutcome:
    """Best parameters and the bookkeeping of every start."""

    theta: np.ndarray
    cost: float
    starts: list[dict[str, Any]] = field(default_factory=list)
    at_bounds: list[str] = field(default_factory=list)
    jac: np.ndarray | None = None  # Jacobian of the log residuals at the optimum (data rows only)
    residuals: np.ndarray | None = None  # log y - log yhat at the optimum, all curves concatenated


def _stack(law: Law, theta: np.ndarray, problems: Sequence[Problem], jac: bool) -> Any:
    preds, jacs = [], []
    for p in problems:
        out = law.evaluate(theta, p.feats, jac=jac)
        if jac:
            preds.append(out[0])
            jacs.append(out[1])
        else:
            preds.append(out)
    pred = np.concatenate(preds)
    return (pred, np.vstack(jacs)) if jac else pred


def _mixed_loss(n_data: int) -> Callable[[np.ndarray], np.ndarray]:
    """scipy loss callable: Huber on the first ``n_data`` rows, plain squares on the penalty rows after them."""

    def rho(z: np.ndarray) -> np.ndarray:
        out = np.empty((3, z.size))
        zd = z[:n_data]
        small = zd <= 1.0
        sq = np.sqrt(np.where(small, 1.0, zd))
        out[0, :n_data] = np.where(small, zd, 2.0 * sq - 1.0)
        out[1, :n_data] = np.where(small, 1.0, 1.0 / sq)
        out[2, :n_data] = np.where(small, 0.0, -0.5 / (sq * zd))
        out[0, n_data:] = z[n_data:]
        out[1, n_data:] = 1.0
        out[2, n_data:] = 0.0
        return out

    return rho


def _linear_start(law: Law, nonlinear: dict[str, float], problems: Sequence[Problem]) -> np.ndarray | None:
    """Solve the law's linear parameters for fixed nonlinear ones (NNLS on relative residuals)."""
    names = law.active_params
    try:
        basis = np.vstack([law.basis(nonlinear, p.feats) for p in problems])
    except (FloatingPointError, ValueError, ZeroDivisionError):
        return None
    y = np.concatenate([p.y for p in problems])
    if not np.all(np.isfinite(basis)):
        return None
    x, const = basis[:, :-1] / y[:, None], basis[:, -1]
    scale = np.maximum(np.linalg.norm(x, axis=0), 1e-300)
    coef, _ = nnls(x / scale, (y - const) / y)
    theta = np.array([nonlinear.get(n, 0.0) for n in names], dtype=np.float64)
    for j, name in enumerate(law.linear):
        theta[names.index(name)] = coef[j] / scale[j]
    return theta


def multistart_fit(law: Law, problems: Sequence[Problem], *, delta: float = 1e-3, n_starts: int = 4,
                   max_nfev: int | None = None, penalty: Callable[[float], Any] | None = None,
                   extra_starts: Sequence[np.ndarray] = (), quiet: bool | None = None,
                   desc: str = "fit") -> FitOutcome:
    """Fit ``law`` to ``problems`` from the best ``n_starts`` grid points (plus ``extra_starts``).

    ``penalty(kappa)`` returns a function ``theta -> (rows, d rows / d theta)`` of quadratic penalty rows (a
    Gaussian prior) added to the objective, or None. ``kappa = 2 * mean Huber loss`` at the best grid start converts
    a negative log prior into objective units: for residuals in the quadratic zone of the Huber loss it is their
    variance, for noisy logs (residuals beyond delta) it is ``delta * mean |r|``; so the prior weighs the same
    against clean sparse evaluations and against raw per-step noise. It is never below ``delta^2``: residuals
    smaller than ``delta`` are below the resolution the Huber loss is told to care about.
    Returns the best start by objective; every start's final cost, status and message are kept in ``starts``.
    """
    lo, hi = law.bounds()
    log_y = np.concatenate([p.log_y for p in problems])
    n_data = log_y.size
    factory = penalty
    rows_fn: Callable[[np.ndarray], Any] | None = None

    def objective(theta: np.ndarray) -> float:
        with np.errstate(all="ignore"):
            pred = _stack(law, theta, problems, jac=False)
        if not np.all(np.isfinite(pred)) or np.any(pred <= 0):
            return np.inf
        cost = float(huber(log_y - np.log(pred), delta).sum())
        if rows_fn is not None:
            cost += 0.5 * float(np.sum(rows_fn(theta)[0] ** 2))
        return cost

    # 1. candidate starts from the grid (skipped when n_starts == 0), ranked by their objective
    ranked = []
    for g in (law.grid() if n_starts > 0 else []):
        theta0 = _linear_start(law, g, problems)
        if theta0 is not None:
            theta0 = np.clip(theta0, lo, hi)
            ranked.append((objective(theta0), theta0))
    ranked.sort(key=lambda item: item[0])
    extra = [np.clip(np.asarray(x, dtype=np.float64), lo, hi) for x in extra_starts]
    starts = [t for c, t in ranked if np.isfinite(c)][:n_starts] + extra
    costs = [c for c, _ in ranked] + [objective(x) for x in extra]
    finite = [c for c in costs if np.isfinite(c)]
    if factory is not None and finite:
        kappa = max(2.0 * min(finite) / n_data, delta * delta)
        rows_fn = factory(kappa)

    cache: dict[str, Any] = {}

    def fun(theta: np.ndarray) -> np.ndarray:
        # value and Jacobian share their work (the MPL pair pass), so both are computed and the Jacobian kept
        with np.errstate(all="ignore"):
            pred, j = _stack(law, theta, problems, jac=True)
        pos = np.maximum(pred, _FLOOR)
        cache["x"], cache["j"] = theta.copy(), -j / pos[:, None]
        r = log_y - np.log(pos)
        return np.concatenate([r, rows_fn(theta)[0]]) if rows_fn is not None else r

    def jac(theta: np.ndarray) -> np.ndarray:
        if "x" not in cache or not np.array_equal(cache["x"], theta):
            fun(theta)
        jr = cache["j"]
        return np.vstack([jr, rows_fn(theta)[1]]) if rows_fn is not None else jr

    loss: Any = _mixed_loss(n_data) if rows_fn is not None else "huber"
    records: list[dict[str, Any]] = []
    best: tuple[float, np.ndarray] | None = None
    for k, theta0 in enumerate(progress(starts, total=len(starts), desc=desc, quiet=quiet)):
        rec: dict[str, Any] = {"start": k, "x0": theta0.tolist()}
        try:
            with np.errstate(all="ignore"):
                res = least_squares(fun, theta0, jac=jac, bounds=(lo, hi), loss=loss, f_scale=delta,
                                    x_scale="jac", method="trf", max_nfev=max_nfev, ftol=1e-10, xtol=1e-10,
                                    gtol=1e-10)
            cost = objective(res.x)
            rec.update(x=res.x.tolist(), cost=cost, status=int(res.status), message=str(res.message),
                       nfev=int(res.nfev), failed=bool(res.status < 0 or not np.isfinite(cost)))
            if not rec["failed"] and (best is None or cost < best[0]):
                best = (cost, res.x)
        except (ValueError, FloatingPointError, np.linalg.LinAlgError) as exc:
            rec.update(cost=float("inf"), status=-1, message=f"{type(exc).__name__}: {exc}", failed=True)
        records.append(rec)
    if best is None:
        return FitOutcome(theta=np.full(len(law.active_params), np.nan), cost=float("inf"), starts=records)
    theta = best[1]
    names = law.active_params
    span = np.where(np.isfinite(hi - lo), hi - lo, np.maximum(np.abs(theta), 1.0))
    at_bounds = [names[i] for i in range(len(names))
                 if (abs(theta[i] - lo[i]) <= 1e-6 * span[i]) or (np.isfinite(hi[i]) and abs(hi[i] - theta[i]) <= 1e-6 * span[i])]
    with np.errstate(all="ignore"):
        pred, j = _stack(law, theta, problems, jac=True)
    return FitOutcome(theta=theta, cost=best[0], starts=records, at_bounds=at_bounds,
                      jac=-j / pred[:, None], residuals=log_y - np.log(pred))
