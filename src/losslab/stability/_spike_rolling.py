"""Detectors comparing a value with the statistics of its recent history: rolling z-score and ratio to the mean."""

from __future__ import annotations

import math
from collections import deque
from typing import Any

from losslab._errors import ConfigError
from losslab.stability._spike_base import (
    _STATE_VERSION,
    SpikeEvent,
    _as_float,
    _check_positive_float,
    _check_positive_int,
    _check_state,
)

__all__ = ["RatioDetector", "ZScoreDetector"]


class ZScoreDetector:
    r"""Rolling z-score detector (OLMo-core ``StabilityMonitorCallback`` rule).

    With :math:`\mu, \sigma` the mean and (population, ``ddof=0``) standard deviation of the last ``window``
    accepted values, a value :math:`x` is a spike when at least ``min_history`` values are in the window and

    .. math:: z = (x - \mu) / \sigma > \text{threshold}.

    Only upward deviations count (a loss that drops suddenly is good news). When :math:`\sigma \le 10^{-10}`
    (e.g. a constant series) no event is raised and nothing is divided by zero, as in OLMo-core; pair with
    :class:`RatioDetector` or :class:`ThresholdDetector` to catch a jump off a perfectly flat signal.

    Args:
        window: number of previous accepted values the statistics use (OLMo-core: 128). At least 2.
        threshold: number of standard deviations (OLMo-core: 6). Must be > 0.
        min_history: values needed before any event; ``None`` (default) is OLMo-core ``SkipStepOptimizer``'s
            ``max(2, window // 2)``, i.e. 64 for the default window. Between 2 and ``window``.
        ddof: delta degrees of freedom of the std: 0 (population, OLMo-core monitor) or 1 (unbiased,
            OLMo-core ``SkipStepOptimizer``'s ``torch.std_mean``).

    Returns:
        ``update`` returns a :class:`SpikeEvent` with ``score = z`` or ``None``.

    Example:
        >>> d = ZScoreDetector(window=5, threshold=2.0, min_history=5)
        >>> [d.update(x, step=i) for i, x in enumerate([1.0, 1.1, 1.2, 1.3, 1.4])]
        [None, None, None, None, None]
        >>> d.update(100.0, step=5).step
        5

    References:
        OLMo-core (Allen Institute for AI), ``olmo_core.train.callbacks.StabilityMonitorCallback`` and
        ``olmo_core.optim.SkipStepOptimizer``; Team OLMo, "2 OLMo 2 Furious", arXiv:2501.00656, 2024.

    Notes:
        Unlike OLMo-core's skip-step optimizer, a spike does not enter the history (see the module docstring);
        non-finite values are ignored.
    """

    kind = "zscore"

    def __init__(self, window: int = 128, threshold: float = 6.0, min_history: int | None = None,
                 ddof: int = 0) -> None:
        self.window = _check_positive_int("window", window, 2)
        self.threshold = _check_positive_float("threshold", threshold)
        if min_history is None:
            min_history = max(2, self.window // 2)
        self.min_history = _check_positive_int("min_history", min_history, 2)
        if self.min_history > self.window:
            raise ConfigError(
                f"min_history ({min_history}) cannot exceed window ({window}): the window never holds that many "
                f"values; use min_history <= window"
            )
        if ddof not in (0, 1):
            raise ConfigError(f"ddof must be 0 (population std) or 1 (unbiased std), got {ddof!r}")
        self.ddof = int(ddof)
        self.name = "zscore"
        self._history: deque[float] = deque(maxlen=self.window)
        self.n_events = 0

    def _stats(self) -> tuple[float, float]:
        n = len(self._history)  # two-pass mean/variance in float64: exact enough for <= a few thousand values
        mean = sum(self._history) / n
        var = sum([(h - mean) * (h - mean) for h in self._history]) / (n - self.ddof)
        return mean, math.sqrt(var)

    def update(self, value: float, step: int, metric: str = "loss") -> SpikeEvent | None:
        """Feed one value; return an event when its z-score exceeds ``threshold``."""
        x = _as_float(value)
        if not math.isfinite(x):
            return None
        if len(self._history) >= self.min_history:
            mean, std = self._stats()
            if std > 1e-10:
                z = (x - mean) / std
                if z > self.threshold:
                    self.n_events += 1
                    return SpikeEvent(
                        int(step), metric, x, z, self.name,
                        f"{metric} {x:.6g} at step {step} is {z:.1f} std above its rolling mean {mean:.6g} "
                        f"(window {len(self._history)}, threshold {self.threshold:g})",
                    )
        self._history.append(x)
        return None

    def reset(self) -> None:
        """Forget the history and the event count."""
        self._history.clear()
        self.n_events = 0

    def state_dict(self) -> dict[str, Any]:
        """Configuration, history and event count."""
        return {"kind": self.kind, "version": _STATE_VERSION,
                "config": {"window": self.window, "threshold": self.threshold, "min_history": self.min_history,
                           "ddof": self.ddof},
                "history": list(self._history), "n_events": self.n_events}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore configuration and history from :meth:`state_dict`."""
        state = _check_state(state, self.kind)
        fresh = ZScoreDetector(**state["config"])
        self.window, self.threshold, self.min_history, self.ddof = (
            fresh.window, fresh.threshold, fresh.min_history, fresh.ddof)
        self._history = deque((float(h) for h in state["history"]), maxlen=self.window)
        self.n_events = int(state["n_events"])

    def __repr__(self) -> str:
        return (f"ZScoreDetector(window={self.window}, threshold={self.threshold:g}, "
                f"min_history={self.min_history}, ddof={self.ddof})")


_REL_SLACK = 1e-9
"""Relative slack of RatioDetector's comparisons (far above float64 rounding, far below any real margin)."""


class RatioDetector:
    r"""Ratio-to-running-mean detector (Lightning Fabric ``SpikeDetection`` rule, ``mode="min"``).

    With :math:`m` the mean of the last ``window`` accepted values and :math:`x_{-1}` the last accepted value,
    :math:`x` is a spike when at least ``warmup`` values were accepted and all of

    .. math:: x > x_{-1}, \quad |x - m| \ge (\text{ratio} - 1)\,|m|, \quad |x - m| \ge \text{atol (if set)}.

    For a positive metric above its mean this reads :math:`x \ge \text{ratio} \cdot m`. Both comparisons
    allow a relative slack of :math:`10^{-9}`, so a value exactly on the boundary counts as a spike although the
    mean is rounded. The event's score is
    :math:`1 + |x - m| / |m|` (that is :math:`x / m` when :math:`x > m > 0`; ``inf`` when :math:`m = 0`).

    Args:
        ratio: how many times the running mean counts as a spike; Lightning's ``rtol=2.0`` is ``ratio=3.0``.
            Must be > 1.
        window: length of the running mean (Lightning: 10). At least 1.
        warmup: accepted values needed before any event (Lightning: 1). At least 1.
        atol: optional absolute margin :math:`|x - m|` must also reach (Lightning: ``None``). Must be > 0.

    Returns:
        ``update`` returns a :class:`SpikeEvent` or ``None``.

    Example:
        >>> d = RatioDetector(ratio=3.0, window=4)
        >>> [d.update(x, step=i) for i, x in enumerate([2.0, 2.0, 2.0])]
        [None, None, None]
        >>> round(d.update(7.0, step=3).score, 3)
        3.5

    References:
        Lightning Fabric, ``lightning.fabric.utilities.spike.SpikeDetection`` (Lightning AI, 2023).

    Notes:
        Lightning parametrises the relative margin as ``rtol = ratio - 1`` and raises an exception on a spike;
        here the detector only reports. Lightning's ``mode="max"`` is not offered (losses and gradient norms
        are minimised). Non-finite values are ignored (Lightning's default ``finite_only=True`` would flag them:
        use :class:`NonFiniteDetector` for that).
    """

    kind = "ratio"

    def __init__(self, ratio: float = 3.0, window: int = 10, warmup: int = 1, atol: float | None = None) -> None:
        self.ratio = _check_positive_float("ratio", ratio, above=1.0)
        self.window = _check_positive_int("window", window, 1)
        self.warmup = _check_positive_int("warmup", warmup, 1)
        self.atol = None if atol is None else _check_positive_float("atol", atol)
        self.name = "ratio"
        self._history: deque[float] = deque(maxlen=self.window)
        self._last: float | None = None
        self._n_accepted = 0
        self.n_events = 0

    def update(self, value: float, step: int, metric: str = "loss") -> SpikeEvent | None:
        """Feed one value; return an event when it is ``ratio`` times its running mean (see class doc)."""
        x = _as_float(value)
        if not math.isfinite(x):
            return None
        if self._n_accepted >= self.warmup and self._last is not None and x > self._last:
            mean = math.fsum(self._history) / len(self._history)
            diff = abs(x - mean)
            # a relative slack of 1e-9 so that a value exactly on the boundary (7.75 = 3 x mean(1, 2.25, 4.5))
            # is not missed because the mean was rounded
            if (diff >= (self.ratio - 1.0) * abs(mean) * (1.0 - _REL_SLACK) and diff > 0
                    and (self.atol is None or diff >= self.atol * (1.0 - _REL_SLACK))):
                score = math.inf if mean == 0 else 1.0 + diff / abs(mean)
                self.n_events += 1
                return SpikeEvent(
                    int(step), metric, x, score, self.name,
                    f"{metric} {x:.6g} at step {step} is {score:.3g}x its running mean {mean:.6g} "
                    f"(window {len(self._history)}, ratio {self.ratio:g})",
                )
        self._history.append(x)
        self._last = x
        self._n_accepted += 1
        return None

    def reset(self) -> None:
        """Forget the history and the event count."""
        self._history.clear()
        self._last = None
        self._n_accepted = 0
        self.n_events = 0

    def state_dict(self) -> dict[str, Any]:
        """Configuration, history and counters."""
        return {"kind": self.kind, "version": _STATE_VERSION,
                "config": {"ratio": self.ratio, "window": self.window, "warmup": self.warmup, "atol": self.atol},
                "history": list(self._history), "last": self._last, "n_accepted": self._n_accepted,
                "n_events": self.n_events}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore configuration and history from :meth:`state_dict`."""
        state = _check_state(state, self.kind)
        fresh = RatioDetector(**state["config"])
        self.ratio, self.window, self.warmup, self.atol = fresh.ratio, fresh.window, fresh.warmup, fresh.atol
        self._history = deque((float(h) for h in state["history"]), maxlen=self.window)
        self._last = None if state["last"] is None else float(state["last"])
        self._n_accepted = int(state["n_accepted"])
        self.n_events = int(state["n_events"])

    def __repr__(self) -> str:
        return f"RatioDetector(ratio={self.ratio:g}, window={self.window}, warmup={self.warmup}, atol={self.atol})"
