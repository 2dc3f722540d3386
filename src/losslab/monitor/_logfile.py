"""Read monitor logs (CSV or JSONL written by :class:`CSVSink` / :class:`JSONLSink`) and summarise them.

Reading needs only the standard library and NumPy (no torch), so ``losslab monitor show`` stays quick.
"""

from __future__ import annotations

import csv
import json
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from losslab._errors import DataError
from losslab._files import read_text_lines

__all__ = ["MonitorLog", "format_summary", "read_log", "summary_stats"]

_NONFINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def _from_json(x: Any) -> Any:
    if isinstance(x, str) and x in _NONFINITE:
        return _NONFINITE[x]
    return x


def _metric(name: str, x: Any) -> float | None:
    """A metric value of a log row: a number, a non-finite string ("NaN", "Infinity", "-Infinity") or null."""
    x = _from_json(x)
    if x is None:
        return None
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise ValueError(f"metric {name!r} is {x!r}, not a number")
    return float(x)


def _events(cell: Any, step: int) -> list[dict[str, Any]]:
    """The events of one row: a list of objects whose ``step`` (default: the row's) is a whole number."""
    if not isinstance(cell, list) or not all(isinstance(e, dict) for e in cell):
        raise ValueError(f"events must be a list of objects, got {json.dumps(cell)[:60]}")
    out = []
    for e in cell:
        event = {k: _from_json(v) for k, v in e.items()}
        at = event.get("step", step)
        if isinstance(at, bool) or not isinstance(at, (int, float)) or not float(at).is_integer():
            raise ValueError(f"event step {at!r} is not a whole number")
        event["step"] = int(at)
        out.append(event)
    return out


@dataclass
class MonitorLog:
    """A monitor log in memory: one NumPy column per metric (NaN where not measured) and the events.

    Attributes:
        columns: ``{"step": int array, "<metric>": float array, ...}``, all of the same length (sorted by step
            when read with ``dedupe=True``, else in file order).
        events: list of event dicts (``step``, ``metric``, ``value``, ``score``, ``detector``, ``message``).
        path: the file it came from (``None`` when built in memory).
    """

    columns: dict[str, np.ndarray]
    events: list[dict[str, Any]] = field(default_factory=list)
    path: Path | None = None

    @property
    def steps(self) -> np.ndarray:
        """The step column."""
        return self.columns["step"]

    def __len__(self) -> int:
        return len(self.columns.get("step", ()))


def _table(rows: list[dict[str, Any]], dedupe: bool) -> dict[str, np.ndarray]:
    if dedupe:  # a resumed run re-logs the steps after its checkpoint: keep the last row of each step
        last: dict[int, dict[str, Any]] = {}
        for row in rows:
            last[int(row["step"])] = row
        rows = [last[s] for s in sorted(last)]
    names: list[str] = []
    seen: set[str] = set()
    for row in rows:
        for key in row:
            if key not in seen:
                seen.add(key)
                names.append(key)
    out: dict[str, np.ndarray] = {"step": np.array([int(r["step"]) for r in rows], dtype=np.int64)}
    for name in names:
        if name == "step":
            continue
        out[name] = np.array([float(r[name]) if r.get(name) is not None else np.nan for r in rows], dtype=np.float64)
    return out


def _read_lines(path: Path) -> list[str]:
    text = read_text_lines(path).read()
    lines = text.split("\n")
    if lines and lines[-1] != "":
        warnings.warn(f"{path}: ignoring an incomplete last line (the writer was interrupted)", RuntimeWarning,
                      stacklevel=3)
    return [ln for ln in lines[:-1]]


