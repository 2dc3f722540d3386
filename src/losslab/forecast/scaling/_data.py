"""Tabular runs for scaling-law fits: one row per (model, checkpoint) with named numeric columns."""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from losslab._errors import DataError
from losslab._files import read_text_lines

__all__ = ["ScalingData", "read_runs"]

# accepted spellings (lower case, spaces/dashes as underscores) -> canonical column name
ALIASES: dict[str, str] = {
    "n": "params", "params": "params", "num_params": "params", "parameters": "params", "model_size": "params",
    "d": "tokens", "tokens": "tokens", "tokens_seen": "tokens", "data": "tokens",
    "flops": "flops", "flop": "flops", "training_flop": "flops", "training_flops": "flops", "c": "flops",
    "compute": "flops",
    "l": "loss", "loss": "loss",
    "s": "steps", "steps": "steps", "step": "steps",
    "b": "batch_size", "batch_size": "batch_size", "batch": "batch_size",
}


def _canonical(name: str) -> str:
    key = name.strip().lower().replace(" ", "_").replace("-", "_")
    return ALIASES.get(key, key)


@dataclass(frozen=True, eq=False)
class ScalingData:
    """Columns of float64 values, all of the same length (one entry per run or checkpoint).

    Column names are canonical: ``params`` (N), ``tokens`` (D), ``flops`` (C), ``loss``, ``steps``,
    ``batch_size`` and any other numeric column of the file (``error``, ``loss_x``, ``encoder_params``, ...).
    When ``tokens`` is missing but ``flops`` and ``params`` are present, ``tokens = flops / (6 * params)``;
    when ``flops`` is missing, ``flops = 6 * params * tokens``. Non-numeric columns go to ``labels``.

    Example:
        >>> d = ScalingData.from_columns({"N": [1e8, 2e8], "D": [2e9, 4e9], "loss": [3.1, 2.9]})
        >>> d.n, float(d["flops"][0])
        (2, 1.2e+18)
    """

    columns: Mapping[str, np.ndarray]
    source: str = "<memory>"
    labels: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @classmethod
    def from_columns(cls, columns: Mapping[str, Iterable[float]], source: str = "<memory>") -> ScalingData:
        """Build from a mapping name -> values (aliases such as ``N``, ``D``, ``Training FLOP`` accepted)."""
        cols: dict[str, np.ndarray] = {}
        for raw, values in columns.items():
            name = _canonical(str(raw))
            if name in cols:
                raise DataError(f"{source}: columns {raw!r} and another alias both mean {name!r}; keep only one")
            try:
                arr = np.asarray(list(values) if not isinstance(values, np.ndarray) else values, dtype=np.float64)
            except (TypeError, ValueError) as exc:
                raise DataError(f"{source}: column {raw!r} is not numeric ({exc}); give numbers only") from None
            if arr.ndim != 1:
                raise DataError(f"{source}: column {raw!r} must be 1-D, got shape {arr.shape}")
            cols[name] = arr.copy()
        lengths = {k: v.size for k, v in cols.items()}
        if len(set(lengths.values())) > 1:
            raise DataError(f"{source}: columns have different lengths {lengths}; every column needs one value a row")
        if "tokens" not in cols and "flops" in cols and "params" in cols:
            cols["tokens"] = cols["flops"] / (6.0 * cols["params"])
        if "flops" not in cols and "tokens" in cols and "params" in cols:
            cols["flops"] = 6.0 * cols["params"] * cols["tokens"]
        return cls(columns=cols, source=source)

    @property
    def n(self) -> int:
        """Number of rows."""
        return next(iter(self.columns.values())).size if self.columns else 0

    def __getitem__(self, name: str) -> np.ndarray:
        key = _canonical(name)
        if key not in self.columns:
            raise DataError(f"{self.source}: no column {name!r}; columns present: {', '.join(sorted(self.columns))}")
        return self.columns[key]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and _canonical(name) in self.columns

    def subset(self, mask: np.ndarray) -> ScalingData:
        """Rows where ``mask`` is True (or the given integer indices)."""
        cols = {k: v[mask] for k, v in self.columns.items()}
        labels = {k: tuple(np.asarray(v, dtype=object)[mask]) for k, v in self.labels.items()}
        return ScalingData(columns=cols, source=self.source, labels=labels)

    def drop_highest(self, k: int, column: str = "loss") -> ScalingData:
        """Drop the ``k`` rows with the highest ``column`` (Epoch AI drop the 5 highest-loss Chinchilla points)."""
        if k < 0 or k >= self.n:
            raise DataError(f"{self.source}: cannot drop {k} of {self.n} rows; choose 0 <= k < {self.n}")
        if k == 0:
            return self
        order = np.argsort(self[column], kind="stable")
        return self.subset(np.sort(order[: self.n - k]))

    def require(self, names: Iterable[str], *, positive: Iterable[str] = (), law: str = "") -> None:
        """Raise :class:`DataError` unless ``names`` exist, are finite, and ``positive`` ones are > 0."""
        who = f" for law {law!r}" if law else ""
        missing = [c for c in names if c not in self]
        if missing:
            raise DataError(f"{self.source}: missing column(s) {', '.join(missing)}{who}; columns present: "
                            f"{', '.join(sorted(self.columns)) or 'none'} (aliases: N=params, D=tokens, "
                            "flops instead of tokens)")
        for c in names:
            v = self[c]
            if not np.all(np.isfinite(v)):
                i = int(np.flatnonzero(~np.isfinite(v))[0])
                raise DataError(f"{self.source}: column {c!r} has a non-finite value ({v[i]!r}) in row {i + 1}; "
                                "remove or fill that row")
        for c in positive:
            v = self[c]
            if np.any(v <= 0):
                i = int(np.flatnonzero(v <= 0)[0])
                raise DataError(f"{self.source}: column {c!r} must be > 0{who} but row {i + 1} holds {v[i]!r}; "
                                "remove that row or fix the value")


