"""Turn curves into fitting points: validation, warmup skipping, binning of dense noisy logs, tail hold-out."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from losslab._errors import DataError
from losslab.forecast._curve import Curve
from losslab.forecast.laws._base import detect_warmup

__all__ = ["Points", "check_lr", "curve_points", "split_tail"]


@dataclass
class Points:
    """Fitting points of one curve: 1-based steps, loss values (bin medians for dense logs), raw counts."""

    name: str
    lr: np.ndarray
    steps: np.ndarray
    y: np.ndarray
    count: np.ndarray



# Leave-one-curve-out needs every refit to keep at least two schedules: a law fitted on one schedule (often a
# constant one) has unidentified annealing terms, and its transfer error measures that, not the law.
MIN_CURVES_FOR_LOCO = 3

def check_lr(lr: object, what: str = "lr") -> np.ndarray:
    """A 1-D float64 copy of ``lr``; DataError if it is empty, not 1-D, non-finite or negative."""
    try:
        arr = np.array(lr, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{what} must be a 1-D array of learning rates, one per step; got {type(lr).__name__}") from exc
    if arr.ndim != 1 or arr.size == 0:
        raise DataError(f"{what} must be a non-empty 1-D array (one learning rate per step 1..T), got shape {arr.shape}")
    bad = np.flatnonzero(~np.isfinite(arr) | (arr < 0))
    if bad.size:
        raise DataError(f"{what} at step {bad[0] + 1} is {arr[bad[0]]!r}; learning rates must be finite and >= 0 "
                        "(rebuild the schedule or drop the step)")
    if not np.any(arr > 0):
        raise DataError(f"{what} is zero at every step; a loss-curve law needs a positive learning rate")
    return arr


def curve_points(curve: Curve, *, max_points: int = 400, skip_warmup: bool = True) -> Points:
    """Fitting points of ``curve``.

    - Measured steps inside the warmup (before the first step at the peak LR) are dropped when ``skip_warmup``:
      the laws describe the loss after warmup.
    - Non-positive losses are rejected (the fit is in log space).
    - A curve with more than ``max_points`` measured steps (a raw per-step log) is cut into at most ``max_points``
      consecutive bins, whose edges are the finer of a uniform and a geometric grid (single steps at the steep
      start, wide bins later); each bin becomes one point at its median step with the median loss of the bin.
      The median keeps the robust flavour of the Huber fit and makes the cost independent of the log rate.
    """
    if not isinstance(curve, Curve):
        raise DataError(f"expected a losslab.forecast.Curve, got {type(curve).__name__}; build one with "
                        "Curve(lr, loss) or losslab.forecast.io.load_curve(path)")
    lr = check_lr(curve.lr, f"{curve.name}: lr")
    steps = curve.measured
    if skip_warmup:
        steps = steps[steps > detect_warmup(lr)]
    if steps.size == 0:
        raise DataError(f"{curve.name}: no measured loss after the warmup (first {detect_warmup(lr)} steps); "
                        "log the loss after warmup or pass skip_warmup=False")
    y = curve.loss[steps - 1]
    if np.any(y <= 0):
        raise DataError(f"{curve.name}: loss at step {int(steps[np.argmax(y <= 0)])} is <= 0; the laws fit log(loss), "
                        "so every loss must be positive")
    if steps.size <= max_points:
        return Points(curve.name, lr, steps, y, np.ones(steps.size, dtype=np.int64))
    # bin edges: the finer of a uniform and a geometric grid, so the steep start is not averaged over
    half = max_points // 2
    edges = np.unique(np.concatenate([np.linspace(steps[0], steps[-1] + 1, half + 1),
                                      np.geomspace(steps[0], steps[-1] + 1, max_points - half + 1)]).round())
    which = np.searchsorted(edges, steps, side="right") - 1
    groups = [g for g in np.split(np.arange(steps.size), np.flatnonzero(np.diff(which)) + 1) if g.size]
    bin_steps = np.array([int(steps[g[(g.size - 1) // 2]]) for g in groups])
    bin_y = np.array([float(np.exp(np.median(np.log(y[g])))) for g in groups])
    return Points(curve.name, lr, bin_steps, bin_y, np.array([g.size for g in groups]))


def split_tail(points: Sequence[Points], fraction: float) -> tuple[list[Points], list[Points]]:
    """Split every curve's points into a head (first ``1 - fraction`` of its steps) and a tail."""
    heads, tails = [], []
    for p in points:
        cut = p.steps[0] + (1.0 - fraction) * (p.steps[-1] - p.steps[0])
        h, t = p.steps <= cut, p.steps > cut
        if h.sum() < 3 or t.sum() < 1:
            h = np.ones_like(h)
            t = np.zeros_like(t)
        heads.append(Points(p.name, p.lr, p.steps[h], p.y[h], p.count[h]))
        if t.any():
            tails.append(Points(p.name, p.lr, p.steps[t], p.y[t], p.count[t]))
    return heads, tails
