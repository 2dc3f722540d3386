"""Hessian-vector products of ``loss_fn(model, batch)`` with respect to the model's parameters."""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from losslab._errors import ConfigError, DataError
from losslab.diagnostics._common import (
    LossFn,
    batch_seed,
    check_batch,
    check_loss_fn,
    check_model,
    evaluate_loss,
    flatten,
    model_seed,
    trainable_names,
    unflatten,
)
from losslab.diagnostics._common import iter_tensors as _tensors

__all__ = ["DatasetHessianOperator", "HessianOperator", "LinearOperatorLike", "MatrixOperator", "as_operator",
           "hvp"]


class LinearOperatorLike(Protocol):
    """What the eigen-solvers need: a size ``n``, a ``device`` and a float64 ``matvec``."""

    n: int
    device: torch.device
    n_matvec: int

    def matvec(self, v: torch.Tensor) -> torch.Tensor: ...


class HessianOperator:
    r"""The Hessian :math:`H = \nabla^2_\theta\, \ell(\theta)` of ``loss_fn(model, batch)`` as a linear operator.

    The operator is a *snapshot*: at construction it copies the parameters, evaluates the loss once and keeps the
    graph of :math:`g = \nabla_\theta \ell` (``create_graph=True``); each :meth:`matvec` is one double-backward
    pass :math:`Hv = \nabla_\theta (g^\top v)`, so the forward pass is paid once however many products are taken.
    Later changes to the model do not affect the operator: build a new one after each training step.

    Side effects: none. Buffers are cloned (BatchNorm running statistics stay bit-identical even in train mode)
    and the ``training`` flag of every sub-module is restored (see :mod:`losslab.diagnostics._common`).

    Randomness: the forward pass runs on a private copy of the global RNG (CPU and the model's CUDA devices)
    seeded with ``seed``, so with ``mode="train"`` (or ``"current"`` on a model in train mode) the dropout masks are
    fixed by ``seed`` and the operator is the Hessian of the loss with those masks. The caller's global RNG state
    is left bit-identical, so measuring mid-training does not change the rest of the run.

    Args:
        model: the network.
        loss_fn: ``loss_fn(model, batch) -> scalar tensor`` (the mean loss of the batch, typically).
        batch: anything ``loss_fn`` accepts; tensors with zero rows are rejected.
        params: names of the parameters to differentiate (default: every parameter with ``requires_grad``).
        mode: ``"eval"`` (default; dropout off, BatchNorm uses running statistics), ``"train"`` (the training-mode
            loss, BatchNorm uses batch statistics) or ``"current"`` (the model's own flags).
        seed: int (default 0) or :class:`torch.Generator` (one int is drawn from it) seeding the private RNG of the
            forward pass (dropout masks); irrelevant when the forward pass draws no random numbers.

    Attributes:
        n: number of differentiated scalars; ``loss``: the loss value; ``grad``: the flat gradient (detached);
        ``n_matvec``: Hessian-vector products taken so far; ``seed``: the int seed of the forward pass.

    Example:
        >>> import torch
        >>> model = torch.nn.Linear(3, 1, bias=False)
        >>> x = torch.eye(3)
        >>> op = HessianOperator(model, lambda m, b: 0.5 * (m(b) ** 2).sum(), x)
        >>> torch.allclose(op.dense(), torch.eye(3, dtype=torch.float64))
        True

    References:
        Pearlmutter, "Fast exact multiplication by the Hessian", Neural Computation, 1994.

    Notes:
        PyHessian also reuses one ``create_graph`` gradient, but calls ``model.eval()`` without restoring it.
        Matvecs take and return float64 vectors; the product itself runs in the parameters' dtype.
    """

    def __init__(self, model: nn.Module, loss_fn: LossFn, batch: Any, *, params: Any = None,
                 mode: str = "eval", seed: int | torch.Generator = 0) -> None:
        check_model(model)
        check_loss_fn(loss_fn)
        check_batch(batch)
        self.seed = model_seed(seed)
        self.names = trainable_names(model, params)
        named = dict(model.named_parameters())
        self._leaves = [named[n].detach().clone().requires_grad_(True) for n in self.names]
        loss = evaluate_loss(model, loss_fn, batch, dict(zip(self.names, self._leaves)), mode, seed=self.seed)
        self.loss = float(loss.item())
        self.n = int(sum(t.numel() for t in self._leaves))
        self.device = self._leaves[0].device
        self.dtype = self._leaves[0].dtype
        self.n_matvec = 0
        grads: tuple[torch.Tensor | None, ...] = (None,) * len(self._leaves)
        if loss.requires_grad:
            grads = torch.autograd.grad(loss, self._leaves, create_graph=True, allow_unused=True)
        self._grads = [torch.zeros_like(t) if g is None else g for t, g in zip(self._leaves, grads)]
        self._flat_grad = flatten(self._grads)
        self.grad = self._flat_grad.detach().clone()
        if not bool(torch.isfinite(self.grad).all()):
            raise DataError("the gradient of the loss has NaN/Inf entries (overflow?); curvature is undefined there")

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """:math:`Hv` for a flat vector ``v`` of length ``n`` (returned in float64)."""
        if not isinstance(v, torch.Tensor) or v.shape != (self.n,):
            shape = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
            raise DataError(f"matvec needs a flat tensor of shape ({self.n},), got {shape}")
        if not bool(torch.isfinite(v).all()):
            raise DataError("matvec got a vector with NaN/Inf entries; pass a finite vector")
        self.n_matvec += 1
        if not self._flat_grad.requires_grad:  # the loss is at most linear in the parameters
            return torch.zeros(self.n, dtype=torch.float64, device=self.device)
        out = torch.autograd.grad(self._flat_grad, self._leaves, grad_outputs=v.to(self.device, self.dtype),
                                  retain_graph=True, allow_unused=True)
        return flatten([torch.zeros_like(t) if o is None else o for t, o in zip(self._leaves, out)]).to(torch.float64)

    def dense(self) -> torch.Tensor:
        """The full ``n x n`` Hessian (float64) from ``n`` products: for small models and tests only."""
        eye = torch.eye(self.n, dtype=torch.float64, device=self.device)
        return torch.stack([self.matvec(eye[i]) for i in range(self.n)])

    def unflatten(self, v: torch.Tensor) -> dict[str, torch.Tensor]:
        """A flat vector split into ``{parameter name: tensor}``."""
        return dict(zip(self.names, unflatten(v, self._leaves)))

    def to_scipy(self) -> Any:
        """A :class:`scipy.sparse.linalg.LinearOperator` (float64) over this operator, e.g. for ``eigsh``."""
        from scipy.sparse.linalg import LinearOperator

        def mv(x: np.ndarray) -> np.ndarray:
            v = torch.as_tensor(np.asarray(x, dtype=np.float64).reshape(-1), device=self.device)
            return self.matvec(v).cpu().numpy()

        return LinearOperator((self.n, self.n), matvec=mv, dtype=np.float64)


