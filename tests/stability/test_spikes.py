"""Spike detectors: known series, the authors' rules written out in float64, state round trips, bad input."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from losslab import ConfigError, DataError
from losslab.stability import (
    NonFiniteDetector,
    RatioDetector,
    SpikeDetector,
    SpikeEvent,
    ThresholdDetector,
    ZScoreDetector,
    detect_spikes,
    registry,
)

ALL = [lambda: ZScoreDetector(window=8, threshold=3.0, min_history=4), lambda: RatioDetector(ratio=3.0, window=4),
       lambda: ThresholdDetector(max_value=5.0, min_value=-1.0), NonFiniteDetector]


def olmo_zscore_reference(series, window, threshold, min_history):
    """OLMo-core StabilityMonitor rule in float64 numpy: spike iff x > mean + k*std over the previous window
    of accepted values (population std, std <= 1e-10 -> no spike); spikes and non-finite are not accepted."""
    hist: list[float] = []
    spikes = []
    for i, x in enumerate(series, start=1):
        if not np.isfinite(x):
            continue
        h = np.array(hist[-window:], dtype=np.float64)
        if len(h) >= min_history and h.std() > 1e-10 and x > h.mean() + threshold * h.std():
            spikes.append((i, (x - h.mean()) / h.std()))
            continue
        hist.append(x)
    return spikes


def test_constant_series_no_spike_no_division_by_zero():
    for det in (ZScoreDetector(window=4, min_history=2), RatioDetector(), ThresholdDetector(max_value=2.0)):
        with np.errstate(all="raise"):
            assert detect_spikes(np.full(300, 1.0), det) == []
    assert detect_spikes(np.zeros(50), RatioDetector()) == []


def test_ramp_then_x100_jump_exactly_one_spike():
    # OLMo-core's anchor case: window 5, 2 sigma, ramp 1.0..1.4 then 100.
    series = [1.0, 1.1, 1.2, 1.3, 1.4, 140.0, 1.3]
    det = ZScoreDetector(window=5, threshold=2.0, min_history=5)
    events = detect_spikes(series, det)
    assert [e.step for e in events] == [6]
    h = np.array(series[:5])
    assert events[0].score == pytest.approx((140.0 - h.mean()) / h.std(), rel=1e-12)
    assert events[0].metric == "loss" and events[0].detector == "zscore" and "140" in events[0].message
    # the same ramp at the default window (128/6 sigma/64): a long ramp then a x100 jump
    ramp = np.linspace(2.0, 3.0, 200)
    events = detect_spikes(np.r_[ramp, 100 * ramp[-1], ramp[-1]], ZScoreDetector())
    assert [e.step for e in events] == [201]


def test_spike_not_added_to_history_so_two_spikes_both_found():
    rng = np.random.default_rng(0)
    series = 1 + 0.01 * rng.standard_normal(100)
    series[70] = series[71] = 50.0
    events = detect_spikes(series, ZScoreDetector(window=32, threshold=6, min_history=16))
    assert [e.step for e in events] == [71, 72]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.one_of(st.floats(-5, 5), st.sampled_from([50.0, 1e6, math.nan, math.inf])), min_size=1,
                max_size=80))
def test_zscore_matches_written_out_rule(values):
    got = [(e.step, e.score) for e in detect_spikes(values, ZScoreDetector(window=10, threshold=2.5, min_history=5))]
    want = olmo_zscore_reference(values, 10, 2.5, 5)
    assert [s for s, _ in got] == [s for s, _ in want]
    np.testing.assert_allclose([z for _, z in got], [z for _, z in want], rtol=1e-9)


def test_grad_norm_spikes_counted():
    rng = np.random.default_rng(1)
    gnorm = 0.5 + 0.02 * rng.standard_normal(300)
    gnorm[[120, 200, 250]] = [5.0, 8.0, 3.0]
    det = ZScoreDetector()
    events = [e for i, g in enumerate(gnorm, 1) if (e := det.update(g, step=i, metric="grad_norm"))]
    assert [e.step for e in events] == [121, 201, 251]
    assert det.n_events == 3 and all(e.metric == "grad_norm" for e in events)


def test_ratio_detector_lightning_rule():
    # Lightning rtol=2 -> spike iff x not better than the last value and |x-m| >= 2|m|  (i.e. x >= 3m)
    det = RatioDetector(ratio=3.0, window=3)
    assert [det.update(x, s) for s, x in enumerate([1.0, 2.0, 3.0], 1)] == [None] * 3
    assert det.update(5.9, 4) is None  # mean 2 -> needs >= 6
    ev = det.update(7.0, 5)  # history (2, 3, 5.9): mean 3.6333 -> 10.9 needed
    assert ev is None
    ev = det.update(30.0, 6)  # history (3, 5.9, 7), mean 5.3
    assert ev is not None and ev.score == pytest.approx(30.0 / (15.9 / 3))
    # not a spike when it is below the last accepted value, even if far above the mean
    det = RatioDetector(ratio=1.5, window=3, warmup=3)
    for s, x in enumerate([1.0, 1.0, 10.0], 1):  # accepted unchecked during warmup
        assert det.update(x, s) is None
    assert det.update(9.0, 4) is None  # 9 >= 1.5 * 4 but below the last value 10
    assert det.update(11.0, 5) is not None  # history (1, 10, 9): 11 >= 1.5 * 6.67 and above 9
    # atol also has to be reached
    det = RatioDetector(ratio=3.0, window=2, atol=10.0)
    det.update(1.0, 1)
    assert det.update(5.0, 2) is None and det.update(20.0, 3) is not None
    # warmup: no event before `warmup` accepted values
    det = RatioDetector(warmup=3)
    assert [det.update(x, s) for s, x in enumerate([1.0, 100.0, 1000.0], 1)] == [None] * 3


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(1, 40).map(lambda k: k / 4), min_size=2, max_size=40), st.integers(1, 6),
       st.sampled_from([1.0, 2.0, 3.0]))
def test_ratio_matches_lightning_spike_detection(values, window, rtol):
    """Lightning Fabric's SpikeDetection (mode min, finite values) as a test-only oracle: same spikes."""
    torch = pytest.importorskip("torch")
    spike_mod = pytest.importorskip("lightning.fabric.utilities.spike")
    ref = spike_mod.SpikeDetection(window=window, warmup=1, rtol=rtol)
    want = []
    for i, x in enumerate(values):  # the body of on_train_batch_end without the Fabric plumbing
        t = torch.tensor(x)
        if i >= ref.warmup and ref._is_spike(t):
            want.append(i + 1)
        else:
            ref._update_stats(t)
    got = [e.step for e in detect_spikes(values, RatioDetector(ratio=1 + rtol, window=window, warmup=1))]
    assert got == want


