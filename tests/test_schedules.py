import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from losslab import ConfigError
from losslab.schedules import Schedule, cosine, cyclic, linear, parse_schedule, step_decay, wsd


def test_cosine_matches_the_multipowerlaw_runs():
    # cosine 3e-4 -> 3e-5 over [2160, 24000] as in the MPL data (row step 2288 has lr 2.999771173709568e-4)
    lr = cosine(np.array([2160, 2288, 24000]), peak=3e-4, steps=24000, final_ratio=0.1, warmup=2160)
    np.testing.assert_allclose(lr, [3e-4, 2.999771173709568e-4, 3e-5], rtol=1e-12)


def test_wsd_linear_and_exp_cooldowns_match_hand_values():
    lin = wsd(np.array([20000, 20064, 24000]), peak=3e-4, steps=24000, decay_start=20000, final_ratio=0.1)
    np.testing.assert_allclose(lin, [3e-4, 3e-4 - 2.7e-4 * 64 / 4000, 3e-5], rtol=1e-12)
    exp = wsd(23904, peak=3e-4, steps=24000, decay_start=20000, cooldown="exp", final_ratio=0.1)
    np.testing.assert_allclose(exp, 3e-4 * 0.1 ** (3904 / 4000), rtol=1e-12)
    sqrt = wsd(np.array([80, 90, 100]), peak=1.0, steps=100, decay=0.2, cooldown="sqrt")
    np.testing.assert_allclose(sqrt, [1.0, 1 - np.sqrt(0.5), 0.0], atol=1e-12)


def test_warmup_is_linear_from_zero():
    lr = linear(np.array([0, 5, 10, 110]), peak=2.0, steps=110, warmup=10)
    np.testing.assert_allclose(lr, [0.0, 1.0, 2.0, 0.0])


def test_step_decay_reproduces_the_811_schedule():
    lr = step_decay(np.array([1, 799, 800, 900, 1000]), peak=1e-3, steps=1000, at=(0.8, 0.9), factor=10**-0.5)
    np.testing.assert_allclose(lr, [1e-3, 1e-3, 10**-3.5, 1e-4, 1e-4], rtol=1e-12)


def test_cyclic_multiplicative_cycles_end_fully_annealed():
    s = np.array([0, 10, 20, 30, 70, 150])
    lr = cyclic(s, peak=1.0, steps=150, cycles=4, mult=2, shape="linear")
    np.testing.assert_allclose(lr, [1.0, 0.0, 0.5, 0.0, 0.0, 0.0], atol=1e-12)
    sgdr = cyclic(np.array([25, 50, 51]), peak=1.0, steps=100, cycles=2)
    np.testing.assert_allclose(sgdr[:2], [0.5, 0.0], atol=1e-12)
    assert sgdr[2] > 0.99


@given(st.sampled_from(["cosine", "linear", "wsd", "step", "cyclic"]), st.integers(2, 5000),
       st.floats(1e-6, 10.0), st.floats(0.0, 1.0))
def test_schedules_stay_between_final_and_peak(kind, steps, peak, ratio):
    params = {"peak": peak, "steps": steps}
    if kind in ("cosine", "linear", "wsd", "cyclic"):
        params["final_ratio"] = ratio
    lr = Schedule(kind, params).lr()
    assert lr.shape == (steps,)
    assert np.all(lr <= peak * (1 + 1e-12)) and np.all(lr >= 0)


@pytest.mark.parametrize("spec", [
    "cosine:peak=3e-4,steps=24000,final=0.1,warmup=2160",
    "wsd:peak=3e-4,steps=24000,decay=0.2,cooldown=sqrt",
    "step:peak=1e-3,steps=100,at=0.5/0.75,factor=0.1",
    "cyclic:peak=0.1,steps=1000,cycles=3,mult=2,shape=linear",
    "constant:peak=1e-3",
])
def test_spec_round_trip(spec):
    s = parse_schedule(spec)
    again = parse_schedule(s.to_spec())
    np.testing.assert_array_equal(s.lr(100), again.lr(100))


@pytest.mark.parametrize(("spec", "match"), [
    ("", "empty schedule spec"),
    ("cosinus:peak=1", "unknown schedule kind 'cosinus'"),
    ("cosine:peak=1", "needs steps"),
    ("cosine:steps=10", "needs peak"),
    ("cosine:peak=-1,steps=10", "peak learning rate must be a finite number > 0"),
    ("cosine:peak=1,steps=10.5", "'steps' must be an integer"),
    ("cosine:peak=1,steps=10,final=2", "final_ratio must be in"),
    ("wsd:peak=1,steps=10,cooldown=cubic", "unknown cooldown 'cubic'"),
    ("wsd:peak=1,steps=10,cooldown=exp", "exponential cooldown needs final_ratio > 0"),
    ("cosine:peak=1,steps=10,warmup=10", "warmup must be an integer"),
    ("cosine:peak=1,steps=10,bogus=3", "has no parameter 'bogus'"),
    ("cosine:peak=abc,steps=10", "must be a number"),
    ("cosine:peak", "malformed item"),
    ("step:peak=1,steps=10,at=0.9/0.5", "increasing fractions"),
])
def test_bad_specs_raise_clear_errors(spec, match):
    with pytest.raises(ConfigError, match=match):
        parse_schedule(spec)


def test_multiplier_drives_lambdalr():
    torch = pytest.importorskip("torch")
    s = parse_schedule("cosine:peak=0.5,steps=20,final=0.1,warmup=5")
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=s.peak)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, s.multiplier)
    seen = []
    for _ in range(20):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    np.testing.assert_allclose(seen, s.lr(), rtol=1e-12)
