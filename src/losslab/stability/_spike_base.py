"""Shared pieces of the spike detectors: the event record, the protocol and argument checks."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from losslab._errors import ConfigError, DataError

__all__ = ["SpikeDetector", "SpikeEvent"]

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
