"""The shape every loss-curve law has: parameters, bounds, schedule features, value and analytic Jacobian.

A law is a small object holding its *options* (fixed settings such as the warmup convention); its parameters
``theta`` are passed in explicitly, so the same law object serves fitting, prediction and planning. Every law
splits its parameters into *linear* ones (the prediction is linear in them once the others are fixed) and
*nonlinear* ones; the fitter grids the nonlinear ones, solves the linear ones by non-negative least squares and
starts its robust fits from the best grid points (a variable-projection start, as in Golub & Pereyra 1973).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from losslab._errors import ConfigError
from losslab._registry import Info

__all__ = ["WARMUP_MODES", "Law", "LawInfo", "detect_warmup", "effective_lr"]

WARMUP_MODES = ("raw", "area", "peak")


@dataclass(frozen=True)
class LawInfo(Info):
    """Registry record of a loss-curve law.

    Attributes:
        params: parameter names in the order of ``theta``.
        options: option names with their defaults (``law_options`` of :func:`losslab.forecast.fit.fit_curves`).
        schedule_aware: False for laws that ignore the learning rate (the plain power law in steps).
    """

    params: tuple[str, ...] = ()
    options: tuple[tuple[str, Any], ...] = ()
    schedule_aware: bool = True


def detect_warmup(lr: np.ndarray) -> int:
    """Number of warmup steps: the steps before the first one that reaches the largest learning rate.

    A schedule that starts at its peak has no warmup (returns 0).

    >>> detect_warmup(np.array([1.0, 2.0, 3.0, 3.0, 1.0]))
    2
    """
    return int(np.argmax(lr))


def effective_lr(lr: np.ndarray, warmup: str) -> tuple[np.ndarray, np.ndarray, float, int]:
    """Learning rates the features are built from: ``(lr_area, lr_anneal, eta_0, warmup_steps)``.

    ``lr_area`` feeds the forward area ``S1``; ``lr_anneal`` and ``eta_0`` (the rate "before step 1") feed the
    annealing term (``S2`` of the Tissue law, ``LD`` of the Multi-Power Law). The ``warmup`` option chooses:

    - ``"raw"``: the rates as given and ``eta_0 = 0``: the rise of the warmup counts as negative annealing. This is
      what the Multi-Power-Law authors' code does (their schedule array starts at 0 at step 0).
    - ``"area"``: the warmup's area counts in ``S1`` but its rise is not annealing (warmup rates and ``eta_0`` are
      set to the peak in the annealing term only). This is the formula of the Multi-Power-Law paper.
    - ``"peak"``: every warmup rate is replaced by the peak, in all features (the Tissue-law re-implementations).

    >>> a, b, e0, w = effective_lr(np.array([1.0, 2.0, 2.0, 1.0]), "area")
    >>> a.tolist(), b.tolist(), e0, w
    ([1.0, 2.0, 2.0, 1.0], [2.0, 2.0, 2.0, 1.0], 2.0, 1)
    """
    if warmup not in WARMUP_MODES:
        raise ConfigError(f"warmup must be one of {', '.join(WARMUP_MODES)}, got {warmup!r}")
    w = detect_warmup(lr)
    if warmup == "raw":
        return lr, lr, 0.0, w
    peak = float(lr[w])
    clipped = lr.copy()
    clipped[:w] = peak
    return (clipped if warmup == "peak" else lr), clipped, peak, w


def positive_area(s1: np.ndarray) -> np.ndarray:
    """The forward area ``S1`` of every step with the steps before any learning (``S1 = 0``, e.g. a log that starts
    at lr 0) given the area of the first step that has one: ``S1^-alpha`` is infinite at 0, and warmup is not modelled.

    >>> positive_area(np.cumsum([0.0, 0.0, 1.0, 2.0])).tolist()
    [1.0, 1.0, 1.0, 3.0]
    """
    positive = s1[s1 > 0]
    return np.maximum(s1, positive[0]) if positive.size else np.maximum(s1, 1e-300)


class Law(ABC):
    """Base class of the loss-curve laws (one subclass a file in ``losslab.forecast.laws``).

    Subclasses set ``name``, ``param_names``, ``linear``, ``option_defaults`` and implement :meth:`features`,
    :meth:`evaluate`, :meth:`bounds` and :meth:`grid`.
    """

    name: ClassVar[str]
    param_names: ClassVar[tuple[str, ...]]
    linear: ClassVar[tuple[str, ...]]
    option_defaults: ClassVar[dict[str, Any]] = {}
    default_starts: ClassVar[int] = 4
    has_annealing_term: ClassVar[bool] = True  # the loss depends on LR decreases (False: schedule-blind)

    def __init__(self, **options: Any) -> None:
        unknown = sorted(set(options) - set(self.option_defaults))
        if unknown:
            allowed = ", ".join(self.option_defaults) or "none"
            raise ConfigError(f"law {self.name!r} has no option {unknown[0]!r}; its options: {allowed}")
        self.options: dict[str, Any] = {**self.option_defaults, **options}
        self.validate_options()

    # ---- to implement ---------------------------------------------------------------------------------------
    def validate_options(self) -> None:  # noqa: B027 (optional hook)
        """Raise ConfigError on out-of-range options (laws without options need not override it)."""

    @property
    def active_params(self) -> tuple[str, ...]:
        """Parameters that are fitted (a law may fix some by option)."""
        return self.param_names

    @abstractmethod
    def features(self, lr: np.ndarray, steps: np.ndarray) -> Any:
        """Precompute what :meth:`evaluate` needs for the 1-based ``steps`` of a run with per-step ``lr``."""

    @abstractmethod
    def evaluate(self, theta: np.ndarray, feats: Any, jac: bool = False) -> Any:
        """Predicted loss at the feature steps; with ``jac`` also the Jacobian (n_steps, n_params)."""

    @abstractmethod
    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Lower and upper bounds of ``theta``."""

    @abstractmethod
    def grid(self) -> list[dict[str, float]]:
        """Grid of values of the nonlinear parameters used to build starting points."""

    # ---- shared --------------------------------------------------------------------------------------------
    def basis(self, nonlinear: dict[str, float], feats: Any) -> np.ndarray:
        """Columns of the prediction for the linear parameters (in ``linear`` order) plus a constant column.

        The default evaluates the law with unit vectors; laws override it when that is wasteful.
        """
        names = self.active_params
        theta = np.array([nonlinear.get(p, 0.0) for p in names])
        lin_idx = [names.index(p) for p in self.linear]
        for i in lin_idx:
            theta[i] = 0.0
        base = self.evaluate(theta, feats)
        cols = []
        for i in lin_idx:
            t = theta.copy()
            t[i] = 1.0
            cols.append(self.evaluate(t, feats) - base)
        return np.column_stack([*cols, base])

    def predict(self, theta: np.ndarray, lr: np.ndarray, steps: np.ndarray | None = None) -> np.ndarray:
        """Predicted loss at ``steps`` (default: every step ``1..T``) of a run with per-step ``lr``."""
        lr = np.asarray(lr, dtype=np.float64)
        if steps is None:
            steps = np.arange(1, lr.size + 1)
        return np.asarray(self.evaluate(np.asarray(theta, dtype=np.float64), self.features(lr, steps)))

    def fit(self, problems: Any, *, delta: float = 1e-3, quiet: bool | None = None,
            n_starts: int | None = None) -> Any:
        """Robust multi-start fit to ``problems`` (see :func:`losslab.forecast._robust.multistart_fit`)."""
        from losslab.forecast._robust import multistart_fit

        return multistart_fit(self, problems, delta=delta, n_starts=n_starts or self.default_starts, quiet=quiet,
                              desc=f"fit {self.name}")
