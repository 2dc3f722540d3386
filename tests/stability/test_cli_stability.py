"""``losslab stability sensitivity`` and ``losslab stability spikes`` end to end."""

from __future__ import annotations

import json

import pytest

from losslab.cli import main
from tests.conftest import run_cli


def _write(path, text):
    path.write_text(text)
    return str(path)


def test_sensitivity_cli_json_and_plot(tmp_path):
    csv = _write(tmp_path / "runs.csv", "lr,final_loss,setting\n0.001,3.0,baseline\n0.01,2.0,baseline\n"
                                        "0.1,nan,baseline\n0.001,2.8,qk-norm\n0.01,2.0,qk-norm\n0.1,,qk-norm\n")
    png = tmp_path / "out" / "sweep.png"
    out = run_cli("stability", "sensitivity", csv, "--init-loss", "5", "--json", "--plot", str(png))
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    assert res["baseline"]["lr_sensitivity"] == pytest.approx((3 + 2 + 5) / 3 - 2)
    assert res["qk-norm"]["lr_sensitivity"] == pytest.approx((2.8 + 2 + 5) / 3 - 2)  # empty cell = diverged
    assert res["baseline"]["n_diverged"] == 1 and png.stat().st_size > 1000


@pytest.mark.parametrize(("text", "extra", "message"), [
    ("lr,final_loss\n0.01,2.0\n", [], "--init-loss"),
    ("eta,final_loss\n0.01,2.0\n", ["--init-loss", "3"], "no column 'lr'"),
    ("lr,final_loss\n0.01,abc\n", ["--init-loss", "3"], "line 2: final_loss 'abc' is not a number"),
    ("lr,final_loss\n", ["--init-loss", "3"], "no data rows"),
    ("lr,final_loss\n0.01,2.0\n0.01,2.5\n", ["--init-loss", "3"], "appears twice"),
    ("lr,final_loss\n0.01,2.0\n", ["--init-loss", "nan"], "init_loss"),
])
def test_sensitivity_cli_bad_input_one_line_exit_2(tmp_path, capsys, text, extra, message):
    code = main(["stability", "sensitivity", _write(tmp_path / "r.csv", text), *extra])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("losslab: error:") and message in err
    assert len(err.strip().splitlines()) == 1


def test_spikes_cli(tmp_path, capsys):
    rows = "\n".join(f"{10 * i},{1.0 + 0.01 * (i % 3) if i != 50 else 40.0}" for i in range(100))
    csv = _write(tmp_path / "log.csv", "step,loss\n" + rows + "\n")
    assert main(["stability", "spikes", csv, "--window", "32", "--json"]) == 0
    events = json.loads(capsys.readouterr().out)
    assert [e["step"] for e in events] == [500] and events[0]["detector"] == "zscore"
    assert main(["stability", "spikes", csv, "--detector", "zscor"]) == 2
    assert "did you mean 'zscore'" in capsys.readouterr().err
    assert main(["stability", "spikes", csv, "--detector", "nonfinite", "--window", "3"]) == 2
    assert "takes no option --window" in capsys.readouterr().err


def test_stability_without_subcommand_prints_help(capsys):
    assert main(["stability"]) == 2
    assert "sensitivity" in capsys.readouterr().out


@pytest.mark.parametrize("command", [["spikes"], ["sensitivity", "--init-loss", "3"]])
@pytest.mark.parametrize(("content", "match"), [
    (b"\x89PNG\r\n\x1a\n\x00\x00", "line 1 is not UTF-8 text (byte 0x89)"),
    (b"lr,final_loss,loss\n0.1,2.0,1.0\n\xa0\xa1,3\n", "line 3 is not UTF-8"),
])
def test_cli_binary_or_broken_csv_is_a_one_line_error(tmp_path, capsys, command, content, match):
    path = tmp_path / "bad.csv"
    path.write_bytes(content)
    code = main(["stability", command[0], str(path), *command[1:]])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("losslab: error:") and match in err
    assert len(err.strip().splitlines()) == 1


def test_spikes_cli_empty_step_cell_is_a_one_line_error(tmp_path, capsys):
    csv = _write(tmp_path / "log.csv", "step,loss\n1,2.0\n,3.0\n")
    assert main(["stability", "spikes", csv]) == 2
    err = capsys.readouterr().err
    assert "line 3: step '' is not a whole number" in err and len(err.strip().splitlines()) == 1


