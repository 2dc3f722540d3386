"""Schedule planning: the schedule of a family that minimises a fitted law's predicted final loss.

Given a :class:`~losslab.forecast.fit.CurveFit`, a step budget and a family (``"wsd"``: decay fraction, cooldown
shape and final-LR ratio; ``"cosine"``: final-LR ratio; ``"linear"``: final-LR ratio), the planner evaluates the
predicted loss at the last step on a grid of the family's parameters, refines the best point of every cooldown
shape with a bounded Nelder-Mead search, and compares the result with two defaults: cosine to 10 % of the peak
and WSD with a 20 % linear cooldown to 0.

The Multi-Power-Law paper optimises a free-form schedule by gradient descent on the predicted final loss and finds
WSD-like schedules that beat cosine and WSD "slightly"; searching a named family keeps the result a schedule a
user can write down (``plan.best.to_spec()``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import minimize

from losslab._errors import ConfigError
from losslab.schedules import Schedule

__all__ = ["FAMILIES", "SchedulePlan", "plan_schedule"]

FAMILIES = ("wsd", "cosine", "linear")
_SHAPES = ("linear", "sqrt", "cosine", "exp")
_DECAYS = (0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0)
_FINALS = (0.0, 0.01, 0.03, 0.1, 0.2, 0.3, 0.5)


@dataclass
class SchedulePlan:
    """Result of :func:`plan_schedule`.

    Attributes:
        best: the schedule of the family with the lowest predicted final loss.
        best_loss: its predicted final loss.
        baselines: predicted final loss of the default schedules ("cosine": to 10 % of the peak; "wsd": 20 %
            linear cooldown to 0), same peak, steps and warmup.
        family, steps, peak, warmup: the request.
        min_final_ratio: the lowest final-LR ratio that was searched (see :func:`plan_schedule`).
        evaluated: number of schedules whose final loss was predicted.
        law: the fitted law used.
    """

    best: Schedule
    best_loss: float
    baselines: dict[str, float]
    family: str
    steps: int
    peak: float
    warmup: int
    evaluated: int
    law: str
    table: list[dict[str, Any]] = field(default_factory=list)
    min_final_ratio: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe summary (the best schedule as a spec string)."""
        return {"best": self.best.to_spec(), "best_loss": self.best_loss, "baselines": dict(self.baselines),
                "family": self.family, "steps": self.steps, "peak": self.peak, "warmup": self.warmup,
                "evaluated": self.evaluated, "law": self.law, "table": self.table,
                "min_final_ratio": self.min_final_ratio}

    def summary(self) -> str:
        """A few human lines: the best schedule, its predicted final loss and the gain over the defaults."""
        lines = [f"best {self.family} schedule for {self.steps} steps (law {self.law}): {self.best.to_spec()}",
                 f"  predicted final loss {self.best_loss:.4f}"]
        for name, loss in self.baselines.items():
            gain = 100.0 * (loss - self.best_loss) / loss
            side = "lower" if gain >= 0 else "higher (the default leaves the searched final-LR range)"
            lines.append(f"  default {name}: {loss:.4f} (planned is {abs(gain):.2f} % {side})")
        lines.append(f"  {self.evaluated} schedules evaluated, final-LR ratio searched down to {self.min_final_ratio:g}")
        return "\n".join(lines)


def _spec(family: str, peak: float, steps: int, warmup: int, values: dict[str, Any]) -> Schedule:
    params: dict[str, Any] = {"peak": peak, "steps": steps, "warmup": warmup}
    if family == "wsd":
        params.update(decay=float(values["decay"]), cooldown=values["cooldown"],
                      final_ratio=float(values["final_ratio"]))
    else:
        params.update(final_ratio=float(values["final_ratio"]))
    return Schedule(family, params)


def _final_floor(fit: Any, peak: float) -> float:
    """Smallest fitted LR after warmup over ``peak`` (0 when the fit does not record it)."""
    extent = (getattr(fit, "uncertainty", None) or {}).get("extent") or {}
    lr_min = float(extent.get("lr_min", 0.0))
    return float(min(1.0, lr_min / peak)) if math.isfinite(lr_min) and lr_min > 0 else 0.0


