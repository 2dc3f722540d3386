"""Spike detectors for scalar training signals (loss, gradient norm): pure, online, checkpointable.

Every detector follows the :class:`SpikeDetector` protocol: ``update(value, step, metric)`` returns a
:class:`SpikeEvent` or ``None``; ``reset()``, ``state_dict()`` and ``load_state_dict()`` make it resumable.

Two rules hold for all of them (and are what the tests check):

- A value that triggers an event is **not** added to the detector's history, so one spike does not inflate the
  mean/std and mask the next one. (OLMo-core's ``SkipStepOptimizer`` does add skipped values; its
  ``StabilityMonitorCallback`` does not. We follow the latter, as Lightning's ``SpikeDetection`` does.)
- Non-finite values (NaN, +-Inf) never raise. :class:`NonFiniteDetector` turns them into an event; every other
  detector ignores them (no event, not added to history). Combine both when you need both.
"""

from __future__ import annotations

import copy
import math
from collections import deque
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from losslab._errors import ConfigError, DataError

__all__ = [
    "NonFiniteDetector",
    "RatioDetector",
    "SpikeDetector",
    "SpikeEvent",
    "ThresholdDetector",
    "ZScoreDetector",
    "detect_spikes",
]

_STATE_VERSION = 1


@dataclass(frozen=True)
class SpikeEvent:
    """One detected spike.

    Attributes:
        step: the training step the value belongs to (as passed to ``update``).
        metric: what was measured, e.g. ``"loss"`` or ``"grad_norm"``.
        value: the offending value (may be NaN/Inf for :class:`NonFiniteDetector`).
        score: the detector's statistic: z-score, ratio to the running mean, excess over a bound, or ``inf``.
        detector: the detector's ``name``.
        message: one readable line describing the event.
    """

    step: int
    metric: str
    value: float
    score: float
    detector: str
    message: str

    def to_dict(self) -> dict[str, Any]:
        """The event as a plain dict (JSON-serialisable; NaN/Inf stay Python floats)."""
        return asdict(self)


@runtime_checkable
class SpikeDetector(Protocol):
    """Protocol of an online spike detector over a scalar series."""

    name: str

    def update(self, value: float, step: int, metric: str = "loss") -> SpikeEvent | None:
        """Feed one value; return an event if it is a spike, else ``None``."""
        ...

    def reset(self) -> None:
        """Forget all history."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """Configuration and history, enough to continue identically after ``load_state_dict``."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        ...


def _as_float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError) as exc:
        raise DataError(
            f"a spike detector needs a scalar number, got {type(value).__name__}; pass e.g. loss.item()"
        ) from exc


def _check_positive_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}; pick e.g. {name}={max(minimum, 2)}")
    return int(value)


def _check_positive_float(name: str, value: Any, *, above: float = 0.0) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        x = math.nan
    if not math.isfinite(x) or x <= above:
        raise ConfigError(f"{name} must be a finite number > {above:g}, got {value!r}")
    return x


def _check_state(state: Any, kind: str) -> dict[str, Any]:
    if not isinstance(state, dict) or state.get("kind") != kind:
        found = state.get("kind") if isinstance(state, dict) else type(state).__name__
        raise ConfigError(f"this state_dict belongs to {found!r}, not to {kind!r}; load it into a {kind}")
    if state.get("version") != _STATE_VERSION:
        raise ConfigError(f"unsupported {kind} state version {state.get('version')!r}; expected {_STATE_VERSION}")
    return state


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


