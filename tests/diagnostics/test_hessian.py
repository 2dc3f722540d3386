"""HessianOperator, Lanczos and power iteration against dense float64 references."""

from __future__ import annotations

import pytest
import torch

from losslab._errors import ConfigError, DataError
from losslab.diagnostics import (
    HessianOperator,
    MatrixOperator,
    hvp,
    lanczos,
    lanczos_tridiagonal,
    power_iteration,
)
from tests.diagnostics.helpers import (
    assert_same_state,
    bn_net,
    dense_hessian,
    mse,
    regression_batch,
    rotated,
    snapshot,
    tiny_mlp,
    wishart,
)


def _ref_eigs(H):
    return torch.linalg.eigvalsh(H)


def test_operator_matches_dense_torch_func_hessian():
    model, batch = tiny_mlp(), regression_batch()
    H_ref = dense_hessian(model, mse, batch)
    op = HessianOperator(model, mse, batch)
    assert op.n == H_ref.shape[0] == sum(p.numel() for p in model.parameters())
    torch.testing.assert_close(op.dense(), H_ref, rtol=1e-10, atol=1e-12)
    assert op.loss == pytest.approx(float(mse(model, batch).detach()), rel=1e-12)


def test_operator_matches_dense_in_train_mode_with_batchnorm():
    model, batch = bn_net(), regression_batch()
    model.eval()
    H_ref = dense_hessian(model, mse, batch, mode="train")
    op = HessianOperator(model, mse, batch, mode="train")
    torch.testing.assert_close(op.dense(), H_ref, rtol=1e-10, atol=1e-12)
    assert not model.training
    # and against central differences of the gradient (no second-order autograd at all)
    eps, flat0 = 1e-6, torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def grad_at(flat):
        m2 = bn_net()
        torch.nn.utils.vector_to_parameters(flat, m2.parameters())
        m2.train()
        loss = mse(m2, batch)
        return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(m2.parameters()))])

    E = torch.eye(op.n, dtype=torch.float64)
    H_fd = torch.stack([(grad_at(flat0 + eps * e) - grad_at(flat0 - eps * e)) / (2 * eps) for e in E])
    torch.testing.assert_close(op.dense(), H_fd, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("which", ["LA", "SA", "LM"])
def test_lanczos_top_k_on_mlp_within_1e6(which):
    model, batch = tiny_mlp(width=6), regression_batch()
    ev = _ref_eigs(dense_hessian(model, mse, batch))
    order = {"LA": torch.argsort(-ev), "SA": torch.argsort(ev), "LM": torch.argsort(-ev.abs())}[which]
    res = lanczos(HessianOperator(model, mse, batch), k=3, which=which, tol=1e-10, seed=3)
    torch.testing.assert_close(res.eigenvalues, ev[order[:3]], rtol=1e-6, atol=1e-9 * float(ev.abs().max()))
    assert res.converged


def test_lanczos_eigenvectors_are_eigenvectors():
    H = wishart()
    res = lanczos(H, k=4, tol=1e-12, return_vectors=True)
    V = res.eigenvectors
    for i in range(4):
        torch.testing.assert_close(H @ V[i], res.eigenvalues[i] * V[i], atol=1e-8, rtol=0)
    torch.testing.assert_close(V @ V.T, torch.eye(4, dtype=torch.float64), atol=1e-8, rtol=0)


def test_indefinite_quadratic_top_algebraic_is_3_and_largest_magnitude_is_minus_5():
    eigs = [3.0, -5.0, *torch.linspace(-4.5, 2.5, 18).tolist()]
    H = rotated(eigs)
    assert float(lanczos(H, which="LA").eigenvalues[0]) == pytest.approx(3.0, rel=1e-9)
    assert float(lanczos(H, which="LM").eigenvalues[0]) == pytest.approx(-5.0, rel=1e-9)
    assert float(lanczos(H, which="SA").eigenvalues[0]) == pytest.approx(-5.0, rel=1e-9)
    assert float(power_iteration(H, which="LA", tol=1e-12, max_iter=20000).eigenvalues[0]) == pytest.approx(3.0, rel=1e-5)
    assert float(power_iteration(H, which="LM", tol=1e-12, max_iter=20000).eigenvalues[0]) == pytest.approx(-5.0, rel=1e-5)


def test_two_distinct_eigenvalues_repeated_found_with_restart():
    H = rotated([3.0] * 3 + [-5.0] * 7, seed=2)
    res = lanczos(H, k=4, which="LA", tol=1e-12)
    torch.testing.assert_close(res.eigenvalues, torch.tensor([3.0, 3.0, 3.0, -5.0], dtype=torch.float64))


def test_wishart_top5():
    H = wishart()
    ev = torch.sort(_ref_eigs(H), descending=True).values
    res = lanczos(H, k=5, tol=1e-10)
    torch.testing.assert_close(res.eigenvalues, ev[:5], rtol=1e-6, atol=0)


def test_power_iteration_deflation_top3_wishart():
    H = wishart(20, 30)
    ev = torch.sort(_ref_eigs(H), descending=True).values
    res = power_iteration(H, k=3, which="LA", tol=1e-13, max_iter=20000)
    torch.testing.assert_close(res.eigenvalues, ev[:3], rtol=1e-5, atol=0)


def test_lanczos_tridiagonal_is_gauss_quadrature_for_a_given_start():
    H = wishart(30, 40, seed=5)
    g = torch.Generator().manual_seed(9)
    v = torch.randn(30, generator=g, dtype=torch.float64)
    a, b, _ = lanczos_tridiagonal(H, 6, start=v)
    T = torch.diag(torch.tensor(a)) + torch.diag(torch.tensor(b), 1) + torch.diag(torch.tensor(b), -1)
    theta, S = torch.linalg.eigh(T)
    u = v / v.norm()
    for p in range(0, 12):  # exact for degree <= 2m - 1 = 11
        quad = float((S[0] ** 2 * theta ** p).sum())
        exact = float(u @ torch.linalg.matrix_power(H, p) @ u)
        assert quad == pytest.approx(exact, rel=1e-8)


def test_seeded_reproducibility_and_generator_argument():
    op = HessianOperator(tiny_mlp(), mse, regression_batch())
    r1 = lanczos(op, k=2, seed=7, max_iter=10, tol=1e-30)
    r2 = lanczos(op, k=2, seed=torch.Generator().manual_seed(7), max_iter=10, tol=1e-30)
    assert torch.equal(r1.eigenvalues, r2.eigenvalues)
    r3 = lanczos(op, k=2, seed=8, max_iter=10, tol=1e-30)
    assert not torch.equal(r1.eigenvalues, r3.eigenvalues)


def test_global_rng_untouched():
    op = HessianOperator(tiny_mlp(), mse, regression_batch())
    state = torch.get_rng_state()
    lanczos(op, k=1, seed=0)
    power_iteration(op, seed=0)
    assert torch.equal(state, torch.get_rng_state())


@pytest.mark.parametrize("mode", ["eval", "train", "current"])
def test_batchnorm_buffers_bit_identical_and_modes_restored(mode):
    model, batch = bn_net(), regression_batch()
    model.train()
    model[3].eval()  # a mixed state must come back exactly
    with torch.no_grad():
        model[1].running_mean.uniform_(-1, 1)
    snap = snapshot(model)
    flags = [m.training for m in model.modules()]
    op = HessianOperator(model, mse, batch, mode=mode)
    lanczos(op, k=2)
    power_iteration(op, max_iter=5)
    hvp(model, mse, batch, torch.ones(op.n, dtype=torch.float64), mode=mode)
    assert_same_state(model, snap)
    assert [m.training for m in model.modules()] == flags


def test_mode_restored_on_error():
    model = bn_net()
    model.train()

    def bad(m, b):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        HessianOperator(model, bad, regression_batch())
    assert model.training and all(m.training for m in model.modules())


def test_hvp_dict_matches_dense_and_loss_linear_in_params_gives_zero():
    model, batch = tiny_mlp(), regression_batch()
    H = dense_hessian(model, mse, batch)
    v = torch.arange(H.shape[0], dtype=torch.float64) / H.shape[0]
    out = hvp(model, mse, batch, v)
    flat = torch.cat([out[n].reshape(-1) for n, _ in model.named_parameters()])
    torch.testing.assert_close(flat, H @ v)
    lin = torch.nn.Linear(3, 1).double()
    op = HessianOperator(lin, lambda m, b: m(b).sum(), torch.ones(2, 3, dtype=torch.float64))
    assert torch.equal(op.matvec(torch.ones(op.n, dtype=torch.float64)), torch.zeros(op.n, dtype=torch.float64))


def test_to_scipy_eigsh_agrees():
    from scipy.sparse.linalg import eigsh

    op = HessianOperator(tiny_mlp(), mse, regression_batch())
    val = eigsh(op.to_scipy(), k=1, which="LA", tol=1e-12)[0][0]
    assert float(lanczos(op, tol=1e-12).eigenvalues[0]) == pytest.approx(val, rel=1e-8)


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("k", [0, -1, 10_000, 1.5, True])
def test_bad_k(k):
    op = MatrixOperator(wishart(5, 8))
    for fn in (lanczos, power_iteration):
        with pytest.raises(ConfigError, match="k must be"):
            fn(op, k=k)


@pytest.mark.parametrize("seed", [1.5, "0", None, True, -1])
def test_bad_seed(seed):
    with pytest.raises(ConfigError, match="seed"):
        lanczos(wishart(5, 8), seed=seed)


def test_bad_which_tol_max_iter():
    H = wishart(5, 8)
    with pytest.raises(ConfigError, match="which"):
        lanczos(H, which="SM")
    with pytest.raises(ConfigError, match="tol"):
        lanczos(H, tol=0.0)
    with pytest.raises(ConfigError, match="max_iter"):
        lanczos(H, k=3, max_iter=2)


def test_non_finite_loss_empty_batch_and_non_scalar_leave_model_unchanged():
    model = tiny_mlp()
    snap = snapshot(model)
    x, y = regression_batch()
    xnan = x.clone()
    xnan[0, 0] = float("nan")
    with pytest.raises(DataError, match="non-finite"):
        HessianOperator(model, mse, (xnan, y))
    with pytest.raises(DataError, match="0 rows"):
        HessianOperator(model, mse, (x[:0], y[:0]))
    with pytest.raises(DataError, match="empty"):
        HessianOperator(model, mse, ())
    with pytest.raises(DataError, match="scalar"):
        HessianOperator(model, lambda m, b: m(b[0]), (x, y))
    with pytest.raises(ConfigError, match=r"nn\.Module"):
        HessianOperator(lambda x: x, mse, (x, y))
    with pytest.raises(ConfigError, match="callable"):
        HessianOperator(model, "mse", (x, y))
    assert_same_state(model, snap)
    assert not torch.isnan(xnan[1:]).any()


def test_bad_operator_inputs():
    with pytest.raises(DataError, match="square"):
        MatrixOperator(torch.ones(2, 3))
    with pytest.raises(DataError, match="symmetric"):
        MatrixOperator(torch.tensor([[1.0, 2.0], [0.0, 1.0]]))
    with pytest.raises(DataError, match="NaN"):
        MatrixOperator(torch.tensor([[float("nan")]]))
    with pytest.raises(ConfigError, match="HessianOperator"):
        lanczos([[1.0]])
    op = HessianOperator(tiny_mlp(), mse, regression_batch())
    with pytest.raises(DataError, match="shape"):
        op.matvec(torch.ones(3, dtype=torch.float64))
