"""EnsLoss: a loss whose gradient is a freshly drawn calibrated (convex, classification-calibrated) derivative."""

from __future__ import annotations

import torch
from torch import Tensor

from losslab._errors import DataError
from losslab.losses._catalogue import register
from losslab.losses._reduce import reduce_loss
from losslab.losses._validate import (
    check_float,
    check_number,
    check_reduction,
    check_same_shape,
    compute_dtype,
)

__all__ = ["ensloss"]


@register("ensloss", summary="stochastic calibrated loss ensemble: draws a convex calibrated derivative each batch",
          reference="Dai, EnsLoss: Stochastic Calibrated Loss Ensembles for Preventing Overfitting in "
                    "Classification, arXiv:2409.00908, 2025",
          module="EnsLoss", family="stochastic", target_kind="binary {0, 1}")
def ensloss(input: Tensor, target: Tensor, *, lam: float = 0.0, generator: torch.Generator | None = None,
            reduction: str = "mean") -> Tensor:
    r"""EnsLoss for binary classification: a random calibrated loss derivative per batch.

    With margins :math:`s_i = \tilde y_i f(x_i)` (:math:`\tilde y = 2y - 1`):

    1. draw :math:`z_i \sim N(0, 1)` and set :math:`d_i = -\mathrm{BC}^{-1}_\lambda(z_i)`, with
       :math:`\mathrm{BC}^{-1}_0(z) = e^z` and :math:`\mathrm{BC}^{-1}_\lambda(z) = \max(1 + \lambda z, 0)^{1/\lambda}`;
    2. sort the d ascending, clip at -1, and give the most negative ones to the smallest margins (so the implied
       loss is convex, and calibrated because φ'(0) < 0);
    3. for :math:`s_i > 1` divide :math:`d_i` by :math:`s_i`, then subtract 1e-6;
    4. :math:`\ell_i = \operatorname{sg}[d_i]\, s_i`, so that :math:`\partial \ell_i / \partial s_i = d_i`.

    Args:
        input: logits f(x) (N,).
        target: labels in {0, 1} (N,), integer, bool or float.
        lam: Box-Cox λ of the derivative distribution (0: log-normal derivatives, the repository's setting).
        generator: torch.Generator for the draws (no global seeding).
        reduction: "mean" | "sum" | "none".

    Returns:
        The surrogate Σ sg[d]·s (reduced). Its value is not a loss to monitor (it is ≤ 0); its gradient is the
        point. Track accuracy or the logistic loss instead.

    Example:
        >>> import torch, losslab.losses as L
        >>> f = torch.tensor([0.5, -1.0, 2.0], requires_grad=True)
        >>> L.ensloss(f, torch.tensor([1, 0, 1]), generator=torch.Generator().manual_seed(0)).backward()
        >>> bool((f.grad * torch.tensor([1.0, -1.0, 1.0]) < 0).all())   # every margin is pushed up
        True

    References:
        Ben Dai, "EnsLoss: Stochastic Calibrated Loss Ensembles for Preventing Overfitting in
        Classification", arXiv:2409.00908, 2025 (ICML). Follows the authors' ``losses.py::ensLoss`` (sorting,
        clipping at -1, the 1/s tail for s > 1 and the -1e-6 shift); the authors' hard-coded CUDA device and global
        RNG are replaced by the input's device and ``generator``.
    """
    name = "ensloss"
    check_reduction(reduction, name)
    lam_ = check_number("lam", lam, name)
    x = check_float("input", input, name)
    if x.dim() != 1:
        raise DataError(f"{name}: input must be a 1-D tensor of logits (N,), got shape {tuple(x.shape)}")
    check_same_shape("input", x, "target", target, name)
    y = target.to(torch.float64)
    if not bool(((y == 0) | (y == 1)).all()):
        raise DataError(f"{name}: target must hold binary labels 0/1; map ±1 labels with (y + 1) // 2")
    dtype = compute_dtype(x)
    margin = (2 * y.to(dtype) - 1) * x.to(dtype)
    with torch.no_grad():
        z = torch.randn(x.shape[0], generator=generator, dtype=dtype, device="cpu").to(x.device)
        bc_inv = torch.exp(z) if lam_ == 0 else torch.clamp(1 + lam_ * z, min=0) ** (1 / lam_)
        d_sorted = torch.sort(-bc_inv).values.clamp_min(-1.0)
        d = torch.empty_like(d_sorted)
        d[torch.argsort(margin, stable=True)] = d_sorted
        d = torch.where(margin > 1, d / margin.clamp_min(1.0), d) - 1e-6
    return reduce_loss(d * margin, reduction)