class DatasetHessianOperator:
    r"""The Hessian of a loss averaged over several batches, :math:`H = \sum_b w_b \nabla^2 \ell_b`, memory-light.

    Each product loops over the batches and, for each, evaluates the loss, its ``create_graph`` gradient and one
    double backward, then frees the graph: memory is that of one batch, cost one forward + two backwards per
    batch per product. This is how Cohen et al. compute the full-batch sharpness (physical batches of 1000 summed).
    With ``weights=None`` the weights are the batches' sizes (first dimension of the first tensor) over their total,
    so the operator is the Hessian of the mean loss over all samples when ``loss_fn`` returns a per-batch mean.

    Randomness: the forward pass of batch ``i`` runs on a private copy of the global RNG seeded with
    ``seed + i`` (mod 2**64), at construction and again in every product, so every product sees the same dropout
    masks (``mode="train"`` or ``"current"``): the operator is one fixed symmetric matrix, the Hessian of the loss
    with those masks, and Lanczos on it is reproducible. The caller's global RNG (CPU and CUDA) is untouched. With
    a single batch the operator equals ``HessianOperator(model, loss_fn, batch, seed=seed)``.

    Args:
        model, loss_fn, params, mode: as in :class:`HessianOperator`.
        batches: a non-empty sequence of batches.
        weights: optional weights, one per batch.
        seed: int (default 0) or :class:`torch.Generator` (one int is drawn from it at construction); batch ``i``
            is seeded with ``seed + i``. The int is kept as the attribute ``seed``.

    Example:
        >>> import torch
        >>> model = torch.nn.Linear(2, 1, bias=False)
        >>> x = torch.eye(2)
        >>> op = DatasetHessianOperator(model, lambda m, b: (m(b) ** 2).mean(), [x[:1], x[1:]])
        >>> op.matvec(torch.ones(2, dtype=torch.float64))
        tensor([1., 1.], dtype=torch.float64)

    References:
        Cohen et al., "Gradient Descent on Neural Networks Typically Occurs at the Edge of Stability",
        arXiv:2103.00065, 2021 (their ``compute_hvp`` sums over physical batches).
    """

    def __init__(self, model: nn.Module, loss_fn: LossFn, batches: Any, *, weights: Any = None, params: Any = None,
                 mode: str = "eval", seed: int | torch.Generator = 0) -> None:
        check_model(model)
        check_loss_fn(loss_fn)
        if not isinstance(batches, (list, tuple)) or len(batches) == 0:
            raise DataError("batches must be a non-empty list or tuple of batches")
        for b in batches:
            check_batch(b)
        if weights is None:
            sizes = []
            for b in batches:
                t = next((t for t in _tensors(b) if t.dim() > 0), None)
                if t is None:
                    raise DataError("cannot infer a batch size: pass weights=[...] explicitly")
                sizes.append(int(t.shape[0]))
            w = [s / sum(sizes) for s in sizes]
        else:
            w = [float(x) for x in weights]
            if len(w) != len(batches) or not all(x == x and abs(x) != float("inf") for x in w):
                raise ConfigError("weights must be finite numbers, one per batch")
        self.model, self.loss_fn, self.batches, self.weights = model, loss_fn, list(batches), w
        self.params, self.mode, self.seed = params, mode, model_seed(seed)
        first = self._batch_operator(0)
        self.names, self.n, self.device, self.dtype = first.names, first.n, first.device, first.dtype
        self._like = first._leaves
        losses = [first.loss] + [self._batch_operator(i).loss for i in range(1, len(self.batches))]
        self.loss = float(sum(wi * li for wi, li in zip(w, losses)))
        self.n_matvec = 0

    def _batch_operator(self, index: int) -> HessianOperator:
        """The Hessian of batch ``index``, its forward pass seeded with ``seed + index`` (the same masks each time)."""
        return HessianOperator(self.model, self.loss_fn, self.batches[index], params=self.params, mode=self.mode,
                               seed=batch_seed(self.seed, index))

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        r""":math:`\sum_b w_b H_b v` (float64); every product uses the same per-batch seeds, hence the same masks."""
        out = torch.zeros(self.n, dtype=torch.float64, device=self.device)
        for i, wb in enumerate(self.weights):
            out += wb * self._batch_operator(i).matvec(v)
        self.n_matvec += 1
        return out

    def unflatten(self, v: torch.Tensor) -> dict[str, torch.Tensor]:
        """A flat vector split into ``{parameter name: tensor}``."""
        return dict(zip(self.names, unflatten(v, self._like)))