def plan_schedule(fit: Any, steps: int, family: str = "wsd", *, peak: float | None = None,
                  warmup: int = 0, min_final_ratio: float | None = None) -> SchedulePlan:
    """Find the schedule of ``family`` with the lowest predicted loss after ``steps`` steps.

    Args:
        fit: a fitted law (:class:`~losslab.forecast.fit.CurveFit`).
        steps: step budget (> warmup).
        family: ``"wsd"`` (searches decay fraction in (0, 1], cooldown shape linear/sqrt/cosine/exp and final-LR
            ratio in [0, 1]), ``"cosine"`` or ``"linear"`` (final-LR ratio).
        peak: peak learning rate (default: the largest LR of the fitted curves; a law fitted at one peak says
            little about another).
        warmup: linear warmup steps of every candidate (use the warmup of the fitted runs for MPL, whose
            ``S_W`` counts the warmup area).
        min_final_ratio: lowest final-LR ratio searched. Default: the smallest LR the law was fitted on (after
            warmup) divided by ``peak`` — below it the law extrapolates and its plans are not to be trusted
            (a law fitted on decays to 0.1 x peak typically over-credits a decay to 0.001 x peak). Pass 0 to
            search the whole range anyway.

    Returns:
        A :class:`SchedulePlan` with the best schedule, its predicted final loss and the defaults' losses.

    Example:
        >>> import numpy as np
        >>> from losslab.forecast.fit import CurveFit
        >>> fit = CurveFit("tissue", {"L0": 2.5, "A": 0.8, "alpha": 0.5, "C": 0.3},
        ...                options={"lam": 0.999, "fit_lambda": False, "warmup": "area"})
        >>> plan = plan_schedule(fit, 5000, "cosine", peak=1e-3)
        >>> plan.best.kind, plan.best_loss <= plan.baselines["cosine"]
        ('cosine', True)

    References:
        Luo et al., "A Multi-Power Law for Loss Curve Prediction Across Learning Rate Schedules",
        arXiv:2503.12811, 2025 (schedule optimisation with a fitted law); Hägele et al., "Scaling Laws and
        Compute-Optimal Training Beyond Fixed Training Durations", arXiv:2405.18392, 2024 (WSD cooldowns).
    """
    if not (isinstance(steps, (int, np.integer)) and not isinstance(steps, bool)) or steps < 1:
        raise ConfigError(f"steps must be a positive integer (the step budget), got {steps!r}")
    steps = int(steps)
    if family not in FAMILIES:
        raise ConfigError(f"unknown schedule family {family!r}; choose one of {', '.join(FAMILIES)}")
    if not (isinstance(warmup, (int, np.integer)) and 0 <= warmup < steps):
        raise ConfigError(f"warmup must be an integer in [0, steps={steps}), got {warmup!r}")
    if steps < warmup + 2:
        raise ConfigError(f"steps={steps} leaves no room for a decay after a warmup of {warmup} steps; a plan needs at "
                          f"least warmup + 2 steps: give the run's step budget")
    if peak is None:
        peak = float(fit.settings.get("peak_lr", 0.0)) if getattr(fit, "settings", None) else 0.0
        if not peak > 0:
            raise ConfigError("this fit does not record its peak learning rate; pass peak=<lr>")
    if not (isinstance(peak, (int, float)) and math.isfinite(peak) and peak > 0):
        raise ConfigError(f"peak must be a finite learning rate > 0, got {peak!r}")
    peak = float(peak)
    floor = _final_floor(fit, peak) if min_final_ratio is None else min_final_ratio
    if not (isinstance(floor, (int, float)) and math.isfinite(floor) and 0.0 <= floor <= 1.0):
        raise ConfigError(f"min_final_ratio must be in [0, 1], got {min_final_ratio!r}")
    finals = sorted({max(f, floor) for f in _FINALS})
    last = np.array([steps])
    cache: dict[str, float] = {}

    def final_loss(sched: Schedule) -> float:
        key = sched.to_spec()
        if key not in cache:
            value = float(fit.predict(sched.lr(steps), steps=last)[0])
            cache[key] = value if math.isfinite(value) and value > 0 else math.inf  # a loss <= 0 is no plan
        return cache[key]

    shapes = _SHAPES if family == "wsd" else ("-",)
    max_decay = (steps - warmup) / steps  # the cooldown cannot start inside the warmup
    decays = sorted({min(d, max_decay) for d in _DECAYS}) if family == "wsd" else [1.0]
    best: tuple[float, Schedule] | None = None
    table = []
    for shape in shapes:
        grid = []
        for decay in decays:
            for final in finals:
                if shape == "exp" and final == 0.0:
                    continue
                values = {"decay": decay, "cooldown": shape, "final_ratio": final}
                sched = _spec(family, peak, steps, warmup, values)
                grid.append((final_loss(sched), values))
        loss0, v0 = min(grid, key=lambda item: item[0])
        # refine the continuous parameters of this shape around its best grid point
        lo_final = max(1e-3 if shape == "exp" else 0.0, floor)

        def objective(x: np.ndarray, shape: str = shape, lo_final: float = lo_final) -> float:
            decay = float(np.clip(x[0], 0.01, max_decay)) if family == "wsd" else 1.0
            final = float(np.clip(x[-1], lo_final, 1.0))
            return final_loss(_spec(family, peak, steps, warmup, {"decay": decay, "cooldown": shape,
                                                                  "final_ratio": final}))

        x0 = np.array([v0["decay"], v0["final_ratio"]] if family == "wsd" else [v0["final_ratio"]])
        with np.errstate(invalid="ignore"):  # inf - inf in the simplex test where a candidate has no loss
            res = minimize(objective, x0, method="Nelder-Mead",
                           options={"xatol": 1e-3, "fatol": 1e-7, "maxfev": 60})
        values = dict(v0)
        if res.fun < loss0:
            # rounded for a readable spec, then clipped again: rounding must not leave the searched range
            if family == "wsd":
                values["decay"] = float(np.clip(round(float(res.x[0]), 4), 0.01, max_decay))
            values["final_ratio"] = float(np.clip(round(float(res.x[-1]), 4), lo_final, 1.0))
        sched = _spec(family, peak, steps, warmup, values)
        loss = final_loss(sched)
        table.append({"shape": shape, "schedule": sched.to_spec(), "final_loss": loss})
        if best is None or loss < best[0]:
            best = (loss, sched)
    assert best is not None
    baselines = {
        "cosine": final_loss(Schedule("cosine", {"peak": peak, "steps": steps, "final_ratio": 0.1, "warmup": warmup})),
        "wsd": final_loss(Schedule("wsd", {"peak": peak, "steps": steps, "decay": 0.2, "cooldown": "linear",
                                           "final_ratio": 0.0, "warmup": warmup})),
    }
    if not math.isfinite(best[0]):
        raise ConfigError("the fitted law predicts no positive, finite loss for this budget (its extrapolation breaks "
                          "down); check steps and peak")
    return SchedulePlan(best=best[1], best_loss=best[0], baselines=baselines, family=family, steps=steps, peak=peak,
                        warmup=warmup, evaluated=len(cache), law=fit.law, table=table,
                        min_final_ratio=float(floor))
