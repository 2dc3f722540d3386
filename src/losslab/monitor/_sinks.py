"""Where monitor rows go: CSV and JSONL files (crash-safe appends), TensorBoard event files.

A row is ``(step, metrics, events)``: ``metrics`` maps column names to floats (``None`` = not measured this
step), ``events`` is a list of event dicts (:meth:`losslab.stability.SpikeEvent.to_dict`).

Crash safety of the file sinks: rows are buffered in memory and :meth:`flush` writes all buffered lines with ONE
``os.write`` call on a file opened with ``O_APPEND``; a failed or short write is rolled back with ``ftruncate``.
So after every flush the file holds only whole lines, and a process killed at any moment leaves at most the
rows since the last flush unwritten, never half a row. Re-opening a file whose last line is incomplete (a power
cut, a full disk) cuts that line off before appending.

A file that keeps failing (full disk, read-only mount) costs bounded memory and time: at most ``max_pending``
lines wait in memory (the oldest are dropped and counted, with one warning per outage), and after a failed
attempt the next ``1, 2, 4, ...`` (at most ``_MAX_BACKOFF``) flushes are skipped before the file is tried again.
:attr:`failing` tells whether the last attempt failed; ``close`` always tries once more.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import warnings
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from losslab._errors import ConfigError, require

__all__ = ["CSVSink", "JSONLSink", "MonitorSink", "TensorBoardSink"]

Row = Mapping[str, "float | None"]

_MAX_BACKOFF = 1024
"""Most flushes skipped between two attempts of a failing file (the waits double from 1 up to this)."""


@runtime_checkable
class MonitorSink(Protocol):
    """Protocol of a monitor sink: ``write`` one row, ``flush`` to storage, ``close`` at the end."""

    def write(self, step: int, metrics: Row, events: Sequence[Mapping[str, Any]]) -> None:
        """Accept one row (may buffer)."""
        ...

    def flush(self) -> None:
        """Make every accepted row durable (whole lines only)."""
        ...

    def close(self) -> None:
        """Flush and release the file."""
        ...


def _json_float(x: float | None) -> Any:
    """Strict-JSON encoding of a float: non-finite values become the strings "NaN", "Infinity", "-Infinity"."""
    if x is None:
        return None
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "Infinity" if x > 0 else "-Infinity"
    return x


def _json_event(event: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _json_float(v) if isinstance(v, float) else v for k, v in event.items()}


class _AppendFile:
    """A file opened lazily with O_APPEND; ``append(text)`` writes whole lines in one syscall or rolls back."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._fd: int | None = None

    def open(self) -> str:
        """Open (creating parents); cut an incomplete last line; return the existing complete content's first line."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        size = os.fstat(fd).st_size
        first = ""
        if size:
            with open(self.path, "rb") as fh:
                data = fh.read()
            cut = data.rfind(b"\n") + 1
            if cut < size:
                warnings.warn(f"{self.path}: dropping an incomplete last line ({size - cut} bytes) before appending",
                              RuntimeWarning, stacklevel=3)
                os.ftruncate(fd, cut)
            first = data[:cut].split(b"\n", 1)[0].decode("utf-8", errors="replace") if cut else ""
        self._fd = fd
        return first

    @property
    def is_open(self) -> bool:
        return self._fd is not None

    def append(self, text: str) -> None:
        assert self._fd is not None
        data = text.encode("utf-8")
        start = os.fstat(self._fd).st_size
        try:
            written = os.write(self._fd, data)
            if written != len(data):
                raise OSError(f"short write to {self.path}: {written} of {len(data)} bytes")
        except BaseException:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, start)
            raise

    def fsync(self) -> None:
        if self._fd is not None:
            os.fsync(self._fd)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class _LineSink:
    """Lines buffered by ``write`` and appended to one file by :meth:`flush` (shared by the CSV and JSONL sinks)."""

    def __init__(self, path: str | os.PathLike[str], fsync: bool = False, max_pending: int = 10_000) -> None:
        if isinstance(max_pending, bool) or not isinstance(max_pending, int) or max_pending < 1:
            raise ConfigError(f"max_pending must be an integer >= 1, got {max_pending!r}; e.g. max_pending=10000")
        self._file = _AppendFile(path)
        self.path = self._file.path
        self.fsync = bool(fsync)
        self.max_pending = max_pending
        self._pending: deque[str] = deque()
        self._head = ""  # a new CSV file's header line, written before the first rows (never dropped)
        self._failures = 0  # consecutive failed attempts
        self._wait = 0  # flushes still to skip before the next attempt
        self.dropped = 0  # lines dropped during the current outage
        self.last_outage_dropped = 0  # lines dropped during the outage that ended last

    @property
    def failing(self) -> bool:
        """Whether the last attempt to write the file failed (rows wait in memory, up to ``max_pending``)."""
        return self._failures > 0

    def _ensure_open(self) -> None:
        """Nothing by default: the CSV sink opens its file at the first write, to read an existing header."""

    def _buffer(self, line: str) -> None:
        if len(self._pending) >= self.max_pending:
            self._pending.popleft()
            self.dropped += 1
            if self.dropped == 1:
                warnings.warn(f"{self.path} cannot be written; keeping the newest {self.max_pending} rows in memory "
                              f"and dropping older ones until it can (counted in the recovery event)",
                              RuntimeWarning, stacklevel=4)
        self._pending.append(line)

    def _fail(self) -> None:
        self._failures += 1
        self._wait = min(2 ** min(self._failures - 1, 30), _MAX_BACKOFF)

    def _recover(self) -> None:
        if self._failures:
            self.last_outage_dropped = self.dropped
            self._failures = self._wait = self.dropped = 0

    def flush(self) -> None:
        """Write all buffered lines in one system call (or none of them on error); skipped while backing off."""
        self._flush(force=False)

    def _flush(self, force: bool) -> None:
        if not self._pending and not self._head:
            return
        if self._wait > 0 and not force:
            self._wait -= 1
            return
        try:
            self._ensure_open()
            self._file.append(self._head + "".join(self._pending))
        except BaseException:
            self._fail()
            raise
        self._head = ""
        self._pending.clear()
        self._recover()
        if self.fsync:
            self._file.fsync()

    def close(self) -> None:
        """Flush (one more attempt even while backing off) and close the file."""
        try:
            self._flush(force=True)
        finally:
            self._file.close()


class CSVSink(_LineSink):
    """Append rows to a CSV file; the header is fixed at the first write.

    Columns: ``step``, the metric columns known at the first write (in the monitor's order), then ``events``
    (a JSON list of the step's events, empty when none) and ``extra`` (a JSON object holding any metric that
    appeared after the header was written, so nothing is lost and every line keeps the same columns). Missing
    values are empty cells; NaN and infinities are written as ``nan``, ``inf``, ``-inf``.

    Appending to an existing file (a resumed run) keeps its header; metrics not in it go to ``extra``.

    Args:
        path: the CSV file (parents are created).
        fsync: also ``os.fsync`` at every flush (survives a power cut, costs a disk round trip).
        max_pending: most rows kept in memory while the file cannot be written (the oldest are dropped).

    Example:
        >>> import tempfile, pathlib
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "log.csv"
        >>> sink = CSVSink(path); sink.write(1, {"loss": 2.5}, []); sink.close()
        >>> path.read_text().splitlines()
        ['step,loss,events,extra', '1,2.5,,']
    """

    def __init__(self, path: str | os.PathLike[str], fsync: bool = False, max_pending: int = 10_000) -> None:
        super().__init__(path, fsync, max_pending)
        self.header: list[str] | None = None

    def _start(self, metrics: Row) -> None:
        first = self._file.open()
        if first:
            header = next(csv.reader([first]))
            if not header or header[0] != "step" or header[-2:] != ["events", "extra"]:
                self._file.close()
                raise ConfigError(f"{self.path} exists but is not a losslab monitor CSV (header {first[:80]!r}); "
                                  f"choose another path or delete the file")
            self.header = header
        else:
            self.header = ["step", *[k for k in metrics if k not in ("step", "events", "extra")], "events", "extra"]
            self._head = self._line(self.header)

    @staticmethod
    def _line(cells: Sequence[str]) -> str:
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerow(cells)
        return buf.getvalue()

    @staticmethod
    def _cell(x: float | None) -> str:
        if x is None:
            return ""
        return repr(float(x))

    def write(self, step: int, metrics: Row, events: Sequence[Mapping[str, Any]]) -> None:
        """Buffer one row (written by the next :meth:`flush`)."""
        if self.header is None:
            if self._wait > 0:  # the file could not be opened: back off, this row is lost
                self._wait -= 1
                self.dropped += 1
                return
            try:
                self._start(metrics)
            except Exception:
                self._fail()
                self.dropped += 1
                raise
        assert self.header is not None
        cols = self.header[1:-2]
        known = set(cols)
        extra = {k: _json_float(v) for k, v in metrics.items() if k not in known and v is not None}
        cells = [str(int(step)), *[self._cell(metrics.get(c)) for c in cols],
                 json.dumps([_json_event(e) for e in events], separators=(",", ":")) if events else "",
                 json.dumps(extra, separators=(",", ":")) if extra else ""]
        self._buffer(self._line(cells))


class JSONLSink(_LineSink):
    """Append rows to a JSON-lines file: one object per step, ``{"step": ..., <metrics>, "events": [...]}``.

    Only measured metrics appear in a line (no nulls); NaN and infinities are the strings ``"NaN"``,
    ``"Infinity"``, ``"-Infinity"`` so that every line is strict JSON (``jq`` reads it). Same crash safety as
    :class:`CSVSink`.

    Args:
        path: the ``.jsonl`` file (parents are created).
        fsync: also ``os.fsync`` at every flush.
        max_pending: most rows kept in memory while the file cannot be written (the oldest are dropped).

    Example:
        >>> import tempfile, pathlib
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "log.jsonl"
        >>> sink = JSONLSink(path); sink.write(1, {"loss": float("nan")}, []); sink.close()
        >>> path.read_text()
        '{"step":1,"loss":"NaN","events":[]}\\n'
    """

    def write(self, step: int, metrics: Row, events: Sequence[Mapping[str, Any]]) -> None:
        """Buffer one row (written by the next :meth:`flush`)."""
        obj: dict[str, Any] = {"step": int(step)}
        obj.update({k: _json_float(v) for k, v in metrics.items() if v is not None and k not in ("step", "events")})
        obj["events"] = [_json_event(e) for e in events]
        self._buffer(json.dumps(obj, separators=(",", ":"), allow_nan=False) + "\n")

    def _ensure_open(self) -> None:
        if not self._file.is_open:
            self._file.open()


class TensorBoardSink:
    """Write scalars (and events as text) to TensorBoard event files with ``torch.utils.tensorboard``.

    The ``SummaryWriter`` is created at the first write, so a rank that never writes creates no file. Needs the
    optional package ``tensorboard`` (``pip install 'losslab[tensorboard]'``). Metric names keep their ``/``
    (TensorBoard groups ``grad_norm/...`` into one section).

    Args:
        log_dir: directory of the event files.
        **writer_kwargs: passed to ``SummaryWriter`` (e.g. ``flush_secs``).

    Example:
        >>> sink = TensorBoardSink("runs/exp1")  # doctest: +SKIP
    """

    def __init__(self, log_dir: str | os.PathLike[str], **writer_kwargs: Any) -> None:
        require("tensorboard", "tensorboard", "TensorBoardSink")
        self.log_dir = Path(log_dir)
        self._kwargs = writer_kwargs
        self._writer: Any = None

    def write(self, step: int, metrics: Row, events: Sequence[Mapping[str, Any]]) -> None:
        """Add each measured metric as a scalar and each event as a text entry at ``step``."""
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(self.log_dir), **self._kwargs)
        for name, value in metrics.items():
            if value is not None:
                self._writer.add_scalar(name, value, global_step=int(step))
        for event in events:
            self._writer.add_text(f"events/{event.get('metric', 'monitor')}", str(event.get("message", "")),
                                  global_step=int(step))

    def flush(self) -> None:
        """Flush the event file."""
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        """Close the writer."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
