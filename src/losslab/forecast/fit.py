"""Fit a loss-curve law to one or more training curves and predict the loss of any schedule.

The recipe (Chinchilla Approach 3, as replicated by Besiroglu et al. 2024, arXiv:2404.10102): minimise
``sum_i Huber_delta(log L_i - log Lhat_i)`` (``delta = 1e-3``) over every point of every curve with shared
parameters, inside bounds, from a grid of starting points; report parameters stuck at a bound and failed starts.
``law="auto"`` scores every registered law on held-out data (with three curves or more: each curve predicted from
a fit on the others; with one or two curves: the held-out tails predicted from the heads), picks the simplest law within
5 % of the best held-out error and refits it on all data.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from losslab._errors import ConfigError, DataError, FitError
from losslab._files import write_text
from losslab._provenance import provenance
from losslab.forecast._curve import Curve
from losslab.forecast._points import MIN_CURVES_FOR_LOCO, Points, check_lr, curve_points, split_tail
from losslab.forecast.laws import registry
from losslab.forecast.laws._base import Law

__all__ = ["CurveFit", "fit_curves"]

FORMAT = "losslab.forecast.CurveFit/1"
AUTO_TOLERANCE = 0.05  # "auto" keeps the simplest law whose held-out error is within 5 % of the best one


def _law(name: str, options: dict[str, Any]) -> Law:
    cls = registry.get(name)
    return cls(**options)


@dataclass
class CurveFit:
    """A fitted loss-curve law: parameters, settings, diagnostics and provenance.

    Build one with :func:`fit_curves` or :meth:`load`. ``predict(lr)`` gives the loss of every step of any
    schedule; ``predict_interval`` adds a prediction interval (see :mod:`losslab.forecast.uncertainty`).

    Attributes:
        law: registry name of the law ("power", "tissue", "mpl").
        params: fitted parameters by name.
        options: the law's options (warmup convention, lambda, prior strength, ...).
        settings: fit settings (Huber delta, seed, number of starts, points per curve, ...).
        diagnostics: objective, per-curve fit errors, parameters at bounds, failed starts, timings, the
            ``law="auto"`` selection table.
        uncertainty: what :mod:`losslab.forecast.uncertainty` needs for intervals (covariance, residual scale).
        provenance: versions, platform, time, inputs.
    """

    law: str
    params: dict[str, float]
    options: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    diagnostics: dict[str, Any] = field(default_factory=dict)
    uncertainty: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def theta(self) -> np.ndarray:
        """Parameters as an array in the law's order."""
        return np.array([self.params[p] for p in self.law_object().active_params], dtype=np.float64)

    def law_object(self) -> Law:
        """The law instance with this fit's options."""
        return _law(self.law, self.options)

    def predict(self, lr: Any, *, steps: Any = None) -> np.ndarray:
        """Predicted loss of every step ``1..T`` of a run with per-step learning rate ``lr`` (or at ``steps``).

        Args:
            lr: 1-D array, the learning rate of steps ``1..T`` (warmup included, as for fitting).
            steps: optional 1-based steps to predict at (default: all ``T``).

        Returns:
            float64 array of the predicted loss, shape (T,) or ``steps``' shape.

        Example:
            >>> import numpy as np
            >>> from losslab.forecast import Curve
            >>> t = np.arange(1, 2001)
            >>> loss = np.where(t % 10 == 0, 2.0 + 3.0 * t ** -0.5, np.nan)
            >>> fit = fit_curves([Curve(np.full(2000, 1e-3), loss)], "power", quiet=True)
            >>> round(float(fit.predict(np.full(4000, 1e-3))[-1]), 4)
            2.0474
        """
        arr = check_lr(lr)
        at = self._steps(steps, arr.size)
        with np.errstate(all="ignore"):
            return np.asarray(self.law_object().predict(self.theta, arr, at), dtype=np.float64)

    def predict_interval(self, lr: Any, level: float = 0.9, *, steps: Any = None) -> tuple[np.ndarray, ...]:
        """Prediction and a ``level`` prediction interval: ``(loss, lower, upper)``, three arrays.

        See :func:`losslab.forecast.uncertainty.prediction_interval` for the method and its measured coverage.
        """
        from losslab.forecast.uncertainty import prediction_interval

        arr = check_lr(lr)
        return prediction_interval(self, arr, level, steps=self._steps(steps, arr.size))

    @staticmethod
    def _steps(steps: Any, total: int) -> np.ndarray | None:
        if steps is None:
            return None
        at = np.atleast_1d(np.asarray(steps))
        if at.size == 0 or not np.issubdtype(at.dtype, np.integer) or at.min() < 1 or at.max() > total:
            raise DataError(f"steps must be integers in 1..{total} (the length of lr), got {np.asarray(steps)!r}")
        return at.astype(np.int64)

    # ---- serialisation -------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dictionary (``from_dict`` restores it); non-finite numbers become None."""
        return _strict(json.loads(json.dumps({"format": FORMAT, "law": self.law, "params": self.params,
                                      "options": self.options, "settings": self.settings,
                                      "diagnostics": self.diagnostics, "uncertainty": self.uncertainty,
                                      "provenance": self.provenance}, default=_jsonable)))

    @classmethod
    def from_dict(cls, d: Any) -> CurveFit:
        """Rebuild a fit from :meth:`to_dict` output; DataError if it is not one."""
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            found = d.get("format") if isinstance(d, dict) else type(d).__name__
            raise DataError(f"not a losslab curve fit (format {found!r}, expected {FORMAT!r}); "
                            "create one with losslab.forecast.fit.fit_curves(...).save(path)")
        try:
            fit = cls(law=str(d["law"]), params={str(k): float(v) for k, v in d["params"].items()},
                      options=dict(d.get("options", {})), settings=dict(d.get("settings", {})),
                      diagnostics=dict(d.get("diagnostics", {})), uncertainty=dict(d.get("uncertainty", {})),
                      provenance=dict(d.get("provenance", {})))
            law = fit.law_object()
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise DataError(f"malformed curve fit: {type(exc).__name__}: {exc}; the file is damaged or was edited "
                            "by hand; fit again") from exc
        missing = [p for p in law.active_params if p not in fit.params]
        if missing:
            raise DataError(f"malformed curve fit: parameter {missing[0]!r} of law {fit.law!r} is missing; fit again")
        bad = [k for k, v in fit.params.items() if not np.isfinite(v)]
        if bad:
            raise DataError(f"malformed curve fit: parameter {bad[0]!r} is {fit.params[bad[0]]}, not a finite number; "
                            "the file is damaged or was edited by hand; fit again")
        return fit

    def save(self, path: str | Path) -> Path:
        """Write the fit as JSON to ``path`` (returned)."""
        return write_text(path, json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> CurveFit:
        """Read a fit written by :meth:`save`; DataError on a missing, malformed or foreign file."""
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except FileNotFoundError as exc:
            raise DataError(f"fit file {str(path)!r} does not exist; write one with fit.save(path)") from exc
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DataError(f"fit file {str(path)!r} is not valid JSON ({exc}); it is damaged or not a fit file") from exc
        return cls.from_dict(d)

    def summary(self) -> str:
        """A few human lines: law, parameters, fit error per curve, parameters at bounds, failed starts."""
        d = self.diagnostics
        lines = [f"law: {self.law} ({registry.info(self.law).summary})",
                 "params: " + ", ".join(f"{k}={v:.6g}" for k, v in self.params.items())]
        if self.options:
            lines.append("options: " + ", ".join(f"{k}={v}" for k, v in self.options.items()))
        for c in d.get("curves", []):
            lines.append(f"  {c['name']}: {c['n_points']} points, mean rel. error {100 * c['mean_rel_err']:.3f} %, "
                         f"worst {100 * c['worst_rel_err']:.3f} %")
        sel = d.get("selection")
        if sel:
            lines.append(f"auto selection ({sel.get('method', 'tail')} mean rel. error): " + ", ".join(
                f"{k}={100 * v:.3f} %" if v is not None else f"{k}=not fitted" for k, v in sel["holdout_error"].items()))
        lines.append(f"params at bounds: {', '.join(d.get('at_bounds', [])) or 'none'}")
        lines.append(f"starts: {d.get('n_starts', 0)}, failed: {d.get('failed_starts', 0)}; "
                     f"fit time {d.get('fit_seconds', float('nan')):.2f} s")
        return "\n".join(lines)


def _strict(obj: Any) -> Any:
    """Replace NaN/Inf (which strict JSON readers reject) by None, recursively."""
    if isinstance(obj, float):
        return obj if np.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _strict(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_strict(v) for v in obj]
    return obj


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot serialise {type(obj).__name__}")


def _check_curves(curves: Any) -> list[Curve]:
    if isinstance(curves, Curve):
        return [curves]
    if isinstance(curves, (str, bytes)) or not isinstance(curves, Sequence):
        raise DataError(f"curves must be a list of losslab.forecast.Curve, got {type(curves).__name__}")
    if len(curves) == 0:
        raise DataError("no curves to fit; pass at least one Curve (e.g. losslab.forecast.io.load_curve(path))")
    for c in curves:
        if not isinstance(c, Curve):
            raise DataError(f"curves must be losslab.forecast.Curve objects, got {type(c).__name__}; build one with "
                            "Curve(lr, loss)")
    return list(curves)


def _fit_points(name: str, points: Sequence[Points], options: dict[str, Any], delta: float,
                quiet: bool | None, n_starts: int | None) -> tuple[Law, Any]:
    from losslab.forecast._robust import Problem

    law = _law(name, options)
    problems = [Problem(p.name, law.features(p.lr, p.steps), p.y) for p in points]
    return law, law.fit(problems, delta=delta, quiet=quiet, n_starts=n_starts)


def _law_options(name: str, options: dict[str, Any], strict: bool) -> dict[str, Any]:
    allowed = registry.get(name).option_defaults
    if strict:
        return dict(options)
    return {k: v for k, v in options.items() if k in allowed}


def _rel_errors(law: Law, theta: np.ndarray, pts: Points) -> np.ndarray:
    with np.errstate(all="ignore"):
        pred = law.predict(theta, pts.lr, pts.steps)
    return np.abs(pred - pts.y) / pts.y


def _select(names: Sequence[str], points: Sequence[Points], law_options: dict[str, Any], delta: float,
            quiet: bool | None, n_starts: int | None, holdout: float) -> dict[str, Any]:
    """``law="auto"``: score every law on held-out data and keep the simplest one within the tolerance.

    With three curves or more, leave-one-curve-out: each curve in turn is predicted from a fit on the others and
    the score is the mean over curves of the mean relative error (schedule transfer, what a forecast is used
    for). With one or two curves, the held-out tails (last ``holdout`` of the steps of every curve) predicted
    from a joint fit on the heads: leaving one of two curves out would fit the annealing terms on a single
    schedule (often a constant one, which says nothing about annealing), so that score would mostly reward the
    laws with the fewest schedule-dependent parameters.
    """
    if len(points) >= MIN_CURVES_FOR_LOCO:
        method = "leave-one-curve-out"
        splits = [([p for j, p in enumerate(points) if j != i], [points[i]]) for i in range(len(points))]
    else:
        method = "tail"
        heads, tails = split_tail(points, holdout)
        if not tails:
            raise DataError("law='auto' needs curves long enough to hold out a tail; pass law='tissue' or longer curves")
        splits = [(heads, tails)]
    starts = 1 if (n_starts is None and method != "tail") else n_starts  # the best grid start for each refit
    scores: dict[str, float] = {}
    for n in names:
        opts = _law_options(n, law_options, False)
        n_params = len(_law(n, opts).active_params)
        per_curve: list[float] = []
        for fitted, scored in splits:
            if n_params > sum(p.steps.size for p in fitted):
                per_curve = []  # more parameters than points: not a candidate
                break
            lw, out = _fit_points(n, fitted, opts, delta, quiet, starts)
            if not np.all(np.isfinite(out.theta)):
                per_curve = []
                break
            per_curve += [float(np.mean(_rel_errors(lw, out.theta, p))) for p in scored]
        scores[n] = float(np.mean(per_curve)) if per_curve and np.all(np.isfinite(per_curve)) else float("inf")
    best = min(scores.values())
    if not np.isfinite(best):
        raise FitError("law='auto': every law failed on the held-out split; fit a named law to see why")
    by_size = sorted(names, key=lambda n: len(registry.get(n)().active_params))
    chosen = next(n for n in by_size if scores[n] <= best * (1.0 + AUTO_TOLERANCE))
    return {"holdout_error": {k: (v if np.isfinite(v) else None) for k, v in scores.items()},
            "method": method, "holdout_fraction": holdout, "tolerance": AUTO_TOLERANCE, "chosen": chosen}


def fit_curves(curves: Sequence[Curve] | Curve, law: str = "auto", *, huber_delta: float = 1e-3, seed: int = 0,
               quiet: bool | None = None, max_points: int = 400, skip_warmup: bool = True,
               n_starts: int | None = None, holdout: float = 0.2, calibrate: bool = True,
               **law_options: Any) -> CurveFit:
    """Fit a loss-curve law jointly to ``curves`` (shared parameters) and return a :class:`CurveFit`.

    Objective: ``sum_i Huber_delta(log L_i - log Lhat_i)`` over every fitting point of every curve, bounded,
    best of several starts (a grid of the law's nonlinear parameters with the linear ones solved by NNLS).

    Args:
        curves: one or more :class:`~losslab.forecast.Curve` (per-step lr of steps 1..T, loss NaN where not
            measured). Sparse evaluation points and raw per-step logs both work: curves with more than
            ``max_points`` measured steps are binned (median of each bin).
        law: a registered law (``losslab list laws``: "power", "tissue", "mpl") or "auto" (with two curves or
            more, the law that best predicts each curve from a fit on the others; with one, its held-out tail).
        huber_delta: Huber threshold on the log residual (1e-3, the Chinchilla value).
        seed: seed of the interval calibration (the fit itself is deterministic).
        quiet: hide the progress bar over starts (None: hide unless stderr is a terminal).
        max_points: fitting points per curve at most (binning of dense logs).
        skip_warmup: ignore measured losses inside the warmup (steps before the LR first reaches its peak).
        n_starts: starts handed to the solver (default: the law's own, 4 for tissue/power, 3 for mpl).
        holdout: fraction of each curve's steps held out as its tail when ``law="auto"`` scores the laws on a
            single curve and when the model-error scale of the prediction intervals is calibrated.
        calibrate: calibrate the prediction intervals on held-out tails and left-out curves (two tail refits and
            one refit per curve); False keeps only the in-sample scale (narrower intervals, faster).
        **law_options: options of the law, e.g. ``lam=0.999``, ``warmup="peak"``, ``prior=1.0`` (with "auto"
            each law takes the options it knows).

    Returns:
        A :class:`CurveFit`.

    Raises:
        DataError: no curves, a curve without measured loss after warmup, non-positive loss, bad lr.
        ConfigError / UnknownNameError: a bad setting or an unknown law (the message suggests close names).
        FitError: every start failed.

    Example:
        >>> import numpy as np
        >>> from losslab.forecast import Curve
        >>> t = np.arange(1, 3001)
        >>> loss = np.where(t % 10 == 0, 2.0 + 3.0 * t ** -0.5, np.nan)  # logged every 10 steps
        >>> fit = fit_curves([Curve(np.full(3000, 1e-3), loss)], "power", quiet=True)
        >>> {k: round(v, 3) for k, v in fit.params.items()}
        {'E': 2.0, 'A': 3.0, 'alpha': 0.5}

    References:
        Hoffmann et al., "Training Compute-Optimal Large Language Models", arXiv:2203.15556, 2022 (Approach 3);
        Besiroglu, Erdil, Barnett, You, "Chinchilla Scaling: A replication attempt", arXiv:2404.10102, 2024.
    """
    t0 = time.perf_counter()
    curve_list = _check_curves(curves)
    if not (isinstance(huber_delta, (int, float)) and np.isfinite(huber_delta) and huber_delta > 0):
        raise ConfigError(f"huber_delta must be a finite number > 0, got {huber_delta!r}; 1e-3 is the usual value")
    if int(max_points) != max_points or max_points < 3:
        raise ConfigError(f"max_points must be an integer >= 3, got {max_points!r}")
    if not (isinstance(holdout, (int, float)) and 0.0 < holdout < 1.0):
        raise ConfigError(f"holdout must be a fraction in (0, 1), got {holdout!r}")
    if n_starts is not None and (int(n_starts) != n_starts or n_starts < 1):
        raise ConfigError(f"n_starts must be a positive integer, got {n_starts!r}")
    auto = isinstance(law, str) and law.strip().lower() == "auto"
    names = registry.names() if auto else [registry.info(law).name]
    if auto:
        known = {k for n in names for k in registry.get(n).option_defaults}
        unknown = sorted(set(law_options) - known)
        if unknown:
            raise ConfigError(f"no law has an option {unknown[0]!r}; options: {', '.join(sorted(known))}")
    for n in names:
        _law(n, _law_options(n, law_options, strict=not auto))  # validates options before any work
    points = [curve_points(c, max_points=int(max_points), skip_warmup=skip_warmup) for c in curve_list]
    n_points = sum(p.steps.size for p in points)
    if not auto:
        n_params = len(_law(names[0], _law_options(names[0], law_options, True)).active_params)
        if n_points < n_params:
            raise DataError(f"law {names[0]!r} has {n_params} parameters but the curves give only {n_points} fitting "
                            "points after the warmup; log the loss more often, add curves or pick a smaller law")

    selection = None
    if auto:
        selection = _select(names, points, law_options, huber_delta, quiet, n_starts, holdout)
        names = [selection["chosen"]]

    name = names[0]
    options = _law_options(name, law_options, strict=not auto)
    law_obj, outcome = _fit_points(name, points, options, huber_delta, quiet, n_starts)
    failed = [s for s in outcome.starts if s.get("failed")]
    if not np.all(np.isfinite(outcome.theta)):
        msgs = "; ".join(sorted({str(s.get("message")) for s in failed}))[:300]
        raise FitError(f"law {name!r}: all {len(outcome.starts)} starts failed ({msgs}); check that the loss falls "
                       "over the curves and that lr matches the steps, or try another law")
    full_options = law_obj.options
    params = {p: float(v) for p, v in zip(law_obj.active_params, outcome.theta)}
    per_curve = []
    for p in points:
        e = _rel_errors(law_obj, outcome.theta, p)
        per_curve.append({"name": p.name, "n_points": int(p.steps.size), "first_step": int(p.steps[0]),
                          "last_step": int(p.steps[-1]), "mean_rel_err": float(e.mean()),
                          "worst_rel_err": float(e.max())})
    diagnostics: dict[str, Any] = {
        "objective": float(outcome.cost), "n_points": int(sum(p.steps.size for p in points)),
        "curves": per_curve, "at_bounds": outcome.at_bounds, "n_starts": len(outcome.starts),
        "failed_starts": len(failed), "starts": outcome.starts,
    }
    if selection is not None:
        diagnostics["selection"] = selection
    settings = {"requested_law": law, "huber_delta": huber_delta, "seed": seed, "max_points": int(max_points),
                "skip_warmup": skip_warmup, "n_starts": n_starts, "holdout": holdout, "calibrate": calibrate,
                "peak_lr": float(max(p.lr.max() for p in points)),
                "warmup_steps": [int(np.argmax(p.lr)) for p in points],
                "curve_lengths": [int(p.lr.size) for p in points]}
    fit = CurveFit(law=name, params=params, options=dict(full_options), settings=settings, diagnostics=diagnostics,
                   provenance=provenance(inputs=[{"name": c.name, "steps": len(c), "meta": c.meta} for c in curve_list],
                                         law=name, huber_delta=huber_delta, seed=seed))
    from losslab.forecast.uncertainty import calibrate as _calibrate

    fit.uncertainty = _calibrate(fit, law_obj, outcome, points, seed=seed, holdout=holdout if calibrate else 0.0)
    diagnostics["fit_seconds"] = time.perf_counter() - t0
    return fit