class MatrixOperator:
    """A dense symmetric matrix as a linear operator (for tests, toy problems and precomputed Hessians).

    Args:
        matrix: a square symmetric tensor (converted to float64).

    Example:
        >>> import torch
        >>> MatrixOperator(torch.diag(torch.tensor([3.0, -5.0]))).matvec(torch.ones(2, dtype=torch.float64))
        tensor([ 3., -5.], dtype=torch.float64)
    """

    def __init__(self, matrix: torch.Tensor) -> None:
        if not isinstance(matrix, torch.Tensor) or matrix.dim() != 2 or matrix.shape[0] != matrix.shape[1]:
            shape = tuple(matrix.shape) if isinstance(matrix, torch.Tensor) else type(matrix).__name__
            raise DataError(f"need a square matrix, got {shape}")
        if matrix.shape[0] == 0:
            raise DataError("need a non-empty square matrix, got shape (0, 0)")
        m = matrix.detach().to(torch.float64)
        if not bool(torch.isfinite(m).all()):
            raise DataError("the matrix has NaN/Inf entries")
        if not torch.allclose(m, m.T, rtol=1e-10, atol=1e-12 * float(m.abs().max().clamp_min(1.0))):
            raise DataError("the matrix is not symmetric; Lanczos needs a symmetric operator (use (A + A.T) / 2)")
        self.matrix = m
        self.n = int(m.shape[0])
        self.device = m.device
        self.n_matvec = 0

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """The product ``matrix @ v`` in float64."""
        self.n_matvec += 1
        return self.matrix @ v.to(torch.float64)


