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
