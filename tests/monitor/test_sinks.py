"""File sinks: format, fixed CSV header, crash safety (SIGKILL), resume, TensorBoard, the log reader."""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from losslab import DataError
from losslab.monitor import CSVSink, JSONLSink, TensorBoardSink, TrainingMonitor, read_log
from tests.conftest import REPO


def _strict(line: str) -> dict:
    def no_constants(name):
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(line, parse_constant=no_constants)


def test_csv_header_is_fixed_and_late_columns_go_to_extra(tmp_path):
    path = tmp_path / "log.csv"
    sink = CSVSink(path)
    sink.write(1, {"loss": 2.0, "grad_norm": None}, [])
    sink.flush()
    sink.write(2, {"loss": float("nan"), "grad_norm": float("inf"), "new": 7.0},
               [{"step": 2, "metric": "loss", "value": float("nan"), "score": float("inf"), "detector": "x",
                 "message": 'say "hi", ok'}])
    sink.close()
    rows = list(csv.reader(path.read_text().splitlines()))
    assert rows[0] == ["step", "loss", "grad_norm", "events", "extra"]
    assert rows[1] == ["1", "2.0", "", "", ""]
    assert rows[2][:3] == ["2", "nan", "inf"] and _strict(rows[2][4]) == {"new": 7.0}
    assert _strict(rows[2][3])[0]["value"] == "NaN"
    log = read_log(path)
    assert log.columns["new"].tolist()[1] == 7.0 and math.isnan(log.columns["new"][0])
    assert math.isinf(log.columns["grad_norm"][1]) and math.isnan(log.columns["grad_norm"][0])
    assert log.events[0]["message"] == 'say "hi", ok' and math.isnan(log.events[0]["value"])


def test_jsonl_lines_are_strict_json(tmp_path):
    path = tmp_path / "log.jsonl"
    sink = JSONLSink(path)
    sink.write(1, {"loss": float("-inf"), "skip": None}, [])
    sink.close()
    assert _strict(path.read_text()) == {"step": 1, "loss": "-Infinity", "events": []}
    assert read_log(path).columns["loss"].tolist() == [-math.inf]


def test_resume_appends_keeps_header_and_cuts_a_torn_line(tmp_path):
    path = tmp_path / "log.csv"
    first = TrainingMonitor(sinks=[path])
    for v in (3.0, 2.0, 1.0):
        first.step(loss=v)
    first.close()
    with open(path, "a") as fh:
        fh.write("4,0.9")  # a torn line, as after a power cut
    resumed = TrainingMonitor(sinks=[path])
    resumed.load_state_dict(first.state_dict())
    with pytest.warns(RuntimeWarning, match="incomplete last line"):
        resumed.step(loss=0.5, metrics={"tokens": 10.0})
    resumed.close()
    lines = path.read_text().splitlines()
    assert lines[0] == "step,loss,events,extra" and len(lines) == 5
    log = read_log(path)
    assert log.steps.tolist() == [1, 2, 3, 4] and log.columns["loss"].tolist() == [3.0, 2.0, 1.0, 0.5]
    assert log.columns["tokens"][-1] == 10.0


