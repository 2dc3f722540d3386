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
from collections.abc import Iterable

import numpy as np

from losslab._errors import ConfigError, DataError
from losslab.stability._spike_base import SpikeDetector, SpikeEvent
from losslab.stability._spike_bounds import NonFiniteDetector, ThresholdDetector
from losslab.stability._spike_rolling import RatioDetector, ZScoreDetector

__all__ = [
    "NonFiniteDetector",
    "RatioDetector",
    "SpikeDetector",
    "SpikeEvent",
    "ThresholdDetector",
    "ZScoreDetector",
    "detect_spikes",
]


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
