"""fit_curves / CurveFit: parameter recovery, joint fits, dense logs, save/load, bad inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from losslab._errors import ConfigError, DataError, UnknownNameError
from losslab.forecast import Curve, CurveFit, fit_curves
from tests.forecast._synth import TRUE, curves, schedules


@pytest.mark.parametrize("law", ["power", "tissue"])
def test_recovers_known_parameters_from_noisy_curves(law):
    names = ("cosine",) if law == "power" else ("cosine", "wsd", "step")
    data = curves(law, noise=0.002, names=names)
    fit = fit_curves(data, law, quiet=True, calibrate=False)
    got = np.array(list(fit.params.values()))
    np.testing.assert_allclose(got, TRUE[law], rtol=0.08)
    assert fit.diagnostics["failed_starts"] == 0
    assert fit.diagnostics["at_bounds"] == []


def test_recovers_mpl_curve_and_main_parameters():
    data = curves("mpl", noise=0.001, every=20)
    fit = fit_curves(data, "mpl", quiet=True, calibrate=False)
    p = fit.params
    np.testing.assert_allclose([p["L0"], p["A"], p["alpha"]], TRUE["mpl"][:3], rtol=0.1)
    # the drop parameters trade off; the loss drop they imply must match
    for c in data:
        truth = fit.law_object().predict(TRUE["mpl"], c.lr)
        np.testing.assert_allclose(fit.predict(c.lr)[200:], truth[200:], rtol=2e-3)


def test_noise_free_tissue_is_exact_and_lambda_can_be_fitted():
    data = curves("tissue", lam=0.995)
    fit = fit_curves(data, "tissue", quiet=True, calibrate=False, lam=0.99, fit_lambda=True)
    np.testing.assert_allclose(fit.params["lam"], 0.995, rtol=1e-5)
    np.testing.assert_allclose(list(fit.params.values())[:4], TRUE["tissue"], rtol=1e-4)


def test_dense_per_step_log_is_binned_and_fitted():
    c = curves("tissue", noise=0.01, every=1, names=("wsd",))[0]
    fit = fit_curves([c], "tissue", quiet=True, calibrate=False, max_points=300)
    assert 200 <= fit.diagnostics["curves"][0]["n_points"] <= 300
    truth = fit.law_object().predict(TRUE["tissue"], c.lr)
    np.testing.assert_allclose(fit.predict(c.lr)[200:], truth[200:], rtol=3e-3)


def test_warmup_losses_are_skipped():
    c = curves("power", every=1, names=("cosine",))[0]
    fit = fit_curves([c], "power", quiet=True, calibrate=False, max_points=5000)
    assert fit.diagnostics["curves"][0]["first_step"] == int(np.argmax(c.lr)) + 1


def test_save_load_round_trip(tmp_path):
    fit = fit_curves(curves("tissue", noise=0.001), "tissue", quiet=True)
    path = fit.save(tmp_path / "fit.json")
    back = CurveFit.load(path)
    assert back.params == fit.params and back.options == fit.options and back.law == "tissue"
    lr = schedules(5000)["wsd"]
    np.testing.assert_array_equal(back.predict(lr), fit.predict(lr))
    for a, b in zip(back.predict_interval(lr), fit.predict_interval(lr)):
        np.testing.assert_array_equal(a, b)
    d = json.loads(path.read_text())
    assert d["provenance"]["losslab"] and d["provenance"]["settings"]["law"] == "tissue"
    assert "tissue" in fit.summary() and "params at bounds" in fit.summary()


def test_load_rejects_malformed_or_foreign_files(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        CurveFit.load(bad)
    bad.write_text(json.dumps({"format": "something else"}))
    with pytest.raises(DataError, match="not a losslab curve fit"):
        CurveFit.load(bad)
    fit = fit_curves(curves("power", names=("cosine",)), "power", quiet=True, calibrate=False).to_dict()
    del fit["params"]["alpha"]
    bad.write_text(json.dumps(fit))
    with pytest.raises(DataError, match="'alpha'"):
        CurveFit.load(bad)
    with pytest.raises(DataError, match="does not exist"):
        CurveFit.load(tmp_path / "missing.json")


def test_bad_inputs_raise_clear_errors_and_change_nothing():
    data = curves("power", names=("cosine",))
    before = data[0].loss.copy()
    with pytest.raises(DataError, match="no curves"):
        fit_curves([], "power")
    with pytest.raises(UnknownNameError, match="did you mean 'tissue'"):
        fit_curves(data, "tisue")
    with pytest.raises(ConfigError, match="huber_delta"):
        fit_curves(data, "power", huber_delta=0)
    with pytest.raises(ConfigError, match="no option"):
        fit_curves(data, "power", lam=0.9)
    with pytest.raises(ConfigError, match="no law has an option"):
        fit_curves(data, "auto", lamda=0.9)
    with pytest.raises(DataError, match="Curve"):
        fit_curves([np.ones(3)], "power")
    lr = np.full(50, 1e-3)
    with pytest.raises(DataError, match="no measured loss"):
        Curve(lr, np.full(50, np.nan))
    warm = np.linspace(1e-5, 1e-3, 50)
    loss = np.full(50, np.nan)
    loss[:10] = 3.0
    with pytest.raises(DataError, match="no measured loss after the warmup"):
        fit_curves([Curve(warm, loss)], "power")
    with pytest.raises(DataError, match="must be finite"):
        Curve(np.r_[lr[:-1], np.nan], np.ones(50))
    fit = fit_curves(data, "power", quiet=True, calibrate=False)
    with pytest.raises(DataError, match="finite and >= 0"):
        fit.predict(np.r_[lr, np.nan])
    with pytest.raises(DataError, match="non-empty 1-D"):
        fit.predict(np.array([]))
    with pytest.raises(DataError, match="steps must be integers"):
        fit.predict(lr, steps=[0, 3])
    with pytest.raises(ConfigError, match="level"):
        fit.predict_interval(lr, level=1.5)
    np.testing.assert_array_equal(data[0].loss, before)


def test_more_parameters_than_points_is_rejected():
    lr = np.full(100, 1e-3)
    loss = np.full(100, np.nan)
    loss[[49, 99]] = [3.0, 2.9]
    with pytest.raises(DataError, match="4 parameters but the curves give only 2"):
        fit_curves([Curve(lr, loss)], "tissue")


def test_nonpositive_loss_is_rejected():
    lr = np.full(20, 1e-3)
    with pytest.raises(DataError, match="must be positive"):
        fit_curves([Curve(lr, np.r_[np.ones(19), 0.0])], "power")
