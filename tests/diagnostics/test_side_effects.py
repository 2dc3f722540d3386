"""Every public routine leaves a BatchNorm model bit-identical and restores every sub-module's training flag."""

from __future__ import annotations

import pytest
import torch

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
from tests.diagnostics.helpers import assert_same_state, bn_net, ce, mse, regression_batch, snapshot

X, Y = regression_batch()
LABELS = torch.tensor([0, 1] * 8)



def per_sample(m, b):
    return ((m(b[0]) - b[1]) ** 2).mean(1)


def _adam(model):
    opt = torch.optim.Adam(model.parameters())
    m2 = bn_net()
    m2.load_state_dict(model.state_dict())
    opt2 = torch.optim.Adam(m2.parameters())
    opt2.zero_grad()
    mse(m2, (X, Y)).backward()
    opt2.step()
    # copy the optimizer state onto the original parameters without stepping the original model
    for p, p2 in zip(model.parameters(), m2.parameters()):
        opt.state[p] = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in opt2.state[p2].items()}
    return opt


ROUTINES = {
    "operator+lanczos": lambda m, mode: lanczos(HessianOperator(m, mse, (X, Y), mode=mode), 2),
    "power": lambda m, mode: power_iteration(HessianOperator(m, mse, (X, Y), mode=mode), max_iter=5),
    "hvp": lambda m, mode: hvp(m, mse, (X, Y), torch.ones(34, dtype=torch.float64), mode=mode),
    "hutchinson+slq": lambda m, mode: (hutchinson_trace(HessianOperator(m, mse, (X, Y), mode=mode), 3),
                                       spectral_density(HessianOperator(m, mse, (X, Y), mode=mode), 5)),
    "dataset-operator": lambda m, mode: lanczos(DatasetHessianOperator(m, mse, [(X[:8], Y[:8]), (X[8:], Y[8:])],
                                                                       mode=mode), 1, max_iter=5),
    "classwise": lambda m, mode: classwise_spectra(m, ce, (X, LABELS), n_iter=5, mode=mode),
    "tracker": lambda m, mode: SharpnessTracker(mse, (X, Y), mode=mode, max_iter=5)(m, 0),
    "adam": lambda m, mode: adam_preconditioned_sharpness(m, mse, (X, Y), _adam(m), max_iter=5, mode=mode),
    "hessian-dirs": lambda m, mode: hessian_directions(m, mse, (X, Y), 2, max_iter=6, mode=mode),
    "line+plane": lambda m, mode: (loss_line(m, mse, (X, Y), random_direction(m), alphas=[0.5], mode=mode),
                                   loss_plane(m, mse, (X, Y), random_direction(m), random_direction(m, seed=1),
                                              alphas=[0.5], betas=[0.1], mode=mode)),
    "interpolation": lambda m, mode: (linear_interpolation(m, mse, (X, Y), m, bn_net(3), alphas=[0.5], mode=mode),
                                      layerwise_barriers(m, mse, (X, Y), m, bn_net(3), alphas=[0.5], mode=mode)),
    "sample-size": lambda m, mode: sample_size_loss_change(m, per_sample, (X, Y), n_points=2, mode=mode),
    "plasticity": lambda m, mode: (collect_features(m, X, mode=mode), plasticity_report(m, (X,), mode=mode)),
    "gradcov": lambda m, mode: gradient_covariance(m, per_sample, (X, Y), mode=mode),
    "sensitivity": lambda m, mode: input_sensitivity(m, mse, (X, Y), mode=mode),
    "ntk+alignment": lambda m, mode: (empirical_ntk(m, X, mode="eval"), tangent_alignment(m, X, LABELS, mode="eval")),
}


@pytest.mark.parametrize("mode", ["eval", "train"])
@pytest.mark.parametrize("name", sorted(ROUTINES))
def test_routine_has_no_side_effects(name, mode):
    model = bn_net()
    with torch.no_grad():
        model[1].running_mean.uniform_(-1, 1)
        model[1].running_var.uniform_(0.5, 2)
    model.train()
    model[3].eval()  # a mixed state must come back exactly
    flags = [m.training for m in model.modules()]
    snap = snapshot(model)
    rng = torch.get_rng_state()
    ROUTINES[name](model, mode)
    assert_same_state(model, snap)
    assert [m.training for m in model.modules()] == flags
    assert all(len(m._forward_hooks) == 0 for m in model.modules())
    assert all(p.grad is None for p in model.parameters())
    if name not in ("interpolation", "adam"):  # their set-up builds models with bn_net(), which seeds the RNG
        assert torch.equal(rng, torch.get_rng_state())