def test_threshold_and_nonfinite():
    det = ThresholdDetector(max_value=5.0, min_value=-1.0)
    events = detect_spikes([0.0, 6.0, -3.0, math.nan, math.inf, 5.0], det)
    assert [(e.step, e.score) for e in events] == [(2, 1.0), (3, 2.0)]
    events = detect_spikes([0.0, math.nan, -math.inf, 1.0, math.inf], NonFiniteDetector(), metric="grad_norm")
    assert [e.step for e in events] == [2, 3, 5] and all(e.score == math.inf for e in events)


@pytest.mark.parametrize("make", ALL)
def test_non_finite_never_raises_and_other_detectors_ignore_it(make):
    det = make()
    for s, x in enumerate([1.0, 1.1, 0.9, 1.0, 1.05, 1.0], 1):
        det.update(x, s)
    before = json.dumps(det.state_dict())
    ev = det.update(math.nan, 7)
    det.update(math.inf, 8)
    if isinstance(det, NonFiniteDetector):
        assert ev is not None and det.n_events == 2
    else:
        assert ev is None and json.dumps(det.state_dict()) == before


@pytest.mark.parametrize("make", ALL)
def test_state_dict_round_trip_continues_identically(make):
    rng = np.random.default_rng(3)
    series = np.abs(1 + 0.1 * rng.standard_normal(120))
    series[[30, 60, 90]] = [40.0, math.nan, 80.0]
    a = make()
    for s, x in enumerate(series[:70], 1):
        a.update(x, s)
    state = json.loads(json.dumps(a.state_dict()))  # survives JSON (checkpoint files)
    b = make()
    b.load_state_dict(state)
    ev_a = [a.update(x, s) for s, x in enumerate(series[70:], 71)]
    ev_b = [b.update(x, s) for s, x in enumerate(series[70:], 71)]
    assert ev_a == ev_b and a.state_dict() == b.state_dict()
    assert isinstance(b, SpikeDetector)


