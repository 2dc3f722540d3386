"""Learning-rate schedules as pure, vectorised NumPy functions of the step.

Convention: ``f(step)`` is the learning rate used by the update of step ``step``; a run of ``T`` steps uses
``step = 1..T`` and ends exactly at the schedule's final value at ``step = T``. With ``warmup=W`` the rate rises
linearly from 0 (step 0) to ``peak`` (step ``W``), and the decay of every schedule runs over ``[W, T]`` only
(this is how the runs of Luo et al. 2025 and Tissue et al. 2024 are described).

Every schedule is also a :class:`Schedule` object built from a short spec string, so the same object drives
training (via :meth:`Schedule.multiplier` and ``torch.optim.lr_scheduler.LambdaLR``) and forecasting::

    >>> s = parse_schedule("wsd:peak=3e-4,steps=24000,decay=0.2,cooldown=linear")
    >>> float(s(24000)), float(s(100))
    (0.0, 0.0003)

Spec grammar: ``KIND[:key=value,key=value,...]``; list values are separated by ``/`` (``at=0.8/0.9``).

Kinds: ``constant``, ``cosine``, ``linear``, ``wsd`` (cooldown ``linear`` | ``sqrt`` | ``exp`` | ``cosine``),
``step`` (multiplicative drops), ``cyclic`` (cosine restarts, Loshchilov & Hutter, "SGDR: Stochastic Gradient
Descent with Warm Restarts", arXiv:1608.03983, 2017; and with ``mult>1`` the multiplicative cyclic schedule of
Portes, Blalock, Stephenson, Frankle, "Fast Benchmarking of Accuracy vs. Training Time with Cyclic Learning Rates",
arXiv:2206.00832, 2022, whose cycles grow geometrically so that the end of each cycle is a fully annealed model).
WSD follows Hägele et al., "Scaling Laws and Compute-Optimal Training Beyond Fixed Training Durations",
arXiv:2405.18392, 2024 (``sqrt`` is their 1-sqrt cooldown).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from losslab._errors import ConfigError

__all__ = [
    "SCHEDULE_KINDS",
    "Schedule",
    "constant",
    "cosine",
    "cyclic",
    "linear",
    "parse_schedule",
    "step_decay",
    "wsd",
]

COOLDOWNS = ("linear", "sqrt", "exp", "cosine")


def _as_steps(step: Any) -> np.ndarray:
    arr = np.asarray(step, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        raise ConfigError("schedule steps must be finite numbers; got NaN or Inf")
    return arr


def _check_common(peak: float, steps: int, warmup: int) -> None:
    if not (isinstance(peak, (int, float, np.floating, np.integer)) and not isinstance(peak, bool)
            and math.isfinite(peak) and peak > 0):
        raise ConfigError(f"peak learning rate must be a finite number > 0, got {peak!r}")
    if int(steps) != steps or steps < 1:
        raise ConfigError(f"steps must be a positive integer, got {steps!r}")
    if int(warmup) != warmup or not 0 <= warmup < steps:
        raise ConfigError(f"warmup must be an integer in [0, steps={steps}), got {warmup!r}")


def _check_ratio(name: str, value: float) -> None:
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise ConfigError(f"{name} must be in [0, 1], got {value!r}")


def _progress(s: np.ndarray, start: float, end: float) -> np.ndarray:
    """Fraction of the way from ``start`` to ``end``, clipped to [0, 1]."""
    if end <= start:
        return (s >= end).astype(np.float64)
    return np.clip((s - start) / (end - start), 0.0, 1.0)


def _warmup(s: np.ndarray, lr: np.ndarray, peak: float, warmup: int) -> np.ndarray:
    if warmup > 0:
        lr = np.where(s < warmup, peak * np.clip(s, 0.0, None) / warmup, lr)
    return lr


def constant(step: Any, *, peak: float, steps: int = 1, warmup: int = 0) -> np.ndarray:
    """Constant ``peak`` (after an optional linear warmup)."""
    _check_common(peak, max(steps, warmup + 1), warmup)
    s = _as_steps(step)
    return _warmup(s, np.full_like(s, peak), peak, warmup)


def cosine(step: Any, *, peak: float, steps: int, final_ratio: float = 0.0, warmup: int = 0) -> np.ndarray:
    """Half-cosine from ``peak`` to ``final_ratio * peak`` over ``[warmup, steps]``."""
    _check_common(peak, steps, warmup)
    _check_ratio("final_ratio", final_ratio)
    s = _as_steps(step)
    p = _progress(s, warmup, steps)
    final = final_ratio * peak
    return _warmup(s, final + (peak - final) * 0.5 * (1.0 + np.cos(np.pi * p)), peak, warmup)


def linear(step: Any, *, peak: float, steps: int, final_ratio: float = 0.0, warmup: int = 0) -> np.ndarray:
    """Straight line from ``peak`` to ``final_ratio * peak`` over ``[warmup, steps]``."""
    _check_common(peak, steps, warmup)
    _check_ratio("final_ratio", final_ratio)
    s = _as_steps(step)
    p = _progress(s, warmup, steps)
    return _warmup(s, peak - (1.0 - final_ratio) * peak * p, peak, warmup)


def _cooldown_shape(p: np.ndarray, cooldown: str, final_ratio: float) -> np.ndarray:
    """Multiplier in [final_ratio, 1] for cooldown progress ``p`` in [0, 1]."""
    if cooldown == "linear":
        return 1.0 - (1.0 - final_ratio) * p
    if cooldown == "sqrt":
        return final_ratio + (1.0 - final_ratio) * (1.0 - np.sqrt(p))
    if cooldown == "cosine":
        return final_ratio + (1.0 - final_ratio) * 0.5 * (1.0 + np.cos(np.pi * p))
    if cooldown == "exp":
        if final_ratio <= 0:
            raise ConfigError("an exponential cooldown needs final_ratio > 0 (it decays to peak*final_ratio); "
                              "set e.g. final_ratio=0.1")
        return np.power(final_ratio, p)
    raise ConfigError(f"unknown cooldown {cooldown!r}; choose one of {', '.join(COOLDOWNS)}")


def wsd(
    step: Any,
    *,
    peak: float,
    steps: int,
    decay: float = 0.2,
    cooldown: str = "linear",
    final_ratio: float = 0.0,
    warmup: int = 0,
    decay_start: int | None = None,
) -> np.ndarray:
    """Warmup-stable-decay: ``peak`` until the cooldown, then ``cooldown`` shape down to ``final_ratio * peak``.

    The cooldown takes the last ``decay`` fraction of ``steps`` (or starts at ``decay_start`` when given).
    """
    _check_common(peak, steps, warmup)
    _check_ratio("decay", decay)
    _check_ratio("final_ratio", final_ratio)
    start = float(decay_start) if decay_start is not None else steps - decay * steps
    if decay_start is None and warmup - 1e-9 * steps <= start < warmup:  # decay = (steps - warmup) / steps, rounded
        start = float(warmup)
    if not warmup <= start <= steps:
        raise ConfigError(f"the cooldown must start between warmup={warmup} and steps={steps}, got {start:g}")
    s = _as_steps(step)
    lr = peak * _cooldown_shape(_progress(s, start, steps), cooldown, final_ratio)
    return _warmup(s, lr, peak, warmup)


def step_decay(
    step: Any,
    *,
    peak: float,
    steps: int,
    at: tuple[float, ...] | list[float] = (0.5, 0.75),
    factor: float = 0.1,
    warmup: int = 0,
) -> np.ndarray:
    """Piecewise constant: multiply by ``factor`` at each fraction ``at`` of ``steps`` (the drop applies from that step on)."""
    _check_common(peak, steps, warmup)
    fractions = [float(a) for a in np.atleast_1d(np.asarray(at, dtype=np.float64))]
    if any(not 0.0 < a <= 1.0 for a in fractions) or fractions != sorted(fractions):
        raise ConfigError(f"'at' must be increasing fractions in (0, 1], got {list(at)}")
    if not (math.isfinite(factor) and 0.0 < factor <= 1.0):
        raise ConfigError(f"factor must be in (0, 1], got {factor!r}")
    s = _as_steps(step)
    drops = np.zeros_like(s)
    for a in fractions:
        drops += s >= a * steps
    return _warmup(s, peak * factor**drops, peak, warmup)


def cyclic(
    step: Any,
    *,
    peak: float,
    steps: int,
    cycles: int = 4,
    mult: float = 1.0,
    shape: str = "cosine",
    final_ratio: float = 0.0,
    warmup: int = 0,
) -> np.ndarray:
    """Restarts: ``cycles`` decays from ``peak`` to ``final_ratio * peak``, each ``mult`` times longer than the last.

    ``mult=1, shape="cosine"`` is SGDR; ``mult=2, shape="linear"`` is the multiplicative cyclic schedule of
    Portes et al. (2022). The cycles tile ``[warmup, steps]`` exactly.
    """
    _check_common(peak, steps, warmup)
    _check_ratio("final_ratio", final_ratio)
    if int(cycles) != cycles or cycles < 1:
        raise ConfigError(f"cycles must be a positive integer, got {cycles!r}")
    if not (math.isfinite(mult) and mult >= 1.0):
        raise ConfigError(f"mult must be >= 1, got {mult!r}")
    if shape not in ("cosine", "linear"):
        raise ConfigError(f"shape must be 'cosine' or 'linear', got {shape!r}")
    span = steps - warmup
    weights = np.power(float(mult), np.arange(cycles))
    bounds = warmup + span * np.concatenate([[0.0], np.cumsum(weights) / weights.sum()])
    s = _as_steps(step)
    index = np.clip(np.searchsorted(bounds, s, side="right") - 1, 0, cycles - 1)
    # a cycle boundary belongs to the end of the previous cycle, so that step == boundary is fully annealed
    # (an absolute tolerance: a relative one of 1e-5 spans whole steps on long runs)
    at_boundary = (index > 0) & (np.abs(s - bounds[index]) <= 1e-9 * np.maximum(1.0, bounds[index]))
    index = np.where(at_boundary, index - 1, index)
    p = np.clip((s - bounds[index]) / (bounds[index + 1] - bounds[index]), 0.0, 1.0)
    multiplier = _cooldown_shape(p, shape, final_ratio)
    return _warmup(s, peak * multiplier, peak, warmup)


SCHEDULE_KINDS: dict[str, Callable[..., np.ndarray]] = {
    "constant": constant,
    "cosine": cosine,
    "cyclic": cyclic,
    "linear": linear,
    "step": step_decay,
    "wsd": wsd,
}
_SPEC_ALIASES = {"final": "final_ratio", "lr": "peak", "total": "steps"}


MAX_STEPS = 100_000_000  # per-step arrays above this need gigabytes; no training run logs that many steps


def check_step_count(n: int, what: str) -> None:
    """Refuse a step count above :data:`MAX_STEPS` (usually a token or sample count given as steps)."""
    if n > MAX_STEPS:
        raise ConfigError(f"{what} has {n:,} steps, more than losslab's limit of {MAX_STEPS:,} (one float64 per step "
                          f"would need {8 * n / 1e9:.0f} GB); check the number: is it a token or sample count?")


@dataclass(frozen=True)
class Schedule:
    """A named schedule with its parameters; callable on steps (scalars or arrays).

    Build one with :func:`parse_schedule` or directly, e.g. ``Schedule("cosine", {"peak": 1e-3, "steps": 1000})``.
    """

    kind: str
    params: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULE_KINDS:
            raise ConfigError(f"unknown schedule kind {self.kind!r}; choose one of {', '.join(SCHEDULE_KINDS)}")
        fn = SCHEDULE_KINDS[self.kind]
        allowed = [p for p in inspect.signature(fn).parameters if p != "step"]
        unknown = sorted(set(self.params) - set(allowed))
        if unknown:
            raise ConfigError(f"schedule {self.kind!r} has no parameter {unknown[0]!r}; its parameters: {', '.join(allowed)}")
        if "peak" not in self.params:
            raise ConfigError(f"schedule {self.kind!r} needs peak=<learning rate>")
        if self.kind != "constant" and "steps" not in self.params:
            raise ConfigError(f"schedule {self.kind!r} needs steps=<total steps>")
        fn(np.zeros(1), **self.params)  # validates every value once, at construction

    def __call__(self, step: Any) -> np.ndarray:
        return SCHEDULE_KINDS[self.kind](step, **self.params)

    @property
    def steps(self) -> int:
        """Total steps of the schedule (``steps`` parameter; 1 for a constant schedule without it)."""
        return int(self.params.get("steps", 1))

    @property
    def peak(self) -> float:
        return float(self.params["peak"])

    def lr(self, total: int | None = None) -> np.ndarray:
        """Per-step learning rates for steps ``1..total`` (default: the schedule's own ``steps``)."""
        n = self.steps if total is None else int(total)
        if n < 1:
            raise ConfigError(f"total must be >= 1, got {total!r}")
        check_step_count(n, "the schedule")
        return self(np.arange(1, n + 1))

    def multiplier(self, index: int) -> float:
        """Factor for ``torch.optim.lr_scheduler.LambdaLR``: lr of step ``index + 1`` divided by ``peak``.

        LambdaLR calls the function with 0 before the first update, 1 before the second, and so on.
        """
        return float(self(index + 1)) / self.peak

    def to_spec(self) -> str:
        """The spec string that :func:`parse_schedule` turns back into this schedule."""
        parts = []
        for key, value in self.params.items():
            if isinstance(value, (list, tuple)):
                value = "/".join(repr(float(v)) for v in value)
            parts.append(f"{key}={value}")
        return f"{self.kind}:{','.join(parts)}" if parts else self.kind


def _convert(kind: str, key: str, raw: str) -> Any:
    text = raw.strip()
    if key in ("cooldown", "shape"):
        return text
    if key == "at":
        try:
            return tuple(float(v) for v in text.split("/") if v)
        except ValueError:
            raise ConfigError(f"{kind}: 'at' must be fractions separated by '/', e.g. at=0.8/0.9; got {raw!r}") from None
    try:
        number = float(text)
    except ValueError:
        raise ConfigError(f"{kind}: value of {key!r} must be a number, got {raw!r}") from None
    if key in ("steps", "warmup", "cycles", "decay_start"):
        if not number.is_integer():
            raise ConfigError(f"{kind}: {key!r} must be an integer, got {raw!r}")
        return int(number)
    return number


def parse_schedule(spec: str) -> Schedule:
    """Parse ``KIND:key=value,...`` into a :class:`Schedule`; errors name the bad piece and the fix.

    Examples:
        ``cosine:peak=3e-4,steps=24000,final=0.1,warmup=2160``,
        ``wsd:peak=3e-4,steps=24000,decay=0.2,cooldown=exp,final=0.1``,
        ``step:peak=1e-3,steps=33908,at=0.8/0.9,factor=0.316``, ``cyclic:peak=0.1,steps=1000,cycles=4,mult=2``.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError("empty schedule spec; write e.g. 'cosine:peak=3e-4,steps=24000'")
    kind, _, rest = spec.strip().partition(":")
    kind = kind.strip().lower()
    if kind not in SCHEDULE_KINDS:
        raise ConfigError(f"unknown schedule kind {kind!r} in {spec!r}; choose one of {', '.join(SCHEDULE_KINDS)}")
    params: dict[str, Any] = {}
    for item in filter(None, (p.strip() for p in rest.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"malformed item {item!r} in schedule spec {spec!r}; use key=value")
        key = _SPEC_ALIASES.get(key.strip().lower(), key.strip().lower())
        if key in params:
            raise ConfigError(f"{key!r} is given twice in schedule spec {spec!r}; keep one")
        params[key] = _convert(kind, key, value)
    return Schedule(kind, params)
