"""Regressions from the monitor review: unfreezing, fp16 gradients, event routing, bounded events, level shifts."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from losslab.monitor import TrainingMonitor, read_log
from losslab.stability import NonFiniteDetector


def _two_layer() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 1))


def test_clip_grad_norm_covers_parameters_unfrozen_after_the_first_step():
    model = _two_layer()
    model[0].requires_grad_(False)  # stage 1: backbone frozen
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = TrainingMonitor(model, opt, detectors={})
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(1))
    model(x).pow(2).mean().backward()
    monitor.clip_grad_norm_(1.0)
    opt.step()
    monitor.step(loss=1.0)
    opt.zero_grad()
    assert "grad_norm/0" not in monitor.history  # a frozen layer adds no empty column
    model[0].requires_grad_(True)  # stage 2: gradual unfreezing
    (1e4 * model(x).pow(2).mean()).backward()
    expected = torch.linalg.vector_norm(torch.stack([p.grad.double().norm() for p in model.parameters()]))
    total = monitor.clip_grad_norm_(1.0)
    after = torch.linalg.vector_norm(torch.stack([p.grad.double().norm() for p in model.parameters()]))
    assert float(total) == pytest.approx(float(expected), rel=1e-5)
    assert float(after) == pytest.approx(1.0, rel=1e-4)  # the unfrozen layer was clipped too
    monitor.step(loss=1.0)
    assert monitor.history["grad_norm"][-1] == pytest.approx(float(expected), rel=1e-5)
    assert monitor.history["grad_norm/0"][-1] is not None


def test_update_ratio_follows_the_trainable_parameters():
    model = _two_layer()
    model[0].requires_grad_(False)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = TrainingMonitor(model, opt, every_n_steps=1, detectors={})
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(1))
    for unfreeze in (False, True):
        if unfreeze:
            model[0].requires_grad_(True)
        model(x).pow(2).mean().backward()
        before = {n: p.detach().clone().double() for n, p in model.named_parameters()}
        with monitor.stepping(loss=1.0):
            opt.step()
        opt.zero_grad()
    upd = sum(float((p.double() - before[n]).pow(2).sum()) for n, p in model.named_parameters())
    ref = sum(float(v.pow(2).sum()) for v in before.values())
    assert monitor.history["update_ratio"][-1] == pytest.approx(math.sqrt(upd / ref), rel=1e-5)
    assert monitor.history["update_ratio/0"][-1] is not None


def test_float16_gradients_above_65504_are_finite_and_raise_no_event():
    model = nn.Linear(100, 100).half()
    monitor = TrainingMonitor(model, torch.optim.SGD(model.parameters(), lr=0.0))
    model.weight.grad = torch.full_like(model.weight, 1000.0)  # norm 1e5 > float16 max, every entry finite
    model.bias.grad = torch.zeros_like(model.bias)
    events = monitor.step(loss=1.0)
    assert events == []
    assert monitor.history["nonfinite_grads"][-1] == 0
    assert monitor.history["grad_norm"][-1] == pytest.approx(1e5, rel=1e-3)
    model.bias.grad[0] = math.inf
    events = monitor.step(loss=1.0)
    assert monitor.history["nonfinite_grads"][-1] == 1
    assert any(e.metric == "nonfinite_grads" for e in events)


def test_per_tensor_norms_flag_exactly_the_non_finite_tensors():
    from losslab.monitor._metrics import grouped_sq_norms

    big = torch.full((400,), 6e4, dtype=torch.float16)  # finite float16 entries whose norm overflows float16
    tensors = [big, torch.tensor([1.0, math.nan]), torch.tensor([-math.inf]), torch.ones(2)]
    _, per_tensor = grouped_sq_norms(tensors, torch.zeros(4, dtype=torch.long), 1)
    assert (~torch.isfinite(per_tensor)).tolist() == [False, True, True, False]


def test_monitor_problem_events_reach_the_csv_and_jsonl_files(tmp_path):
    model = nn.Linear(2, 1)
    monitor = TrainingMonitor(model, torch.optim.SGD(model.parameters(), lr=0.1),
                              sinks=[tmp_path / "log.csv", tmp_path / "log.jsonl"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        monitor.step(loss=1.0)
        returned = monitor.step(loss="not a number")
        monitor.close()
    assert [(e.step, e.metric) for e in returned] == [(2, "monitor")]
    for name in ("log.csv", "log.jsonl"):
        events = read_log(tmp_path / name).events
        assert [(e["step"], e["metric"]) for e in events] == [(2, "monitor")]
        assert "loss" in events[0]["message"]


def test_a_level_shift_is_one_event_and_the_detector_learns_the_new_level():
    rng = np.random.default_rng(0)
    values = np.r_[2.0 + 0.01 * rng.standard_normal(500), 2.2 + 0.01 * rng.standard_normal(3000)]
    monitor = TrainingMonitor(keep_history=False, level_shift_after=20)
    for v in values:
        monitor.step(loss=float(v))
    shifts = [e for e in monitor.events if e.detector == "level_shift"]
    assert len(shifts) == 1 and shifts[0].metric == "loss" and shifts[0].step == 520
    assert len(monitor.events) == 20 and monitor.n_events == 20  # 19 z-score events, then the shift
    assert max(e.step for e in monitor.events) == 520  # silent once the new level is learned
    # a spike on the new level is still caught
    assert [e.detector for e in monitor.step(loss=50.0)] == ["zscore"]


def test_events_are_bounded_and_counted():
    monitor = TrainingMonitor(max_events=5, detectors={"loss": NonFiniteDetector()}, level_shift_after=10**9)
    for _ in range(50):
        monitor.step(loss=math.nan)
    assert len(monitor.events) == 5 and monitor.n_events == 50
    assert [e.step for e in monitor.events] == [46, 47, 48, 49, 50]


def test_a_run_of_nan_losses_becomes_one_level_shift_event():
    monitor = TrainingMonitor(detectors={"loss": NonFiniteDetector()}, level_shift_after=4)
    for _ in range(30):
        monitor.step(loss=math.nan)
    assert [e.detector for e in monitor.events] == ["nonfinite"] * 3 + ["level_shift"]
    monitor.step(loss=1.0)
    assert [e.detector for e in monitor.step(loss=math.nan)] == ["nonfinite"]  # a new run is reported again
