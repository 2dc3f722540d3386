"""The base class every scaling law implements, and helpers shared by the law modules."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from losslab._errors import DataError
from losslab.forecast.scaling._data import ScalingData

__all__ = ["ScalingLaw", "Vjp", "jac_vjp", "lse_terms", "product_grid"]

# v (K, n) -> J^T v (K, P): the vector-Jacobian product of the law at the evaluated rows
Vjp = Callable[[np.ndarray], np.ndarray]


def jac_vjp(jac: np.ndarray) -> Vjp:
    """Vector-Jacobian product from an explicit Jacobian (K, n, P)."""
    return lambda v: np.einsum("kn,knp->kp", v, jac)


def product_grid(*axes: Sequence[float] | np.ndarray) -> np.ndarray:
    """Cartesian product of the axes as a (K, P) float64 array, the last axis varying fastest."""
    return np.array(list(itertools.product(*axes)), dtype=np.float64)


def lse_terms(terms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """log-sum-exp over axis 0 of ``terms`` (J, K, n) and the softmax weights (J, K, n) = d LSE / d term."""
    m = terms.max(axis=0)
    w = np.exp(terms - m)
    s = w.sum(axis=0)
    w /= s
    return m + np.log(s), w


class ScalingLaw:
    """A parametric law ``target = f(inputs; theta)`` fitted by the robust multi-start recipe.

    Subclasses set the class attributes and implement :meth:`model` (prediction in fit space and its Jacobian,
    batched over parameter rows), :meth:`natural` (the reported parameters) and :meth:`default_starts`.

    Attributes:
        name: registry key.
        theta_names: names of the fit-space parameters (e.g. ``a = log A``).
        param_names: names of the reported (natural) parameters.
        inputs: data columns the law reads.
        target: the column it predicts.
        positive: columns that must be > 0.
        space: ``"log"`` (residuals on log target, the Chinchilla convention) or ``"linear"``.
        delta: default Huber delta on the residuals.
        lower, upper: optional box bounds on theta (None: unbounded).
    """

    name: str = ""
    summary: str = ""
    reference: str = ""
    theta_names: tuple[str, ...] = ()
    param_names: tuple[str, ...] = ()
    inputs: tuple[str, ...] = ()
    target: str = "loss"
    positive: tuple[str, ...] = ()
    space: str = "log"
    delta: float = 1e-3
    lower: tuple[float, ...] | None = None
    upper: tuple[float, ...] | None = None
    settings_names: tuple[str, ...] = ()

    def __init__(self, **settings: Any) -> None:
        self.settings: dict[str, Any] = dict(settings)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.settings.items())})"

    # ----------------------------------------------------------------- data
    def prepare(self, data: ScalingData) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Validate ``data`` for this law and return (inputs, fit-space target)."""
        data.require([*self.inputs, self.target], positive=self.positive, law=self.name)
        X = {c: data[c] for c in self.inputs}
        y = data[self.target]
        return X, (np.log(y) if self.space == "log" else y.copy())

    def configure(self, data: ScalingData) -> None:
        """Hook: derive data-dependent settings (e.g. normalisation constants) before fitting."""

    # ----------------------------------------------------------------- math
    def model(self, theta: np.ndarray, X: Mapping[str, np.ndarray]) -> tuple[np.ndarray, Vjp]:
        """Fit-space prediction (K, n) for parameter rows ``theta`` (K, P), and its vector-Jacobian product.

        The second value maps ``v`` (K, n) to ``sum_i v_ki d pred_ki / d theta_k`` (K, P); laws with an explicit
        Jacobian return ``jac_vjp(jac)``.
        """
        raise NotImplementedError

    def natural(self, theta: np.ndarray) -> dict[str, np.ndarray]:
        """Reported parameters from fit-space rows (K, P) -> name -> (K,) arrays."""
        return {n: theta[..., i] for i, n in enumerate(self.theta_names)}

    def default_starts(self) -> np.ndarray:
        """The grid of starting points (K, P) used when the caller gives none."""
        raise NotImplementedError

    def coarse_starts(self) -> np.ndarray:
        """A small grid for quick fits and tests (defaults to every 4th default start)."""
        return self.default_starts()[::4]

    def predict_theta(self, theta: np.ndarray, X: Mapping[str, np.ndarray]) -> np.ndarray:
        """Target in its own units for parameter rows (K, P) -> (K, n)."""
        pred, _ = self.model(np.atleast_2d(theta), X)
        return np.exp(pred) if self.space == "log" else pred

    def optimal(self, theta: np.ndarray, flops: np.ndarray) -> dict[str, np.ndarray] | None:
        """Compute-optimal allocation for parameter rows (K, P) at budgets ``flops``; None if undefined."""
        return None

    @property
    def min_points(self) -> int:
        """Fewest data points a fit accepts: one more than the number of parameters."""
        return len(self.theta_names) + 1

    def check_inputs(self, X: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Validate prediction inputs: every input column, finite, positive where required."""
        out: dict[str, np.ndarray] = {}
        for c in self.inputs:
            if c not in X:
                raise DataError(f"law {self.name!r} needs input {c!r} to predict; got {', '.join(X) or 'none'}")
            v = np.atleast_1d(np.asarray(X[c], dtype=np.float64))
            if not np.all(np.isfinite(v)) or (c in self.positive and np.any(v <= 0)):
                req = "finite and > 0" if c in self.positive else "finite"
                raise DataError(f"input {c!r} must be {req}; got {v.tolist()}")
            out[c] = v
        return out