def _number(cell: str) -> float | None:
    """A cell as a float (empty: NaN), or None when it is not a number."""
    try:
        return float(cell) if cell else math.nan
    except ValueError:
        return None


def read_runs(path: str | Path) -> ScalingData:
    """Read a CSV file of runs (header row, one run or checkpoint a row) into :class:`ScalingData`.

    Numeric columns become float64 arrays (an empty cell is NaN, caught when a law needs that column); columns
    with mostly non-numeric cells are kept as ``labels`` (e.g. a ``run`` or ``model`` name). A column of numbers
    with a few non-numeric cells is a typo: DataError naming the line and the cell.
    """
    p = Path(path)
    with read_text_lines(p) as fh:  # UTF-8 with or without a BOM (Excel writes one)
        reader = csv.reader(fh)
        rows = [(reader.line_num, r) for r in reader if any(cell.strip() for cell in r)]
    if not rows:
        raise DataError(f"{p}: the file is empty; expected a header row such as 'params,tokens,loss'")
    header, body = [h.strip() for h in rows[0][1]], rows[1:]
    if not body:
        raise DataError(f"{p}: only a header row, no data rows")
    numeric: dict[str, list[float]] = {}
    labels: dict[str, tuple[str, ...]] = {}
    for j, name in enumerate(header):
        cells = [(r[j].strip() if j < len(r) else "") for _, r in body]
        values = [_number(cell) for cell in cells]
        bad = [i for i, v in enumerate(values) if v is None]
        if not bad:
            numeric[name] = [v for v in values if v is not None]
        elif len(bad) < sum(1 for c in cells if c) / 2:  # a numeric column with a few bad cells: a typo, not labels
            line, cell = body[bad[0]][0], cells[bad[0]]
            raise DataError(f"{p}: line {line}: column {name!r} holds {cell!r}, which is not a number (the other rows "
                            "of the column are numbers); fix the cell or remove the row")
        else:
            labels[_canonical(name)] = tuple(cells)
    data = ScalingData.from_columns(numeric, source=str(p))
    object.__setattr__(data, "labels", labels)
    return data


def as_data(data: Any) -> ScalingData:
    """Accept ScalingData, a mapping of columns, or a CSV path."""
    if isinstance(data, ScalingData):
        return data
    if isinstance(data, (str, Path)):
        return read_runs(data)
    if isinstance(data, Mapping):
        return ScalingData.from_columns(data)
    raise DataError(f"expected ScalingData, a mapping of columns or a CSV path, got {type(data).__name__}")
