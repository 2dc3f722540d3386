"""Intervals that widen with extrapolation: the excess features, the growth fit and the interval widths."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from losslab.forecast import fit_curves
from losslab.forecast.uncertainty import _growth, excess, extent
from tests.forecast._synth import curves, schedules


def test_extent_by_hand():
    # warmup of 2 steps (peak at index 2); the fitted points end at step 5
    lr = np.array([0.1, 0.2, 1.0, 0.8, 0.5, 0.1])
    p = SimpleNamespace(lr=lr, steps=np.array([3, 4, 5]))
    ext = extent([p])
    assert ext == {"steps": 5.0, "s1": pytest.approx(0.1 + 0.2 + 1.0 + 0.8 + 0.5), "lr_min": 0.5, "lr_max": 1.0}


def test_excess_by_hand():
    ext = {"steps": 100.0, "s1": 50.0, "lr_min": 0.1}
    lr = np.concatenate([np.full(200, 1.0), np.full(100, 0.01), np.zeros(100)])
    steps = np.array([10, 100, 200, 250, 400])
    x_h, x_lr = excess(lr, steps, ext)
    s1 = np.cumsum(lr)[steps - 1]
    want_h = np.maximum(0.0, np.maximum(np.log(steps / 100.0), np.log(s1 / 50.0)))
    np.testing.assert_allclose(x_h, want_h)
    # lr 1.0 is inside; 0.01 is 10x below the fitted minimum; 0 is floored at 1 % of it
    np.testing.assert_allclose(x_lr, [0.0, 0.0, 0.0, np.log(10.0), np.log(100.0)])


def test_excess_is_zero_inside_the_fitted_range():
    ext = {"steps": 1000.0, "s1": 1.0, "lr_min": 1e-4}
    lr = np.full(1000, 1e-3)
    x_h, x_lr = excess(lr, np.arange(1, 1001), ext)
    assert np.all(x_h == 0) and np.all(x_lr == 0)


def test_growth_recovers_a_linear_slope():
    # |e| sqrt(pi/2) = m0 + 0.01 x_h exactly on the extrapolated points: the slope comes back, x_lr gets 0
    x_h = np.linspace(0.0, 1.0, 11)
    e = (0.002 + 0.01 * x_h) / np.sqrt(np.pi / 2)
    k = _growth([(e, x_h, np.zeros(11))], 0.002)
    assert k == pytest.approx([0.01, 0.0], abs=1e-12)
    assert _growth([(e, np.zeros(11), np.zeros(11))], 0.002) == [0.0, 0.0]  # nothing extrapolates


def test_intervals_widen_beyond_the_fitted_horizon():
    train = curves("tissue", noise=0.002, names=("cosine", "step"), every=10)
    fit = fit_curves(train, "tissue", quiet=True)
    u = fit.uncertainty
    assert u["growth"][0] >= u["model_error"] and u["growth"][1] >= u["model_error"]
    t_fit = int(u["extent"]["steps"])
    lr = np.full(4 * t_fit, float(train[0].lr.max()))
    at = np.array([t_fit // 2, t_fit, 2 * t_fit, 4 * t_fit])
    mid, _lo, hi = fit.predict_interval(lr, 0.9, steps=at)
    rel = np.log(hi / mid)
    assert rel[2] > rel[1] and rel[3] > rel[2]
    # inside the range the width is the in-range one: model error plus parameter term, no growth
    z = 1.6448536269514722
    assert rel[0] >= z * u["model_error"] and rel[0] < z * (u["model_error"] + u["growth"][0] * 0.1)


def test_old_fit_without_growth_still_predicts():
    fit = fit_curves(curves("tissue", noise=0.002), "tissue", quiet=True)
    lr = schedules(3000)["wsd"]
    new = fit.predict_interval(lr)
    fit.uncertainty = {k: v for k, v in fit.uncertainty.items() if k not in ("growth", "extent")}
    old = fit.predict_interval(lr)
    assert np.all(old[2] <= new[2] + 1e-15) and np.all(old[1] >= new[1] - 1e-15)


def test_anneals_by_hand():
    from losslab.forecast.uncertainty import _anneals

    flat = SimpleNamespace(lr=np.array([0.5, 1.0, 1.0, 1.0, 0.5]), steps=np.array([2, 4]))
    assert not _anneals(flat)  # warmup, then constant up to the last scored step 4
    assert _anneals(SimpleNamespace(lr=flat.lr, steps=np.array([2, 5])))  # step 5 is after the decay


@pytest.mark.parametrize("law", ["tissue", "mpl"])
def test_calibration_skips_a_head_that_never_anneals(law):
    # one WSD run, constant for its first 75 %: the long hold-out's head (the first half) cannot identify the
    # annealing terms its tail is scored on, so only the 20 % hold-out calibrates (its head reaches the decay)
    from losslab.forecast._points import curve_points, split_tail

    train = curves(law, noise=0.002, names=("wsd",), every=10)
    fit = fit_curves(train, law, quiet=True)
    _heads, tails = split_tail([curve_points(train[0])], 0.2)
    assert fit.uncertainty["n_calibration_points"] == tails[0].steps.size
    with_cosine = fit_curves(curves(law, noise=0.002, names=("cosine",), every=10), law, quiet=True)
    _heads, long_tails = split_tail([curve_points(curves(law, names=("cosine",), every=10)[0])], 0.5)
    assert with_cosine.uncertainty["n_calibration_points"] > long_tails[0].steps.size  # a cosine head anneals


def test_extent_of_points_that_end_inside_the_warmup():
    # measured steps 2 and 3 of a warmup that peaks at step 5: the fitted range is what those steps saw
    p = SimpleNamespace(lr=np.array([0.25, 0.5, 0.75, 1.0, 2.0, 2.0]), steps=np.array([2, 3]))
    assert extent([p]) == {"steps": 3.0, "s1": 1.5, "lr_min": 0.75, "lr_max": 0.75}
