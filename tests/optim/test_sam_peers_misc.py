"""SAM specifics (reference rule, GradScaler flow, state dict with base), peers, factory and schedule adapter."""

from __future__ import annotations

import pytest
import torch

from losslab import ConfigError, DataError
from losslab.optim import SAM, SGDP, SPAM, AdamP, DiffGrad, MoMo, SGDSaI, create, schedule_scheduler
from losslab.schedules import parse_schedule
from tests.optim import _references as ref
from tests.optim.test_parity import SHAPES, make_grads, make_params, max_diff, run


def _grad_fn(ps):
    xs = [p.detach().clone().requires_grad_(True) for p in ps]
    loss = sum((x**2).sum() + torch.sin(3 * x).sum() for x in xs)
    return [g.detach() for g in torch.autograd.grad(loss, xs)]


@pytest.mark.parametrize("adaptive", [False, True])
def test_sam_matches_the_reference_rule(adaptive):
    params = make_params()
    rho = 2.0 if adaptive else 0.05
    expected = ref.sam_reference(params, _grad_fn, 50, rho=rho, adaptive=adaptive, lr=0.01)
    ps = [torch.nn.Parameter(p.clone()) for p in params]
    opt = SAM(ps, torch.optim.SGD, rho=rho, adaptive=adaptive, lr=0.01, momentum=0.9)
    traj = []
    for _ in range(50):
        for p, g in zip(ps, _grad_fn([p.detach() for p in ps])):
            p.grad = g

        def closure():
            for p, g in zip(ps, _grad_fn([p.detach() for p in ps])):
                p.grad = g

        opt.step(closure)
        traj.append([p.detach().clone() for p in ps])
    assert max_diff(traj, expected) <= 1e-10


def test_sam_first_step_ignores_the_gradient_scale_and_skips_non_finite():
    w = torch.nn.Parameter(torch.tensor([3.0, 4.0], dtype=torch.float64))
    opt = SAM([w], torch.optim.SGD, rho=0.5, lr=0.1)
    w.grad = torch.tensor([3.0, 4.0], dtype=torch.float64) * 65536.0  # a GradScaler-scaled gradient
    opt.first_step()
    assert w.detach().tolist() == pytest.approx([3.3, 4.4])
    opt.restore()
    w.grad = torch.tensor([float("inf"), 1.0], dtype=torch.float64)
    opt.first_step()
    assert w.detach().tolist() == [3.0, 4.0]
    opt.second_step()