def test_failed_write_is_rolled_back_and_retried(tmp_path, monkeypatch):
    path = tmp_path / "log.jsonl"
    sink = JSONLSink(path)
    sink.write(1, {"loss": 1.0}, [])
    sink.flush()
    real_write = os.write

    def half_then_fail(fd, data):
        real_write(fd, data[: len(data) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", half_then_fail)
    sink.write(2, {"loss": 2.0}, [])
    with pytest.raises(OSError):
        sink.flush()
    assert path.read_text().count("\n") == 1 and path.read_text().endswith("\n")  # rolled back: whole lines only
    monkeypatch.setattr(os, "write", real_write)
    sink.write(3, {"loss": 3.0}, [])
    sink.close()
    assert read_log(path).steps.tolist() == [1, 2, 3]  # nothing lost once the disk recovers


def test_existing_foreign_csv_is_refused(tmp_path):
    path = tmp_path / "other.csv"
    path.write_text("a,b\n1,2\n")
    sink = CSVSink(path)
    with pytest.raises(Exception, match="not a losslab monitor CSV"):
        sink.write(1, {"loss": 1.0}, [])
    assert path.read_text() == "a,b\n1,2\n"


@pytest.mark.slow
def test_sinks_are_complete_after_sigkill(tmp_path):
    env = dict(os.environ, PYTHONPATH=f"{REPO / 'src'}{os.pathsep}{REPO}", OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "tests.monitor._writer_worker", str(tmp_path)], cwd=REPO,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "ready").exists():
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline, "the training child did not reach step 20"
            time.sleep(0.05)
        time.sleep(0.7)  # let it run on; the kill lands at an arbitrary point of a step
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    csv_text = (tmp_path / "log.csv").read_text()
    jsonl_text = (tmp_path / "log.jsonl").read_text()
    for text in (csv_text, jsonl_text):
        assert text.endswith("\n")  # no torn line
    rows = list(csv.reader(csv_text.splitlines()))
    header = rows[0]
    assert header[:3] == ["step", "loss", "grad_norm"] and header[-2:] == ["events", "extra"]
    assert all(len(r) == len(header) for r in rows[1:])
    assert [int(r[0]) for r in rows[1:]] == list(range(1, len(rows)))
    objs = [_strict(line) for line in jsonl_text.splitlines()]
    assert [o["step"] for o in objs] == list(range(1, len(objs) + 1))
    assert len(objs) >= 20 and abs(len(objs) - (len(rows) - 1)) <= 1
    log = read_log(tmp_path / "log.csv")
    assert len(log) == len(rows) - 1 and math.isfinite(log.columns["loss"][-1])
    if len(log) >= 50:
        assert log.columns["late_metric"][-1] == 1.0  # a column born after the header survives via 'extra'


def test_tensorboard_sink_writes_real_event_files(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monitor = TrainingMonitor(sinks=[TensorBoardSink(tmp_path / "tb")])
    for _step, v in enumerate([1.0, 0.5, 0.25, float("nan")], start=1):
        monitor.step(loss=v)
    monitor.close()
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    scalars = acc.Scalars("loss")
    assert [s.step for s in scalars] == [1, 2, 3, 4]
    assert [s.value for s in scalars][:3] == [1.0, 0.5, 0.25] and math.isnan(scalars[3].value)
    assert any("events/loss" in t for t in acc.Tags()["tensors"])


def test_tensorboard_sink_creates_nothing_until_written(tmp_path):
    pytest.importorskip("tensorboard")
    TensorBoardSink(tmp_path / "tb").close()
    assert not (tmp_path / "tb").exists()


@pytest.mark.parametrize(("name", "content", "match"), [
    ("a.txt", "x", "suffix"),
    ("a.csv", "", "is empty"),
    ("a.csv", "time,loss\n1,2\n", "not a losslab monitor header"),
    ("a.csv", "step,loss,events,extra\n1,2\n", ":2: 2 cells but the header has 4"),
    ("a.csv", "step,loss,events,extra\n1,abc,,\n", ":2: cannot parse"),
    ("a.jsonl", '{"step":1}\n{"loss":2}\n', ":2: cannot parse"),
    ("a.jsonl", "[1,2]\n", ":1: cannot parse"),
    ("a.jsonl", "\n", "holds no rows"),
])
def test_read_log_bad_files(tmp_path, name, content, match):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DataError, match=match):
        read_log(path)
    assert path.read_text() == content


def test_read_log_missing_file_and_dedupe(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_log(tmp_path / "nope.csv")
    path = tmp_path / "r.jsonl"
    path.write_text("".join(json.dumps({"step": s, "loss": v, "events": []}) + "\n"
                            for s, v in [(1, 3.0), (2, 2.0), (3, 1.0), (2, 2.5), (3, 1.5)]))
    assert read_log(path).columns["loss"].tolist() == [3.0, 2.5, 1.5]
    assert read_log(path, dedupe=False).columns["loss"].tolist() == [3.0, 2.0, 1.0, 2.5, 1.5]


def test_tensorboard_sink_without_tensorboard_names_the_extra(monkeypatch):
    from losslab import OptionalDependencyError

    monkeypatch.setitem(sys.modules, "tensorboard", None)  # makes `import tensorboard` fail
    with pytest.raises(OptionalDependencyError, match=r"pip install 'losslab\[tensorboard\]'"):
        TensorBoardSink("runs/never")


def test_adapters_without_their_framework_name_the_extra():
    code = ("import sys; sys.modules['lightning'] = None; sys.modules['lightning.pytorch'] = None; "
            "sys.modules['transformers'] = None\n"
            "import losslab.monitor as m\n"
            "for name in ('LightningMonitorCallback', 'HFMonitorCallback'):\n"
            "    try:\n"
            "        getattr(m, name)\n"
            "    except ImportError as exc:\n"
            "        print(type(exc).__name__, str(exc).split('install it with: ')[1])\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, PYTHONPATH=str(REPO / "src")))
    assert out.stdout.splitlines() == ["OptionalDependencyError pip install 'losslab[lightning]'",
                                       "OptionalDependencyError pip install 'losslab[transformers]'"], out.stderr


_values = st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True, width=64))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.fixed_dictionaries({"loss": _values, "grad_norm/a.b": _values, "x,y\"z": _values}),
                     min_size=1, max_size=6))
