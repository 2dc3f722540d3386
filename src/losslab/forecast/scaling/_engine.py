"""Vectorised multi-start fitting engine: Huber objective, a batched L-BFGS over many starts, scipy polish.

Every start (and every bootstrap resample) is one row of a batch. The objective of row ``k`` is

    f_k(theta) = sum_i w_ki * huber_delta(pred_i(theta) - y_i)

with per-row point weights ``w`` (all ones for a plain fit, resample counts for a bootstrap). ``batched_lbfgs``
runs limited-memory BFGS with a projected Armijo backtracking line search on all rows at once, each row with its
own history, step length and stopping test, and only the rows still running are evaluated. The best rows are then
polished one at a time with ``scipy.optimize.minimize(method="L-BFGS-B")`` and the analytic gradient, so the final
answer meets scipy's own stopping rule.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from losslab._progress import progress

__all__ = ["BatchResult", "batched_lbfgs", "huber"]

# fun(theta[k, P], rows[k]) -> (f[k], grad[k, P]); rows say which batch members (weights) are evaluated
BatchFun = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def huber(r: np.ndarray, delta: float) -> tuple[np.ndarray, np.ndarray]:
    """Huber loss and its derivative, elementwise.

    ``h(r) = r**2 / 2`` for ``|r| <= delta`` and ``delta * (|r| - delta / 2)`` beyond (``scipy.special.huber``);
    ``h'(r) = clip(r, -delta, delta)``. ``delta = inf`` gives least squares (``r**2 / 2``).
    """
    if np.isinf(delta):
        return 0.5 * r * r, r
    psi = np.clip(r, -delta, delta)
    return psi * (r - 0.5 * psi), psi  # = r^2/2 inside, delta (|r| - delta/2) outside


@dataclass
class BatchResult:
    """Result of :func:`batched_lbfgs`: one row per start.

    Attributes:
        x: final parameters, shape (K, P).
        f: final objective values, shape (K,); ``inf`` where the objective was never finite.
        nit: iterations done per row.
        converged: True where the stopping test (ftol or gtol) fired before ``max_iter``.
    """

    x: np.ndarray
    f: np.ndarray
    nit: np.ndarray
    converged: np.ndarray


def _two_loop(g: np.ndarray, S: np.ndarray, Y: np.ndarray, rho: np.ndarray, count: np.ndarray) -> np.ndarray:
    """L-BFGS two-loop recursion for every row: ``H g`` from the histories (newest pair first in S, Y, rho)."""
    m = S.shape[1]
    q = g.copy()
    alpha = np.zeros((g.shape[0], m))
    for j in range(min(m, int(count.max(initial=0)))):  # newest to oldest
        a = np.where(j < count, rho[:, j] * np.einsum("kp,kp->k", S[:, j], q), 0.0)
        alpha[:, j] = a
        q -= a[:, None] * Y[:, j]
    yy = np.einsum("kp,kp->k", Y[:, 0], Y[:, 0])
    gamma = np.where((count > 0) & (yy > 0), np.einsum("kp,kp->k", S[:, 0], Y[:, 0]) / np.where(yy > 0, yy, 1.0), 1.0)
    q *= gamma[:, None]
    for j in range(min(m, int(count.max(initial=0))) - 1, -1, -1):  # oldest to newest
        b = rho[:, j] * np.einsum("kp,kp->k", Y[:, j], q)
        q += np.where(j < count, alpha[:, j] - b, 0.0)[:, None] * S[:, j]
    return q


def batched_lbfgs(fun: BatchFun, x0: np.ndarray, *, lower: np.ndarray | None = None,
                  upper: np.ndarray | None = None, max_iter: int = 500, memory: int = 10,
                  ftol: float = 2.220446049250313e-09, gtol: float = 1e-5, max_linesearch: int = 40,
                  fscale: float = 1.0, desc: str = "L-BFGS", quiet: bool | None = None) -> BatchResult:
    """Minimise ``K`` independent problems with L-BFGS at once (projected onto optional box bounds).

    Stopping rule per row, as in scipy's L-BFGS-B: ``(f_old - f_new) / max(|f_old|, |f_new|, fscale) <= ftol`` or
    ``max |projected gradient| <= gtol`` (scipy uses ``fscale = 1``; a smaller ``fscale`` makes the test
    relative for objectives much smaller than 1, such as a sum of Huber losses with delta = 1e-3). A row whose line search fails to decrease the objective stops as well
    (no decrease is possible at machine precision). Rows that hit ``max_iter`` or never had a finite objective are
    flagged ``converged=False``.
    The progress bar (``losslab._progress``; ``quiet``) counts iterations up to ``max_iter``.
    """
    x = np.array(x0, dtype=np.float64, copy=True)
    k, p = x.shape
    lo = np.full(p, -np.inf) if lower is None else np.asarray(lower, dtype=np.float64)
    hi = np.full(p, np.inf) if upper is None else np.asarray(upper, dtype=np.float64)
    x = np.clip(x, lo, hi)
    all_rows = np.arange(k)
    f, g = fun(x, all_rows)
    f = np.where(np.isfinite(f), f, np.inf)
    bad = ~np.all(np.isfinite(g), axis=1) | ~np.isfinite(f)
    g[bad] = 0.0
    S = np.zeros((k, memory, p))
    Y = np.zeros((k, memory, p))
    rho = np.zeros((k, memory))
    count = np.zeros(k, dtype=np.int64)
    nit = np.zeros(k, dtype=np.int64)
    converged = np.zeros(k, dtype=bool)
    active = ~bad
    pg = x - np.clip(x - g, lo, hi)
    done0 = active & (np.max(np.abs(pg), axis=1) <= gtol)
    converged |= done0
    active &= ~done0
    for _ in progress(range(max_iter), total=max_iter, desc=desc, quiet=quiet):
        act = np.flatnonzero(active)
        if act.size == 0:
            break
        xa, ga, fa = x[act], g[act], f[act]
        d = -_two_loop(ga, S[act], Y[act], rho[act], count[act])
        # at a bound, do not push outward
        d = np.where(((xa <= lo) & (d < 0)) | ((xa >= hi) & (d > 0)), 0.0, d)
        slope = np.einsum("kp,kp->k", ga, d)
        reset = ~(slope < 0)  # not a descent direction: fall back to steepest descent
        if np.any(reset):
            d[reset] = -ga[reset]
            d = np.where(((xa <= lo) & (d < 0)) | ((xa >= hi) & (d > 0)), 0.0, d)
            count[act[reset]] = 0
            slope = np.einsum("kp,kp->k", ga, d)
        first = (count[act] == 0) & (nit[act] == 0)
        step = np.where(first, np.minimum(1.0, 1.0 / np.maximum(np.linalg.norm(d, axis=1), 1e-300)), 1.0)
        xn, fn, gn = xa.copy(), fa.copy(), ga.copy()
        pending = np.arange(act.size)
        accepted = np.zeros(act.size, dtype=bool)
        for _ in range(max_linesearch):
            if pending.size == 0:
                break
            trial = np.clip(xa[pending] + step[pending, None] * d[pending], lo, hi)
            ft, gt = fun(trial, act[pending])
            ok = np.isfinite(ft) & np.all(np.isfinite(gt), axis=1)
            dec = np.einsum("kp,kp->k", ga[pending], trial - xa[pending])
            armijo = ok & (ft <= fa[pending] + 1e-4 * np.minimum(dec, 0.0)) & (ft <= fa[pending])
            acc = pending[armijo]
            xn[acc], fn[acc], gn[acc] = trial[armijo], ft[armijo], gt[armijo]
            accepted[acc] = True
            pending = pending[~armijo]
            step[pending] *= 0.5
        rows = act
        nit[rows] += 1
        s = xn - xa
        y = gn - ga
        sy = np.einsum("kp,kp->k", s, y)
        upd = accepted & (sy > 1e-12 * np.maximum(np.einsum("kp,kp->k", y, y), 1e-300))
        ur = rows[upd]
        S[ur] = np.concatenate([s[upd, None], S[ur, :-1]], axis=1)  # newest first
        Y[ur] = np.concatenate([y[upd, None], Y[ur, :-1]], axis=1)
        rho[ur] = np.concatenate([1.0 / sy[upd, None], rho[ur, :-1]], axis=1)
        count[ur] = np.minimum(count[ur] + 1, memory)
        x[rows], f[rows], g[rows] = xn, fn, gn
        pgn = xn - np.clip(xn - gn, lo, hi)
        small_g = np.max(np.abs(pgn), axis=1) <= gtol
        small_f = accepted & ((fa - fn) <= ftol * np.maximum(np.maximum(np.abs(fa), np.abs(fn)), fscale))
        # a failed line search along an L-BFGS direction: drop the history and retry along -g next iteration;
        # a failed search along -g itself means no decrease is possible at machine precision: stop
        retry = ~accepted & (count[rows] > 0)
        count[rows[retry]] = 0
        stop = small_g | small_f | (~accepted & ~retry)
        # a line search that cannot decrease f any more (step < 2**-40) has reached machine precision: a stop
        converged[rows[stop]] = np.isfinite(fn[stop])
        active[rows[stop]] = False
    return BatchResult(x=x, f=f, nit=nit, converged=converged)
