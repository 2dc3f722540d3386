"""The result of a scaling-law fit: parameters, uncertainty, predictions, and a JSON file format."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from losslab._errors import ConfigError, DataError, LosslabError
from losslab._files import write_text
from losslab.forecast.scaling._data import ScalingData
from losslab.forecast.scaling._law import ScalingLaw

__all__ = ["ScalingFit"]

FORMAT = "losslab.scaling_fit"
FORMAT_VERSION = 1


def _check_level(level: float) -> float:
    if not 0 < level < 1:
        raise ConfigError(f"level={level!r} must be in (0, 1), e.g. 0.95 for a 95 % interval")
    return float(level)


@dataclass(eq=False)
class ScalingFit:
    """A fitted scaling law.

    Attributes:
        law: the law (a :class:`ScalingLaw` instance with its settings).
        theta: fit-space parameters (P,), e.g. ``(log A, log B, log E, alpha, beta)`` for Chinchilla.
        objective: the minimised sum of Huber losses.
        delta: the Huber delta used.
        n_points: data points fitted.
        n_starts, n_failed_starts: starts run, and those that did not converge (max_iter or non-finite).
        at_bounds: names of fit-space parameters stuck at a bound of the law.
        bootstrap: fit-space parameters of the successful bootstrap refits (B_ok, P), or None.
        bootstrap_requested, bootstrap_failed: resamples asked for, and refits that failed (not in ``bootstrap``).
        data_range: min and max of every input column seen in the fit.
        provenance: versions, settings and source (losslab._provenance).
    """

    law: ScalingLaw
    theta: np.ndarray
    objective: float
    delta: float
    n_points: int
    n_starts: int = 0
    n_failed_starts: int = 0
    at_bounds: list[str] = field(default_factory=list)
    bootstrap: np.ndarray | None = None
    bootstrap_requested: int = 0
    bootstrap_failed: int = 0
    seed: int = 0
    data_range: dict[str, list[float]] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def create(cls, *, law: ScalingLaw, theta: np.ndarray, objective: float, data: ScalingData, delta: float,
               **kw: Any) -> ScalingFit:
        """Build from a finished fit (fills ``at_bounds`` and ``data_range``)."""
        at: list[str] = []
        for i, name in enumerate(law.theta_names):
            for b in (law.lower, law.upper):
                if b is not None and math.isfinite(b[i]) and abs(theta[i] - b[i]) <= 1e-6 * max(1.0, abs(b[i])):
                    at.append(name)
        rng = {c: [float(np.min(data[c])), float(np.max(data[c]))] for c in law.inputs}
        return cls(law=law, theta=theta, objective=float(objective), delta=float(delta), n_points=data.n,
                   at_bounds=at, data_range=rng, **kw)

    # ------------------------------------------------------------ parameters
    @property
    def params(self) -> dict[str, float]:
        """Reported parameters (e.g. A, B, E, alpha, beta)."""
        return {k: float(v[0]) for k, v in self.law.natural(self.theta[None, :]).items()}

    def _boot_natural(self) -> dict[str, np.ndarray]:
        if self.bootstrap is None or len(self.bootstrap) < 2:
            raise ConfigError("this fit has no bootstrap samples (or fewer than 2 successful refits); refit with "
                              "bootstrap=1000 (CLI: --bootstrap 1000)")
        return self.law.natural(self.bootstrap)

    def standard_errors(self) -> dict[str, float]:
        """Bootstrap standard deviation of every reported parameter (ddof=1)."""
        return {k: float(np.std(v, ddof=1)) for k, v in self._boot_natural().items()}

    def intervals(self, level: float = 0.95) -> dict[str, tuple[float, float]]:
        """Percentile bootstrap intervals of every reported parameter."""
        q = (1 - _check_level(level)) / 2
        return {k: (float(np.quantile(v, q)), float(np.quantile(v, 1 - q))) for k, v in self._boot_natural().items()}

    # ------------------------------------------------------------ predictions
    def predict(self, inputs: Mapping[str, Any] | None = None, **kw: Any) -> np.ndarray:
        """Predicted target at ``inputs`` (columns of the law, e.g. ``params=..., tokens=...``)."""
        X = self.law.check_inputs({**(inputs or {}), **kw})
        return self.law.predict_theta(self.theta[None, :], X)[0]

    def predict_interval(self, inputs: Mapping[str, Any] | None = None, level: float = 0.95,
                         **kw: Any) -> tuple[np.ndarray, np.ndarray]:
        """Percentile bootstrap interval of the prediction (parameter uncertainty only, no point noise)."""
        q = (1 - _check_level(level)) / 2
        self._boot_natural()
        X = self.law.check_inputs({**(inputs or {}), **kw})
        pred = self.law.predict_theta(self.bootstrap, X)  # type: ignore[arg-type]
        return np.quantile(pred, q, axis=0), np.quantile(pred, 1 - q, axis=0)

    def optimal(self, flops: Any, level: float = 0.95) -> dict[str, Any]:
        """Compute-optimal allocation at budgets ``flops`` with bootstrap intervals when available.

        Returns a dict ``{"flops", "params", "tokens", "loss"}`` of arrays, plus ``"<key>_interval"`` pairs
        (lower, upper arrays) when the fit has bootstrap samples.
        """
        C = np.atleast_1d(np.asarray(flops, dtype=np.float64))
        if not np.all(np.isfinite(C)) or np.any(C <= 0):
            raise DataError(f"compute budgets must be finite and > 0 FLOP; got {C.tolist()}")
        point = self.law.optimal(self.theta[None, :], C)
        if point is None:
            raise ConfigError(f"law {self.law.name!r} has no compute-optimal allocation; use a law over "
                              "(params, tokens) such as 'chinchilla'")
        out: dict[str, Any] = {"flops": C, **{k: v[0] for k, v in point.items()}}
        if self.bootstrap is not None and len(self.bootstrap) >= 2:
            q = (1 - _check_level(level)) / 2
            boot = self.law.optimal(self.bootstrap, C)
            assert boot is not None
            for k, v in boot.items():
                out[f"{k}_interval"] = (np.quantile(v, q, axis=0), np.quantile(v, 1 - q, axis=0))
        return out

    # ------------------------------------------------------------ files
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary (the FIT.json format)."""
        d: dict[str, Any] = {
            "format": FORMAT, "version": FORMAT_VERSION, "law": self.law.name,
            "law_settings": self.law.settings, "theta_names": list(self.law.theta_names),
            "theta": self.theta.tolist(), "params": self.params, "objective": self.objective,
            "delta": self.delta if math.isfinite(self.delta) else None, "n_points": self.n_points, "n_starts": self.n_starts,
            "n_failed_starts": self.n_failed_starts, "at_bounds": self.at_bounds, "seed": self.seed,
            "data_range": self.data_range,
            "bootstrap": {"requested": self.bootstrap_requested, "failed": self.bootstrap_failed,
                          "theta": None if self.bootstrap is None else self.bootstrap.tolist()},
            "provenance": self.provenance,
        }
        if self.bootstrap is not None and len(self.bootstrap) >= 2:
            d["bootstrap"]["se"] = self.standard_errors()
            d["bootstrap"]["ci95"] = {k: list(v) for k, v in self.intervals(0.95).items()}
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "<dict>") -> ScalingFit:
        """Rebuild from :meth:`to_dict` output; raises :class:`DataError` on a malformed record."""
        from losslab.forecast.scaling._catalogue import get_law

        if not isinstance(d, Mapping) or d.get("format") != FORMAT:
            raise DataError(f"{source}: not a losslab scaling fit (missing \"format\": \"{FORMAT}\"); write one "
                            "with 'losslab scaling fit RUNS.csv -o FIT.json'")
        try:
            law = get_law(str(d["law"]), **dict(d.get("law_settings") or {}))
            theta = np.asarray(d["theta"], dtype=np.float64)
            boot = d.get("bootstrap") or {}
            bt = boot.get("theta")
            fit = cls(law=law, theta=theta, objective=float(d["objective"]), delta=math.inf if d["delta"] is None else float(d["delta"]),
                      n_points=int(d["n_points"]), n_starts=int(d.get("n_starts", 0)),
                      n_failed_starts=int(d.get("n_failed_starts", 0)), at_bounds=list(d.get("at_bounds", [])),
                      bootstrap=None if bt is None else np.asarray(bt, dtype=np.float64).reshape(-1, theta.size),
                      bootstrap_requested=int(boot.get("requested", 0)), bootstrap_failed=int(boot.get("failed", 0)),
                      seed=int(d.get("seed", 0)), data_range=dict(d.get("data_range", {})),
                      provenance=dict(d.get("provenance", {})))
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, LosslabError):
                raise
            raise DataError(f"{source}: malformed scaling fit ({type(exc).__name__}: {exc}); refit to rewrite "
                            "the file") from None
        if theta.shape != (len(law.theta_names),) or not np.all(np.isfinite(theta)):
            raise DataError(f"{source}: 'theta' must hold {len(law.theta_names)} finite numbers for law "
                            f"{law.name!r}; got {d['theta']!r}")
        return fit

    def save(self, path: str | Path) -> None:
        """Write the fit as JSON."""
        write_text(path, json.dumps(self.to_dict(), indent=1, allow_nan=False) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> ScalingFit:
        """Read a fit written by :meth:`save`."""
        p = Path(path)
        try:
            d = json.loads(p.read_text())
        except json.JSONDecodeError as exc:
            raise DataError(f"{p}: not valid JSON ({exc.msg} at line {exc.lineno}); write the file with "
                            "'losslab scaling fit ... -o FIT.json'") from None
        return cls.from_dict(d, source=str(p))