def test_csv_and_jsonl_round_trip_any_float(tmp_path_factory, rows):
    folder = tmp_path_factory.mktemp("rt")
    csv_sink, jsonl_sink = CSVSink(folder / "log.csv"), JSONLSink(folder / "log.jsonl")
    for step, row in enumerate(rows, start=1):
        for sink in (csv_sink, jsonl_sink):
            sink.write(step, row, [])
    csv_sink.close()
    jsonl_sink.close()
    for name in ("log.csv", "log.jsonl"):
        log = read_log(folder / name)
        assert log.steps.tolist() == list(range(1, len(rows) + 1))
        for key in rows[0]:
            got = log.columns[key].tolist() if key in log.columns else [math.nan] * len(rows)
            want = [math.nan if r[key] is None else r[key] for r in rows]
            assert [repr(g) for g in got] == [repr(float(w)) for w in want], (name, key)


def _disk_full(monkeypatch):
    """Make every append of a file sink fail like a full disk; returns the list of attempts."""
    from losslab.monitor import _sinks

    attempts: list[int] = []

    def full(self, text):
        attempts.append(len(text))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(_sinks._AppendFile, "append", full)
    return attempts


def test_a_failing_file_keeps_bounded_memory_and_backs_off(tmp_path, monkeypatch):
    from losslab.monitor import _sinks

    real_append = _sinks._AppendFile.append
    attempts = _disk_full(monkeypatch)
    sink = JSONLSink(tmp_path / "log.jsonl", max_pending=5)
    with pytest.warns(RuntimeWarning, match="newest 5 rows") as record:
        for step in range(1, 101):
            sink.write(step, {"loss": float(step)}, [])
            with contextlib.suppress(OSError):
                sink.flush()
    assert len(record) == 1  # one warning for the whole outage
    assert len(sink._pending) == 5 and sink.dropped == 95 and sink.failing
    assert len(attempts) <= 8  # 100 flushes, attempts after 1, 2, 4, 8, ... skipped flushes
    assert all(n <= 5 * len('{"step":100,"loss":100.0,"events":[]}\n') for n in attempts)  # never the whole history
    monkeypatch.setattr(_sinks._AppendFile, "append", real_append)  # the disk has room again
    sink.close()  # close always tries once more
    assert not sink.failing and sink.last_outage_dropped == 95
    assert read_log(tmp_path / "log.jsonl").steps.tolist() == [96, 97, 98, 99, 100]


def test_csv_header_survives_dropped_rows(tmp_path, monkeypatch):
    from losslab.monitor import _sinks

    real_append = _sinks._AppendFile.append
    _disk_full(monkeypatch)
    sink = CSVSink(tmp_path / "log.csv", max_pending=2)
    with pytest.warns(RuntimeWarning, match="newest 2 rows"):
        for step in range(1, 6):
            sink.write(step, {"loss": float(step)}, [])
            with contextlib.suppress(OSError):
                sink.flush()
    monkeypatch.setattr(_sinks._AppendFile, "append", real_append)
    sink.close()
    assert (tmp_path / "log.csv").read_text().splitlines() == ["step,loss,events,extra", "4,4.0,,", "5,5.0,,"]


def test_monitor_reports_a_sink_outage_once_and_its_recovery(tmp_path, monkeypatch):
    from losslab.monitor import _sinks

    real_append = _sinks._AppendFile.append
    _disk_full(monkeypatch)
    monitor = TrainingMonitor(sinks=[JSONLSink(tmp_path / "log.jsonl", max_pending=10)], detectors={})
    with pytest.warns(Warning):
        for v in range(50):
            monitor.step(loss=float(v))
    problems = [e for e in monitor.events if e.metric == "monitor"]
    assert len(problems) == 1 and "No space left" in problems[0].message
    monkeypatch.setattr(_sinks._AppendFile, "append", real_append)
    for v in range(50, 2000):
        monitor.step(loss=float(v))
        if not monitor.sinks[0].failing:
            break
    monitor.close()
    problems = [e for e in monitor.events if e.metric == "monitor"]
    assert len(problems) == 2 and "works again" in problems[1].message
    log = read_log(tmp_path / "log.jsonl")
    assert log.steps[-1] == monitor.step_count and len(log) >= 10
    assert f"{int(log.steps[0]) - 1} row(s) were dropped" in problems[1].message
