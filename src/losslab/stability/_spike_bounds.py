"""Stateless detectors: absolute bounds and non-finite values."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from losslab._errors import ConfigError
from losslab.stability._spike_base import _STATE_VERSION, SpikeEvent, _as_float, _check_state

__all__ = ["NonFiniteDetector", "ThresholdDetector"]


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