def test_sam_with_grad_scaler_flow_and_accumulation():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    opt = SAM(model.parameters(), torch.optim.SGD, lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    x, y = torch.randn(8, 4), torch.randn(8, 1)
    before = [p.detach().clone() for p in model.parameters()]
    for half in (x[:4], x[4:]):  # accumulate two micro-batches
        scaler.scale(torch.nn.functional.mse_loss(model(half), y[:4])).backward()
    opt.first_step(zero_grad=True)
    scaler.scale(torch.nn.functional.mse_loss(model(x), y)).backward()
    opt.restore()
    scaler.step(opt)
    scaler.update()
    after = [p.detach() for p in model.parameters()]
    assert all(not torch.equal(a, b) for a, b in zip(after, before))
    assert all(torch.isfinite(a).all() for a in after)


def test_sam_state_dict_contains_the_base_optimizer_and_refuses_mid_step():
    ps = [torch.nn.Parameter(torch.ones(3))]
    opt = SAM(ps, torch.optim.Adam, lr=0.1)
    ps[0].grad = torch.ones(3)
    opt.first_step()
    with pytest.raises(ConfigError, match="second_step"):
        opt.state_dict()
    opt.second_step()
    sd = opt.state_dict()
    assert sd["base"]["state"][0]["exp_avg"].abs().sum() > 0
    opt2 = SAM([torch.nn.Parameter(ps[0].detach().clone())], torch.optim.Adam, lr=0.1)
    opt2.load_state_dict(sd)
    assert opt2.param_groups is opt2.base_optimizer.param_groups


def test_momo_needs_exactly_one_of_loss_and_closure_and_a_finite_loss():
    w = torch.nn.Parameter(torch.ones(2))
    opt = MoMo([w])
    w.grad = torch.ones(2)
    with pytest.raises(ConfigError, match="exactly one"):
        opt.step()
    with pytest.raises(DataError, match="nan"):
        opt.step(loss=float("nan"))
    assert w.detach().tolist() == [1.0, 1.0] and opt._number_steps == 0


def test_spam_density_group_needs_2d_parameters():
    with pytest.raises(ConfigError, match="2-D"):
        SPAM([{"params": [torch.nn.Parameter(torch.ones(3))], "density": 0.5}])


# ------------------------------------------------------------------------------------------- peers
po = pytest.importorskip("pytorch_optimizer")


def test_peer_spam_matches_until_the_first_reset_then_deviates():
    params = make_params(shapes=[(4, 3), (5,)])
    grads = make_grads(params, 40, spikes=(12,))
    kw = dict(lr=1e-2, threshold=50.0, grad_accu_steps=4)
    ours = run(lambda ps: SPAM(ps, warmup_steps=8, reset_interval=25, **kw), params, grads)
    peer = run(lambda ps: po.SPAM(ps, lr=1e-2, threshold=50, grad_accu_steps=4, warmup_epoch=8, update_proj_gap=25),
               params, grads)
    assert max_diff(ours[:24], peer[:24]) <= 1e-10  # same rule, clipping included, before the reset
    assert max_diff(ours[24:], peer[24:]) > 1e-6  # the peer's warm-up is one step late after a reset


def test_peer_diffgrad_matches_with_coupled_decay():
    params = make_params()
    grads = make_grads(params, 50)
    ours = run(lambda ps: DiffGrad(ps, lr=1e-2, weight_decay=1e-2), params, grads)
    peer = run(lambda ps: po.DiffGrad(ps, lr=1e-2, weight_decay=1e-2, weight_decouple=False), params, grads)
    assert max_diff(ours, peer) <= 1e-7  # agrees to ~1e-8 (rounding of its bias-corrected step), not bitwise


def test_peer_adamp_differs_on_tiny_gradients_by_its_epsilon_placement():
    params = make_params(shapes=SHAPES)
    normal = make_grads(params, 50, spikes=())
    tiny = make_grads(params, 50, scale=1e-6, spikes=())
    diff_normal = max_diff(run(lambda ps: AdamP(ps, lr=1e-2), params, normal),
                           run(lambda ps: po.AdamP(ps, lr=1e-2), params, normal))
    diff_tiny = max_diff(run(lambda ps: AdamP(ps, lr=1e-2), params, tiny),
                         run(lambda ps: po.AdamP(ps, lr=1e-2), params, tiny))
    assert diff_normal < 1e-5 < diff_tiny


# ------------------------------------------------------------------------------------------- factory, schedules
def test_create_resolves_base_optimizers_by_name():
    opt = create("orthograd", [torch.nn.Parameter(torch.ones(2))], base_optimizer_cls="spam", lr=0.1)
    assert isinstance(opt.base_optimizer, SPAM)
    with pytest.raises(ConfigError, match="base optimizer"):
        create("sam", [torch.nn.Parameter(torch.ones(2))], base_optimizer="nonsense")


def test_schedule_scheduler_drives_the_rate_like_the_schedule():
    spec = "cosine:peak=0.1,steps=20,warmup=4"
    w = torch.nn.Parameter(torch.ones(1))
    opt = SPAM([w], lr=1.0)
    sched = schedule_scheduler(opt, spec)
    used = []
    for _ in range(20):
        used.append(opt.param_groups[0]["lr"])
        w.grad = torch.ones(1)
        opt.step()
        sched.step()
    expected = parse_schedule(spec).lr()
    assert used == pytest.approx(list(expected), abs=1e-15)


def test_schedule_scheduler_relative_keeps_group_ratios():
    a, b = torch.nn.Parameter(torch.ones(1)), torch.nn.Parameter(torch.ones(1))
    opt = torch.optim.SGD([{"params": [a], "lr": 0.2}, {"params": [b], "lr": 0.02}])
    schedule_scheduler(opt, "linear:peak=0.1,steps=10", relative=True)
    assert opt.param_groups[0]["lr"] == pytest.approx(10 * opt.param_groups[1]["lr"])
    with pytest.raises(ConfigError):
        schedule_scheduler(opt, "cosine:peak=-1,steps=10")


def test_peer_sgdp_loses_the_authors_buffer_projection():
    params = make_params()
    grads = make_grads(params, 20, orthogonal_every=3)
    no_momentum = max_diff(run(lambda ps: SGDP(ps, lr=1e-2), params, grads),
                           run(lambda ps: po.SGDP(ps, lr=1e-2), params, grads))
    momentum = max_diff(run(lambda ps: SGDP(ps, lr=1e-2, momentum=0.9), params, grads),
                        run(lambda ps: po.SGDP(ps, lr=1e-2, momentum=0.9), params, grads))
    assert no_momentum <= 1e-12 < 1e-4 < momentum  # the authors project the momentum buffer itself; the peer a copy


def test_peer_sgd_sai_starts_its_buffer_at_zero_and_skips_the_snr_of_vectors():
    params = make_params(shapes=[(6, 5)])
    grads = make_grads(params, 10)
    ours = run(lambda ps: SGDSaI(ps, lr=1e-2, momentum=0.0, weight_decay=0.0), params, grads)
    peer = run(lambda ps: po.SGDSaI(ps, lr=1e-2, momentum=0.0, weight_decay=0.0), params, grads)
    assert max_diff(ours, peer) <= 1e-12  # same gSNR rule on a matrix without momentum
    vec = make_params(shapes=[(7,)])
    vgrads = make_grads(vec, 3)
    assert max_diff(run(lambda ps: SGDSaI(ps, lr=1e-2, momentum=0.0), vec, vgrads),
                    run(lambda ps: po.SGDSaI(ps, lr=1e-2, momentum=0.0), vec, vgrads)) > 1e-6
    assert max_diff(run(lambda ps: SGDSaI(ps, lr=1e-2), params, grads),
                    run(lambda ps: po.SGDSaI(ps, lr=1e-2), params, grads)) > 1e-6


@pytest.mark.parametrize("adaptive", [False, True])
def test_peer_sam_matches(adaptive):
    params = make_params()
    traj = []
    for cls in (SAM, po.SAM):
        ps = [torch.nn.Parameter(p.clone()) for p in params]
        opt = cls(ps, torch.optim.SGD, rho=0.5 if adaptive else 0.05, adaptive=adaptive, lr=0.01, momentum=0.9)

        def closure(ps=ps):
            for p, g in zip(ps, _grad_fn([p.detach() for p in ps])):
                p.grad = g

        out = []
        for _ in range(20):
            closure()
            opt.step(closure)
            out.append([p.detach().clone() for p in ps])
        traj.append(out)
    assert max_diff(traj[0], traj[1]) <= 1e-7  # ~1e-9 (SAM) and ~2e-8 (ASAM): rounding, not a different rule
