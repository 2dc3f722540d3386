"""The one data type of the forecast package: a training curve with its per-step learning rate."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from losslab._errors import DataError

__all__ = ["Curve"]


@dataclass(frozen=True, eq=False)
class Curve:
    """A run: the learning rate of every step ``1..T`` and the loss where it was measured.

    Attributes:
        lr: float64 array of shape (T,); ``lr[i]`` is the learning rate of step ``i + 1``. Finite and >= 0.
        loss: float64 array of shape (T,); NaN where the loss was not measured. At least one finite value.
        name: label used in reports and error messages (usually the file name).
        meta: free-form provenance (source file, columns, warmup rebuilt, ...).

    ``steps`` is ``1..T``; ``measured`` are the steps with a finite loss.
    """

    lr: np.ndarray
    loss: np.ndarray
    name: str = "run"
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        lr = np.asarray(self.lr, dtype=np.float64)
        loss = np.asarray(self.loss, dtype=np.float64)
        if lr.ndim != 1 or loss.shape != lr.shape:
            raise DataError(f"{self.name}: lr and loss must be 1-D arrays of the same length, got shapes "
                            f"{lr.shape} and {loss.shape}")
        if lr.size == 0:
            raise DataError(f"{self.name}: the curve is empty; it needs at least one step")
        if not np.all(np.isfinite(lr)) or np.any(lr < 0):
            bad = int(np.flatnonzero(~np.isfinite(lr) | (lr < 0))[0]) + 1
            raise DataError(f"{self.name}: learning rate at step {bad} is {lr[bad - 1]!r}; it must be finite and >= 0")
        if np.any(np.isinf(loss)):
            bad = int(np.flatnonzero(np.isinf(loss))[0]) + 1
            raise DataError(f"{self.name}: loss at step {bad} is infinite; remove the row or leave the loss blank")
        if not np.any(np.isfinite(loss)):
            raise DataError(f"{self.name}: no measured loss; at least one step needs a finite loss value")
        object.__setattr__(self, "lr", lr)
        object.__setattr__(self, "loss", loss)

    @property
    def steps(self) -> np.ndarray:
        """Step numbers ``1..T`` (int64)."""
        return np.arange(1, self.lr.size + 1)

    @property
    def measured(self) -> np.ndarray:
        """Step numbers that have a finite loss."""
        return np.flatnonzero(np.isfinite(self.loss)) + 1

    def __len__(self) -> int:
        return int(self.lr.size)