def test_load_state_dict_of_other_kind_raises_and_changes_nothing():
    det = ZScoreDetector()
    det.update(1.0, 1)
    before = det.state_dict()
    with pytest.raises(ConfigError, match="ratio"):
        det.load_state_dict(RatioDetector().state_dict())
    assert det.state_dict() == before


def test_min_history_defaults_to_half_the_window():
    assert ZScoreDetector().min_history == 64 and ZScoreDetector(window=32).min_history == 16
    assert ZScoreDetector(window=3).min_history == 2


def test_reset_forgets():
    det = ZScoreDetector(window=4, threshold=1.0, min_history=2)
    for s, x in enumerate([1.0, 2.0, 100.0], 1):
        det.update(x, s)
    assert det.n_events == 1
    det.reset()
    assert det.n_events == 0 and det.state_dict()["history"] == []


def test_detect_spikes_does_not_modify_detector_and_event_dict():
    det = ZScoreDetector(window=5, threshold=2.0, min_history=5)
    events = detect_spikes([1.0, 1.1, 1.2, 1.3, 1.4, 140.0], det, start_step=10, metric="val_loss")
    assert det.state_dict()["history"] == [] and det.n_events == 0
    d = events[0].to_dict()
    assert d["step"] == 15 and d["metric"] == "val_loss" and set(d) == {
        "step", "metric", "value", "score", "detector", "message"}
    assert isinstance(events[0], SpikeEvent)


@pytest.mark.parametrize(("kwargs", "name"), [
    ({"window": 1}, "window"), ({"window": 0}, "window"), ({"threshold": 0}, "threshold"),
    ({"threshold": -1.0}, "threshold"), ({"threshold": math.nan}, "threshold"), ({"min_history": 1}, "min_history"),
    ({"window": 10, "min_history": 20}, "min_history"), ({"ddof": 2}, "ddof"), ({"window": 2.5}, "window"),
])
def test_zscore_bad_config(kwargs, name):
    with pytest.raises(ConfigError, match=name):
        ZScoreDetector(**kwargs)


@pytest.mark.parametrize(("cls", "kwargs", "name"), [
    (RatioDetector, {"ratio": 1.0}, "ratio"), (RatioDetector, {"ratio": 0}, "ratio"),
    (RatioDetector, {"window": 0}, "window"), (RatioDetector, {"atol": 0}, "atol"),
    (RatioDetector, {"warmup": 0}, "warmup"),
    (ThresholdDetector, {}, "max_value"), (ThresholdDetector, {"max_value": math.inf}, "max_value"),
    (ThresholdDetector, {"max_value": 1.0, "min_value": 2.0}, "min_value"),
])
def test_other_bad_config(cls, kwargs, name):
    with pytest.raises(ConfigError, match=name):
        cls(**kwargs)


def test_bad_data():
    with pytest.raises(DataError, match="1-D"):
        detect_spikes(np.ones((3, 2)), ZScoreDetector())
    with pytest.raises(DataError, match="scalar"):
        ZScoreDetector().update("abc", 1)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="protocol"):
        detect_spikes([1.0], object())  # type: ignore[arg-type]


def test_registry_lists_all_detectors_with_references():
    assert registry.names() == ["nonfinite", "ratio", "threshold", "zscore"]
    for info in registry:
        assert info.kind == "detector" and info.reference and info.summary
        assert isinstance(info.obj() if info.name != "threshold" else info.obj(max_value=1.0), SpikeDetector)


def test_ratio_detector_flags_a_value_exactly_on_the_boundary():
    # mean(1, 2.25, 4.5) = 31/12 is rounded in binary; 7.75 is exactly 3x it and must count (x >= ratio * m)
    events = detect_spikes([1.0, 2.25, 4.5, 7.75], RatioDetector(ratio=3.0, window=3))
    assert [e.step for e in events] == [4]
    assert detect_spikes([1.0, 2.25, 4.5, 7.74], RatioDetector(ratio=3.0, window=3)) == []
