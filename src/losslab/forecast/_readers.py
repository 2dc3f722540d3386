"""File readers of :mod:`losslab.forecast.io`: CSV, JSON Lines and TensorBoard rows, validated one by one.

Each reader returns a :class:`Table` of raw rows (step, lr or NaN when not logged, loss or NaN when not measured,
and a label such as ``line 7`` for error messages); :mod:`losslab.forecast.io` turns it into a per-step curve.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from losslab._errors import DataError, require
from losslab._files import read_text_lines

__all__ = ["JSONL_SUFFIXES", "Table", "read_table"]

JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")


@dataclass
class Table:
    """Rows as read from a file: step, lr (NaN = not logged), loss (NaN = not measured), and a label per row."""

    source: str
    steps: list[int] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    where: list[str] = field(default_factory=list)
    fmt: str = "csv"
    keys: dict[str, str] = field(default_factory=dict)


def _number(text: Any, what: str, where: str, source: str, *, blank_ok: bool) -> float:
    """A float from a CSV cell or a JSON value; ``nan`` for blank/null when ``blank_ok``."""
    if text is None or (isinstance(text, str) and not text.strip()):
        if blank_ok:
            return math.nan
        raise DataError(f"{source}: {where}: the {what} is blank; every row needs a {what}")
    if isinstance(text, bool) or not isinstance(text, (int, float, str)):
        raise DataError(f"{source}: {where}: the {what} {text!r} is not a number; write a plain number such as 0.5")
    try:
        return float(text)
    except ValueError:
        raise DataError(f"{source}: {where}: the {what} {text!r} is not a number; "
                        f"write a plain number such as 0.5 (or leave a loss blank when it was not measured)") from None


def _add_row(table: Table, step_raw: Any, lr_raw: Any, loss_raw: Any, where: str) -> None:
    src = table.source
    step = _number(step_raw, "step", where, src, blank_ok=False)
    if not step.is_integer():
        raise DataError(f"{src}: {where}: step {step_raw!r} is not a whole number; steps count optimizer updates")
    if step < 0:
        raise DataError(f"{src}: {where}: step {int(step)} is negative; steps start at 1 (or 0)")
    lr = _number(lr_raw, "learning rate", where, src, blank_ok=True)
    if lr_raw is not None and not (isinstance(lr_raw, str) and not lr_raw.strip()):
        if not math.isfinite(lr):
            raise DataError(f"{src}: {where}: the learning rate is {lr_raw!r}; it must be a finite number >= 0 "
                            f"(leave it blank if it was not logged at this step)")
        if lr < 0:
            raise DataError(f"{src}: {where}: the learning rate {lr_raw!r} is negative; it must be >= 0")
    loss = _number(loss_raw, "loss", where, src, blank_ok=True)
    if math.isinf(loss):
        raise DataError(f"{src}: {where}: the loss is infinite; remove the row or leave the loss blank")
    if loss <= 0:
        raise DataError(f"{src}: {where}: the loss {loss_raw!r} is <= 0; the laws model log(loss), so the loss "
                        f"must be positive (shift it, or fit a positive loss such as the cross-entropy)")
    table.steps.append(int(step))
    table.lr.append(lr)
    table.loss.append(loss)
    table.where.append(where)


def _check_runs(path: Path, run: str | None, has_run_key: bool, runs: list[str]) -> None:
    """One run per curve: a file with several values in its ``run`` column needs ``run=`` to pick one."""
    if run is not None and not has_run_key:
        raise DataError(f"{path}: --run / run= selects rows by a 'run' column, but the file has none; drop it")
    if run is not None and run not in runs:
        raise DataError(f"{path}: no rows of run {run!r}; the file holds runs: {_listing(runs)}")
    if run is None and len(runs) > 1:
        raise DataError(f"{path}: the file holds {len(runs)} runs (column 'run': {_listing(runs)}); "
                        f"pick one with --run ID (API: run=ID)")


def _listing(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def _read_csv(path: Path, loss_key: str, lr_key: str, *, need_lr: bool, need_loss: bool,
              run: str | None = None) -> Table:
    table = Table(str(path), fmt="csv", keys={"loss": loss_key, "lr": lr_key})
    with read_text_lines(path) as fh:
        lines = [(n, line) for n, line in enumerate(fh, start=1) if line.strip()]
    if not lines:
        raise DataError(f"{path}: the file is empty; expected a header line 'step,{lr_key},{loss_key}' "
                        f"and one row per logged step")
    header_no, header_line = lines[0]
    header = [h.strip().lower() for h in next(csv.reader([header_line]))]
    wanted = {"step": "step", "lr": lr_key.lower(), "loss": loss_key.lower()}
    required = ["step"] + (["lr"] if need_lr else []) + (["loss"] if need_loss else [])
    for role in required:
        if wanted[role] not in header:
            hint = {"step": "", "lr": " (name another one with --lr-tag / lr_tag)",
                    "loss": " (name another one with --loss-tag / loss_tag)"}[role]
            raise DataError(f"{path}: line {header_no}: no column {wanted[role]!r} in the header "
                            f"{header_line.strip()!r}; the file needs columns step,{lr_key},{loss_key}{hint}")
    col = {role: header.index(name) if name in header else None for role, name in wanted.items()}
    step_col = header.index("step")
    run_col = header.index("run") if "run" in header else None
    if len(lines) == 1:
        raise DataError(f"{path}: the file has a header but no rows; add one row per logged step")
    runs: dict[str, None] = {}
    for (n, _), row in zip(lines[1:], csv.reader(text for _, text in lines[1:])):
        if len(row) != len(header):
            raise DataError(f"{path}: line {n}: {len(row)} fields but the header has {len(header)} "
                            f"({','.join(header)}); fix or delete that row")
        if run_col is not None:
            runs[row[run_col].strip()] = None
            if run is not None and row[run_col].strip() != run:
                continue
        _add_row(table, row[step_col],
                 row[col["lr"]] if col["lr"] is not None else None,
                 row[col["loss"]] if col["loss"] is not None else None, f"line {n}")
    _check_runs(path, run, run_col is not None, list(runs))
    return table


def _add_or_merge(table: Table, step_raw: Any, lr_raw: Any, loss_raw: Any, where: str, *, merge: bool) -> None:
    """Add a JSONL record, or (``merge``: same run as the previous record) merge it into the previous row when both
    log the same step (one metric a line)."""
    row = Table(table.source)
    _add_row(row, step_raw, lr_raw, loss_raw, where)  # parsed and checked once
    if not (merge and table.steps and table.steps[-1] == row.steps[0]):
        table.steps += row.steps
        table.lr += row.lr
        table.loss += row.loss
        table.where += row.where
        return
    for values, new, what in ((table.lr, row.lr[0], "learning rate"), (table.loss, row.loss[0], "loss")):
        if math.isnan(new):
            continue
        if not math.isnan(values[-1]) and values[-1] != new:
            raise DataError(f"{table.source}: {where}: a second {what} {new!r} at step {row.steps[0]} "
                            f"({table.where[-1]} has {values[-1]!r}); keep one record per step and metric")
        values[-1] = new


def _read_jsonl(path: Path, loss_key: str, lr_key: str, *, need_lr: bool, need_loss: bool,
                run: str | None = None) -> Table:
    table = Table(str(path), fmt="jsonl", keys={"loss": loss_key, "lr": lr_key})
    seen = {"lr": False, "loss": False}
    runs: dict[str, None] = {}
    last_run: object = None
    with read_text_lines(path) as fh:
        for n, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}: line {n}: not valid JSON ({exc.msg}); write one object per line, e.g. "
                                f'{{"step": 1, "{lr_key}": 0.001, "{loss_key}": 2.5}}') from None
            if not isinstance(obj, dict) or "step" not in obj:
                raise DataError(f"{path}: line {n}: expected an object with a 'step' key, got {line.strip()[:60]!r}")
            if "run" in obj:
                runs[str(obj["run"])] = None
                if run is not None and str(obj["run"]) != run:
                    continue
            if lr_key not in obj and loss_key not in obj:
                continue  # another metric's record (eval, throughput, ...)
            seen["lr"] |= lr_key in obj
            seen["loss"] |= loss_key in obj
            _add_or_merge(table, obj["step"], obj.get(lr_key), obj.get(loss_key), f"line {n}",
                          merge=str(obj.get("run")) == last_run)
            last_run = str(obj.get("run"))
    _check_runs(path, run, bool(runs), list(runs))
    if not table.steps:
        raise DataError(f"{path}: the file is empty; expected one JSON object per line with keys "
                        f"step, {lr_key}, {loss_key}")
    for role, key, needed in (("lr", lr_key, need_lr), ("loss", loss_key, need_loss)):
        if needed and not seen[role]:
            raise DataError(f"{path}: no line has the key {key!r}; the objects need keys step, {lr_key}, {loss_key}"
                            f" (name another key with --{role}-tag / {role}_tag)")
    return table


def _read_tensorboard(path: Path, loss_key: str, lr_key: str, *, need_lr: bool, need_loss: bool) -> Table:
    ea_mod: Any = require("tensorboard.backend.event_processing.event_accumulator", "tensorboard",
                          "reading TensorBoard event files")
    acc = ea_mod.EventAccumulator(str(path), size_guidance={ea_mod.SCALARS: 0})
    acc.Reload()
    tags = sorted(acc.Tags().get("scalars", []))
    if not tags:
        raise DataError(f"{path}: no scalar events found; point to a TensorBoard event file or run directory "
                        f"that logged the loss with add_scalar")
    values: dict[str, dict[int, float]] = {}
    for role, tag, needed in (("loss", loss_key, need_loss), ("lr", lr_key, need_lr)):
        if tag not in tags:
            if not needed:
                continue
            raise DataError(f"{path}: no scalar tag {tag!r}; choose the {role} tag with --{role}-tag / {role}_tag "
                            f"from: {', '.join(tags)}")
        by_step: dict[int, float] = {}
        for event in acc.Scalars(tag):
            if event.step in by_step:
                raise DataError(f"{path}: tag {tag!r} has two values at step {event.step} (a restarted run?); "
                                f"keep one run per directory or export the curve you want to CSV")
            by_step[event.step] = float(event.value)
        values[role] = by_step
    table = Table(str(path), fmt="tensorboard", keys={"loss": loss_key, "lr": lr_key})
    lr_vals, loss_vals = values.get("lr", {}), values.get("loss", {})
    for step in sorted(set(lr_vals) | set(loss_vals)):
        _add_row(table, step, lr_vals.get(step), loss_vals.get(step), f"step {step}")
    return table


def read_table(path: Path, loss_key: str, lr_key: str, *, need_lr: bool, need_loss: bool,
               run: str | None = None) -> Table:
    """Rows of a CSV, JSONL or TensorBoard file (format from the name); ``run`` picks rows by a ``run`` column."""
    if not path.exists():
        raise DataError(f"{path}: no such file or directory; check the path")
    is_tb = path.is_dir() or "tfevents" in path.name
    if is_tb:
        if run is not None:
            raise DataError(f"{path}: --run / run= applies to CSV and JSONL files; point to the run's own "
                            f"TensorBoard directory instead")
        return _read_tensorboard(path, loss_key, lr_key, need_lr=need_lr, need_loss=need_loss)
    suffix = path.suffix.lower()
    if suffix in (".csv", ".txt"):
        return _read_csv(path, loss_key, lr_key, need_lr=need_lr, need_loss=need_loss, run=run)
    if suffix in JSONL_SUFFIXES:
        return _read_jsonl(path, loss_key, lr_key, need_lr=need_lr, need_loss=need_loss, run=run)
    raise DataError(f"{path}: unknown file type {suffix or '(no suffix)'!r}; use .csv (step,lr,loss), .jsonl "
                    f"(one JSON object per line) or a TensorBoard event file / run directory")
