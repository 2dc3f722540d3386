"""Half-precision sums, complex parameters, SCALE under a scheduler and SAM's closure step."""

from __future__ import annotations

import pytest
import torch

from losslab import ConfigError
from losslab.optim import SAM, SCALE, MoMo, MoMoAdam, create, orthogonalize_, registry, schedule_scheduler
from tests.optim._specs import SPECS


@pytest.mark.parametrize("name", registry.names())
def test_complex_parameters_are_refused_with_a_clear_error(name):
    p = torch.nn.Parameter(torch.ones(2, 3, dtype=torch.complex64))
    opt = create(name, [p], **SPECS[name].kwargs)
    p.grad = torch.ones_like(p)
    with pytest.raises(ConfigError, match="complex parameters are not supported"):
        if name == "sam":  # SAM's own part is the perturbation (the second step is the base optimizer's)
            opt.first_step()
        else:
            opt.step(loss=1.0) if SPECS[name].needs_loss else opt.step()


def _big_problem(dtype):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(400, 400, generator=g)  # sum of squares 1.6e5: beyond float16's 65504
    return torch.nn.Parameter(w.to(dtype)), torch.randn(400, 400, generator=g).to(dtype)


@pytest.mark.parametrize("cls", [MoMo, MoMoAdam])
def test_momo_step_size_in_float16_is_finite_and_positive(cls):
    sizes = {}
    for dtype in (torch.float32, torch.float16):
        w, grad = _big_problem(dtype)
        opt = cls([w], lr=1.0)
        w.grad = grad
        opt.step(loss=100.0)
        sizes[dtype] = opt.last_step_size
        assert torch.isfinite(w).all()
    assert sizes[torch.float16] > 0
    if cls is MoMo:  # MoMo's sums are the only float16 difference: same step size up to rounding
        assert sizes[torch.float16] == pytest.approx(sizes[torch.float32], rel=1e-3)


def test_orthogonalize_in_float16_removes_the_radial_part():
    w, grad = _big_problem(torch.float16)
    w.grad = grad.clone()
    orthogonalize_([w])
    cos = torch.nn.functional.cosine_similarity(w.grad.float().reshape(1, -1), w.float().reshape(1, -1))
    assert abs(float(cos)) < 1e-2
    ones = torch.nn.Parameter(torch.ones(300, 300, dtype=torch.float16))
    ones.grad = torch.full_like(ones, 2.0)  # parallel to w: nothing is left, and it must not be NaN
    orthogonalize_([ones])
    assert torch.isfinite(ones.grad).all()


def test_momo_state_keeps_float64_sums_through_a_checkpoint():
    w = torch.nn.Parameter(torch.randn(5, 4))
    opt = MoMo([w], lr=0.1)
    w.grad = torch.randn(5, 4)
    opt.step(loss=2.0)
    opt2 = MoMo([torch.nn.Parameter(w.detach().clone())], lr=0.1)
    opt2.load_state_dict(opt.state_dict())
    assert next(iter(opt2.state.values()))["grad_dot_w"].dtype == torch.float64


def test_scale_adamw_rate_follows_the_schedule_relative_to_its_peak():
    # the 1-D (AdamW) part runs at adam_lr * lr(t) / lr_0; with schedule_scheduler lr_0 is the schedule's peak,
    # not the constructor's lr: on a constant schedule the first AdamW step is adam_lr * m / sqrt(v) = adam_lr
    b = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
    opt = SCALE([b], adam_lr=2e-2)  # constructor lr 1e-4
    schedule_scheduler(opt, "constant:peak=1e-3,steps=10")
    b.grad = torch.ones(3, dtype=torch.float64)
    opt.step()
    assert torch.allclose(b, torch.full((3,), -2e-2, dtype=torch.float64), rtol=1e-6)


def _sam_problem():
    g = torch.Generator().manual_seed(3)
    w = torch.nn.Parameter(torch.randn(6, dtype=torch.float64, generator=g))
    target = torch.randn(6, dtype=torch.float64, generator=g)
    return w, lambda: ((w - target) ** 4).sum()


def test_sam_step_with_closure_after_zero_grad_is_the_two_step_procedure():
    w, loss_fn = _sam_problem()
    ref, ref_loss = _sam_problem()
    opt = SAM([w], torch.optim.SGD, rho=0.1, lr=0.05)
    manual = SAM([ref], torch.optim.SGD, rho=0.1, lr=0.05)
    for _ in range(3):
        opt.zero_grad()
        opt.step(lambda: loss_fn().backward())
        manual.zero_grad()
        ref_loss().backward()
        manual.first_step(zero_grad=True)
        ref_loss().backward()
        manual.second_step(zero_grad=True)
    assert torch.equal(w, ref)


def test_sam_hands_the_loss_to_a_base_that_needs_it():
    w, loss_fn = _sam_problem()
    ref, ref_loss = _sam_problem()
    opt = SAM([w], MoMo, rho=0.1, lr=0.05)
    manual = SAM([ref], MoMo, rho=0.1, lr=0.05)

    def closure():
        loss = loss_fn()
        loss.backward()
        return loss

    opt.zero_grad()
    opt.step(closure)
    ref_loss().backward()
    manual.first_step(zero_grad=True)
    loss = ref_loss()
    loss.backward()
    manual.second_step(loss=loss.detach())
    assert torch.equal(w, ref)
