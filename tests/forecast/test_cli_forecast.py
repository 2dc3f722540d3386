"""``losslab forecast fit | predict | plan``: round trips, output formats, and one-line errors with exit code 2."""

from __future__ import annotations

import json
from importlib.resources import files
from pathlib import Path

import numpy as np
import pytest

from losslab.cli import main
from losslab.forecast.fit import CurveFit
from losslab.forecast.io import load_curve
from losslab.schedules import parse_schedule
from tests.conftest import run_cli

DEMO = Path(str(files("losslab") / "data" / "demo"))
WSD = "wsd:peak=1e-3,steps=4000,warmup=100,decay=0.2,cooldown=sqrt,final=0.1"


@pytest.fixture(autouse=True)
def _chatty(monkeypatch):
    """Not quiet by default; ``--quiet`` inside a test sets LOSSLAB_QUIET, which is restored afterwards."""
    monkeypatch.setenv("LOSSLAB_QUIET", "")


@pytest.fixture(scope="module")
def fit_json(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fit") / "fit.json"
    assert main(["--quiet", "forecast", "fit", str(DEMO / "constant.csv"), str(DEMO / "cosine.csv"),
                 "--law", "tissue", "-o", str(out)]) == 0
    return out


def _one_line_error(capsys, argv: list[str], *needles: str) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.count("\n") == 0 and err.startswith("losslab: error: "), err
    for needle in needles:
        assert needle in err, err
    return err


# ------------------------------------------------------------------------------------------------------ round trips
def test_fit_writes_a_loadable_fit_and_a_summary(tmp_path, capsys):
    out, png = tmp_path / "fit.json", tmp_path / "fit.png"
    code = main(["forecast", "fit", str(DEMO / "constant.csv"), "--law", "power", "-o", str(out), "--plot", str(png)])
    stdout = capsys.readouterr().out
    assert code == 0
    fit = CurveFit.load(out)
    assert fit.law == "power" and set(fit.params) == {"E", "A", "alpha"}
    assert "law: power" in stdout and f"wrote {out}" in stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_fit_quiet_prints_nothing_and_json_prints_the_fit(tmp_path, capsys):
    out = tmp_path / "fit.json"
    assert main(["--quiet", "forecast", "fit", str(DEMO / "constant.csv"), "--law", "power", "-o", str(out)]) == 0
    assert capsys.readouterr().out == ""
    assert main(["forecast", "fit", str(DEMO / "constant.csv"), "--law", "power", "-o", str(out), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["law"] == "power" and printed == json.loads(out.read_text())


def test_predict_csv_matches_the_library(fit_json, tmp_path, capsys):
    pred = tmp_path / "pred.csv"
    assert main(["forecast", "predict", str(fit_json), "--schedule", WSD, "-o", str(pred)]) == 0
    lines = pred.read_text().splitlines()
    assert lines[0] == "step,loss,lower,upper" and len(lines) == 4001
    data = np.loadtxt(pred, delimiter=",", skiprows=1)
    np.testing.assert_array_equal(data[:, 0], np.arange(1, 4001))
    loss, lower, upper = CurveFit.load(fit_json).predict_interval(parse_schedule(WSD).lr(), level=0.9)
    np.testing.assert_allclose(data[:, 1], loss, rtol=1e-9)
    np.testing.assert_allclose(data[:, 2], lower, rtol=1e-9)
    np.testing.assert_allclose(data[:, 3], upper, rtol=1e-9)
    assert np.all(data[:, 2] <= data[:, 1]) and np.all(data[:, 1] <= data[:, 3])
    assert f"wrote {pred} (4000 rows)" in capsys.readouterr().out


def test_predict_json_keys_and_lengths(fit_json, capsys):
    assert main(["forecast", "predict", str(fit_json), "--schedule", "cosine:peak=1e-3,steps=300", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert list(out) == ["step", "loss", "lower", "upper"]
    assert out["step"] == list(range(1, 301)) and all(len(v) == 300 for v in out.values())


def test_predict_from_a_schedule_file_equals_the_spec(fit_json, tmp_path, capsys):
    lr = parse_schedule(WSD).lr()
    sched = tmp_path / "schedule.csv"
    sched.write_text("step,lr\n" + "".join(f"{i},{float(v)!r}\n" for i, v in enumerate(lr, start=1)))
    assert main(["forecast", "predict", str(fit_json), "--schedule", str(sched), "--json"]) == 0
    from_file = json.loads(capsys.readouterr().out)
    assert main(["forecast", "predict", str(fit_json), "--schedule", WSD, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == from_file


def test_predict_summary_without_output_and_measured_scoring(fit_json, tmp_path, capsys):
    png = tmp_path / "pred.png"
    assert main(["--quiet", "forecast", "predict", str(fit_json), "--schedule", WSD,
                 "--measured", str(DEMO / "wsd_sqrt.csv"), "--plot", str(png)]) == 0
    out = capsys.readouterr().out  # the summary is the output, so --quiet keeps it
    assert "tissue law, 4000 steps" in out and "final loss (step 4000)" in out
    assert "against wsd_sqrt (after warmup): mean rel. error" in out
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_fit_with_warmup_rebuild_and_sparse_rows(tmp_path, capsys):
    # keep only the measured rows (every 20 steps) after the 100-step warmup: rebuild the warmup and interpolate the (smooth) cosine lr
    full = load_curve(DEMO / "cosine.csv")
    rows = [s for s in full.measured if s >= 100]
    sparse = tmp_path / "sparse.csv"
    sparse.write_text("step,lr,loss\n" + "".join(f"{s},{float(full.lr[s - 1])!r},{float(full.loss[s - 1])!r}\n" for s in rows))
    out = tmp_path / "fit.json"
    assert main(["forecast", "fit", str(sparse), "--law", "power", "--warmup-steps", "100", "--lr-fill", "linear",
                 "-o", str(out)]) == 0
    meta = json.loads(out.read_text())["provenance"]["settings"]["inputs"][0]["meta"]
    assert meta["warmup_rebuilt"]["steps"] == 100 and meta["lr_fill"]["method"] == "linear"
    _one_line_error(capsys, ["forecast", "fit", str(sparse), "--law", "power", "-o", str(out)],
                    "starts at step 100", "--warmup-steps N")


def test_subprocess_round_trip_fit_predict_plan(tmp_path):
    fit, pred = tmp_path / "fit.json", tmp_path / "pred.csv"
    r = run_cli("forecast", "fit", str(DEMO / "constant.csv"), str(DEMO / "cosine.csv"), "--law", "tissue",
                "-o", str(fit))
    assert r.returncode == 0, r.stderr
    r = run_cli("forecast", "predict", str(fit), "--schedule", WSD, "-o", str(pred), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["loss"] == pytest.approx(np.loadtxt(pred, delimiter=",", skiprows=1)[:, 1])
    pytest.importorskip("losslab.forecast.plan")
    r = run_cli("forecast", "plan", str(fit), "--steps", "4000", "--family", "wsd", "--json")
    assert r.returncode == 0, r.stderr
    assert isinstance(json.loads(r.stdout), dict)


def test_plan_summary_output_and_plot(fit_json, tmp_path, capsys):
    pytest.importorskip("losslab.forecast.plan")
    sched, png = tmp_path / "best.csv", tmp_path / "plan.png"
    assert main(["forecast", "plan", str(fit_json), "--steps", "4000", "--family", "cosine", "-o", str(sched),
                 "--plot", str(png)]) == 0
    assert capsys.readouterr().out.strip()
    lr = np.loadtxt(sched, delimiter=",", skiprows=1)
    assert lr.shape == (4000, 2) and np.all(lr[:, 1] >= 0)
    assert main(["forecast", "predict", str(fit_json), "--schedule", str(sched), "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["loss"]) == 4000
    assert png.read_bytes()[:4] == b"\x89PNG"


# ------------------------------------------------------------------------------------------------------- bad input
def test_missing_run_file(tmp_path, capsys):
    _one_line_error(capsys, ["forecast", "fit", str(tmp_path / "nope.csv"), "-o", str(tmp_path / "f.json")],
                    "nope.csv: no such file")
    assert not (tmp_path / "f.json").exists()


def test_malformed_csv_row_is_reported_with_its_line(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("step,lr,loss\n1,0.1,3.0\n2,0.1,oops\n")
    _one_line_error(capsys, ["forecast", "fit", str(bad), "-o", str(tmp_path / "f.json")],
                    "bad.csv: line 3: the loss 'oops' is not a number")


def test_unknown_law_suggests_the_closest(capsys, tmp_path):
    _one_line_error(capsys, ["forecast", "fit", str(DEMO / "constant.csv"), "--law", "tisue",
                             "-o", str(tmp_path / "f.json")], "unknown", "'tissue'")


def test_bad_spec(fit_json, capsys):
    _one_line_error(capsys, ["forecast", "predict", str(fit_json), "--schedule", "cosin:peak=1e-3,steps=10"],
                    "unknown schedule kind 'cosin'")
    _one_line_error(capsys, ["forecast", "predict", str(fit_json), "--schedule", "cosine:peak=1e-3"],
                    "needs steps=")


def test_fit_json_that_is_not_a_fit(tmp_path, capsys):
    for text in ["[1, 2, 3]", '{"hello": "world"}', "step,lr,loss\n1,0.1,2\n"]:
        p = tmp_path / "notfit.json"
        p.write_text(text)
        _one_line_error(capsys, ["forecast", "predict", str(p), "--schedule", "cosine:peak=1e-3,steps=10"],
                        "notfit.json")
    _one_line_error(capsys, ["forecast", "plan", str(tmp_path / "absent.json"), "--steps", "100"], "absent.json")


@pytest.mark.parametrize(("argv", "needle"), [
    (["forecast", "fit", "run.csv"], "required: -o/--output"),
    (["forecast", "fit", "run.csv", "-o", "f.json", "--lr-fill", "cubic"], "invalid choice: 'cubic'"),
    (["forecast", "predict", "fit.json"], "required: --schedule"),
    (["forecast", "plan", "fit.json"], "required: --steps"),
    (["forecast", "plan", "fit.json", "--steps", "many"], "invalid int value: 'many'"),
    (["forecast", "frobnicate"], "invalid choice: 'frobnicate'"),
])
def test_usage_errors_are_one_line(capsys, argv, needle):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("losslab: error: ") and needle in err, err


def test_option_errors(fit_json, tmp_path, capsys):
    run = str(DEMO / "constant.csv")
    _one_line_error(capsys, ["forecast", "fit", run, run, run, "--schedule", WSD, "--schedule", WSD, "-o", "f.json"],
                    "2 --schedule specs for 3 runs")
    _one_line_error(capsys, ["forecast", "fit", run, "--law", "tissue", "--law-option", "lam", "-o", "f.json"],
                    "--law-option expects KEY=VALUE")
    _one_line_error(capsys, ["forecast", "predict", str(fit_json), "--schedule", WSD, "--level", "1.5"],
                    "--level must be in (0, 1)")
    _one_line_error(capsys, ["forecast", "fit", run, "--schedule", "constant:peak=1e-3", "--warmup-steps", "5",
                             "-o", str(tmp_path / "f.json")], "put the warmup inside the spec")


def test_subprocess_errors_are_one_line_on_stderr(tmp_path):
    r = run_cli("forecast", "predict", str(tmp_path / "missing.json"), "--schedule", WSD)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip().count("\n") == 0 and "missing.json" in r.stderr
    r = run_cli("forecast", "fit", str(DEMO / "constant.csv"), "--law", "mpll", "-o", str(tmp_path / "f.json"))
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "'mpl'" in r.stderr, r.stderr


def test_real_multipowerlaw_split_through_the_cli(shared_data, tmp_path, capsys):
    """The authors' split (fit cosine/constant/wsdcon_9 of the 25M runs), predict the exponential-cooldown WSD run."""
    d = shared_data / "multipowerlaw" / "csv_25"
    fit = tmp_path / "fit.json"
    assert main(["--quiet", "forecast", "fit", str(d / "cosine_24000.csv"), str(d / "constant_24000.csv"),
                 str(d / "wsdcon_9.csv"), "--law", "tissue", "--warmup-steps", "2160", "--lr-fill", "linear",
                 "-o", str(fit)]) == 0
    assert main(["forecast", "predict", str(fit), "--measured", str(d / "wsd_20000_24000.csv"),
                 "--warmup-steps", "2160", "--lr-fill", "linear",
                 "--schedule", "wsd:peak=3e-4,steps=24000,decay_start=20000,cooldown=exp,final=0.1,warmup=2160"]) == 0
    line = next(s for s in capsys.readouterr().out.splitlines() if s.startswith("against wsd_20000_24000"))
    mean_err = float(line.split("mean rel. error ")[1].split(" %")[0])
    assert mean_err < 0.25, line  # published Tissue-law errors on these runs are about 0.1-0.15 %


def test_fit_from_tensorboard_and_jsonl_recovers_a_known_power_law(tmp_path, capsys):
    """Loss 2 + 3 t^-0.5 logged by torch's SummaryWriter (0-based steps) and as JSONL: the power law comes back."""
    torch_tb = pytest.importorskip("torch.utils.tensorboard")
    t = np.arange(1, 401)
    loss = 2.0 + 3.0 * t**-0.5
    writer = torch_tb.SummaryWriter(str(tmp_path / "tb"))
    for k in range(400):
        writer.add_scalar("opt/lr", 1e-3, k)
        writer.add_scalar("train/loss", loss[k], k)
    writer.close()
    jsonl = tmp_path / "run.jsonl"
    jsonl.write_text("".join(json.dumps({"step": int(s), "lr": 1e-3, "val": float(v)}) + "\n" for s, v in zip(t, loss)))
    for source, tags in [(tmp_path / "tb", ["--loss-tag", "train/loss", "--lr-tag", "opt/lr"]),
                         (jsonl, ["--loss-tag", "val"])]:
        out = tmp_path / "fit.json"
        assert main(["--quiet", "forecast", "fit", str(source), *tags, "--law", "power", "-o", str(out)]) == 0
        params = CurveFit.load(out).params
        assert params["E"] == pytest.approx(2.0, rel=2e-3)
        assert params["A"] == pytest.approx(3.0, rel=2e-2)
        assert params["alpha"] == pytest.approx(0.5, rel=2e-2)


def test_run_and_loss_from_options(tmp_path, capsys):
    full = load_curve(DEMO / "constant.csv")
    cells = ["" if np.isnan(v) else repr(float(v)) for v in full.loss]
    rows = "".join(f"{r},{s},{float(full.lr[s - 1])!r},{cells[s - 1]}\n" for r in ("seed0", "seed1") for s in full.steps)
    multi = tmp_path / "seeds.csv"
    multi.write_text("run,step,lr,loss\n" + rows)
    out = tmp_path / "fit.json"
    _one_line_error(capsys, ["forecast", "fit", str(multi), "--law", "power", "-o", str(out)],
                    "holds 2 runs (column 'run': seed0, seed1)", "--run ID")
    assert main(["--quiet", "forecast", "fit", str(multi), "--run", "seed1", "--loss-from", "1000", "--law", "power",
                 "-o", str(out)]) == 0
    curve = json.loads(out.read_text())["diagnostics"]["curves"][0]
    assert curve["name"] == "seeds:seed1" and curve["first_step"] >= 1000


def test_fit_mpl_with_the_authors_procedure_and_predict(tmp_path):
    out = tmp_path / "fit.json"
    assert main(["--quiet", "forecast", "fit", str(DEMO / "constant.csv"), str(DEMO / "cosine.csv"), "--law", "mpl",
                 "--law-option", "method=authors", "-o", str(out)]) == 0
    fit = CurveFit.load(out)
    assert fit.law == "mpl" and fit.options["method"] == "authors"
    assert "AdamW" in fit.diagnostics["starts"][0]["message"]
    pred = tmp_path / "pred.csv"
    assert main(["--quiet", "forecast", "predict", str(out), "--schedule", WSD, "-o", str(pred)]) == 0
    rows = np.genfromtxt(pred, delimiter=",", names=True)
    assert rows.size == 4000 and np.all(rows["lower"] < rows["loss"]) and np.all(rows["loss"] < rows["upper"])


def test_unknown_mpl_method_is_one_line(capsys):
    _one_line_error(capsys, ["forecast", "fit", str(DEMO / "constant.csv"), "--law", "mpl", "--law-option",
                             "method=adam", "-o", "f.json"], "method must be one of gauss-newton, authors")


# ------------------------------------------------------------------------------------ outputs: all or nothing
def test_a_bad_plot_name_fails_before_any_output_is_written(fit_json, tmp_path, capsys):
    out = tmp_path / "pred.csv"
    _one_line_error(capsys, ["forecast", "predict", str(fit_json), "--schedule", "cosine:peak=1e-3,steps=50",
                             "-o", str(out), "--plot", str(tmp_path / "pred.xyz")], "not an image format")
    assert not out.exists()
    _one_line_error(capsys, ["forecast", "fit", str(DEMO / "constant.csv"), "--law", "power", "-o",
                             str(tmp_path / "f.json"), "--plot", str(tmp_path)], "it is a folder")
    assert not (tmp_path / "f.json").exists()


def test_outputs_go_to_new_folders_and_leave_no_temporary_files(fit_json, tmp_path, capsys):
    out, png = tmp_path / "a" / "pred.csv", tmp_path / "b" / "c" / "pred.png"
    assert main(["--quiet", "forecast", "predict", str(fit_json), "--schedule", "cosine:peak=1e-3,steps=50",
                 "-o", str(out), "--plot", str(png)]) == 0
    assert out.read_text().startswith("step,loss,lower,upper\n1,") and png.read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["pred.csv", "pred.png"]


def test_non_utf8_run_file_is_one_line_naming_the_line(tmp_path, capsys):
    bad = tmp_path / "latin1.csv"
    bad.write_bytes("step,lr,loss\n1,0.1,3.0\n2,0.1,2.9 é\n".encode("latin-1"))
    _one_line_error(capsys, ["forecast", "fit", str(bad), "-o", str(tmp_path / "f.json")],
                    "latin1.csv: line 3 is not UTF-8")


def test_step_counts_beyond_the_limit_are_refused_before_allocating(fit_json, tmp_path, capsys):
    huge = tmp_path / "huge.csv"
    huge.write_text("step,lr,loss\n1,0.1,3.0\n2,0.1,2.9\n10000000000,0.01,2.0\n")
    _one_line_error(capsys, ["forecast", "fit", str(huge), "-o", str(tmp_path / "f.json")],
                    "huge.csv: line 4: step 10,000,000,000 is above")
    _one_line_error(capsys, ["forecast", "predict", str(fit_json), "--schedule", "cosine:peak=1e-3,steps=10000000000"],
                    "more than losslab's limit")
    _one_line_error(capsys, ["forecast", "plan", str(fit_json), "--steps", "10000000000"], "more than losslab's limit")


def test_plan_with_no_room_for_a_decay(fit_json, capsys):
    _one_line_error(capsys, ["forecast", "plan", str(fit_json), "--steps", "1"], "steps=1 leaves no room")


def test_a_fit_file_with_a_non_finite_parameter_is_refused(fit_json, tmp_path, capsys):
    d = json.loads(fit_json.read_text())
    d["params"]["L0"] = float("nan")
    bad = tmp_path / "nan.json"
    bad.write_text(json.dumps(d))
    _one_line_error(capsys, ["forecast", "predict", str(bad), "--schedule", "cosine:peak=1e-3,steps=10", "--json"],
                    "nan.json", "'L0' is nan")
