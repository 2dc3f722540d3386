"""The Multi-Power-Law authors' fitting procedure (``MultiPowerLaw(method="authors")``).

Luo et al., "A Multi-Power Law for Loss Curve Prediction Across Learning Rate Schedules", arXiv:2503.12811, 2025;
code ``thu-yao-01-luo/MultiPowerLaw`` (``src/fitting.py``, ``src/config.py``), followed step by step:

1. Start: a linear regression of ``log(L - min L + 0.01)`` on ``log S1`` seeds ``(A, alpha)``. From the grid
   ``L0 in linspace(min L - 0.2, min L + 0.2, 5)``, ``A in e^intercept + {-0.1, 0, 0.1}``,
   ``alpha in -slope + {-0.1, 0, 0.1}``, ``B in {100, 550, 1000}`` (135 starts), L-BFGS-B with bounds ``>= 0`` fits the
   simplified law ``L0 + A S1^-alpha - B (eta_max - eta_t)`` (the loss drop follows the LR at once); the best start
   wins.
2. The full law starts there with ``C = 1, beta = 0.5, gamma = 0.5`` and takes at most 200 AdamW steps (torch
   defaults: betas 0.9/0.999, eps 1e-8, weight decay 0.01) with learning rate 5e-2 for ``L0, A, B, C`` and 5e-3 for
   ``alpha, beta, gamma``. It stops after 20 steps without a lower objective or at a gradient norm below 1e-5, and
   keeps the parameters of the best step. As in the code, these are the parameters *after* the update of the step
   whose (pre-update) objective was the best.

Both stages minimise ``sum Huber_delta(log L - log Lhat)``. The early stop and the decay of the weights act as the
regulariser of the poorly identified ``(C, beta, gamma)``: the fit stays close to the simplified law.

Differences from the code, none of which changes the result on the authors' data (peak LR 3e-4):
- the gradients are analytic (the code: autograd for stage 2, finite differences for stage 1); stage 1 keeps the
  code's tolerances (ftol 1e-9, gtol 1e-6). ``B``'s gradient is small (it multiplies LR-sized gaps), so where
  the curves leave ``B`` loosely determined, stage 1 stops near its grid value, as the code does, and a change in
  the last digit of the data can move it to another point of the flat valley;
- the targets are float64 (the code reads them into a float32 tensor);
- where the parameters after the best step's update predict a loss <= 0 (the code would return them; it happens
  when the first AdamW step overshoots a small ``A``), the parameters before that update are returned, and the
  message says so;
- the procedure runs on the LR rescaled so that its peak is the authors' 3e-4 (``eta_max`` of the simplified law
  is that peak; the code has the constant 3e-4), and the parameters are mapped back (``A k^-alpha``, ``B k``,
  ``C k^(1 - gamma)`` for a rescaling by ``k``): the step sizes are tuned for the authors' LR, and this way the result
  does not depend on the units of the LR. The loss is not rescaled: the step sizes suit losses of order 1-10, as
  in language modelling.

Run on the authors' three training curves, this reproduces their published parameters to about 1e-4 (relative)
and stops at the same AdamW step as their logs (100 / 107 / 90 for 25M / 100M / 400M); see
tests/forecast/test_mpl_authors.py and docs/forecast.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from itertools import product
from typing import Any

import numpy as np
from scipy.optimize import minimize
from scipy.stats import linregress

from losslab._progress import progress
from losslab.forecast._robust import FitOutcome, Problem, huber

__all__ = ["AUTHORS_PEAK_LR", "fit_authors"]

AUTHORS_PEAK_LR = 3e-4  # the peak LR of the authors' runs, which their step sizes and B grid are tuned for
ADAMW_STEPS, PATIENCE, GRAD_NORM_STOP = 200, 20, 1e-5
LR_LINEAR, LR_EXPONENT = 5e-2, 5e-3  # AdamW rates for (L0, A, B, C) and for (alpha, beta, gamma)
BETA1, BETA2, EPS, WEIGHT_DECAY = 0.9, 0.999, 1e-8, 1e-2
START = (1.0, 0.5, 0.5)  # C, beta, gamma


def _simplified_start(problems: Sequence[Any], peak: float, delta: float,
                      quiet: bool | None) -> tuple[np.ndarray, float, int]:
    """Stage 1: best of the 135-start grid for ``L0 + A S1^-alpha - B (peak - eta_t)``; (params, cost, starts)."""
    y = np.concatenate([p.y for p in problems])
    log_s1 = np.concatenate([p.feats.log_s1 for p in problems])
    gap = np.concatenate([peak - p.feats.lr_now for p in problems])
    log_y = np.log(y)
    low = float(y.min())
    slope, intercept, *_ = linregress(log_s1, np.log(y - low + 0.01))

    def objective(x: np.ndarray) -> tuple[float, np.ndarray]:
        l0, a, alpha, b = x
        power = np.exp(-alpha * log_s1)
        pred = l0 + a * power - b * gap
        if np.any(pred <= 0) or not np.all(np.isfinite(pred)):
            return 1e10, np.zeros(4)
        r = log_y - np.log(pred)
        w = -np.clip(r, -delta, delta) / pred
        grad = np.array([w.sum(), w @ power, w @ (-a * log_s1 * power), -(w @ gap)])
        return float(huber(r, delta).sum()), grad

    grid = list(product(np.linspace(low - 0.2, low + 0.2, 5),
                        np.exp(intercept) + np.array([-0.1, 0.0, 0.1]),
                        -slope + np.array([-0.1, 0.0, 0.1]),
                        np.array([100.0, 550.0, 1000.0])))
    best: tuple[float, np.ndarray] = (np.inf, np.asarray(grid[0], dtype=np.float64))
    for x0 in progress(grid, total=len(grid), desc="fit mpl (authors), start", quiet=quiet):
        with np.errstate(all="ignore"):
            res = minimize(objective, np.asarray(x0, dtype=np.float64), jac=True, method="L-BFGS-B",
                           bounds=[(0.0, None)] * 4, options={"maxiter": 100_000, "ftol": 1e-9, "gtol": 1e-6})
        if np.isfinite(res.fun) and res.fun < best[0]:
            best = (float(res.fun), res.x)
    return best[1], best[0], len(grid)


def _rescaled(problems: Sequence[Any], k: float) -> list[Any]:
    """The problems with every LR multiplied by ``k`` (the MPL features are logs and sums of the LR)."""
    log_k = float(np.log(k))
    out = []
    for p in problems:
        f = p.feats
        feats = replace(f, log_s1=f.log_s1 + log_k, delta=f.delta * k, log_eta=f.log_eta + log_k,
                        log_s=f.log_s + log_k, lr_now=f.lr_now * k, peak=f.peak * k, cache={})
        out.append(Problem(p.name, feats, p.y))
    return out


def _objective_and_gradient(law: Any, theta: np.ndarray, problems: Sequence[Any], log_ys: Sequence[np.ndarray],
                            delta: float) -> tuple[float, np.ndarray]:
    total, grad = 0.0, np.zeros(theta.size)
    for p, log_y in zip(problems, log_ys):
        with np.errstate(all="ignore"):
            pred, jac = law.evaluate(theta, p.feats, jac=True)
        pred = np.maximum(pred, 1e-10)
        r = log_y - np.log(pred)
        total += float(huber(r, delta).sum())
        grad += (-np.clip(r, -delta, delta) / pred) @ jac
    return total, grad


def _unscaled(theta: np.ndarray, k: float) -> np.ndarray:
    """Parameters for the original LR from those fitted on the LR times ``k``."""
    l0, a, alpha, b, c, beta, gamma = theta
    return np.array([l0, a * k**-alpha, alpha, b * k, c * k ** (1.0 - gamma), beta, gamma])


def _evaluated(law: Any, theta: np.ndarray, problems: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    """Prediction and Jacobian of ``law`` at ``theta``, all problems stacked."""
    with np.errstate(all="ignore"):
        preds, jacs = zip(*(law.evaluate(theta, p.feats, jac=True) for p in problems))
    return np.concatenate(preds), np.vstack(jacs)


def _valid(pred: np.ndarray) -> bool:
    return bool(np.all(np.isfinite(pred)) and np.all(pred > 0))


def _inside(law: Any, theta: np.ndarray) -> bool:
    lo, hi = law.bounds()
    return bool(np.all(theta >= lo) and np.all(theta <= hi))


def fit_authors(law: Any, problems: Sequence[Any], *, delta: float = 1e-3, quiet: bool | None = None) -> Any:
    """Fit ``law`` (a :class:`~losslab.forecast.laws.MultiPowerLaw`) by the authors' two-stage procedure.

    Returns a :class:`~losslab.forecast._robust.FitOutcome`: one record in ``starts`` with the stage-1 start, the
    AdamW step the procedure stopped at and why.
    """
    k = AUTHORS_PEAK_LR / max(float(p.feats.peak) for p in problems)
    original, problems = problems, _rescaled(problems, k)
    x1, cost1, n_grid = _simplified_start(problems, AUTHORS_PEAK_LR, delta, quiet)
    theta = np.array([*x1, *START], dtype=np.float64)
    log_ys = [np.log(p.y) for p in problems]
    lr = np.array([LR_LINEAR, LR_LINEAR, LR_EXPONENT, LR_LINEAR, LR_LINEAR, LR_EXPONENT, LR_EXPONENT])
    m, v = np.zeros(theta.size), np.zeros(theta.size)
    best, best_theta, best_before, lowest, stale = np.inf, theta.copy(), theta.copy(), np.inf, 0
    reason, step = f"{ADAMW_STEPS} AdamW steps", 0
    for step in progress(range(ADAMW_STEPS), total=ADAMW_STEPS, desc="fit mpl (authors), AdamW", quiet=quiet):
        cost, grad = _objective_and_gradient(law, theta, problems, log_ys, delta)
        if not (np.isfinite(cost) and np.all(np.isfinite(grad))):
            reason = f"non-finite objective at AdamW step {step}"
            break
        t = step + 1
        before = theta
        m = BETA1 * m + (1 - BETA1) * grad
        v = BETA2 * v + (1 - BETA2) * grad * grad
        denom = np.sqrt(v) / np.sqrt(1 - BETA2**t) + EPS
        theta = theta * (1 - lr * WEIGHT_DECAY) - lr / (1 - BETA1**t) * m / denom
        if cost < lowest:
            lowest, stale = cost, 0
        else:
            stale += 1
        if step > PATIENCE and stale >= PATIENCE:
            reason = f"no lower objective for {PATIENCE} steps (AdamW step {step})"
            break
        if float(np.linalg.norm(grad)) < GRAD_NORM_STOP:
            reason = f"gradient norm below {GRAD_NORM_STOP:g} (AdamW step {step})"
            break
        if cost < best:
            best, best_theta, best_before = cost, theta.copy(), before.copy()
    y_log = np.concatenate(log_ys)
    best_theta = _unscaled(best_theta, k)
    pred, jac = _evaluated(law, best_theta, original)
    if not (_valid(pred) and _inside(law, best_theta)) and np.isfinite(best):
        # the code keeps the parameters after the update of the best step; where those predict a non-positive loss
        # or leave the law's bounds (a first step that overshoots a small A), the parameters the best objective was
        # measured at are kept
        best_theta = _unscaled(best_before, k)
        pred, jac = _evaluated(law, best_theta, original)
        reason += ("; kept the parameters before the best step's update (those after it predict a loss <= 0 or "
                   "leave the bounds)")
    if not _inside(law, best_theta) and np.isfinite(best):
        # their AdamW is unconstrained (A < 0 happens on clean synthetic curves): project onto the bounds
        lo, hi = law.bounds()
        best_theta = np.clip(best_theta, lo, hi)
        pred, jac = _evaluated(law, best_theta, original)
        reason += "; parameters outside the law's bounds were clipped to them"
    ok = bool(np.isfinite(best) and _valid(pred))
    final = float(huber(y_log - np.log(pred), delta).sum()) if ok else float("inf")
    x0 = _unscaled(np.array([*x1, *START]), k)
    record = {"start": 0, "x0": x0.tolist(), "x": best_theta.tolist(), "cost": final, "lr_rescaled_by": k,
              "status": 0 if ok else -1, "message": reason, "nfev": step + 1, "failed": not ok,
              "stage1_cost": cost1, "stage1_starts": n_grid}
    if not ok:
        return FitOutcome(theta=np.full(best_theta.size, np.nan), cost=float("inf"), starts=[record])
    return FitOutcome(theta=best_theta, cost=final, starts=[record], at_bounds=[],
                      jac=-jac / pred[:, None], residuals=y_log - np.log(pred))
