"""SkipStepOnSpike: skipped steps leave any optimizer bit-identical; the OLMo-core anchor cases; round trips."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from losslab import ConfigError
from losslab.stability import (
    NonFiniteDetector,
    SkipStepOnSpike,
    ThresholdDetector,
    TrainingDivergedError,
    ZScoreDetector,
    total_grad_norm,
)


def _model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))


def _batch(i):
    g = torch.Generator().manual_seed(1000 + i)
    return torch.randn(8, 3, generator=g), torch.randn(8, 1, generator=g)


def _grads(model, i, scale=1.0):
    x, y = _batch(i)
    loss = ((model(x) - y) ** 2).mean() * scale
    loss.backward()
    return loss


def _snapshot(model, opt):
    inner = opt.optimizer if isinstance(opt, SkipStepOnSpike) else opt
    return copy.deepcopy(model.state_dict()), copy.deepcopy(inner.state_dict())


def _assert_bit_identical(a, b):
    (ma, oa), (mb, ob) = a, b
    for k in ma:
        assert torch.equal(ma[k], mb[k]), k
    assert oa["param_groups"] == ob["param_groups"]
    assert oa["state"].keys() == ob["state"].keys()
    for pid in oa["state"]:
        for key, v in oa["state"][pid].items():
            w = ob["state"][pid][key]
            assert torch.equal(v, w) if isinstance(v, torch.Tensor) else v == w, (pid, key)


@pytest.mark.parametrize("make_opt", [
    lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1),
    lambda p: torch.optim.SGD(p, lr=1e-2, momentum=0.9),
    lambda p: torch.optim.Adam(p, lr=1e-2, foreach=False),
    lambda p: torch.optim.RMSprop(p, lr=1e-3),
])
def test_skipped_step_leaves_optimizer_and_params_bit_identical(make_opt):
    model = _model()
    opt = SkipStepOnSpike(make_opt(model.parameters()),
                          loss_detector=ZScoreDetector(window=8, threshold=3.0, min_history=4))
    for i in range(10):
        loss = _grads(model, i)
        opt.step(loss=loss)
        opt.zero_grad()
        assert not opt.last_skipped
    before = _snapshot(model, opt)
    loss = _grads(model, 10, scale=1e6)  # a x1e6 loss spike
    opt.step(loss=loss)
    assert opt.last_skipped and opt.n_skipped == 1
    assert opt.last_events[0].metric == "loss" and opt.last_events[0].step == 11
    _assert_bit_identical(before, _snapshot(model, opt))
    if isinstance(opt.optimizer, torch.optim.AdamW):
        # Adam's step counter did not advance on the skipped step (10 real steps)
        assert all(float(s["step"]) == 10 for s in opt.state.values())
    opt.zero_grad()
    opt.step(loss=_grads(model, 11))
    assert not opt.last_skipped


def test_skip_equals_never_having_seen_the_batch():
    """A run with a skipped spike batch equals, bit for bit, a run where that batch was never fed."""
    def run(with_spike):
        model = _model()
        opt = SkipStepOnSpike(torch.optim.AdamW(model.parameters(), lr=1e-2), loss_detector=None,
                              grad_norm_detector=ThresholdDetector(max_value=1e3))
        for i in range(12):
            if i == 6 and with_spike:
                loss = _grads(model, 99, scale=1e8)
                opt.step(loss=loss)
                assert opt.last_skipped and opt.last_events[0].metric == "grad_norm"
                opt.zero_grad()
            opt.step(loss=_grads(model, i))
            opt.zero_grad()
        return _snapshot(model, opt)
    _assert_bit_identical(run(False), run(True))


def test_olmo_anchor_rolling2_sigma1_huge_loss_skipped():
    # OLMo-core test: rolling interval 2, sigma factor 1, loss 1e9 -> skipped.
    model = _model()
    opt = SkipStepOnSpike(torch.optim.SGD(model.parameters(), lr=0.1),
                          loss_detector=ZScoreDetector(window=2, threshold=1.0, min_history=2),
                          grad_norm_detector=None)
    for loss in (1.0, 1.5):
        _grads(model, 0)
        opt.step(loss=loss)
        opt.zero_grad()
    _grads(model, 0)
    opt.step(loss=1e9)
    assert opt.last_skipped and opt.n_steps == 3


def test_non_finite_loss_or_grad_skipped():
    model = _model()
    opt = SkipStepOnSpike(torch.optim.AdamW(model.parameters()))
    _grads(model, 0)
    before = _snapshot(model, opt)
    opt.step(loss=float("nan"))
    assert opt.last_skipped and opt.last_events[0].detector == "nonfinite"
    model[0].weight.grad[0, 0] = math.inf
    opt.step(loss=1.0)
    assert opt.last_skipped and opt.last_events[0].metric == "grad_norm"
    _assert_bit_identical(before, _snapshot(model, opt))


def test_grad_norm_computed_matches_clip_grad_norm():
    model = _model()
    _grads(model, 0)
    expected = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=math.inf)
    assert float(total_grad_norm(model.parameters())) == pytest.approx(float(expected), rel=1e-6)
    assert float(total_grad_norm([torch.zeros(2, requires_grad=True)])) == 0.0


def test_closure_supported():
    model = _model()
    opt = SkipStepOnSpike(torch.optim.LBFGS(model.parameters(), lr=0.1, max_iter=2))

    def closure():
        opt.zero_grad()
        return _grads(model, 0)
    loss = opt.step(closure)
    assert isinstance(loss, torch.Tensor) and opt.n_steps == 1


def test_no_gradients_is_a_no_op():
    model = _model()
    opt = SkipStepOnSpike(torch.optim.AdamW(model.parameters()))
    before = _snapshot(model, opt)
    opt.step(loss=1.0)  # no .grad anywhere: grad norm 0, inner step skips every parameter
    assert not opt.last_skipped and opt.n_steps == 1
    _assert_bit_identical(before, _snapshot(model, opt))


def test_max_consecutive_skips_raises():
    model = _model()
    opt = SkipStepOnSpike(torch.optim.SGD(model.parameters(), lr=0.1), max_consecutive_skips=3)
    _grads(model, 0)
    opt.step(loss=float("inf"))
    opt.step(loss=float("inf"))
    with pytest.raises(TrainingDivergedError, match="3 consecutive"):
        opt.step(loss=float("inf"))


def test_state_dict_round_trip_continues_identically():
    def build():
        model = _model()
        return model, SkipStepOnSpike(torch.optim.AdamW(model.parameters(), lr=1e-2),
                                      loss_detector=ZScoreDetector(window=6, threshold=3.0, min_history=3))
    m1, o1 = build()
    for i in range(8):
        o1.step(loss=_grads(m1, i, scale=1e5 if i == 5 else 1.0))
        o1.zero_grad()
    state = copy.deepcopy(o1.state_dict())
    m2, o2 = build()
    m2.load_state_dict(m1.state_dict())
    o2.load_state_dict(state)
    assert o2.n_skipped == o1.n_skipped == 1
    for i in range(8, 16):
        s = 1e5 if i == 12 else 1.0
        o1.step(loss=_grads(m1, i, scale=s))
        o2.step(loss=_grads(m2, i, scale=s))
        assert o1.last_skipped == o2.last_skipped
        o1.zero_grad()
        o2.zero_grad()
    _assert_bit_identical(_snapshot(m1, o1), _snapshot(m2, o2))
    assert o1.n_skipped == o2.n_skipped == 2


def test_bad_input():
    model = _model()
    with pytest.raises(ConfigError, match="optimizer"):
        SkipStepOnSpike(model)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="max_consecutive_skips"):
        SkipStepOnSpike(torch.optim.SGD(model.parameters(), lr=0.1), max_consecutive_skips=0)
    with pytest.raises(ConfigError, match="loss_detector"):
        SkipStepOnSpike(torch.optim.SGD(model.parameters(), lr=0.1), loss_detector="zscore")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="max_consecutive_skips"):
        SkipStepOnSpike(torch.optim.SGD(model.parameters(), lr=0.1), max_consecutive_skips=True)
    opt = SkipStepOnSpike(torch.optim.SGD(model.parameters(), lr=0.1))
    other = SkipStepOnSpike(torch.optim.SGD(model.parameters(), lr=0.1), grad_norm_detector=None)
    with pytest.raises(ConfigError, match="detectors"):
        opt.load_state_dict(other.state_dict())
    assert opt.n_steps == 0
    assert isinstance(opt.detectors["loss_nonfinite"], NonFiniteDetector)
