"""Extreme eigenvalues of a symmetric operator: Lanczos with full reorthogonalisation, and power iteration."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from losslab._errors import DataError
from losslab.diagnostics._common import check_choice, check_float, check_int, make_generator
from losslab.diagnostics._hessian import LinearOperatorLike, as_operator

__all__ = ["EigenResult", "lanczos", "lanczos_tridiagonal", "power_iteration"]

_WHICH = ("LA", "SA", "LM")


@dataclass
class EigenResult:
    """Eigenvalues (float64, ordered by ``which``), optional eigenvectors (``k x n``) and the cost paid.

    ``residuals[i]`` is :math:`\\|Hy_i - \\lambda_i y_i\\|` (Lanczos: the Ritz residual bound; power iteration:
    measured). ``converged`` says whether every requested pair met the tolerance.
    """

    eigenvalues: torch.Tensor
    eigenvectors: torch.Tensor | None
    n_matvec: int
    iterations: int
    converged: bool
    residuals: torch.Tensor
    which: str = "LA"
    history: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (no eigenvectors)."""
        return {"eigenvalues": self.eigenvalues.tolist(), "which": self.which, "n_matvec": self.n_matvec,
                "iterations": self.iterations, "converged": self.converged, "residuals": self.residuals.tolist()}


def _select(theta: np.ndarray, k: int, which: str) -> np.ndarray:
    if which == "LA":
        return np.argsort(-theta, kind="stable")[:k]
    if which == "SA":
        return np.argsort(theta, kind="stable")[:k]
    return np.argsort(-np.abs(theta), kind="stable")[:k]


def _check_common(op: Any, k: int, which: str, tol: float) -> LinearOperatorLike:
    operator = as_operator(op)
    check_int(k, "k", low=1, high=operator.n, hint=f" (the operator has n = {operator.n} eigenvalues)")
    check_choice(which, "which", _WHICH)
    check_float(tol, "tol", low=0.0, low_open=True)
    return operator


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / torch.linalg.vector_norm(v)


def lanczos_tridiagonal(op: Any, n_iter: int, *, seed: int | torch.Generator = 0,
                        start: torch.Tensor | None = None) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
    r"""``n_iter`` Lanczos steps with full reorthogonalisation: the tridiagonal :math:`T` and the basis :math:`Q`.

    Restarts with a fresh random vector orthogonal to the basis when the Krylov space is exhausted (so repeated
    eigenvalues are found too), which leaves a zero off-diagonal entry in :math:`T`.

    Args:
        op: a linear operator (see :func:`losslab.diagnostics.as_operator`).
        n_iter: number of steps (``1 <= n_iter <= n``).
        seed: int or :class:`torch.Generator` for the Gaussian start vector.
        start: optional start vector (normalised here) instead of a random one.

    Returns:
        ``(alpha, beta, Q)``: diagonal (length m), off-diagonal (length m - 1) and the ``m x n`` float64 basis.

    Example:
        >>> import torch
        >>> import numpy as np, torch
        >>> a, b, q = lanczos_tridiagonal(torch.diag(torch.arange(1.0, 5.0)), 4)
        >>> T = np.diag(a) + np.diag(b, 1) + np.diag(b, -1)
        >>> [round(float(x), 6) for x in np.linalg.eigvalsh(T)]
        [1.0, 2.0, 3.0, 4.0]

    References:
        Lanczos, "An iteration method for the solution of the eigenvalue problem of linear differential and integral
        operators", J. Res. Nat. Bur. Standards, 1950; Golub & Van Loan, Matrix Computations, §10.
    """
    operator = as_operator(op)
    m = check_int(n_iter, "n_iter", low=1, high=operator.n, hint=f" (the operator has size n = {operator.n})")
    gen = make_generator(seed)
    alphas, betas, Q, _, _ = _run(operator, m, gen, start, lambda *_: False)
    return alphas, betas, Q


