"""Dropout in train mode: the caller's RNG is untouched and every operator is a fixed, symmetric matrix.

``test_side_effects.py`` uses ``Dropout(0.0)``, which never draws random numbers; these tests use ``Dropout(0.5)``.
"""

from __future__ import annotations

import pytest
import torch

from losslab._errors import ConfigError
from losslab.diagnostics import (
    DatasetHessianOperator,
    HessianOperator,
    SharpnessTracker,
    adam_preconditioned_sharpness,
    classwise_spectra,
    collect_features,
    empirical_ntk,
    gradient_covariance,
    hessian_directions,
    hutchinson_trace,
    hvp,
    input_sensitivity,
    lanczos,
    layerwise_barriers,
    linear_interpolation,
    loss_line,
    loss_plane,
    plasticity_report,
    power_iteration,
    random_direction,
    sample_size_loss_change,
    spectral_density,
    tangent_alignment,
)
from tests.diagnostics.helpers import ce, dense_hessian, dropout_net, mse, regression_batch

X, Y = regression_batch()
BATCHES = [(X[:8], Y[:8]), (X[8:], Y[8:])]
LABELS = torch.tensor([0, 1] * 8)



def per_sample(m, b):
    return ((m(b[0]) - b[1]) ** 2).mean(1)


def _adam(model):
    """An Adam optimizer with second-moment state (the set-up draws dropout masks: run it before the snapshot)."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    mse(model, (X, Y)).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return opt


ROUTINES = {
    "operator+matvec": lambda m, mode, ctx: HessianOperator(m, mse, (X, Y), mode=mode).matvec(ctx["v"]),
    "hvp": lambda m, mode, ctx: hvp(m, mse, (X, Y), ctx["v"], mode=mode),
    "lanczos": lambda m, mode, ctx: lanczos(HessianOperator(m, mse, (X, Y), mode=mode), 2),
    "power": lambda m, mode, ctx: power_iteration(HessianOperator(m, mse, (X, Y), mode=mode), max_iter=5),
    "hutchinson+slq": lambda m, mode, ctx: (hutchinson_trace(HessianOperator(m, mse, (X, Y), mode=mode), 3),
                                            spectral_density(HessianOperator(m, mse, (X, Y), mode=mode), 5)),
    "dataset-operator": lambda m, mode, ctx: lanczos(DatasetHessianOperator(m, mse, BATCHES, mode=mode), 1,
                                                     max_iter=5),
    "classwise": lambda m, mode, ctx: classwise_spectra(m, ce, (X, LABELS), n_iter=5, mode=mode),
    "tracker": lambda m, mode, ctx: SharpnessTracker(mse, (X, Y), mode=mode, max_iter=5)(m, 0),
    "tracker-batches": lambda m, mode, ctx: SharpnessTracker(mse, batches=BATCHES, mode=mode, max_iter=5)(m, 0),
    "adam": lambda m, mode, ctx: adam_preconditioned_sharpness(m, mse, (X, Y), ctx["opt"], max_iter=5, mode=mode),
    "hessian-dirs": lambda m, mode, ctx: hessian_directions(m, mse, (X, Y), 2, max_iter=6, mode=mode),
    "line+plane": lambda m, mode, ctx: (
        loss_line(m, mse, (X, Y), random_direction(m), alphas=[0.0, 0.5], mode=mode),
        loss_plane(m, mse, (X, Y), random_direction(m), random_direction(m, seed=1), alphas=[0.5], betas=[0.1],
                   mode=mode)),
    "interpolation": lambda m, mode, ctx: (
        linear_interpolation(m, mse, (X, Y), m, ctx["other"], alphas=[0.5], mode=mode),
        layerwise_barriers(m, mse, (X, Y), m, ctx["other"], alphas=[0.5], mode=mode)),
    "sample-size": lambda m, mode, ctx: sample_size_loss_change(m, per_sample, (X, Y), n_points=2, mode=mode),
    "plasticity": lambda m, mode, ctx: (collect_features(m, X, mode=mode), plasticity_report(m, (X,), mode=mode)),
    "gradcov": lambda m, mode, ctx: gradient_covariance(m, per_sample, (X, Y), mode=mode),
    "sensitivity": lambda m, mode, ctx: input_sensitivity(m, mse, (X, Y), mode=mode),
    "ntk+alignment": lambda m, mode, ctx: (empirical_ntk(m, X, mode=mode), tangent_alignment(m, X, LABELS, mode=mode)),
}


def _context(model):
    return {"v": torch.ones(sum(p.numel() for p in model.parameters()), dtype=torch.float64),
            "other": dropout_net(seed=3).state_dict(), "opt": _adam(model)}


@pytest.mark.parametrize("mode", ["train", "current"])
@pytest.mark.parametrize("name", sorted(ROUTINES))
def test_routine_leaves_the_global_rng_untouched(name, mode):
    model = dropout_net()
    model.train()  # "current" then means train mode: dropout draws random numbers
    ctx = _context(model)
    state = torch.get_rng_state()
    ROUTINES[name](model, mode, ctx)
    assert torch.equal(state, torch.get_rng_state())


def test_dropout_is_active_so_the_rng_tests_can_fail():
    model = dropout_net()
    train = [HessianOperator(model, mse, (X, Y), mode="train", seed=s).loss for s in (0, 1)]
    assert train[0] != train[1]  # different seeds, different masks
    assert HessianOperator(model, mse, (X, Y), mode="eval").loss not in train
    state = torch.get_rng_state()
    mse(model.train(), (X, Y))  # the plain forward pass does consume random numbers
    assert not torch.equal(state, torch.get_rng_state())


def test_rng_is_restored_when_the_loss_raises():
    def boom(m, b):
        torch.rand(3)
        mse(m, b)
        raise RuntimeError("boom")

    model = dropout_net()
    state = torch.get_rng_state()
    with pytest.raises(RuntimeError, match="boom"):
        HessianOperator(model, boom, (X, Y), mode="train")
    assert torch.equal(state, torch.get_rng_state())


def _train(measure: bool) -> list[torch.Tensor]:
    model = dropout_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    tracker = SharpnessTracker(mse, (X, Y), every=1, mode="current", max_iter=5)
    for step in range(4):
        opt.zero_grad()
        mse(model, (X, Y)).backward()
        opt.step()
        if measure:
            tracker(model, step)
            loss_line(model, mse, (X, Y), random_direction(model), alphas=[0.5], mode="train")
    return [p.detach().clone() for p in model.parameters()]


def test_measuring_mid_training_does_not_change_the_run():
    plain, measured = _train(measure=False), _train(measure=True)
    assert all(torch.equal(a, b) for a, b in zip(plain, measured))


def test_same_loss_line_twice_in_train_mode():
    model = dropout_net()
    d = random_direction(model)
    a = loss_line(model, mse, (X, Y), d, alphas=[-0.5, 0.5], mode="train")
    b = loss_line(model, mse, (X, Y), d, alphas=[-0.5, 0.5], mode="train")
    assert a.losses.tolist() == b.losses.tolist() and a.center_loss == b.center_loss


def _dense(op):
    eye = torch.eye(op.n, dtype=torch.float64)
    return torch.stack([op.matvec(e) for e in eye])


def test_dataset_operator_same_matvec_twice_is_identical():
    op = DatasetHessianOperator(dropout_net(), mse, BATCHES, mode="train")
    v = torch.randn(op.n, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert torch.equal(op.matvec(v), op.matvec(v))


def test_dataset_operator_is_symmetric():
    op = DatasetHessianOperator(dropout_net(), mse, BATCHES, mode="train")
    g = torch.Generator().manual_seed(1)
    u, w = (torch.randn(op.n, dtype=torch.float64, generator=g) for _ in range(2))
    uhw, whu = float(u @ op.matvec(w)), float(w @ op.matvec(u))
    assert abs(uhw) > 1e-3
    assert abs(uhw - whu) <= 1e-10 * max(abs(uhw), abs(whu))


def test_dataset_operator_is_the_hessian_with_masks_seeded_per_batch():
    model, seed = dropout_net(), 5
    op = DatasetHessianOperator(model, mse, BATCHES, mode="train", seed=seed)
    ref = torch.zeros(op.n, op.n, dtype=torch.float64)
    for i, b in enumerate(BATCHES):  # documented: batch i's forward pass is seeded with seed + i
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + i)
            ref += 0.5 * dense_hessian(model, mse, b, mode="train")
    torch.testing.assert_close(_dense(op), ref, rtol=1e-10, atol=1e-12)


def test_single_batch_dataset_operator_equals_hessian_operator():
    model = dropout_net()
    v = torch.randn(sum(p.numel() for p in model.parameters()), dtype=torch.float64,
                    generator=torch.Generator().manual_seed(2))
    one = DatasetHessianOperator(model, mse, [(X, Y)], mode="train", seed=7)
    single = HessianOperator(model, mse, (X, Y), mode="train", seed=7)
    assert one.loss == single.loss
    assert torch.equal(one.matvec(v), single.matvec(v))


@pytest.mark.parametrize("make", [
    lambda m: HessianOperator(m, mse, (X, Y), mode="train"),
    lambda m: DatasetHessianOperator(m, mse, BATCHES, mode="train"),
])
def test_lanczos_with_the_same_seed_twice_is_identical(make):
    model = dropout_net()
    op = make(model)
    runs = [lanczos(op, 2, seed=0).eigenvalues, lanczos(op, 2, seed=0).eigenvalues,
            lanczos(make(model), 2, seed=0).eigenvalues]
    assert all(torch.equal(runs[0], r) for r in runs[1:])


def test_operator_seed_accepts_a_generator_and_rejects_bad_values():
    model = dropout_net()
    a = HessianOperator(model, mse, (X, Y), mode="train", seed=torch.Generator().manual_seed(4))
    b = HessianOperator(model, mse, (X, Y), mode="train", seed=torch.Generator().manual_seed(4))
    assert a.seed == b.seed and a.loss == b.loss
    with pytest.raises(ConfigError, match="seed"):
        HessianOperator(model, mse, (X, Y), seed=-1)
    with pytest.raises(ConfigError, match="seed"):
        DatasetHessianOperator(model, mse, BATCHES, seed=1.5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_rng_untouched_and_operator_fixed():
    model = dropout_net().cuda()
    batches = [(x.cuda(), y.cuda()) for x, y in BATCHES]
    cpu, gpu = torch.get_rng_state(), torch.cuda.get_rng_state()
    op = DatasetHessianOperator(model, mse, batches, mode="train")
    v = torch.randn(op.n, dtype=torch.float64, generator=torch.Generator().manual_seed(0)).cuda()
    assert torch.equal(op.matvec(v), op.matvec(v))
    assert torch.equal(lanczos(op, 1, max_iter=5).eigenvalues, lanczos(op, 1, max_iter=5).eigenvalues)
    loss_line(model, mse, batches[0], random_direction(model), alphas=[0.5], mode="train")
    assert torch.equal(cpu, torch.get_rng_state())
    assert torch.equal(gpu, torch.cuda.get_rng_state())
