"""Alternatives to the softmax normaliser: the spherical-family Z-loss and StableMax cross-entropy."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from losslab.losses._catalogue import register
from losslab.losses._common import pick, prepare
from losslab.losses._validate import check_eps, check_number

__all__ = ["spherical_z_loss", "stablemax", "stablemax_cross_entropy"]


@register("spherical_z_loss", summary="shift- and scale-invariant Z-loss on standardised logits (spherical family)",
          reference="de Brébisson, Vincent, The Z-loss: a shift and scale invariant classification loss belonging "
                    "to the Spherical Family, arXiv:1604.08859, 2016",
          module="SphericalZLoss", family="classification")
def spherical_z_loss(input: Tensor, target: Tensor, *, a: float = 1.0, b: float = 1.0, eps: float = 1e-6,
                     weight: Tensor | None = None, ignore_index: int = -100, reduction: str = "mean") -> Tensor:
    r"""The Z-loss of de Brébisson & Vincent: a softplus on the standardised target logit.

    .. math::
        \mu = \tfrac1C\sum_k o_k,\quad \sigma = \sqrt{\tfrac1C\sum_k o_k^2 - \mu^2 + \epsilon^2},\quad
        z_y = \frac{o_y - \mu}{\sigma},\qquad \ell = \frac1a\operatorname{softplus}\big(a\,(b - z_y)\big)

    Only the sums Σ o and Σ o² of the outputs enter, which is what makes it a spherical-family loss; it is invariant
    to adding a constant to, and to multiplying by a positive constant, all the logits of a row (exactly for ε = 0;
    with ε > 0, up to a relative error of about ε²/(2·var) in σ, negligible once the row's standard deviation is
    well above ε).

    Args:
        input: logits (N, C) or (N, C, d1, ...), C ≥ 2.
        target: class indices.
        a: sharpness a > 0 of the softplus (default 1.0).
        b: offset b (default 1.0): the standardised score the target should exceed.
        eps: ε > 0 (1e-6), an absolute floor inside the square root of σ, so that a row whose logits are all
            equal (σ = 0, e.g. an all-zero row from a zero-initialised head) gives a finite loss and gradient;
            ε² must be a normal float32 number (ε ≥ 1.1e-19).
        weight: class weights (C,) (weighted mean).
        ignore_index: target value to skip.
        reduction: "mean" | "sum" | "none".

    Returns:
        The loss (scalar unless ``reduction="none"``).

    Example:
        >>> import torch, losslab.losses as L
        >>> round(float(L.spherical_z_loss(torch.tensor([[1.0, -1.0]]), torch.tensor([0]), a=1.0, b=1.0)), 4)
        0.6931

    References:
        de Brébisson, Vincent, "The Z-loss: a shift and scale invariant classification loss belonging to the
        Spherical Family", arXiv:1604.08859, 2016. σ is the population standard deviation, as in the authors'
        spherical statistics (Σ o, Σ o²).

    Notes:
        a and b are tuned hyperparameters in the paper; the defaults here (1, 1) were not taken from it. A
        row whose logits are all equal (all zero included) has σ = ε, hence z = 0 and the loss
        softplus(a·b)/a; its gradient is finite but about 1/ε in size, because the loss is scale invariant (the
        paper's σ = 0 gives 0/0). Rows whose standard deviation is below about ε lose the scale invariance.
        Not the PaLM z-loss (``cross_entropy(z_loss=...)``).
    """
    name = "spherical_z_loss"
    a_ = check_number("a", a, name, low=0.0, low_open=True)
    b_ = check_number("b", b, name)
    eps_ = check_eps(eps, name, power=2)
    bt = prepare(input, target, loss=name, reduction=reduction, weight=weight, ignore_index=ignore_index,
                 min_classes=2)
    o = bt.x
    mu = o.mean(1, keepdim=True)
    centred = o - mu
    var = centred.square().mean(1, keepdim=True)
    sigma = torch.sqrt(var + eps_**2)
    z = pick(centred / sigma, bt.target)
    return bt.reduce(F.softplus(a_ * (b_ - z)) / a_)


def _log_s(x: Tensor) -> Tensor:
    """log s(x) with s(x) = x + 1 for x ≥ 0 and 1 / (1 - x) for x < 0, gradient-safe on both branches."""
    return torch.log1p(x.clamp_min(0)) - torch.log1p(-x.clamp_max(0))


def stablemax(input: Tensor, dim: int = -1) -> Tensor:
    r"""StableMax probabilities ``s(x_i) / Σ_j s(x_j)`` with s(x) = x + 1 (x ≥ 0), 1/(1 - x) (x < 0).

    Example:
        >>> import torch, losslab.losses as L
        >>> L.stablemax(torch.tensor([0.0, 1.0, -1.0]))
        tensor([0.2857, 0.5714, 0.1429])
    """
    s = torch.exp(_log_s(input))
    return s / s.sum(dim, keepdim=True)


@register("stablemax_cross_entropy", summary="cross-entropy with StableMax (linear/reciprocal) instead of softmax",
          reference="Prieto, Barsbey, Mediano, Birdal, Grokking at the Edge of Numerical Stability, "
                    "arXiv:2501.04697, 2025",
          module="StableMaxCrossEntropyLoss", family="classification")
def stablemax_cross_entropy(input: Tensor, target: Tensor, *, weight: Tensor | None = None, ignore_index: int = -100,
                            reduction: str = "mean") -> Tensor:
    r"""Cross-entropy through StableMax, which grows linearly instead of exponentially in the logits.

    .. math::
        s(x) = \begin{cases} x + 1 & x \ge 0 \\ \frac{1}{1 - x} & x < 0 \end{cases},\qquad
        \ell = -\log\frac{s(x_y)}{\sum_k s(x_k)}

    Args:
        input: logits (N, C) or (N, C, d1, ...).
        target: class indices.
        weight: class weights (C,) (weighted mean).
        ignore_index: target value to skip.
        reduction: "mean" | "sum" | "none".

    Returns:
        The loss (scalar unless ``reduction="none"``).

    Example:
        >>> import torch, losslab.losses as L
        >>> round(float(L.stablemax_cross_entropy(torch.tensor([[1.0, -1.0]]), torch.tensor([0]))), 4)  # -log(2/2.5)
        0.2231

    References:
        Prieto, Barsbey, Mediano, Birdal, "Grokking at the Edge of Numerical Stability", arXiv:2501.04697, 2025.
        The authors' code divides by 1 - x + 1e-30 and takes the log of the ratio; here log s is computed directly
        (log1p), which is the same function without the epsilon and keeps gradients finite at ±1e4.
    """
    name = "stablemax_cross_entropy"
    b = prepare(input, target, loss=name, reduction=reduction, weight=weight, ignore_index=ignore_index)
    log_s = _log_s(b.x)
    return b.reduce(torch.logsumexp(log_s, dim=1) - pick(log_s, b.target))