def _random_vector(n: int, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.randn(n, generator=gen, dtype=torch.float64).to(device)


def _run(op: LinearOperatorLike, m: int, gen: torch.Generator, start: torch.Tensor | None, stop: Any,
         ) -> tuple[np.ndarray, np.ndarray, torch.Tensor, int, list[Any]]:
    n, device = op.n, op.device
    Q = torch.zeros(m, n, dtype=torch.float64, device=device)
    q = _unit(_random_vector(n, gen, device) if start is None else start.to(device, torch.float64).reshape(-1))
    if start is not None and (q.shape != (n,) or not bool(torch.isfinite(q).all())):
        raise DataError(f"start must be a finite non-zero vector of length {n}")
    alphas: list[float] = []
    betas: list[float] = []
    scale = 0.0
    j = 0
    extra: list[Any] = []
    for j in range(m):
        Q[j] = q
        w = op.matvec(q)
        a = float(torch.dot(q, w))
        alphas.append(a)
        basis = Q[: j + 1]
        w = w - basis.T @ (basis @ w)  # full reorthogonalisation, twice ("twice is enough")
        w = w - basis.T @ (basis @ w)
        b = float(torch.linalg.vector_norm(w))
        scale = max(scale, abs(a) + b)
        if j == m - 1:
            break
        exhausted = b <= 1e-10 * max(scale, 1e-300)
        # never stop on an exhausted Krylov space: further copies of a repeated eigenvalue may be missing
        if not exhausted and stop(np.asarray(alphas), np.asarray(betas), b, extra):
            break
        if exhausted:  # invariant subspace: restart with a random vector orthogonal to the basis
            for _ in range(3):
                r = _random_vector(n, gen, device)
                r = r - basis.T @ (basis @ r)
                r = r - basis.T @ (basis @ r)
                if float(torch.linalg.vector_norm(r)) > 1e-8:
                    break
            q, b = _unit(r), 0.0
        else:
            q = w / b
        betas.append(b)
    extra.append(b)
    return np.asarray(alphas), np.asarray(betas), Q[: len(alphas)], j + 1, extra


def _tridiag_eig(alphas: np.ndarray, betas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    T = np.diag(alphas) + np.diag(betas, 1) + np.diag(betas, -1)
    return np.linalg.eigh(T)  # type: ignore[return-value]


def lanczos(op: Any, k: int = 1, *, which: str = "LA", tol: float = 1e-8, max_iter: int | None = None,
            seed: int | torch.Generator = 0, return_vectors: bool = False) -> EigenResult:
    r"""The ``k`` extreme eigenvalues of a symmetric operator by Lanczos with full reorthogonalisation.

    Builds the Krylov basis :math:`Q_m` and tridiagonal :math:`T_m = Q_m^\top H Q_m`; the eigenvalues of
    :math:`T_m` (Ritz values :math:`\theta_i`) approximate those of :math:`H`. It stops when every wanted Ritz pair
    has residual :math:`|\beta_m s_{m,i}| \le \mathrm{tol}\cdot\max_j|\theta_j|`, when the Krylov space is exhausted
    (then the values are exact), or after ``max_iter`` steps. Memory: ``max_iter x n`` float64 numbers.

    Args:
        op: a :class:`HessianOperator`, :class:`MatrixOperator` or square symmetric tensor.
        k: number of eigenvalues, ``1 <= k <= n``.
        which: ``"LA"`` largest algebraic (default: the sharpness), ``"SA"`` smallest algebraic, ``"LM"`` largest
            magnitude (what PyHessian calls "top").
        tol: relative residual tolerance.
        max_iter: most Lanczos steps (default ``min(n, max(100, 4k))``).
        seed: int or :class:`torch.Generator` for the start vector.
        return_vectors: also return the unit Ritz vectors (``k x n``).

    Returns:
        :class:`EigenResult`; for ``"LA"`` in descending order, ``"SA"`` ascending, ``"LM"`` by descending magnitude.

    Example:
        >>> import torch
        >>> H = torch.diag(torch.tensor([3.0, -5.0, 1.0]))
        >>> round(float(lanczos(H, k=1).eigenvalues[0]), 9)
        3.0
        >>> round(float(lanczos(H, k=1, which="LM").eigenvalues[0]), 9)
        -5.0

    References:
        Lanczos 1950; Golub & Van Loan, Matrix Computations, §10.1; Ghorbani, Krishnan & Xiao, "An investigation
        into neural net optimization via Hessian eigenvalue density", arXiv:1901.10159, 2019.

    Notes:
        PyHessian's ``eigenvalues()`` (power iteration) returns the largest-*magnitude* values, which is not the
        sharpness when negative curvature dominates; here ``which="LA"`` is the default.
        SciPy's ``eigsh`` (ARPACK, implicit restarts) is the peer; see ``bench/hessian.py``.
    """
    operator = _check_common(op, k, which, tol)
    n = operator.n
    m = check_int(max(min(n, max(100, 4 * k)), k) if max_iter is None else max_iter, "max_iter", low=k, high=n,
                  hint=f" (between k = {k} and n = {n})")
    gen = make_generator(seed)
    start_mv = operator.n_matvec
    history: list[float] = []

    def stop(alphas: np.ndarray, betas: np.ndarray, b: float, extra: list[Any]) -> bool:
        if len(alphas) < k:
            return False
        theta, S = _tridiag_eig(alphas, betas)
        idx = _select(theta, k, which)
        history.append(float(theta[idx[0]]))
        res = np.abs(b * S[-1, idx])
        return bool(np.all(res <= tol * max(np.abs(theta).max(), 1e-300)))

    alphas, betas, Q, iters, extra = _run(operator, m, gen, None, stop)
    theta, S = _tridiag_eig(alphas, betas)
    idx = _select(theta, k, which)
    b_last = extra[-1] if iters < n else 0.0
    res = np.abs(b_last * S[-1, idx])
    converged = bool(np.all(res <= tol * max(np.abs(theta).max(), 1e-300))) or iters == n
    vecs = None
    if return_vectors:
        vecs = (torch.as_tensor(S[:, idx].T.copy(), device=Q.device) @ Q)
        vecs = vecs / torch.linalg.vector_norm(vecs, dim=1, keepdim=True)
    return EigenResult(torch.as_tensor(theta[idx].copy()), vecs, operator.n_matvec - start_mv, iters, converged,
                       torch.as_tensor(res), which, history)


def power_iteration(op: Any, k: int = 1, *, which: str = "LA", tol: float = 1e-6, max_iter: int = 1000,
                    seed: int | torch.Generator = 0) -> EigenResult:
    r"""Extreme eigenvalues by power iteration with deflation: the simple alternative to :func:`lanczos`.

    Iterates :math:`v \leftarrow Bv/\|Bv\|` with the Rayleigh quotient :math:`\lambda = v^\top B v`, projecting out
    the eigenvectors already found, until :math:`|\lambda_t-\lambda_{t-1}| \le \mathrm{tol}\,|\lambda_t|`.
    For ``which="LM"``, :math:`B = H`. For ``"LA"`` (``"SA"``) the operator is shifted,
    :math:`B = H + s I` (:math:`B = -H + sI`) with :math:`s = |\lambda_{LM}(H)|`, so that the largest-magnitude
    eigenvalue of :math:`B` is the wanted algebraic one; the first run to find :math:`s` is skipped when its result
    already answers (``k = 1`` and the sign matches). Convergence is linear in the eigen-gap ratio, usually far
    slower than Lanczos.

    Args:
        op: as in :func:`lanczos`.
        k: number of eigenvalues, ``1 <= k <= n``.
        which: ``"LA"`` (default), ``"SA"`` or ``"LM"``.
        tol: relative change of the Rayleigh quotient that stops an iteration.
        max_iter: most iterations per eigenvalue.
        seed: int or :class:`torch.Generator` for the start vectors.

    Returns:
        :class:`EigenResult` with eigenvectors.

    Example:
        >>> import torch
        >>> r = power_iteration(torch.diag(torch.tensor([3.0, -5.0, 1.0])), tol=1e-12)
        >>> round(float(r.eigenvalues[0]), 6)
        3.0

    References:
        Yao, Gholami, Keutzer & Mahoney, "PyHessian: Neural networks through the lens of the Hessian",
        arXiv:1912.07145, 2020 (power iteration with deflation, relative-change stop rule).

    Notes:
        PyHessian stops at ``tol=1e-3`` and returns largest-magnitude values; its start vectors are unseeded.
    """
    operator = _check_common(op, k, which, tol)
    check_int(max_iter, "max_iter", low=1)
    gen = make_generator(seed)
    start_mv = operator.n_matvec

    history: list[float] = []

    def run(sign: float, shift: float, count: int) -> tuple[list[float], list[torch.Tensor], int, bool]:
        history.clear()
        vals: list[float] = []
        vecs: list[torch.Tensor] = []
        total, ok = 0, True
        for _ in range(count):
            v = _random_vector(operator.n, gen, operator.device)
            lam_prev = None
            done = False
            for _it in range(max_iter):
                for u in vecs:
                    v = v - torch.dot(u, v) * u
                v = _unit(v)
                bv = sign * operator.matvec(v) + shift * v
                total += 1
                lam = float(torch.dot(v, bv))
                if not vecs:
                    history.append(sign * (lam - shift))
                if float(torch.linalg.vector_norm(bv)) == 0.0:
                    done = True
                    break
                v = bv
                if lam_prev is not None and abs(lam - lam_prev) <= tol * max(abs(lam), 1e-300):
                    done = True
                    break
                lam_prev = lam
            for u in vecs:
                v = v - torch.dot(u, v) * u
            v = _unit(v)
            ok = ok and done
            vals.append(lam)
            vecs.append(v)
        return vals, vecs, total, ok

    iters = 0
    if which == "LM":
        vals, vecs, iters, ok = run(1.0, 0.0, k)
        sign, shift = 1.0, 0.0
    else:
        sign = 1.0 if which == "LA" else -1.0
        lm, lm_vecs, iters, ok = run(1.0, 0.0, 1)
        if k == 1 and sign * lm[0] >= 0:
            vals, vecs, shift = lm, lm_vecs, 0.0
        else:
            shift = abs(lm[0])
            vals, vecs, more, ok = run(sign, shift, k)
            iters += more
    eig = torch.tensor([sign * (v - shift) for v in vals], dtype=torch.float64)
    V = torch.stack(vecs)
    cost = operator.n_matvec - start_mv
    res = torch.stack([torch.linalg.vector_norm(operator.matvec(V[i]) - eig[i] * V[i]) for i in range(k)])
    return EigenResult(eig, V, cost, iters, ok, res.cpu(), which, list(history))
