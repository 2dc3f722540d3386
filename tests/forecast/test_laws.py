"""Each law against an independent float64 reference written out here, and its Jacobian against finite differences."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from losslab._errors import ConfigError, UnknownNameError
from losslab.forecast.laws import MultiPowerLaw, PowerLaw, TissueLaw, registry
from losslab.forecast.laws._base import detect_warmup, effective_lr
from losslab.forecast.laws.mpl import mpl_pairs
from losslab.forecast.laws.tissue import annealing_areas
from tests.forecast._synth import TRUE, schedules


def tissue_reference(lr, lam, eta0):
    """The paper's recursion, one step at a time."""
    s1 = s2 = m = 0.0
    prev = eta0
    out1, out2 = [], []
    for eta in lr:
        s1 += eta
        m = lam * m + (prev - eta)
        s2 += m
        prev = eta
        out1.append(s1)
        out2.append(s2)
    return np.array(out1), np.array(out2)


def mpl_reference(theta, lr, steps, eta0=0.0):
    """The Multi-Power Law written as its double sum (O(n^2)), as in the authors' evaluation loop."""
    l0, a, alpha, b, c, beta, gamma = theta
    eta = np.concatenate([[eta0], lr])
    out = []
    for t in steps:
        ld = 0.0
        for k in range(1, t + 1):
            d = eta[k - 1] - eta[k]
            if d != 0.0:
                s = eta[k:t + 1].sum()
                ld += d * (1.0 - (c * eta[k] ** (-gamma) * s + 1.0) ** (-beta))
        out.append(l0 + a * eta[1:t + 1].sum() ** (-alpha) - b * ld)
    return np.array(out)


def test_hand_computed_tiny_cases():
    s1, s2 = annealing_areas(np.array([1.0, 1.0, 0.5, 0.5]), lam=0.5, warmup="raw")
    # raw: eta_0 = 0, so step 1 is a rise of 1: m = -1, -0.5, 0.25, 0.125
    assert s1.tolist() == [1.0, 2.0, 2.5, 3.0]
    assert s2.tolist() == [-1.0, -1.5, -1.25, -1.125]
    np.testing.assert_allclose(PowerLaw().predict(np.array([1.0, 8.0, 1.0 / 3.0]), np.ones(8), np.array([1, 8])),
                               [9.0, 5.0], rtol=1e-15)
    # one drop of 0.5 at step 3, C=1, beta=1, gamma=0: G(x) = x / (1 + x), x = S_3(t)
    theta = np.array([1.0, 0.0, 1.0, 2.0, 1.0, 1.0, 0.0])
    pred = MultiPowerLaw(warmup="area").predict(theta, np.array([1.0, 1.0, 0.5, 0.5]), np.array([2, 3, 4]))
    np.testing.assert_allclose(pred, [1.0, 1.0 - 2 * 0.5 * (0.5 / 1.5), 1.0 - 2 * 0.5 * (1.0 / 2.0)], rtol=1e-15)


@pytest.mark.parametrize("warmup", ["raw", "area", "peak"])
@pytest.mark.parametrize("lam", [0.9, 0.999])
def test_tissue_areas_match_loop(warmup, lam):
    for lr in schedules(600).values():
        s1, s2 = annealing_areas(lr, lam, warmup)
        lr_area, lr_ann, eta0, _ = effective_lr(lr, warmup)
        ref1, _ = tissue_reference(lr_area, lam, eta0)
        _, ref2 = tissue_reference(lr_ann, lam, eta0)
        np.testing.assert_allclose(s1, ref1, rtol=1e-13)
        np.testing.assert_allclose(s2, ref2, rtol=1e-10, atol=1e-14)


