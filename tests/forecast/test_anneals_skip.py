"""When a hold-out refit is skipped because its head cannot identify the annealing terms it is scored on."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from losslab.forecast import Curve, fit_curves
from losslab.forecast._points import curve_points, split_tail
from losslab.forecast.laws import registry
from losslab.forecast.uncertainty import _anneals
from tests.forecast._synth import PEAK, TRUE, WARMUP, curves


def test_anneals_sees_small_decays_and_the_peak_of_the_fitted_steps_only():
    lr = np.array([1.0, 1.0, 0.99, 0.99])
    assert _anneals(SimpleNamespace(lr=lr, steps=np.array([1, 3])))  # a 1 % decay is a decay
    assert not _anneals(SimpleNamespace(lr=np.array([1.0, 1.0, 1.0 - 1e-12]), steps=np.array([1, 3])))  # noise
    # the schedule rises to a higher peak later (a warm restart); up to step 2 it has already decayed
    restart = np.array([1.0, 0.5, 2.0, 2.0])
    assert _anneals(SimpleNamespace(lr=restart, steps=np.array([1, 2])))
    assert not _anneals(SimpleNamespace(lr=restart, steps=np.array([3, 4])))  # from the new peak: constant


def _tail_sizes(train, fraction):
    return sum(t.steps.size for t in split_tail([curve_points(c) for c in train], fraction)[1])


def _constant(law, steps=3000, every=10, noise=0.002):
    lr = np.full(steps, PEAK)
    lr[:WARMUP] = PEAK * np.arange(1, WARMUP + 1) / WARMUP
    y = registry.get(law)().predict(TRUE[law], lr) * np.exp(np.random.default_rng(0).normal(0.0, noise, steps))
    loss = np.full(steps, np.nan)
    loss[every - 1::every] = y[every - 1::every]
    return [Curve(lr, loss, "constant")]


def test_a_constant_run_is_calibrated_on_both_hold_outs():
    # nothing anneals, neither in the heads nor in the tails: both refits are scored, annealing law or not
    train = _constant("tissue")
    fit = fit_curves(train, "tissue", quiet=True)
    assert fit.uncertainty["n_calibration_points"] == _tail_sizes(train, 0.2) + _tail_sizes(train, 0.5)


def test_a_schedule_blind_law_is_never_skipped():
    # the power law has no annealing term: the constant head of a WSD run identifies it, both hold-outs count
    train = curves("power", noise=0.002, names=("wsd",), every=10)
    fit = fit_curves(train, "power", quiet=True)
    assert fit.uncertainty["n_calibration_points"] == _tail_sizes(train, 0.2) + _tail_sizes(train, 0.5)


def test_one_annealing_head_is_enough_to_refit():
    # long hold-out: the WSD head is constant but the cosine head anneals, so the refit is scored on both tails
    train = curves("tissue", noise=0.002, names=("wsd", "cosine"), every=10)
    fit = fit_curves(train, "tissue", quiet=True)
    assert fit.uncertainty["n_calibration_points"] == _tail_sizes(train, 0.2) + _tail_sizes(train, 0.5)
