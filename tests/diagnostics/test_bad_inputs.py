"""Spec table of bad inputs for every public entry point: the error class, the message, and nothing modified."""

from __future__ import annotations

import pytest
import torch

from losslab._errors import ConfigError, DataError
from losslab.diagnostics import (
    ContinualBackprop,
    HessianOperator,
    SharpnessTracker,
    SpectralRegularizer,
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
    lanczos_tridiagonal,
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
from tests.diagnostics.helpers import (
    assert_same_state,
    ce,
    mse,
    regression_batch,
    snapshot,
    tiny_mlp,
    wishart,
)

MODEL = tiny_mlp()
X, Y = regression_batch()
EMPTY = (X[:0], Y[:0])
XNAN = X.clone()
XNAN[3, 1] = float("inf")
LABELS = torch.tensor([0, 1] * 8)
H = wishart(6, 9)


def per_sample(m, b):
    return ((m(b[0]) - b[1]) ** 2).mean(1)


CASES = [
    ("hvp-missing-key", lambda: hvp(MODEL, mse, (X, Y), {"0.weight": torch.zeros(5, 3)}), DataError, "misses"),
    ("hvp-empty", lambda: hvp(MODEL, mse, EMPTY, torch.zeros(37)), DataError, "0 rows"),
    ("hvp-nonfinite", lambda: hvp(MODEL, mse, (XNAN, Y), torch.zeros(37)), DataError, "non-finite"),
    ("lanczos-k0", lambda: lanczos(H, 0), ConfigError, "k must be"),
    ("lanczos-k>n", lambda: lanczos(H, 7), ConfigError, "k must be"),
    ("lanczos-seed", lambda: lanczos(H, seed=1.0), ConfigError, "seed"),
    ("power-seed", lambda: power_iteration(H, seed="x"), ConfigError, "seed"),
    ("power-max-iter", lambda: power_iteration(H, max_iter=0), ConfigError, "max_iter"),
    ("tridiag-n-iter", lambda: lanczos_tridiagonal(H, 0), ConfigError, "n_iter"),
    ("tridiag-start", lambda: lanczos_tridiagonal(H, 2, start=torch.ones(3)), DataError, "start"),
    ("hutchinson-k", lambda: hutchinson_trace(H, 0), ConfigError, "n_samples"),
    ("slq-vectors", lambda: spectral_density(H, 3, 0), ConfigError, "n_vectors"),
    ("classwise-empty", lambda: classwise_spectra(MODEL, ce, EMPTY), DataError, "0 rows"),
    ("classwise-seed", lambda: classwise_spectra(MODEL, ce, (X, LABELS), seed=None), ConfigError, "seed"),
    ("tracker-tol", lambda: SharpnessTracker(mse, (X, Y), tol=-1.0), ConfigError, "tol"),
    ("tracker-seed", lambda: SharpnessTracker(mse, (X, Y), seed="0"), ConfigError, "seed"),
    ("tracker-step", lambda: SharpnessTracker(mse, (X, Y))(MODEL, -1), ConfigError, "step"),
    ("adam-not-adam", lambda: adam_preconditioned_sharpness(MODEL, mse, (X, Y), torch.optim.SGD(MODEL.parameters(),
                                                                                                lr=0.1)),
     ConfigError, "first optimizer"),
    ("direction-seed", lambda: random_direction(MODEL, seed=True), ConfigError, "seed"),
    ("hessian-dirs-empty", lambda: hessian_directions(MODEL, mse, EMPTY), DataError, "0 rows"),
    ("line-nonfinite", lambda: loss_line(MODEL, mse, (XNAN, Y), random_direction(MODEL)), DataError, "non-finite"),
    ("plane-bad-d2", lambda: loss_plane(MODEL, mse, (X, Y), random_direction(MODEL), [1]), ConfigError, "d2"),
    ("interp-not-state", lambda: linear_interpolation(MODEL, mse, (X, Y), 3, MODEL), ConfigError, "state_dict"),
    ("layerwise-empty", lambda: layerwise_barriers(MODEL, mse, EMPTY, MODEL, MODEL), DataError, "0 rows"),
    ("sample-size-points", lambda: sample_size_loss_change(MODEL, per_sample, (X, Y), n_points=0), ConfigError,
     "n_points"),
    ("collect-empty", lambda: collect_features(MODEL, X[:0]), DataError, "0 rows"),
    ("report-threshold", lambda: plasticity_report(MODEL, X, dormant_threshold=2.0), ConfigError, "threshold"),
    ("gradcov-nonfinite", lambda: gradient_covariance(MODEL, per_sample, (XNAN, Y)), DataError, "NaN/Inf"),
    ("spectral-no-layers", lambda: SpectralRegularizer(torch.nn.Tanh()), ConfigError, "no nn.Linear"),
    ("cbp-maturity", lambda: ContinualBackprop([MODEL[0], MODEL[2]], maturity_threshold=-1), ConfigError,
     "maturity"),
    ("sensitivity-empty", lambda: input_sensitivity(MODEL, mse, EMPTY), DataError, "0 rows"),
    ("sensitivity-nonfinite", lambda: input_sensitivity(MODEL, mse, (XNAN, Y)), DataError, "non-finite"),
    ("ntk-nonfinite", lambda: empirical_ntk(MODEL, XNAN), DataError, "NaN/Inf"),
    ("alignment-labels", lambda: tangent_alignment(MODEL, X, torch.tensor([-1] * 16)), DataError, "non-negative"),
    ("operator-params", lambda: HessianOperator(MODEL, mse, (X, Y), params=["nope"]), ConfigError, "unknown"),
    ("operator-mode", lambda: HessianOperator(MODEL, mse, (X, Y), mode="training"), ConfigError, "mode"),
]


@pytest.mark.parametrize(("name", "call", "error", "message"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_raises_clear_error_and_changes_nothing(name, call, error, message):
    snap = snapshot(MODEL)
    x_before, xnan_before = X.clone(), XNAN.clone()
    MODEL.train()
    with pytest.raises(error, match=message):
        call()
    assert_same_state(MODEL, snap)
    assert MODEL.training
    assert torch.equal(X, x_before) and torch.equal(XNAN.nan_to_num(), xnan_before.nan_to_num())
