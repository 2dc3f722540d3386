"""PolyLoss family (Leng et al. 2022): cross-entropy / focal loss plus leading polynomial terms in (1 - p_t)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from losslab._errors import ConfigError
from losslab.losses._catalogue import register
from losslab.losses._common import ClassBatch, pick, prepare
from losslab.losses._reduce import reduce_loss
from losslab.losses._validate import check_number

__all__ = ["poly1_cross_entropy", "poly1_focal", "poly_cross_entropy"]

_REF = "Leng et al., PolyLoss: A Polynomial Expansion Perspective of Classification Loss Functions, arXiv:2204.12511, 2022"


def _ce_and_pt(b: ClassBatch, label_smoothing: float) -> tuple[Tensor, Tensor]:
    """Cross-entropy against the (smoothed) one-hot labels, and p_t = Σ_k labels_k · softmax(x)_k."""
    logp = torch.log_softmax(b.x, dim=1)
    logp_y = pick(logp, b.target)
    if label_smoothing == 0:
        return -logp_y, logp_y.exp()
    eps, c = label_smoothing, b.n_classes
    ce = -(1 - eps) * logp_y - eps / c * logp.sum(1)
    pt = (1 - eps) * logp_y.exp() + eps / c  # Σ_k p_k = 1
    return ce, pt


@register("poly1_cross_entropy", summary="Poly-1: cross-entropy + ε(1 - p_t)", reference=_REF,
          module="Poly1CrossEntropyLoss", family="classification")
def poly1_cross_entropy(input: Tensor, target: Tensor, *, epsilon: float = 2.0, label_smoothing: float = 0.0,
                        weight: Tensor | None = None, ignore_index: int = -100, reduction: str = "mean") -> Tensor:
    r"""Poly-1 cross-entropy: perturb the first polynomial coefficient of CE by ε.

    .. math:: \ell = -\sum_k t_k\log p_k + \varepsilon\,(1 - p_t),\qquad p_t = \sum_k t_k p_k

    where t is the one-hot (optionally label-smoothed) target and p = softmax(x).

    Args:
        input: logits (N, C) or (N, C, d1, ...).
        target: class indices.
        epsilon: ε ≥ -1 (the loss stays non-negative); 2.0 is the paper's ImageNet value and timm/optax's default.
        label_smoothing: smoothing ε_ls in [0, 1] applied to the target before both terms (as timm does).
        weight: class weights (C,) multiplying the whole per-element loss (weighted mean).
        ignore_index: target value to skip.
        reduction: "mean" | "sum" | "none".

    Returns:
        The loss (scalar unless ``reduction="none"``).

    Example:
        >>> import torch, losslab.losses as L
        >>> round(float(L.poly1_cross_entropy(torch.zeros(1, 2), torch.tensor([0]), epsilon=1.0)), 4)  # log2 + 0.5
        1.1931

    References:
        Leng et al., "PolyLoss: A Polynomial Expansion Perspective of Classification Loss Functions",
        arXiv:2204.12511, 2022. Same formula as the paper's listing, ``timm.loss.PolyCrossEntropy`` and
        ``optax.losses.poly_loss_cross_entropy``.
    """
    return _poly("poly1_cross_entropy", input, target, (epsilon,), label_smoothing, weight, ignore_index, reduction)


@register("poly_cross_entropy", summary="Poly-N: cross-entropy + Σ_j ε_j (1 - p_t)^j", reference=_REF,
          module="PolyCrossEntropyLoss", family="classification")
def poly_cross_entropy(input: Tensor, target: Tensor, *, epsilons: Sequence[float] = (2.0,),
                       label_smoothing: float = 0.0, weight: Tensor | None = None, ignore_index: int = -100,
                       reduction: str = "mean") -> Tensor:
    r"""Poly-N cross-entropy: perturb the first N polynomial coefficients of CE.

    .. math:: \ell = -\log p_t + \sum_{j=1}^{N} \varepsilon_j\,(1 - p_t)^j

    Args:
        input: logits (N, C) or (N, C, d1, ...).
        target: class indices.
        epsilons: (ε_1, ..., ε_N); ``(ε,)`` is Poly-1. ε_1 ≥ -1 is required.
        label_smoothing: smoothing in [0, 1] applied to the target (p_t is then Σ_k t_k p_k).
        weight: class weights (C,) multiplying the per-element loss (weighted mean).
        ignore_index: target value to skip.
        reduction: "mean" | "sum" | "none".

    Returns:
        The loss (scalar unless ``reduction="none"``).

    Example:
        >>> import torch, losslab.losses as L
        >>> round(float(L.poly_cross_entropy(torch.zeros(1, 2), torch.tensor([0]), epsilons=(1.0, 4.0))), 4)
        2.1931

    References:
        Leng et al., "PolyLoss: A Polynomial Expansion Perspective of Classification Loss Functions",
        arXiv:2204.12511, 2022 (Poly-N, Eq. 3).
    """
    return _poly("poly_cross_entropy", input, target, epsilons, label_smoothing, weight, ignore_index, reduction)


def _check_epsilons(name: str, epsilons: object) -> list[float]:
    """A non-empty sequence of finite numbers (not a string: "2" would otherwise be read as (2.0,)); ε_1 ≥ -1."""
    if getattr(epsilons, "ndim", None) == 1 and hasattr(epsilons, "tolist"):  # 1-D tensor or NumPy array
        epsilons = epsilons.tolist()
    if isinstance(epsilons, (str, bytes)) or not isinstance(epsilons, Sequence):
        raise ConfigError(f"{name}: epsilons must be a sequence of numbers such as (2.0,) or (1.0, 0.5), "
                          f"got {epsilons!r}; pass the coefficients ε_1, ..., ε_N as a tuple of floats")
    if len(epsilons) == 0:
        raise ConfigError(f"{name}: epsilons must hold at least one coefficient, e.g. (2.0,)")
    label = "epsilon" if name == "poly1_cross_entropy" else "epsilon[{}]"
    return [check_number(label.format(j), e, name, low=-1.0 if j == 0 else None) for j, e in enumerate(epsilons)]


def _poly(name: str, input: Tensor, target: Tensor, epsilons: Sequence[float], label_smoothing: float,
          weight: Tensor | None, ignore_index: int, reduction: str) -> Tensor:
    eps_list = _check_epsilons(name, epsilons)
    ls = check_number("label_smoothing", label_smoothing, name, low=0.0, high=1.0)
    b = prepare(input, target, loss=name, reduction=reduction, weight=weight, ignore_index=ignore_index)
    ce, pt = _ce_and_pt(b, ls)
    one_minus = 1 - pt
    loss = ce
    for j, e in enumerate(eps_list, start=1):
        loss = loss + e * one_minus**j
    return b.reduce(loss)


@register("poly1_focal", summary="Poly-1 focal: sigmoid focal loss + ε(1 - p_t)^(γ+1)", reference=_REF,
          module="Poly1FocalLoss", family="classification", target_kind="binary (same shape, in [0, 1])")
def poly1_focal(input: Tensor, target: Tensor, *, epsilon: float = 1.0, gamma: float = 2.0,
                alpha: float | None = 0.25, reduction: str = "mean") -> Tensor:
    r"""Poly-1 focal loss (sigmoid), following the paper's listing.

    .. math::
        \mathrm{FL} = \alpha_t (1-p_t)^{\gamma}\,\operatorname{BCE}(x, t),\qquad
        \ell = \mathrm{FL} + \varepsilon\,(1 - p_t)^{\gamma+1}

    with p = σ(x), p_t = p t + (1-p)(1-t), α_t = α t + (1-α)(1-t).

    Args:
        input: logits of any shape.
        target: targets in [0, 1], same shape.
        epsilon: ε, the perturbation of the leading polynomial coefficient (1.0; the paper tunes ε per task).
        gamma: focusing parameter γ ≥ 0 (2).
        alpha: α in [0, 1] (0.25); None or negative disables it.
        reduction: "mean" (over all elements) | "sum" | "none".

    Returns:
        The loss (scalar unless ``reduction="none"``).

    Example:
        >>> import torch, losslab.losses as L
        >>> round(float(L.poly1_focal(torch.tensor([0.0]), torch.tensor([1.0]), alpha=None, gamma=1.0)), 4)
        0.5966

    References:
        Leng et al., "PolyLoss: A Polynomial Expansion Perspective of Classification Loss Functions",
        arXiv:2204.12511, 2022 (poly1_focal_loss listing).

    Notes:
        α_t multiplies the focal term only, as in the paper's listing. ``timm.loss.PolyBinaryCrossEntropy``
        multiplies α_t into the polynomial term as well, so the two differ whenever α is set. 1 - p_t is computed
        without cancellation (see :func:`sigmoid_focal`), so gradients stay finite for 0 < γ < 1 at large |x|.
    """
    from losslab.losses.classification import one_minus_pt, sigmoid_focal

    name = "poly1_focal"
    if reduction not in ("mean", "sum", "none"):
        raise ConfigError(f"{name}: reduction must be one of ('mean', 'sum', 'none'), got {reduction!r}")
    e = check_number("epsilon", epsilon, name)
    g = check_number("gamma", gamma, name, low=0.0)
    fl = sigmoid_focal(input, target, alpha=alpha, gamma=g, reduction="none")  # validates input/target/alpha
    loss = fl + e * one_minus_pt(input.to(fl.dtype), target.to(fl.dtype)) ** (g + 1)
    return reduce_loss(loss, reduction)