def as_operator(op: Any) -> LinearOperatorLike:
    """``op`` itself if it has ``n`` and ``matvec``; a :class:`MatrixOperator` for a square tensor.

    Any object with an int ``n`` and a float64 ``matvec(v)`` works with the eigen-solvers; ``device`` defaults to the
    CPU and a ``n_matvec`` counter is added when missing.

    Example:
        >>> import torch
        >>> as_operator(torch.eye(3)).n
        3
    """
    if isinstance(op, torch.Tensor):
        return MatrixOperator(op)
    if hasattr(op, "matvec") and hasattr(op, "n"):
        if not hasattr(op, "n_matvec"):
            op.n_matvec = 0
        if not hasattr(op, "device"):
            op.device = torch.device("cpu")
        return op  # type: ignore[no-any-return]
    raise ConfigError(
        f"expected a HessianOperator, a MatrixOperator or a square tensor, got {type(op).__name__}; "
        "build one with HessianOperator(model, loss_fn, batch)"
    )


def hvp(model: nn.Module, loss_fn: LossFn, batch: Any, vector: torch.Tensor | dict[str, torch.Tensor], *,
        mode: str = "eval", seed: int | torch.Generator = 0) -> dict[str, torch.Tensor]:
    r"""One Hessian-vector product :math:`Hv` of ``loss_fn(model, batch)``, shaped like the parameters.

    Args:
        model, loss_fn, batch, mode, seed: as in :class:`HessianOperator`.
        vector: a flat tensor of length ``n`` or a ``{parameter name: tensor}`` dict covering every trainable
            parameter.

    Returns:
        ``{parameter name: tensor}`` in the parameters' dtype.

    Example:
        >>> import torch
        >>> model = torch.nn.Linear(2, 1, bias=False)
        >>> out = hvp(model, lambda m, b: (m(b) ** 2).sum(), torch.eye(2), torch.tensor([1.0, 0.0]))
        >>> out["weight"]
        tensor([[2., 0.]])

    References:
        Pearlmutter, "Fast exact multiplication by the Hessian", Neural Computation, 1994.
    """
    op = HessianOperator(model, loss_fn, batch, mode=mode, seed=seed)
    if isinstance(vector, dict):
        missing = [n for n in op.names if n not in vector]
        if missing:
            raise DataError(f"vector misses parameters {missing}; give one tensor per trainable parameter")
        flat = flatten([vector[n].to(torch.float64) for n in op.names])
    else:
        flat = vector.to(torch.float64) if isinstance(vector, torch.Tensor) else vector
    out = op.matvec(flat)
    return {k: t.to(op.dtype) for k, t in op.unflatten(out).items()}