def test_tissue_dlambda_matches_finite_difference():
    lr = schedules(800)["wsd"]
    _, _, d = annealing_areas(lr, 0.99, dlam=True)
    h = 1e-6
    fd = (annealing_areas(lr, 0.99 + h)[1] - annealing_areas(lr, 0.99 - h)[1]) / (2 * h)
    np.testing.assert_allclose(d, fd, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("warmup", ["raw", "area", "peak"])
@pytest.mark.parametrize("name", ["cosine", "wsd", "step"])
def test_mpl_exact_matches_double_sum(name, warmup):
    lr = schedules(400)[name]
    steps = np.array([1, 37, 101, 250, 399, 400])
    theta = TRUE["mpl"]
    _, lr_ann, eta0, _ = effective_lr(lr, warmup)
    lr_area = effective_lr(lr, warmup)[0]
    ref = mpl_reference(theta, lr_ann, steps, eta0)
    # S1 uses the area rates: correct the reference's power term when they differ
    ref += theta[1] * (np.cumsum(lr_area)[steps - 1] ** -theta[2] - np.cumsum(lr_ann)[steps - 1] ** -theta[2])
    got = MultiPowerLaw(warmup=warmup, exact=True).predict(theta, lr, steps)
    np.testing.assert_allclose(got, ref, rtol=1e-12)


def test_mpl_block_merge_is_close_to_exact_on_long_schedules():
    lr = schedules(30000)["cosine"]
    steps = np.arange(500, 30001, 997)
    theta = TRUE["mpl"]
    exact = MultiPowerLaw(exact=True).predict(theta, lr, steps)
    fast = MultiPowerLaw().predict(theta, lr, steps)
    assert np.max(np.abs(fast - exact) / exact) < 1e-5
    assert mpl_pairs(lr, steps).delta.size < mpl_pairs(lr, steps, exact=True).delta.size / 10
    # and the dense prediction (knots + interpolation of LD) agrees with the pointwise one
    dense = MultiPowerLaw().predict(theta, lr)
    np.testing.assert_allclose(dense[steps - 1], fast, rtol=1e-5)


def test_mpl_dense_prediction_after_a_sharp_drop():
    t = np.arange(1, 40001)
    lr = np.where(t < 20000, 1e-3, 1e-4)
    theta = TRUE["mpl"]
    law = MultiPowerLaw()
    dense = law.predict(theta, lr)
    check = np.r_[np.arange(19990, 20100), np.arange(20100, 40001, 173)]
    np.testing.assert_allclose(dense[check - 1], law.predict(theta, lr, check), rtol=1e-5)


@pytest.mark.parametrize("law_name", ["power", "tissue", "mpl"])
def test_analytic_jacobian_matches_finite_differences(law_name):
    opts = {"fit_lambda": True} if law_name == "tissue" else {}
    law = registry.get(law_name)(**opts)
    lr = schedules(1500)["wsd"]
    steps = np.arange(150, 1501, 50)
    theta = np.r_[TRUE[law_name], [0.995]] if law_name == "tissue" else TRUE[law_name].copy()
    feats = law.features(lr, steps)
    _, jac = law.evaluate(theta, feats, jac=True)
    for i in range(theta.size):
        h = 1e-6 * max(abs(theta[i]), 1e-3)
        up, down = theta.copy(), theta.copy()
        up[i] += h
        down[i] -= h
        fd = (law.evaluate(up, law.features(lr, steps)) - law.evaluate(down, law.features(lr, steps))) / (2 * h)
        np.testing.assert_allclose(jac[:, i], fd, rtol=2e-5, atol=1e-9, err_msg=f"{law_name} d/d{law.active_params[i]}")


def test_registry_lists_laws_with_references_and_suggests_names():
    assert registry.names() == ["mpl", "power", "tissue"]
    for info in registry:
        assert info.summary and info.params == info.obj.param_names
    assert "arXiv:2408.11029" in registry.info("tissue").reference
    assert "arXiv:2503.12811" in registry.info("multi-power").reference
    with pytest.raises(UnknownNameError, match="did you mean 'tissue'"):
        registry.get("tisue")


def test_bad_options():
    with pytest.raises(ConfigError, match="no option 'lamda'"):
        TissueLaw(lamda=0.9)
    with pytest.raises(ConfigError, match="lam must be"):
        TissueLaw(lam=1.5)
    with pytest.raises(ConfigError, match="warmup must be one of"):
        MultiPowerLaw(warmup="linear")
    with pytest.raises(ConfigError, match="prior must be"):
        MultiPowerLaw(prior=-1)


def test_detect_warmup():
    assert detect_warmup(np.array([0.1, 0.5, 1.0, 1.0, 0.2])) == 2
    assert detect_warmup(np.array([1.0, 0.5])) == 0


@pytest.mark.parametrize("warmup", ["raw", "area"])
def test_mpl_constant_schedule_without_drops(warmup):
    # "area" mode on a constant schedule has no LR change at all: LD = 0 and MPL is a power law in S1
    lr = np.full(500, 1e-3)
    theta = TRUE["mpl"]
    got = MultiPowerLaw(warmup=warmup).predict(theta, lr, np.array([10, 500]))
    ref = mpl_reference(theta, lr, [10, 500], eta0=0.0 if warmup == "raw" else 1e-3)
    np.testing.assert_allclose(got, ref, rtol=1e-12)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 400), st.floats(1e-5, 1e-3)), min_size=1, max_size=6),
       st.sampled_from(["raw", "area"]))
def test_piecewise_constant_schedules_block_merge_equals_double_sum(pieces, warmup):
    # step schedules (any number of drops and rises): the merged evaluation must equal the O(n^2) double sum
    lr = np.concatenate([np.full(n, v) for n, v in pieces])
    steps = np.unique(np.linspace(1, lr.size, 7).round().astype(np.int64))
    theta = TRUE["mpl"]
    got = MultiPowerLaw(warmup=warmup).predict(theta, lr, steps)
    _, lr_ann, eta0, _ = effective_lr(lr, warmup)
    ref = mpl_reference(theta, lr_ann, steps, eta0)
    ref += theta[1] * (np.cumsum(lr)[steps - 1] ** -theta[2] - np.cumsum(lr_ann)[steps - 1] ** -theta[2])
    np.testing.assert_allclose(got, ref, rtol=1e-6)
    _, s2 = annealing_areas(lr, 0.99, "raw")
    np.testing.assert_allclose(s2, tissue_reference(lr, 0.99, 0.0)[1], rtol=1e-9, atol=1e-15)