class RatioDetector:
    r"""Ratio-to-running-mean detector (Lightning Fabric ``SpikeDetection`` rule, ``mode="min"``).

    With :math:`m` the mean of the last ``window`` accepted values and :math:`x_{-1}` the last accepted value,
    :math:`x` is a spike when at least ``warmup`` values were accepted and all of

    .. math:: x > x_{-1}, \quad |x - m| \ge (\text{ratio} - 1)\,|m|, \quad |x - m| \ge \text{atol (if set)}.

    For a positive metric above its mean this reads :math:`x \ge \text{ratio} \cdot m`. The event's score is
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
            mean = sum(self._history) / len(self._history)
            diff = abs(x - mean)
            if diff >= (self.ratio - 1.0) * abs(mean) and (self.atol is None or diff >= self.atol) and diff > 0:
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


class ThresholdDetector:
    r"""Absolute-bound detector: an event when :math:`x > \text{max\_value}` or :math:`x < \text{min\_value}`.

    The score is the excess beyond the violated bound (:math:`x - \text{max\_value}` or
    :math:`\text{min\_value} - x`, always > 0). This is the rule of metaseq's ``max_loss_to_skip_batch`` and of
    Megatron-LM's ``grad_norm_skip_threshold``.

    Args:
        max_value: upper bound (``None``: no upper bound).
        min_value: lower bound (``None``: no lower bound). At least one bound is required.

    Returns:
        ``update`` returns a :class:`SpikeEvent` or ``None``.

    Example:
        >>> d = ThresholdDetector(max_value=10.0)
        >>> d.update(3.0, step=1) is None, d.update(12.0, step=2).score
        (True, 2.0)

    References:
        metaseq (Meta AI) PR #521 ``max_loss_to_skip_batch``; Megatron-LM (NVIDIA) ``grad_norm_skip_threshold``.
        Both in the spirit of Chowdhery et al., "PaLM: Scaling Language Modeling with Pathways",
        arXiv:2204.02311, 2022 (§5.1, skipping batches around loss spikes).

    Notes:
        Stateless apart from the event count; non-finite values are ignored (use :class:`NonFiniteDetector`).
    """

    kind = "threshold"

    def __init__(self, max_value: float | None = None, min_value: float | None = None) -> None:
        if max_value is None and min_value is None:
            raise ConfigError("ThresholdDetector needs max_value, min_value or both; e.g. max_value=10.0")
        for nm, v in (("max_value", max_value), ("min_value", min_value)):
            if v is not None and not (isinstance(v, (int, float, np.floating, np.integer)) and math.isfinite(v)):
                raise ConfigError(f"{nm} must be a finite number or None, got {v!r}")
        if max_value is not None and min_value is not None and min_value >= max_value:
            raise ConfigError(f"min_value ({min_value}) must be below max_value ({max_value})")
        self.max_value = None if max_value is None else float(max_value)
        self.min_value = None if min_value is None else float(min_value)
        self.name = "threshold"
        self.n_events = 0

    def update(self, value: float, step: int, metric: str = "loss") -> SpikeEvent | None:
        """Feed one value; return an event when it lies outside the bounds."""
        x = _as_float(value)
        if not math.isfinite(x):
            return None
        if self.max_value is not None and x > self.max_value:
            bound, score, word = self.max_value, x - self.max_value, "above"
        elif self.min_value is not None and x < self.min_value:
            bound, score, word = self.min_value, self.min_value - x, "below"
        else:
            return None
        self.n_events += 1
        return SpikeEvent(int(step), metric, x, score, self.name,
                          f"{metric} {x:.6g} at step {step} is {word} the bound {bound:.6g}")

    def reset(self) -> None:
        """Forget the event count."""
        self.n_events = 0

    def state_dict(self) -> dict[str, Any]:
        """Configuration and event count."""
        return {"kind": self.kind, "version": _STATE_VERSION,
                "config": {"max_value": self.max_value, "min_value": self.min_value}, "n_events": self.n_events}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore configuration and event count from :meth:`state_dict`."""
        state = _check_state(state, self.kind)
        fresh = ThresholdDetector(**state["config"])
        self.max_value, self.min_value = fresh.max_value, fresh.min_value
        self.n_events = int(state["n_events"])

    def __repr__(self) -> str:
        return f"ThresholdDetector(max_value={self.max_value}, min_value={self.min_value})"


class NonFiniteDetector:
    """An event for every NaN or +-Inf value; score ``inf``.

    Example:
        >>> d = NonFiniteDetector()
        >>> d.update(1.0, step=1) is None, d.update(float("nan"), step=2).detector
        (True, 'nonfinite')

    References:
        The rule every production trainer applies first, e.g. OLMo (``ValueError("nan loss encountered")``) and
        Lightning Fabric ``SpikeDetection(finite_only=True)``; Groeneveld et al., "OLMo: Accelerating the
        Science of Language Models", arXiv:2402.00838, 2024.
    """

    kind = "nonfinite"

    def __init__(self) -> None:
        self.name = "nonfinite"
        self.n_events = 0

    def update(self, value: float, step: int, metric: str = "loss") -> SpikeEvent | None:
        """Feed one value; return an event when it is NaN or infinite."""
        x = _as_float(value)
        if math.isfinite(x):
            return None
        self.n_events += 1
        return SpikeEvent(int(step), metric, x, math.inf, self.name, f"{metric} is {x} at step {step}")

    def reset(self) -> None:
        """Forget the event count."""
        self.n_events = 0

    def state_dict(self) -> dict[str, Any]:
        """The event count."""
        return {"kind": self.kind, "version": _STATE_VERSION, "config": {}, "n_events": self.n_events}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the event count from :meth:`state_dict`."""
        self.n_events = int(_check_state(state, self.kind)["n_events"])

    def __repr__(self) -> str:
        return "NonFiniteDetector()"


def detect_spikes(series: Iterable[float] | np.ndarray, detector: SpikeDetector, *, metric: str = "loss",
                  start_step: int = 1) -> list[SpikeEvent]:
    """Run ``detector`` offline over a 1-D series (steps ``start_step, start_step + 1, ...``).

    The detector passed in is not modified: a deep copy does the work, so the same configured detector can
    be reused on several series.

    Args:
        series: 1-D array-like of numbers (NaN/Inf allowed; they are handled as in ``update``).
        detector: any :class:`SpikeDetector`.
        metric: name written into the events.
        start_step: step number of the first value.

    Returns:
        The events in step order.

    Example:
        >>> [e.step for e in detect_spikes([1, 1, 1, 9], RatioDetector(ratio=3.0))]
        [4]

    References:
        See the detector's own docstring.
    """
    if not all(hasattr(detector, a) for a in ("update", "reset", "state_dict", "load_state_dict")):
        raise ConfigError(f"detector must follow the SpikeDetector protocol, got {type(detector).__name__}")
    try:
        arr = np.asarray(series, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DataError(f"series must be a 1-D sequence of numbers: {exc}") from exc
    if arr.ndim != 1:
        raise DataError(f"series must be 1-D, got shape {arr.shape}; flatten it or pass one metric at a time")
    work = copy.deepcopy(detector)
    events = []
    for i, x in enumerate(arr.tolist()):
        event = work.update(x, step=start_step + i, metric=metric)
        if event is not None:
            events.append(event)
    return events
