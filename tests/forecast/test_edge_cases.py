"""Edge cases of schedules, readers, laws, intervals and plans that real logs and long runs produce."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from losslab import ConfigError, DataError
from losslab.forecast import Curve, fit_curves
from losslab.forecast.fit import CurveFit
from losslab.forecast.io import load_curve
from losslab.forecast.plan import plan_schedule
from losslab.forecast.uncertainty import excess
from losslab.schedules import Schedule, parse_schedule


def _cosine_curve(steps=3000, peak=1e-3, warmup=100, every=10):
    lr = parse_schedule(f"cosine:peak={peak},steps={steps},final=0.1,warmup={warmup}").lr()
    t = np.arange(1, steps + 1)
    loss = 2.5 + 0.8 * (np.cumsum(lr) / peak) ** -0.4
    return lr, Curve(lr, np.where(t % every == 0, loss, np.nan), "cosine")


# ---------------------------------------------------------------------------------------------------- schedules
def test_cyclic_restarts_at_full_rate_on_long_runs():
    # cycle boundaries at 100k and 200k: the step after each is the next cycle's first, at (almost) the peak
    s = parse_schedule("cyclic:peak=1e-3,steps=300000,cycles=3")
    at = np.array([99_999, 100_000, 100_001, 200_000, 200_001, 200_002])
    lr = s(at)
    assert lr[1] == 0.0 and lr[3] == 0.0  # a boundary ends its cycle fully annealed
    assert np.all(lr[[2, 4, 5]] > 0.999e-3) and 0 < lr[0] < 1e-9
    assert s.multiplier(100_000) == pytest.approx(1.0, abs=1e-9)  # LambdaLR index 100000 is step 100001


def test_spec_with_a_repeated_key_is_refused_and_numpy_peaks_are_numbers():
    with pytest.raises(ConfigError, match="'decay' is given twice"):
        parse_schedule("wsd:peak=1e-3,steps=100,decay=0.2,decay=0.5")
    lr = Schedule("cosine", {"peak": np.float32(1e-3), "steps": 10}).lr()
    assert np.allclose(lr, Schedule("cosine", {"peak": float(np.float32(1e-3)), "steps": 10}).lr())


# ------------------------------------------------------------------------------------------------------ readers
def test_jsonl_records_of_one_step_on_several_lines_are_merged(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text('{"step": 1, "lr": 0.001, "loss": 3.0}\n{"step": 1, "eval_loss": 3.1}\n'
                    '{"step": 2, "lr": 0.001}\n{"step": 2, "loss": 2.9}\n{"step": 3, "lr": 0.001, "loss": 2.8}\n')
    curve = load_curve(path)
    assert curve.lr.tolist() == [1e-3] * 3 and curve.loss.tolist() == [3.0, 2.9, 2.8]
    assert np.isnan(load_curve(path, loss_tag="eval_loss").loss[1:]).all()
    path.write_text('{"step": 1, "lr": 0.001, "loss": 3.0}\n{"step": 1, "loss": 3.1}\n')
    with pytest.raises(DataError, match=r"line 2: a second loss 3\.1 at step 1 \(line 1 has 3\.0\)"):
        load_curve(path)


def test_tensorboard_curves_are_named_after_their_run_folder(tmp_path):
    tb = pytest.importorskip("torch.utils.tensorboard")
    writer = tb.SummaryWriter(str(tmp_path / "run-a"))
    for k in range(1, 6):
        writer.add_scalar("lr", 1e-3, k)
        writer.add_scalar("loss", 3.0 - 0.1 * k, k)
    writer.close()
    event_file = next((tmp_path / "run-a").glob("events.out.tfevents*"))
    assert load_curve(tmp_path / "run-a").name == "run-a"
    assert load_curve(event_file).name == "run-a"


# ----------------------------------------------------------------------------------------------- laws, intervals
@pytest.mark.parametrize("law", ["tissue", "mpl"])
def test_a_schedule_logged_from_lr_zero_predicts_finite_losses(law):
    lr, curve = _cosine_curve()
    fit = fit_curves([curve], law, quiet=True)
    shifted = np.r_[0.0, lr[:-1]]  # PyTorch/HF warmup logs: lr 0 at the first step
    mid, lo, hi = fit.predict_interval(shifted)
    assert np.all(np.isfinite(mid) & np.isfinite(lo) & np.isfinite(hi)) and np.all((lo <= mid) & (mid <= hi))
    assert mid[0] == pytest.approx(fit.predict(shifted)[1], rel=0.2)  # before any learning: as the first step that has


def test_authors_procedure_stays_inside_the_bounds_on_a_clean_curve():
    lr, curve = _cosine_curve()
    fit = fit_curves([curve], "mpl", method="authors", quiet=True)
    lo, hi = fit.law_object().bounds()
    assert np.all(fit.theta >= lo) and np.all(fit.theta <= hi), fit.params
    pred = fit.predict(lr)
    assert np.all(np.isfinite(pred) & (pred > 0))
    assert fit.diagnostics["curves"][0]["mean_rel_err"] < 0.01


def test_a_peak_above_the_fitted_one_counts_as_extrapolation():
    ext = {"steps": 100.0, "s1": 0.1, "lr_min": 1e-4, "lr_max": 1e-3}
    lr = np.full(50, 1e-2)  # 10x the fitted peak, inside the fitted horizon
    _, x_lr = excess(lr, np.arange(1, 51), ext)
    assert np.allclose(x_lr, math.log(10.0))
    _, curve = _cosine_curve()
    fit = fit_curves([curve], "tissue", quiet=True)
    width = {}
    for peak in (1e-3, 1e-2):
        high = parse_schedule(f"cosine:peak={peak},steps=3000,final=0.1,warmup=100").lr()
        _, lo, hi = fit.predict_interval(high, steps=np.array([2000]))
        width[peak] = float(np.log(hi / lo)[0])
    assert width[1e-2] > 2 * width[1e-3]


def test_intervals_of_a_fit_down_to_lr_zero_raise_no_warning():
    lr = parse_schedule("cosine:peak=1e-3,steps=2000,warmup=100").lr()  # ends at lr 0
    t = np.arange(1, 2001)
    fit = fit_curves([Curve(lr, np.where(t % 10 == 0, 2 + np.cumsum(lr) ** -0.3, np.nan))], "tissue", quiet=True)
    with np.errstate(all="raise"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("error")
            fit.predict_interval(lr)


# ------------------------------------------------------------------------------------------------------- plans
def test_plans_respect_the_final_ratio_floor_after_rounding():
    _, curve = _cosine_curve(steps=4000, every=7)  # last measured step 3997: lr a little above the final one
    fit = fit_curves([curve], "tissue", quiet=True)
    floor = fit.uncertainty["extent"]["lr_min"] / 1e-3
    assert round(floor, 4) != floor  # the floor is not a 4-digit number: rounding could cross it
    for family in ("wsd", "cosine", "linear"):
        plan = plan_schedule(fit, 4000, family, warmup=100)
        assert plan.best.params["final_ratio"] >= floor - 1e-15


def test_plan_never_picks_a_schedule_whose_predicted_loss_is_not_positive():
    fit = CurveFit(law="tissue", params={"L0": 2.5, "A": 0.01, "alpha": 0.5, "C": 5.0},
                   options={"lam": 0.999, "warmup": "area", "fit_lambda": False})
    plan = plan_schedule(fit, 2003, "wsd", peak=1e-3, warmup=3, min_final_ratio=0.0)
    assert plan.best_loss > 0 and all(v > 0 for v in plan.baselines.values() if math.isfinite(v))
    assert json.dumps(plan.to_dict(), default=float)
    with pytest.raises(ConfigError, match="no positive, finite loss"):  # every candidate goes below 0
        plan_schedule(fit, 2003, "cosine", peak=1e-1, warmup=3, min_final_ratio=0.0)
