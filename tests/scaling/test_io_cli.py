"""Data reading, bad input, save/load round trips, the CLI (subprocess and in-process), light imports."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from losslab._errors import ConfigError, DataError, UnknownNameError
from losslab.cli import main
from losslab.forecast.scaling import (
    ScalingData,
    ScalingFit,
    compare_fits,
    fit_scaling_law,
    get_law,
    hitchhiker_evaluate,
    optimal_model_size,
    read_runs,
    select_checkpoints,
)
from tests.conftest import REPO, run_cli
from tests.scaling._cases import synthetic


def _write_runs(path, cols):
    names = list(cols)
    lines = [",".join(names)] + [",".join(repr(float(cols[c][i])) for c in names) for i in range(len(cols[names[0]]))]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_import_does_not_import_torch():
    code = "import sys, losslab.forecast.scaling, losslab.cli._scaling; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={"PYTHONPATH": str(REPO / "src"), "PATH": ""}, check=True)
    assert out.stdout.strip() == "False"


def test_aliases_and_flops_column(tmp_path):
    d = synthetic("chinchilla")
    p = _write_runs(tmp_path / "r.csv", {"N": d["params"], "flops": 6 * d["params"] * d["tokens"], "L": d["loss"]})
    data = read_runs(p)
    np.testing.assert_allclose(data["tokens"], d["tokens"], rtol=1e-12)
    np.testing.assert_allclose(data["loss"], d["loss"])


@pytest.mark.parametrize("mutate, message", [
    (lambda c: c.pop("loss"), "missing column(s) loss"),
    (lambda c: c["params"].__setitem__(3, 0.0), "'params' must be > 0"),
    (lambda c: c["tokens"].__setitem__(2, -5.0), "'tokens' must be > 0"),
    (lambda c: c["loss"].__setitem__(1, np.nan), "non-finite value"),
    (lambda c: c["loss"].__setitem__(0, 0.0), "'loss' must be > 0"),
])
def test_bad_columns_raise_clear_errors_and_change_nothing(mutate, message):
    cols = {k: v.copy() for k, v in synthetic("chinchilla").items()}
    mutate(cols)
    before = {k: v.copy() for k, v in cols.items()}
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        fit_scaling_law(cols, starts="coarse", quiet=True)
    for k in cols:
        np.testing.assert_array_equal(cols[k], before[k])


def test_too_few_points_for_the_law():
    cols = {k: v[:5] for k, v in synthetic("chinchilla").items()}
    with pytest.raises(DataError, match="too few for law 'chinchilla' with 5 parameters; give at least 6"):
        fit_scaling_law(cols, quiet=True)


def test_unknown_law_suggests_the_closest_and_unknown_setting_lists_settings():
    with pytest.raises(UnknownNameError, match="did you mean 'chinchilla'"):
        get_law("chinchila")
    with pytest.raises(ConfigError, match="its settings: e_x, e_y"):
        get_law("loss_to_loss", e_x=1.0, ex=2)
    with pytest.raises(ConfigError, match="needs e_x"):
        get_law("loss_to_loss")


@pytest.mark.parametrize("kw, message", [({"bootstrap": -1}, "bootstrap=-1"), ({"starts": "grid"}, "starts='grid'"),
                                         ({"starts": np.ones((3, 4))}, r"\(K, 5\)"), ({"delta": 0.0}, "delta=0.0")])
def test_bad_options(kw, message):
    with pytest.raises(ConfigError, match=message):
        fit_scaling_law(synthetic("chinchilla"), quiet=True, **kw)


def test_file_errors(tmp_path):
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError, match="empty"):
        read_runs(tmp_path / "empty.csv")
    (tmp_path / "head.csv").write_text("params,tokens,loss\n")
    with pytest.raises(DataError, match="only a header"):
        read_runs(tmp_path / "head.csv")
    with pytest.raises(DataError, match="cannot drop 300 of"):
        ScalingData.from_columns(synthetic("chinchilla")).drop_highest(300)


def test_excel_bom_typos_and_non_utf8_files(tmp_path):
    (tmp_path / "bom.csv").write_bytes(b"\xef\xbb\xbfparams,tokens,loss,run\n1e6,1e9,3.1,a\n2e6,2e9,2.9,b\n")
    data = read_runs(tmp_path / "bom.csv")
    assert data.labels == {"run": ("a", "b")} and np.array_equal(data["params"], [1e6, 2e6])
    (tmp_path / "typo.csv").write_text("params,tokens,loss\n1e6,1e9,3.1\n2e6,2e9,2.9x\n4e6,4e9,2.7\n")
    with pytest.raises(DataError, match=r"typo.csv: line 3: column 'loss' holds '2.9x', which is not a number"):
        read_runs(tmp_path / "typo.csv")
    (tmp_path / "latin1.csv").write_bytes("params,tokens,loss,run\n1e6,1e9,3.1,é\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1\.csv: line 2 is not UTF-8"):
        read_runs(tmp_path / "latin1.csv")


def test_save_load_round_trip_keeps_predictions_and_errors(tmp_path):
    fit = fit_scaling_law(synthetic("chinchilla", noise=0.005), starts="coarse", bootstrap=20, quiet=True)
    fit.save(tmp_path / "fit.json")
    back = ScalingFit.load(tmp_path / "fit.json")
    X = {"params": np.array([1e9, 7e10]), "tokens": np.array([2e10, 1.4e12])}
    np.testing.assert_array_equal(back.predict(X), fit.predict(X))
    assert back.standard_errors() == fit.standard_errors()
    assert back.params == fit.params and back.n_starts == fit.n_starts
    assert back.provenance["settings"]["law"] == "chinchilla"


@pytest.mark.parametrize("name", ["nmt_bivariate", "loss_to_loss", "sigmoid_compute", "kaplan_ns"])
def test_round_trip_of_laws_with_settings(tmp_path, name):
    from tests.scaling._cases import CASES

    case = CASES[name]
    settings = {k: v for k, v in case["settings"].items() if name != "nmt_bivariate"}
    fit = fit_scaling_law(synthetic(name), name, starts="coarse", quiet=True, **settings)
    fit.save(tmp_path / "f.json")
    back = ScalingFit.load(tmp_path / "f.json")
    X = case["design"]()
    np.testing.assert_allclose(back.predict(X), fit.predict(X), rtol=1e-12)


def test_malformed_fit_files(tmp_path):
    (tmp_path / "a.json").write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        ScalingFit.load(tmp_path / "a.json")
    (tmp_path / "b.json").write_text(json.dumps({"law": "chinchilla"}))
    with pytest.raises(DataError, match="not a losslab scaling fit"):
        ScalingFit.load(tmp_path / "b.json")
    (tmp_path / "c.json").write_text(json.dumps({"format": "losslab.scaling_fit", "law": "chinchilla", "theta": [1, 2]}))
    with pytest.raises(DataError, match="malformed scaling fit"):
        ScalingFit.load(tmp_path / "c.json")
    good = fit_scaling_law(synthetic("chinchilla"), starts="coarse", quiet=True).to_dict()
    good["theta"] = [1.0, 2.0]
    (tmp_path / "d.json").write_text(json.dumps(good))
    with pytest.raises(DataError, match="must hold 5 finite numbers"):
        ScalingFit.load(tmp_path / "d.json")


def test_compare_fits_needs_bootstrap_and_orders_two_datasets():
    a = fit_scaling_law(synthetic("chinchilla", noise=0.003, seed=1), starts="coarse", bootstrap=30, quiet=True)
    with pytest.raises(ConfigError, match="no bootstrap"):
        compare_fits(a, fit_scaling_law(synthetic("chinchilla"), starts="coarse", quiet=True), {"params": 1e9,
                                                                                                 "tokens": 1e10})
    d = synthetic("chinchilla", noise=0.003, seed=2)
    b = fit_scaling_law({**d, "loss": d["loss"] + 0.1}, starts="coarse", bootstrap=30, quiet=True)
    out = compare_fits(a, b, {"params": 7e10, "tokens": 1.4e12})
    assert out["difference"][0] == pytest.approx(-0.1, abs=0.03)
    assert out["interval"][0][0] < out["difference"][0] < out["interval"][1][0] < 0
    assert out["prob_a_lower"][0] == 1.0


def test_hitchhiker_checkpoint_selection_and_protocol():
    N = np.repeat([1e8, 3e8, 1e9, 3e9], 10)
    D = np.tile(np.geomspace(5e9, 2e11, 10), 4)
    cols = {"params": N, "tokens": D, "loss": 1.8 + 480 / N**0.35 + 2100 / D**0.37}
    sel = select_checkpoints(cols)
    assert np.all(sel["tokens"] > 1e10) and sel.n == 4 * int(np.sum(np.geomspace(5e9, 2e11, 10) > 1e10))
    fin = select_checkpoints(cols, final_only=True)
    assert fin.n == 4 and np.all(fin["tokens"] == 2e11)
    out = hitchhiker_evaluate(cols, starts="coarse", quiet=True)
    assert out["target_params"] == 3e9
    assert out["n_test"] == int(np.sum(np.geomspace(5e9, 2e11, 10) >= 0.7 * 2e11))
    assert out["are"] < 1e-4


def test_optimal_model_size_recovers_the_chinchilla_exponent():
    N = np.repeat(np.geomspace(1e7, 1e10, 7), 60)
    C = np.tile(np.geomspace(1e16, 1e23, 60), 7)
    L = 1.7 + 400 / N**0.34 + 400 / (C / (6 * N)) ** 0.28
    out = optimal_model_size({"params": N, "flops": C, "loss": L})
    # the discrete sizes quantise N_opt; the exponent is near beta / (alpha + beta) = 0.45
    assert out["exponent"] == pytest.approx(0.28 / 0.62, abs=0.06)


# ------------------------------------------------------------------------------------------------- CLI
def test_cli_round_trip_in_a_subprocess(tmp_path):
    d = synthetic("chinchilla", noise=0.003)
    runs = _write_runs(tmp_path / "runs.csv", {"N": d["params"], "D": d["tokens"], "loss": d["loss"]})
    r = run_cli("scaling", "fit", str(runs), "--starts", "coarse", "--bootstrap", "20", "-o",
                str(tmp_path / "fit.json"), "--plot", str(tmp_path / "fit.png"))
    assert r.returncode == 0, r.stderr
    assert "alpha" in r.stdout and (tmp_path / "fit.png").stat().st_size > 10_000
    r = run_cli("scaling", "predict", str(tmp_path / "fit.json"), "--params", "1e9", "--tokens", "2e10", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    fit = ScalingFit.load(tmp_path / "fit.json")
    assert out["loss"] == pytest.approx(float(fit.predict(params=1e9, tokens=2e10)[0]), rel=1e-12)
    assert out["interval"][0] <= out["loss"] <= out["interval"][1]
    r = run_cli("scaling", "optimal", str(tmp_path / "fit.json"), "--compute", "1e21", "--json")
    assert r.returncode == 0, r.stderr
    opt = json.loads(r.stdout)
    assert opt["params"] * opt["tokens"] * 6 == pytest.approx(1e21)


def test_cli_in_process_and_errors(tmp_path, capsys):
    d = synthetic("chinchilla")
    runs = _write_runs(tmp_path / "runs.csv", {"params": d["params"], "tokens": d["tokens"], "loss": d["loss"]})
    assert main(["--quiet", "scaling", "fit", str(runs), "--starts", "coarse", "--drop-highest", "2", "-o",
                 str(tmp_path / "f.json")]) == 0
    assert json.loads((tmp_path / "f.json").read_text())["n_points"] == d["loss"].size - 2
    capsys.readouterr()
    assert main(["scaling", "predict", str(tmp_path / "f.json"), "--flops", "1e20", "--params", "1e9", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["inputs"]["tokens"] == pytest.approx(1e20 / 6e9)
    assert out["loss"] == pytest.approx(1.8 + 480 / 1e9**0.35 + 2100 / (1e20 / 6e9) ** 0.37, rel=1e-3)
    for argv, message in [
        (["scaling", "fit", str(runs), "--law", "chinchila", "-o", str(tmp_path / "x.json")], "did you mean"),
        (["scaling", "fit", str(tmp_path / "none.csv"), "-o", str(tmp_path / "x.json")], "cannot read or write"),
        (["scaling", "predict", str(tmp_path / "f.json"), "--params", "1e9"], "needs tokens"),
        (["scaling", "predict", str(tmp_path / "f.json"), "--params", "-1", "--tokens", "1e9"], "finite and > 0"),
        (["scaling", "optimal", str(runs), "--compute", "1e21"], "not valid JSON"),
    ]:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("losslab: error:") and message in err and err.count("\n") == 1, err


def test_list_scaling_laws_reads_the_registry():
    r = run_cli("list", "scaling-laws", "--json")
    assert r.returncode == 0, r.stderr
    names = [row["name"] for row in json.loads(r.stdout)]
    assert "chinchilla" in names and names == sorted(names) and len(names) == 9


def test_public_api_is_sorted_complete_and_documented():
    import inspect

    import losslab.forecast.scaling as pkg

    assert list(pkg.__all__) == sorted(pkg.__all__)
    for name in pkg.__all__:
        obj = getattr(pkg, name)
        if inspect.isfunction(obj) or inspect.isclass(obj):
            assert inspect.getdoc(obj), name
    defined = [n for n, o in vars(pkg).items() if not n.startswith("_") and (inspect.isfunction(o) or inspect.isclass(o))
               and getattr(o, "__module__", "").startswith("losslab.forecast.scaling")]
    assert not sorted(set(defined) - set(pkg.__all__))
    assert "registry" in pkg.__all__ and len(pkg.registry) == 9
    for info in pkg.registry:
        assert "arXiv:" in info.reference, info.name


def test_least_squares_fit_saves_and_loads(tmp_path):
    fit = fit_scaling_law(synthetic("downstream_error", noise=0.01), "downstream_error", delta=float("inf"),
                          starts="coarse", quiet=True)
    fit.save(tmp_path / "ls.json")
    back = ScalingFit.load(tmp_path / "ls.json")
    assert back.delta == float("inf") and back.params == fit.params
    with pytest.raises(ConfigError, match="delta='x'"):
        fit_scaling_law(synthetic("chinchilla"), delta="x", quiet=True)
    with pytest.raises(ConfigError, match="law instance"):
        fit_scaling_law(synthetic("chinchilla"), get_law("chinchilla"), e_x=1.0, quiet=True)
