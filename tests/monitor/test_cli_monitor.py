"""``losslab monitor show``: text, JSON, plot, and one-line errors."""

from __future__ import annotations

import json

import pytest

from losslab import DataError
from losslab.monitor import TrainingMonitor
from tests.conftest import run_cli


@pytest.fixture
def spiky_log(tmp_path):
    path = tmp_path / "run.jsonl"
    with TrainingMonitor(sinks=[path, tmp_path / "run.csv"]) as monitor:
        for step in range(1, 101):
            loss = 3.0 / step ** 0.3 + 0.01 * ((step * 7) % 5)
            monitor.step(loss=float("nan") if step == 95 else loss * (5 if step == 80 else 1))
    return path


def test_show_text_json_and_plot(spiky_log, tmp_path):
    out = run_cli("monitor", "show", str(spiky_log))
    assert out.returncode == 0, out.stderr
    assert "steps 1..100 (100 rows)" in out.stdout and "loss x2 (steps 80, 95)" in out.stdout
    assert "step 80: loss" in out.stdout and "non-finite 1" in out.stdout
    png = tmp_path / "plots" / "run.png"
    out = run_cli("monitor", "show", str(spiky_log.with_suffix(".csv")), "--json", "--plot", str(png))
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["summary"]["events"]["by_metric"]["loss"]["steps"] == [80, 95]
    assert [e["detector"] for e in data["events"]] == ["zscore", "nonfinite"]
    assert data["events"][1]["value"] is None and data["summary"]["plot"] == str(png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


@pytest.mark.parametrize(("args", "match"), [
    (["monitor", "show", "missing.csv"], "does not exist"),
    (["monitor", "show", "{log}", "--max-events", "-1"], "--max-events must be >= 0"),
])
def test_show_errors_are_one_line(spiky_log, args, match):
    out = run_cli(*[a.replace("{log}", str(spiky_log)) for a in args])
    assert out.returncode == 2
    assert out.stderr.startswith("losslab: error: ") and match in out.stderr
    assert out.stderr.count("\n") == 1


def test_plot_monitor_returns_a_figure_with_panels():
    from losslab.report.monitor_plots import plot_monitor

    fig = plot_monitor({"step": [1, 2, 3], "loss": [2.0, 9.0, 1.0], "grad_norm": [1.0, None, 0.5],
                        "update_ratio": [None, None, None]},
                       [{"step": 2, "metric": "loss", "value": 9.0, "message": "spike"}])
    assert [ax.get_ylabel() for ax in fig.axes] == ["loss", "gradient norm"]
    assert any("loss event" in t.get_text() for t in fig.axes[0].get_legend().get_texts())
    with pytest.raises(DataError, match="needs a 'step' column"):
        plot_monitor({"loss": [1.0]})


@pytest.mark.parametrize(("name", "content", "match"), [
    ("junk.csv", b"\x03\x14\xa0\x06\\\tj\xec$\x1b\xcf3r", "line 1 is not UTF-8"),
    ("png.jsonl", b"\x89PNG\r\n\x1a\n\x00\x00", "line 1 is not UTF-8"),
    ("evnum.csv", b"step,loss,events,extra\n1,2.0,5,\n", ":2: cannot parse the row (events must be a list"),
    ("extrastr.csv", b'step,loss,events,extra\n1,2.0,,"{""x"":""abc""}"\n', "metric 'x' is 'abc', not a number"),
    ("strloss.jsonl", b'{"step":1,"loss":"abc","events":[]}\n', ":1: cannot parse the JSON line (metric 'loss'"),
    ("listloss.jsonl", b'{"step":1,"loss":[1,2],"events":[]}\n', "metric 'loss' is [1, 2], not a number"),
    ("evstep.jsonl", b'{"step":1,"loss":1,"events":[{"step":"x"}]}\n', "event step 'x' is not a whole number"),
    ("evdict.jsonl", b'{"step":1,"loss":1,"events":{"step":1}}\n', "events must be a list of objects"),
])
def test_show_malformed_files_are_one_line_data_errors(tmp_path, capsys, name, content, match):
    from losslab.cli import main

    path = tmp_path / name
    path.write_bytes(content)
    for extra in ([], ["--json"]):
        assert main(["monitor", "show", str(path), *extra]) == 2
        err = capsys.readouterr().err
        assert err.startswith("losslab: error: ") and match in err and err.count("\n") == 1
