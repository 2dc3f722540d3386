"""Read training curves and schedules from CSV, JSON Lines and TensorBoard files; write predictions.

The forecast laws need the learning rate of **every** step ``1..T`` (the loss only where it was measured), so a
file is turned into a :class:`~losslab.forecast.Curve` by these rules:

* **Columns / keys.** ``step`` plus the lr and loss columns (``lr`` and ``loss`` unless ``lr_tag`` / ``loss_tag``
  name others; extra columns are ignored). A blank (CSV), ``null`` or missing (JSONL) loss, or ``nan``, means *not
  measured at that step*. The lr must be a finite number >= 0 where given; a blank lr means *not logged*.
  A file holding several runs in a ``run`` column is read one run at a time with ``run=ID`` (CLI ``--run ID``);
  ``loss_from=STEP`` (CLI ``--loss-from``) ignores the losses before ``STEP`` but keeps their lr.
* **Steps** are integers that strictly increase. Steps counted from 0 (``0, 1, 2, ...``, as many training loops log
  them) are read as 0-based: the row of step ``k`` becomes step ``k + 1``; ``meta["zero_based"]`` records it.
* **Every step needs an lr.** Files that log every step from 1 need nothing else. For the others pick one:

  - ``warmup_steps=N`` (CLI ``--warmup-steps N``): the file starts after a linear warmup of ``N`` steps that was
    not logged; steps ``1..N`` get ``lr_first * k / N`` (the convention of :mod:`losslab.schedules`), where
    ``lr_first`` is the lr of the first row, which must be at step ``N`` or later.
  - ``lr_fill="linear"`` (CLI ``--lr-fill linear``): steps between logged rows get the lr interpolated linearly
    between them. This is exact on constant and linear pieces, off by at most ``gap**2 * max|lr''| / 8`` on smooth
    decays (cosine: below 1e-4 of the peak for 128-step gaps in a 24k-step run), and **wrong across a sudden drop**
    (a step schedule's drop is smeared over the gap). Forward-filling is never used: it is wrong for every decay.
  - ``schedule=SPEC`` (CLI ``--schedule SPEC``): the lr of every step comes from a :mod:`losslab.schedules` spec;
    the file may then be sparse and may omit the lr column. Logged lr values are checked against the spec
    (relative tolerance 1e-3) so that a wrong spec fails loudly instead of giving a wrong forecast.

  ``warmup_steps`` combines with ``lr_fill`` (the gap between step ``N`` and the first row is interpolated).
* **Malformed input** raises one :class:`~losslab.DataError` that names the file, the line (or TensorBoard tag and
  step) and the fix. Nothing is guessed silently; every reconstruction is recorded in ``Curve.meta``.

Example (a MultiPowerLaw file: one row every 128 steps from step 2160, after 2160 warmup steps)::

    curve = load_curve("cosine_24000.csv", warmup_steps=2160, lr_fill="linear")
    curve = load_curve("cosine_24000.csv", schedule="cosine:peak=3e-4,steps=24000,final=0.1,warmup=2160")
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from losslab._errors import ConfigError, DataError
from losslab._files import write_text
from losslab.forecast._curve import Curve
from losslab.forecast._readers import JSONL_SUFFIXES, Table, read_table
from losslab.schedules import MAX_STEPS, Schedule, parse_schedule

__all__ = ["LR_FILLS", "load_curve", "load_schedule", "write_prediction_csv"]

LR_FILLS = ("none", "linear")
_SPEC_TOL = 1e-3


# -------------------------------------------------------------------------------------------------------- assembling
def _check_order(t: Table) -> np.ndarray:
    steps = np.asarray(t.steps, dtype=np.int64)
    if steps.size > 1:
        diff = np.diff(steps)
        if np.any(diff <= 0):
            i = int(np.flatnonzero(diff <= 0)[0]) + 1
            kind = "repeats" if diff[i - 1] == 0 else "goes back to"
            raise DataError(f"{t.source}: {t.where[i]}: step {kind} {steps[i]} after step {steps[i - 1]} "
                            f"({t.where[i - 1]}); steps must strictly increase: remove duplicated or restarted rows")
    return steps


def _lr_everywhere(t: Table, steps: np.ndarray, lr_rows: np.ndarray, total: int, *,
                   warmup_steps: int | None, lr_fill: str, meta: dict[str, Any]) -> np.ndarray:
    """Per-step lr for steps 1..total from the logged rows, a rebuilt warmup and (optionally) interpolation."""
    known = ~np.isnan(lr_rows)
    kx, ky = steps[known].astype(np.float64), lr_rows[known]
    if warmup_steps is not None:
        first = int(steps[0])
        if first < warmup_steps:
            raise DataError(f"{t.source}: {t.where[0]}: the file starts at step {first}, inside the warmup of "
                            f"{warmup_steps} steps; warmup_steps / --warmup-steps is for files that start after "
                            f"the warmup: drop it, or pass the full schedule with --schedule")
        if not known[0]:
            raise DataError(f"{t.source}: {t.where[0]}: the first row has no learning rate, so the warmup peak is "
                            f"unknown; log the lr on the first row or pass --schedule")
        peak = float(lr_rows[0])
        warm = peak * np.arange(1, warmup_steps + 1) / warmup_steps
        kx = np.concatenate([np.arange(1, warmup_steps + 1, dtype=np.float64), kx[kx > warmup_steps]])
        ky = np.concatenate([warm, ky[steps[known] > warmup_steps]])
        meta["warmup_rebuilt"] = {"steps": warmup_steps, "peak": peak}
    elif steps[0] != 1:
        raise DataError(f"{t.source}: {t.where[0]}: the file starts at step {steps[0]}, so the learning rate of "
                        f"steps 1..{steps[0] - 1} is unknown; if the run had a linear warmup of N steps that is "
                        f"not in the file pass --warmup-steps N, otherwise pass the schedule with --schedule SPEC")
    grid = np.arange(1, total + 1, dtype=np.float64)
    have = np.isin(grid, kx)
    if have.all():
        return np.interp(grid, kx, ky)  # every step is known exactly; interp only reorders
    missing = int(np.flatnonzero(~have)[0]) + 1
    if lr_fill == "none":
        offset = int(steps[0]) - t.steps[0]  # 1 for a 0-based file: messages use the file's own step numbers
        raise DataError(f"{t.source}: the learning rate of step {missing - offset} is unknown "
                        f"({_gap_where(t, steps, missing)}); "
                        f"losslab needs the lr of every step: log every step, pass --lr-fill linear to "
                        f"interpolate between logged rows (exact on constant and linear pieces, wrong across "
                        f"sudden drops), or pass --schedule SPEC")
    if not known[-1]:
        raise DataError(f"{t.source}: {t.where[-1]}: the last row has no learning rate, so the lr after the last "
                        f"logged value cannot be interpolated; log the lr on the last row or pass --schedule")
    meta["lr_fill"] = {"method": "linear", "filled_steps": int((~have).sum())}
    return np.interp(grid, kx, ky)


def _gap_where(t: Table, steps: np.ndarray, missing: int) -> str:
    i = int(np.searchsorted(steps, missing))
    if i < steps.size and steps[i] == missing:
        return f"{t.where[i]} has a blank learning rate"
    if i == 0:
        return f"the file starts at step {t.steps[0]}"
    return f"steps jump from {t.steps[i - 1]} ({t.where[i - 1]}) to {t.steps[i]} ({t.where[i]})"


def _lr_from_schedule(t: Table, steps: np.ndarray, lr_rows: np.ndarray, schedule: Schedule, total: int,
                      meta: dict[str, Any]) -> np.ndarray:
    lr = np.asarray(schedule.lr(total), dtype=np.float64)
    known = ~np.isnan(lr_rows)
    want = lr[steps[known] - 1]
    got = lr_rows[known]
    bad = np.abs(got - want) > _SPEC_TOL * np.maximum(np.abs(want), np.abs(got)) + 1e-9 * schedule.peak
    if np.any(bad):
        i = int(np.flatnonzero(known)[np.flatnonzero(bad)[0]])
        counted = f" (step {steps[i]} counted from 1)" if steps[i] != t.steps[i] else ""
        raise DataError(f"{t.source}: {t.where[i]}: the logged learning rate {lr_rows[i]:.6g} at step {t.steps[i]}"
                        f"{counted} differs from {lr[steps[i] - 1]:.6g} given by the schedule {schedule.to_spec()!r}; "
                        f"fix the spec (peak, steps, warmup, decay) so that it matches the run")
    meta["schedule"] = schedule.to_spec()
    meta["lr_checked_rows"] = int(known.sum())
    return lr


def _as_schedule(schedule: str | Schedule) -> Schedule:
    return schedule if isinstance(schedule, Schedule) else parse_schedule(schedule)


def _check_options(warmup_steps: int | None, lr_fill: str, schedule: Any) -> None:
    if lr_fill not in LR_FILLS:
        raise ConfigError(f"lr_fill must be one of {', '.join(LR_FILLS)}, got {lr_fill!r}")
    if warmup_steps is not None and (isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int)
                                     or warmup_steps < 1):
        raise ConfigError(f"warmup_steps must be a positive integer, got {warmup_steps!r}")
    if schedule is not None and (warmup_steps is not None or lr_fill != "none"):
        raise ConfigError("a schedule already gives the lr of every step; put the warmup inside the spec "
                          "(e.g. 'cosine:peak=3e-4,steps=24000,warmup=2160') instead of also passing "
                          "--warmup-steps or --lr-fill")


def _assemble(t: Table, *, warmup_steps: int | None, lr_fill: str, schedule: Schedule | None
              ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    steps = _check_order(t)
    meta: dict[str, Any] = {"source": t.source, "format": t.fmt, "keys": dict(t.keys), "rows": len(t.steps),
                            "first_step": int(steps[0]), "last_step": int(steps[-1])}
    if steps[0] == 0 and warmup_steps is None:
        steps = steps + 1
        meta["zero_based"] = True
    total = int(steps[-1])
    if total > MAX_STEPS:
        raise DataError(f"{t.source}: {t.where[-1]}: step {total:,} is above losslab's limit of {MAX_STEPS:,} steps "
                        "(the lr and loss of every step are kept); is the step column a token or sample count?")
    lr_rows = np.asarray(t.lr, dtype=np.float64)
    if schedule is not None:
        lr = _lr_from_schedule(t, steps, lr_rows, schedule, total, meta)
    else:
        lr = _lr_everywhere(t, steps, lr_rows, total, warmup_steps=warmup_steps, lr_fill=lr_fill, meta=meta)
    loss = np.full(total, np.nan)
    loss[steps - 1] = np.asarray(t.loss, dtype=np.float64)
    return lr, loss, meta


# ------------------------------------------------------------------------------------------------------------ public
def load_curve(
    path: str | Path,
    *,
    warmup_steps: int | None = None,
    loss_tag: str | None = None,
    lr_tag: str | None = None,
    lr_fill: str = "none",
    schedule: str | Schedule | None = None,
    loss_from: int | None = None,
    run: str | None = None,
    name: str | None = None,
) -> Curve:
    """Read a training curve (per-step lr, loss where measured) from a CSV, JSONL or TensorBoard file.

    The rules for steps, blanks, warmup and sparse files are in the module docstring; in short: the lr of every
    step ``1..T`` must be known or reconstructible (``warmup_steps``, ``lr_fill="linear"`` or ``schedule``), and
    malformed input raises one :class:`~losslab.DataError` naming the file, the row and the fix.

    Args:
        path: ``.csv`` (columns ``step,lr,loss``), ``.jsonl`` (one object per line with the same keys), or a
            TensorBoard event file (``events.out.tfevents.*``) or run directory.
        warmup_steps: rebuild an unlogged linear warmup ``0 -> lr`` over steps ``1..N`` before the first row.
        loss_tag: column / key / TensorBoard scalar tag of the loss (default ``"loss"``).
        lr_tag: column / key / TensorBoard scalar tag of the learning rate (default ``"lr"``).
        lr_fill: ``"none"`` (every step must be logged) or ``"linear"`` (interpolate the lr between rows).
        schedule: a :mod:`losslab.schedules` spec or :class:`~losslab.schedules.Schedule` giving every step's lr.
        loss_from: ignore measured losses before this step (counted from 1), e.g. when the log dropped the warmup's
            lr but kept its loss; their lr still counts. Recorded as ``meta["loss_from"]``.
        run: for CSV / JSONL files holding several runs in a ``run`` column, the run to read (required when
            the column has more than one value; an error lists them).
        name: label of the curve (default: the file name without suffix, plus ``:RUN`` when ``run`` is given).

    Returns:
        A :class:`~losslab.forecast.Curve` with ``T`` = the last logged step; ``meta`` records the source, the
        format and every reconstruction (``warmup_rebuilt``, ``lr_fill``, ``schedule``, ``zero_based``).

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "run.csv"
        >>> _ = p.write_text("step,lr,loss\\n1,0.1,3.0\\n2,0.1,\\n3,0.05,2.5\\n")
        >>> c = load_curve(p)
        >>> c.lr.tolist(), c.measured.tolist()
        ([0.1, 0.1, 0.05], [1, 3])

    Notes:
        Unlike pandas-based readers, nothing is forward-filled: a forward-filled lr is wrong for every decaying
        schedule, and the laws integrate the lr over every step, so a wrong lr is a wrong forecast.
    """
    _check_options(warmup_steps, lr_fill, schedule)
    if loss_from is not None and (isinstance(loss_from, bool) or not isinstance(loss_from, int) or loss_from < 1):
        raise ConfigError(f"loss_from must be a step >= 1, got {loss_from!r}")
    sched = _as_schedule(schedule) if schedule is not None else None
    p = Path(path)
    table = read_table(p, loss_tag or "loss", lr_tag or "lr", need_lr=sched is None, need_loss=True, run=run)
    lr, loss, meta = _assemble(table, warmup_steps=warmup_steps, lr_fill=lr_fill, schedule=sched)
    if loss_from is not None:
        loss[: loss_from - 1] = np.nan
        meta["loss_from"] = loss_from
    # an event file is named events.out.tfevents...: the run is its folder
    stem = (p.resolve().parent.name or "events") if "tfevents" in p.name else p.stem
    label = name or stem + (f":{run}" if run else "")
    if run is not None:
        meta["run"] = run
    if not np.any(np.isfinite(loss)):
        where = f" at or after step {loss_from} (--loss-from)" if loss_from is not None else ""
        raise DataError(f"{p}: no row has a loss value{where}; fill the {table.keys['loss']!r} column "
                        f"(or name the loss column with --loss-tag)")
    return Curve(lr=lr, loss=loss, name=label, meta=meta)


def load_schedule(
    path_or_spec: str | Path | Schedule,
    *,
    steps: int | None = None,
    warmup_steps: int | None = None,
    lr_fill: str = "none",
    lr_tag: str | None = None,
) -> np.ndarray:
    """Per-step learning rates (steps ``1..T``) from a schedule file or a :mod:`losslab.schedules` spec string.

    Args:
        path_or_spec: a ``.csv`` / ``.jsonl`` / TensorBoard file with ``step`` and ``lr`` (a loss column is
            ignored), or a spec such as ``"wsd:peak=3e-4,steps=24000,decay=0.2,cooldown=sqrt"``.
        steps: number of steps ``T``. For a spec it defaults to the spec's ``steps``; for a file it must equal
            the file's last step when given.
        warmup_steps, lr_fill, lr_tag: as in :func:`load_curve`, for files.

    Returns:
        float64 array of shape ``(T,)``; element ``i`` is the lr of step ``i + 1``.

    Example:
        >>> load_schedule("linear:peak=1.0,steps=4").tolist()
        [0.75, 0.5, 0.25, 0.0]
    """
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise ConfigError(f"steps must be a positive integer, got {steps!r}")
    _check_options(warmup_steps, lr_fill, None)
    if isinstance(path_or_spec, Schedule):
        return _spec_lr(path_or_spec, steps)
    text = str(path_or_spec)
    p = Path(text)
    if not (isinstance(path_or_spec, Path) or _looks_like_file(text)):
        if warmup_steps is not None or lr_fill != "none":
            raise ConfigError("--warmup-steps / --lr-fill apply to schedule files; put the warmup inside the spec")
        return _spec_lr(parse_schedule(text), steps)
    table = read_table(p, "loss", lr_tag or "lr", need_lr=True, need_loss=False)
    lr, _, _ = _assemble(table, warmup_steps=warmup_steps, lr_fill=lr_fill, schedule=None)
    if steps is not None and steps != lr.size:
        raise ConfigError(f"{p}: the schedule file has {lr.size} steps but steps={steps} was asked; "
                          f"drop --steps or write a file with {steps} steps")
    return lr


def _looks_like_file(text: str) -> bool:
    """True for an existing path or a name with a data-file suffix; False for a schedule spec string."""
    p = Path(text)
    return p.exists() or p.suffix.lower() in (".csv", *JSONL_SUFFIXES) or "tfevents" in p.name


def _spec_lr(schedule: Schedule, steps: int | None) -> np.ndarray:
    if steps is None and "steps" not in schedule.params:
        raise ConfigError(f"the schedule {schedule.to_spec()!r} has no length; add steps=N to the spec")
    return np.asarray(schedule.lr(steps), dtype=np.float64)


def write_prediction_csv(
    path: str | Path,
    loss: np.ndarray,
    lower: np.ndarray,
    upper: np.ndarray,
    *,
    steps: np.ndarray | None = None,
) -> Path:
    """Write a prediction as CSV with columns ``step,loss,lower,upper``, one row per step.

    Args:
        path: output file (its folder must exist).
        loss, lower, upper: 1-D arrays of the same length ``T``; finite, with ``lower <= loss <= upper``.
        steps: step numbers of the rows (default ``1..T``).

    Returns:
        The path written. Values use 10 significant digits, enough to round-trip float32 losses.

    Example:
        >>> import tempfile, pathlib, numpy as np
        >>> p = write_prediction_csv(pathlib.Path(tempfile.mkdtemp()) / "p.csv", np.array([2.0]),
        ...                          np.array([1.9]), np.array([2.1]))
        >>> p.read_text().splitlines()
        ['step,loss,lower,upper', '1,2,1.9,2.1']
    """
    cols = [np.asarray(a, dtype=np.float64) for a in (loss, lower, upper)]
    if any(c.ndim != 1 or c.shape != cols[0].shape for c in cols) or cols[0].size == 0:
        raise DataError(f"loss, lower and upper must be non-empty 1-D arrays of the same length, got shapes "
                        f"{[c.shape for c in cols]}")
    if not all(np.all(np.isfinite(c)) for c in cols):
        raise DataError("the prediction has NaN or Inf values; check the fit (losslab forecast fit prints it)")
    step_col = np.arange(1, cols[0].size + 1) if steps is None else np.asarray(steps)
    if step_col.shape != cols[0].shape:
        raise DataError(f"steps has shape {step_col.shape} but the prediction has {cols[0].size} rows")
    lines = ["step,loss,lower,upper"]
    lines += [f"{int(s)},{a:.10g},{b:.10g},{c:.10g}" for s, a, b, c in zip(step_col, *cols)]
    return write_text(path, "\n".join(lines) + "\n")