def test_spikes_cli_json_is_strict_with_non_finite_values(tmp_path, capsys):
    csv = _write(tmp_path / "log.csv", "step,loss\n1,1\n2,inf\n3,nan\n")
    assert main(["stability", "spikes", csv, "--detector", "nonfinite", "--json"]) == 0

    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")

    events = json.loads(capsys.readouterr().out, parse_constant=refuse)
    assert [(e["step"], e["value"], e["score"]) for e in events] == [(2, "Infinity", "Infinity"),
                                                                     (3, None, "Infinity")]


@pytest.mark.parametrize(("text", "message"), [
    ("lr,final_loss\n0.001,3.0\n0.01\n", "r.csv: line 3: expected 2 fields (lr, final_loss), got 1"),
    ("lr,final_loss\n0.001,3.0,7\n0.01,2.0\n", "r.csv: line 2: expected 2 fields (lr, final_loss), got 3"),
    ("lr,final_loss\n\n0.001,3.0\n\n0.01\n", "r.csv: line 5: expected 2 fields"),  # blank lines still counted
    ("lr,final_loss\n0.001,3.0\n,2.0\n", "r.csv line 3: lr '' is not a finite learning rate > 0"),
    ("lr,final_loss\nnan,3.0\n", "r.csv line 2: lr 'nan' is not a finite learning rate > 0"),
    ("lr,final_loss\n-0.1,3.0\n", "r.csv line 2: lr '-0.1' is not a finite learning rate > 0"),
])
def test_sensitivity_cli_short_long_rows_and_bad_lr_name_file_and_line(tmp_path, capsys, text, message):
    code = main(["stability", "sensitivity", _write(tmp_path / "r.csv", text), "--init-loss", "5"])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == "" and message in captured.err
    assert len(captured.err.strip().splitlines()) == 1


def test_spikes_cli_short_row_is_an_error_not_a_missing_value(tmp_path, capsys):
    csv = _write(tmp_path / "log.csv", "step,loss\n1,2.0\n2\n")
    assert main(["stability", "spikes", csv]) == 2
    assert "log.csv: line 3: expected 2 fields (step, loss), got 1" in capsys.readouterr().err


@pytest.mark.parametrize(("plot", "message"), [("sweep.foo", "'foo' is not an image format"),
                                               ("", "it is a folder")])
def test_sensitivity_cli_bad_plot_path_fails_before_the_work(tmp_path, capsys, plot, message):
    csv = _write(tmp_path / "r.csv", "lr,final_loss\n0.001,3.0\n0.01,2.0\n")
    target = tmp_path / "out" / plot if plot else tmp_path
    code = main(["stability", "sensitivity", csv, "--init-loss", "5", "--plot", str(target)])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == "" and message in captured.err
    assert len(captured.err.strip().splitlines()) == 1
    assert not target.with_name(target.name + ".png").exists()  # matplotlib's default suffix was not added
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == ["r.csv"]  # nothing written


def test_sensitivity_cli_reports_the_file_it_wrote(tmp_path, capsys):
    csv = _write(tmp_path / "r.csv", "lr,final_loss\n0.001,3.0\n0.01,2.0\n")
    png = tmp_path / "sweep.svg"
    assert main(["stability", "sensitivity", csv, "--init-loss", "5", "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert out.strip().splitlines()[-1] == f"wrote {png}" and png.read_text().lstrip().startswith("<")


def test_cli_warnings_are_one_line_and_debug_keeps_the_source(tmp_path):
    csv = _write(tmp_path / "runs.csv", "lr,final_loss\n0.01,6.0\n0.1,nan\n")  # nothing beat the initial loss
    out = run_cli("stability", "sensitivity", csv, "--init-loss", "5")
    assert out.returncode == 0
    assert out.stderr.strip().splitlines() == [
        "losslab: warning: no run in the LR grid improved on the initial loss; LR sensitivity is 0 but meaningless "
        "(train longer or widen the LR grid)"]
    debug = run_cli("--debug", "stability", "sensitivity", csv, "--init-loss", "5")
    assert debug.returncode == 0 and "RuntimeWarning" in debug.stderr and ".py:" in debug.stderr