def _parse_csv(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    lines = _read_lines(path)
    if not lines:
        raise DataError(f"{path} is empty; a monitor CSV starts with a header line 'step,...,events,extra'")
    try:
        return _parse_csv_lines(path, lines)
    except csv.Error as exc:
        raise DataError(f"{path}: not a readable CSV file ({exc}); the file is corrupt") from None


def _parse_csv_lines(path: Path, lines: list[str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    reader = csv.reader(lines)
    header = next(reader)
    if not header or header[0] != "step" or header[-2:] != ["events", "extra"]:
        raise DataError(f"{path}: header {','.join(header)[:80]!r} is not a losslab monitor header "
                        f"('step', metrics..., 'events', 'extra'); was it written by CSVSink?")
    rows: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    for lineno, cells in enumerate(reader, start=2):
        if len(cells) != len(header):
            raise DataError(f"{path}:{lineno}: {len(cells)} cells but the header has {len(header)}; "
                            f"the file is corrupt or was edited by hand")
        try:
            row: dict[str, Any] = {"step": int(cells[0])}
            for name, cell in zip(header[1:-2], cells[1:-2]):
                row[name] = float(cell) if cell != "" else None
            if cells[-1]:
                extra = json.loads(cells[-1])
                if not isinstance(extra, dict):
                    raise ValueError(f"the extra cell must be a JSON object, got {cells[-1][:60]!r}")
                row.update({str(k): _metric(str(k), v) for k, v in extra.items()})
            if cells[-2]:
                events.extend(_events(json.loads(cells[-2]), row["step"]))
        except (ValueError, TypeError, AttributeError) as exc:
            raise DataError(f"{path}:{lineno}: cannot parse the row ({exc}); the file is corrupt") from exc
        rows.append(row)
    return rows, events


def _parse_jsonl(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    rows: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    for lineno, line in enumerate(_read_lines(path), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            if not isinstance(obj, dict) or "step" not in obj:
                raise ValueError("not an object with a 'step' key")
            step = obj["step"]
            if isinstance(step, bool) or not isinstance(step, (int, float)) or not float(step).is_integer():
                raise ValueError(f"step {step!r} is not a whole number")
            row: dict[str, Any] = {"step": int(step)}
            row.update({k: _metric(k, v) for k, v in obj.items() if k not in ("step", "events")})
            events.extend(_events(obj.get("events", []), row["step"]))
        except (ValueError, TypeError, AttributeError) as exc:
            raise DataError(f"{path}:{lineno}: cannot parse the JSON line ({exc}); the file is corrupt") from exc
        rows.append(row)
    return rows, events


def read_log(path: str | os.PathLike[str], dedupe: bool = True) -> MonitorLog:
    """Read a monitor log written by :class:`CSVSink` (``.csv``) or :class:`JSONLSink` (``.jsonl``/``.json``).

    Args:
        path: the log file; the format follows the suffix.
        dedupe: keep only the last row of a repeated step (a resumed run re-logs the steps after its checkpoint).

    Returns:
        A :class:`MonitorLog` (columns sorted by step; events in file order).

    Raises:
        DataError: unknown suffix, empty or malformed file (the message names the line).

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "log.jsonl"
        >>> _ = p.write_text('{"step":1,"loss":2.0,"events":[]}\\n{"step":2,"loss":"NaN","events":[]}\\n')
        >>> read_log(p).columns["loss"].tolist()
        [2.0, nan]
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"monitor log {str(p)!r} does not exist; pass the .csv or .jsonl file a monitor wrote")
    suffix = p.suffix.lower()
    if suffix == ".csv":
        rows, events = _parse_csv(p)
    elif suffix in (".jsonl", ".json", ".ndjson"):
        rows, events = _parse_jsonl(p)
    else:
        raise DataError(f"cannot tell the format of {p.name!r} from its suffix; use a .csv or .jsonl monitor log")
    if not rows:
        raise DataError(f"{p} holds no rows; the monitor has not flushed a step yet")
    events.sort(key=lambda e: int(e.get("step", 0)))
    return MonitorLog(columns=_table(rows, dedupe), events=events, path=p)


def _finite(a: np.ndarray) -> np.ndarray:
    return a[np.isfinite(a)]


def summary_stats(columns: Mapping[str, Sequence[float | None] | np.ndarray],
                  events: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Key figures of a monitor log: step range, loss first/last/min, grad-norm median/max, events by metric.

    Args:
        columns: column table with at least ``step`` (``MonitorLog.columns`` or ``TrainingMonitor.history``).
        events: event dicts.

    Returns:
        A JSON-serialisable dict (non-finite figures become ``None``).

    Example:
        >>> summary_stats({"step": [1, 2], "loss": [3.0, 2.0]}, [])["loss"]["last"]
        2.0
    """
    def num(x: float) -> float | None:
        return float(x) if math.isfinite(x) else None

    steps = np.asarray(columns.get("step", []), dtype=np.float64)
    out: dict[str, Any] = {"rows": len(steps),
                           "first_step": int(steps[0]) if len(steps) else None,
                           "last_step": int(steps[-1]) if len(steps) else None}
    if "loss" in columns:
        loss = np.array([np.nan if v is None else v for v in columns["loss"]], dtype=np.float64)
        fin = _finite(loss)
        out["loss"] = {"first": num(fin[0]) if len(fin) else None, "last": num(fin[-1]) if len(fin) else None,
                       "min": num(fin.min()) if len(fin) else None,
                       "min_step": int(steps[np.isfinite(loss)][np.argmin(fin)]) if len(fin) else None,
                       "nonfinite": int((~np.isfinite(loss)).sum())}
    if "grad_norm" in columns:
        g = _finite(np.array([np.nan if v is None else v for v in columns["grad_norm"]], dtype=np.float64))
        out["grad_norm"] = {"median": num(np.median(g)) if len(g) else None, "max": num(g.max()) if len(g) else None}
    by_metric: dict[str, list[int]] = {}
    for e in events:
        by_metric.setdefault(str(e.get("metric", "?")), []).append(int(e.get("step", 0)))
    out["events"] = {"total": len(events), "by_metric": {k: {"count": len(v), "steps": v[:20]}
                                                         for k, v in sorted(by_metric.items())}}
    return out


def format_summary(stats: Mapping[str, Any], events: Sequence[Mapping[str, Any]] = (), max_events: int = 10) -> str:
    """Render :func:`summary_stats` (and the first ``max_events`` event messages) as a few lines of text.

    Example:
        >>> print(format_summary(summary_stats({"step": [1, 2], "loss": [3.0, 2.0]}, [])).splitlines()[0])
        steps 1..2 (2 rows)
    """
    lines = [f"steps {stats.get('first_step')}..{stats.get('last_step')} ({stats.get('rows', 0)} rows)"]
    loss = stats.get("loss")
    if loss:
        lines.append(f"loss: first {loss['first']:.6g}, last {loss['last']:.6g}, min {loss['min']:.6g} "
                     f"at step {loss['min_step']}, non-finite {loss['nonfinite']}"
                     if loss["first"] is not None else f"loss: no finite value (non-finite {loss['nonfinite']})")
    gn = stats.get("grad_norm")
    if gn and gn["median"] is not None:
        lines.append(f"grad norm: median {gn['median']:.4g}, max {gn['max']:.4g}")
    ev = stats.get("events", {"total": 0, "by_metric": {}})
    if not ev["total"]:
        lines.append("events: none")
    else:
        parts = [f"{m} x{d['count']} (steps {', '.join(map(str, d['steps'][:5]))}{', ...' if d['count'] > 5 else ''})"
                 for m, d in ev["by_metric"].items()]
        lines.append(f"events: {ev['total']}: " + "; ".join(parts))
        lines.extend(f"  step {e.get('step')}: {e.get('message', '')}" for e in list(events)[:max_events])
        if len(events) > max_events:
            lines.append(f"  ... {len(events) - max_events} more")
    return "\n".join(lines)
