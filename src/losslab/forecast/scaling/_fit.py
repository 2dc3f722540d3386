"""Robust multi-start fitting of a scaling law, with bootstrap uncertainty: :func:`fit_scaling_law`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from scipy.optimize import minimize

from losslab._errors import ConfigError, DataError, FitError
from losslab._provenance import provenance
from losslab.forecast.scaling._data import ScalingData, as_data
from losslab.forecast.scaling._engine import batched_lbfgs, huber
from losslab.forecast.scaling._law import ScalingLaw
from losslab.forecast.scaling._result import ScalingFit

__all__ = ["fit_scaling_law", "make_objective"]

BLOCK_ELEMENTS = 32768  # rows x points evaluated at once (about 256 KiB per float64 temporary)


def make_objective(law: ScalingLaw, X: Mapping[str, np.ndarray], y: np.ndarray, delta: float,
                   weights: np.ndarray | None = None, wrow: np.ndarray | None = None):
    """Batched objective ``theta[k], rows[k] -> (f[k], grad[k])`` of sum_i w_i huber(pred_i - y_i).

    ``weights`` (B, n) are per-problem point weights and ``wrow`` maps batch rows to them; None means all ones.
    """

    def block(theta: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            pred, vjp = law.model(theta, X)
            h, psi = huber(pred - y, delta)
            if weights is None or wrow is None:
                return h.sum(axis=1), vjp(psi)
            w = weights[wrow[rows]]
            return np.einsum("kn,kn->k", w, h), vjp(w * psi)

    def fun(theta: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # rows in cache-sized blocks: the (K, n) temporaries stay in cache (measured 1.4x faster on 4500 x 240)
        step = max(1, BLOCK_ELEMENTS // max(1, y.size))
        parts = [block(theta[i:i + step], rows[i:i + step]) for i in range(0, theta.shape[0], step)]
        f = np.concatenate([p[0] for p in parts])
        g = np.concatenate([p[1] for p in parts])
        bad = ~np.isfinite(f) | ~np.all(np.isfinite(g), axis=1)
        f[bad] = np.inf
        g[bad] = 0.0
        return f, g

    return fun


def _resolve_starts(law: ScalingLaw, starts: Any) -> np.ndarray:
    if starts is None or (isinstance(starts, str) and starts == "default"):
        return law.default_starts()
    if isinstance(starts, str):
        if starts == "coarse":
            return law.coarse_starts()
        raise ConfigError(f"starts={starts!r} is not understood; use 'default', 'coarse' or a (K, "
                          f"{len(law.theta_names)}) array of {', '.join(law.theta_names)}")
    arr = np.atleast_2d(np.asarray(starts, dtype=np.float64))
    if arr.ndim != 2 or arr.shape[1] != len(law.theta_names) or arr.shape[0] == 0 or not np.all(np.isfinite(arr)):
        raise ConfigError(f"starts must be a finite (K, {len(law.theta_names)}) array of "
                          f"{', '.join(law.theta_names)}; got shape {arr.shape}")
    return arr


def _distinct_best(x: np.ndarray, f: np.ndarray, k: int, tol: float = 1e-3) -> list[int]:
    """Indices of the ``k`` lowest-objective rows that differ from each other by more than ``tol`` (max-norm)."""
    chosen: list[int] = []
    for i in np.argsort(f, kind="stable"):
        if not np.isfinite(f[i]):
            break
        if all(np.max(np.abs(x[i] - x[j])) > tol for j in chosen):
            chosen.append(int(i))
        if len(chosen) == k:
            break
    return chosen


def _multistart(fun, x0: np.ndarray, bounds, *, max_iter: int, desc: str, quiet: bool | None,
                fscale: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    res = batched_lbfgs(fun, x0, lower=bounds[0], upper=bounds[1], max_iter=max_iter, desc=desc, quiet=quiet,
                        fscale=fscale)
    return res.x, res.f, res.converged & np.isfinite(res.f)


def fit_scaling_law(data: ScalingData | Mapping[str, Any] | str, law: str | ScalingLaw = "chinchilla", *,
                    starts: Any = "default", delta: float | None = None, bootstrap: int = 0, seed: int = 0,
                    polish: int = 5, max_iter: int = 1000, quiet: bool | None = None,
                    **law_settings: Any) -> ScalingFit:
    """Fit a registered scaling law by robust multi-start L-BFGS, optionally with bootstrap uncertainty.

    The recipe (Hoffmann et al. 2022; Besiroglu et al. 2024): minimise ``sum_i huber_delta(pred_i - y_i)`` where
    ``y = log(target)`` for log-space laws, from every start of a grid, run together by a vectorised L-BFGS
    (analytic gradients), then polish the ``polish`` best distinct optima with scipy's L-BFGS-B to tight
    tolerance and keep the lowest. Bootstrap: ``bootstrap`` resamples of the points with replacement
    (``numpy.random.default_rng(seed)``), each refitted from the polished optima of the full fit; refits whose
    best start does not converge are counted in ``bootstrap_failed`` and left out of the standard errors.

    Args:
        data: :class:`ScalingData`, a mapping of columns, or a CSV path.
        law: registered law name (``losslab list scaling-laws``) or a :class:`ScalingLaw` instance.
        starts: ``"default"`` (the law's published grid), ``"coarse"`` (small grid) or a (K, P) array.
        delta: Huber delta on the residuals (default: the law's, 1e-3 for log-space laws).
        bootstrap: number of bootstrap resamples (0: none).
        seed: seed of the bootstrap resampling.
        polish: how many of the best distinct optima to polish with scipy L-BFGS-B.
        max_iter: iteration cap of each start.
        quiet: progress bars off (None: off unless stderr is a terminal and ``LOSSLAB_QUIET`` is unset).
        **law_settings: settings of the law (e.g. ``e_x`` for ``loss_to_loss``).

    Returns:
        :class:`ScalingFit` (parameters, objective, start statistics, bootstrap samples, provenance).

    Raises:
        DataError: missing or bad columns, too few points. ConfigError: bad options. FitError: no start converged.

    Example:
        >>> N = np.repeat([1e8, 4e8, 1.6e9, 6.4e9], 3); D = np.tile([2e9, 8e9, 3.2e10], 4)
        >>> L = 1.8 + 480 / N**0.35 + 2100 / D**0.37
        >>> fit = fit_scaling_law({"N": N, "D": D, "loss": L}, starts="coarse", quiet=True)
        >>> round(fit.params["E"], 3), round(fit.params["alpha"], 3)
        (1.8, 0.35)

    References:
        Hoffmann et al., Training Compute-Optimal Large Language Models, arXiv:2203.15556, 2022.
        Besiroglu, Erdil, Barnett, You, Chinchilla Scaling: A replication attempt, arXiv:2404.10102, 2024.
    """
    from losslab.forecast.scaling._catalogue import get_law

    if not isinstance(law, str) and law_settings:
        raise ConfigError(f"law settings {sorted(law_settings)} were given with a law instance; pass the law by name "
                          "or build the instance with its settings")
    law_obj = get_law(law, **law_settings) if isinstance(law, str) else law
    data = as_data(data)
    for name, value in (("bootstrap", bootstrap), ("polish", polish), ("max_iter", max_iter)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < (0 if name == "bootstrap" else 1):
            raise ConfigError(f"{name}={value!r} must be an integer >= {0 if name == 'bootstrap' else 1}")
    try:
        delta = law_obj.delta if delta is None else float(delta)
    except (TypeError, ValueError):
        raise ConfigError(f"delta={delta!r} must be a positive number (use inf for least squares)") from None
    if not delta > 0:
        raise ConfigError(f"delta={delta!r} must be > 0 (use inf for least squares)")
    X, y = law_obj.prepare(data)
    if data.n < law_obj.min_points:
        raise DataError(f"{data.source}: {data.n} points are too few for law {law_obj.name!r} with "
                        f"{len(law_obj.theta_names)} parameters; give at least {law_obj.min_points}")
    law_obj.configure(data)
    x0 = _resolve_starts(law_obj, starts)
    P = len(law_obj.theta_names)
    lo = None if law_obj.lower is None else np.asarray(law_obj.lower, dtype=np.float64)
    hi = None if law_obj.upper is None else np.asarray(law_obj.upper, dtype=np.float64)
    fun = make_objective(law_obj, X, y, delta)
    xs, fs, conv = _multistart(fun, x0, (lo, hi), max_iter=max_iter,
                               desc=f"fit {law_obj.name} ({x0.shape[0]} starts)", quiet=quiet)
    if not np.any(np.isfinite(fs)):
        raise FitError(f"law {law_obj.name!r}: none of the {x0.shape[0]} starts reached a finite objective; "
                       "check the data (units, columns) or give starts closer to plausible parameters")
    cand = _distinct_best(xs, np.where(conv, fs, np.inf) if np.any(conv) else fs, polish)
    polished = []
    scipy_bounds = None if lo is None and hi is None else list(zip(
        lo if lo is not None else [None] * P, hi if hi is not None else [None] * P))
    for i in cand:
        res = minimize(lambda t: (lambda fg: (float(fg[0][0]), fg[1][0]))(fun(t[None, :], np.zeros(1, dtype=int))),
                       xs[i], jac=True, method="L-BFGS-B", bounds=scipy_bounds,
                       options={"ftol": 1e-13, "gtol": 1e-10, "maxiter": 500})
        ok = np.isfinite(res.fun) and res.fun <= fs[i]
        polished.append((res.x, float(res.fun)) if ok else (xs[i], float(fs[i])))
    polished.sort(key=lambda t: t[1])
    theta, objective = polished[0]
    boot, failed = None, 0
    if bootstrap:
        rng = np.random.default_rng(seed)
        W = rng.multinomial(data.n, np.full(data.n, 1.0 / data.n), size=bootstrap).astype(np.float64)
        seeds = np.array([t for t, _ in polished])
        s = seeds.shape[0]
        x0b = np.tile(seeds, (bootstrap, 1))
        wrow = np.repeat(np.arange(bootstrap), s)
        bfun = make_objective(law_obj, X, y, delta, W, wrow)
        # relative stopping test: from the full-data optimum the objective changes by far less than scipy's
        # absolute 2.2e-9, so its rule would stop the refits at once and shrink the standard errors
        xb, fb, cb = _multistart(bfun, x0b, (lo, hi), max_iter=max_iter, fscale=1e-12,
                                 desc=f"bootstrap {law_obj.name} ({bootstrap} resamples)", quiet=quiet)
        fb = np.where(cb, fb, np.inf).reshape(bootstrap, s)
        best = np.argmin(fb, axis=1)
        ok = np.isfinite(fb[np.arange(bootstrap), best])
        boot = xb.reshape(bootstrap, s, P)[np.arange(bootstrap), best][ok]
        failed = int(bootstrap - ok.sum())
    return ScalingFit.create(
        law=law_obj, theta=np.asarray(theta, dtype=np.float64), objective=objective, data=data, delta=delta,
        n_starts=int(x0.shape[0]), n_failed_starts=int((~conv).sum()), bootstrap=boot,
        bootstrap_requested=int(bootstrap), bootstrap_failed=failed, seed=seed,
        provenance=provenance(law=law_obj.name, law_settings=law_obj.settings, starts=int(x0.shape[0]),
                              delta=delta if np.isfinite(delta) else None, bootstrap=int(bootstrap), seed=seed, polish=polish, max_iter=max_iter,
                              source=data.source, n_points=data.n))
