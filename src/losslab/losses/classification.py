"""Softmax classification losses: cross-entropy (with PaLM z-loss, smoothing, soft-capping), focal, squentropy."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from losslab.losses._catalogue import register
from losslab.losses._common import pick, prepare
from losslab.losses._reduce import reduce_loss
from losslab.losses._validate import (
    check_float,
    check_number,
    check_reduction,
    check_same_shape,
    compute_dtype,
)

__all__ = ["cross_entropy", "focal", "sigmoid_focal", "softcap", "squentropy"]


def softcap(logits: Tensor, cap: float | None) -> Tensor:
    """Soft-cap logits to (-cap, cap): ``cap * tanh(logits / cap)`` (Gemma 2); identity when ``cap`` is None."""
    return logits if cap is None else cap * torch.tanh(logits / cap)


@register("cross_entropy", summary="softmax cross-entropy with optional PaLM z-loss, label smoothing, logit soft-cap",
          reference="Chowdhery et al., PaLM: Scaling Language Modeling with Pathways, arXiv:2204.02311, 2022",
          module="CrossEntropyLoss", family="classification", aliases=("ce",))
def cross_entropy(input: Tensor, target: Tensor, *, weight: Tensor | None = None, ignore_index: int = -100,
                  label_smoothing: float = 0.0, z_loss: float = 0.0, logit_softcap: float | None = None,
                  reduction: str = "mean", return_z_loss: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    r"""Softmax cross-entropy, identical to ``F.cross_entropy`` when the extras are off, plus PaLM's z-loss.

    .. math::
        \tilde x = c\tanh(x/c)\ \text{(if soft-capped)},\quad \log Z = \operatorname{logsumexp}_k \tilde x_k,\quad
        \ell = (1-\varepsilon)\,w_y(\log Z - \tilde x_y) + \tfrac{\varepsilon}{C}\sum_k w_k(\log Z - \tilde x_k)
        \;+\; \lambda\,(\log Z)^2

    The cross-entropy part is reduced like ``F.cross_entropy`` (weighted mean over non-ignored elements); the z-loss
    part is reduced separately as a plain mean over the non-ignored elements (as in PaLM, OLMo and Liger-Kernel,
    where it is not scaled by class weights). With ``reduction="none"`` the two are added element by element.

    Args:
        input: logits (N, C), (C,) or (N, C, d1, ...); half precision is computed in float32.
        target: class indices (N,), () or (N, d1, ...); ``ignore_index`` marks positions to skip.
        weight: class weights (C,) as in ``F.cross_entropy``.
        ignore_index: target value that contributes neither loss nor gradient (default -100).
        label_smoothing: ε in [0, 1]; mixes the target with the uniform distribution, as torch does.
        z_loss: λ ≥ 0, weight of the auxiliary :math:`\log^2 Z` term; 0 (default) turns it off. PaLM uses 1e-4,
            the common value.
        logit_softcap: c > 0 to soft-cap the logits with ``c * tanh(x / c)`` before the softmax (Gemma 2 uses 30).
        reduction: "mean" | "sum" | "none".
        return_z_loss: also return the (detached, reduced) z-loss term for logging.

    Returns:
        The loss (a scalar unless ``reduction="none"``), float32 for half-precision input; with ``return_z_loss``
        a tuple ``(loss, z_loss)`` whose loss already includes the z-loss.

    Example:
        >>> import torch, losslab.losses as L
        >>> x, y = torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([0])
        >>> round(float(L.cross_entropy(x, y)), 4)
        0.1698

    References:
        Chowdhery et al., "PaLM: Scaling Language Modeling with Pathways", arXiv:2204.02311, 2022 (z-loss 1e-4·log²Z).
        Szegedy et al., "Rethinking the Inception Architecture for Computer Vision", arXiv:1512.00567, 2015
        (label smoothing). Gemma Team, "Gemma 2", arXiv:2408.00118, 2024 (logit soft-capping).

    Notes:
        ``F.cross_entropy`` has no z-loss or soft-cap. Liger-Kernel's ``lse_square_scale`` and Cut Cross-Entropy's
        ``compute_z_loss`` compute the same z-loss; OLMo returns it separately (use ``return_z_loss``). Not to be
        confused with the spherical Z-loss of de Brébisson & Vincent (:func:`spherical_z_loss`).
    """
    name = "cross_entropy"
    b = prepare(input, target, loss=name, reduction=reduction, weight=weight, ignore_index=ignore_index)
    eps = check_number("label_smoothing", label_smoothing, name, low=0.0, high=1.0)
    lam = check_number("z_loss", z_loss, name, low=0.0)
    cap = None if logit_softcap is None else check_number("logit_softcap", logit_softcap, name, low=0.0,
                                                          low_open=True)
    x = softcap(b.x, cap)
    if eps == 0 and lam == 0 and not return_z_loss:  # log Z is not needed: the fused kernel does lse - x_y
        return b.reduce(F.cross_entropy(x, b.target, reduction="none"))
    lse = torch.logsumexp(x, dim=1)
    nll = lse - pick(x, b.target)
    if eps > 0:
        c = b.n_classes
        smooth = (lse.unsqueeze(1) - x) if b.class_weight is None else (lse.unsqueeze(1) - x) * b.class_weight
        smooth_sum = smooth.sum(1) / c
        if b.weight is None:
            ce = b.reduce((1 - eps) * nll + eps * smooth_sum)
        else:
            ce = b.reduce((1 - eps) * nll * b.weight + eps * smooth_sum, prescaled=True)
    else:
        ce = b.reduce(nll)
    if lam == 0 and not return_z_loss:
        return ce
    z = b.reduce(lam * lse.square(), use_weight=False)
    total = ce + z if lam > 0 else ce
    return (total, z.detach()) if return_z_loss else total


@register("focal", summary="softmax focal loss -(1-p_t)^γ log p_t for multi-class classification",
          reference="Lin, Goyal, Girshick, He, Dollár, Focal Loss for Dense Object Detection, arXiv:1708.02002, 2017",
          module="FocalLoss", family="classification")
def focal(input: Tensor, target: Tensor, *, gamma: float = 2.0, weight: Tensor | None = None,
          ignore_index: int = -100, reduction: str = "mean") -> Tensor:
    r"""Multi-class (softmax) focal loss.

    .. math:: \ell = -\alpha_y\,(1 - p_y)^{\gamma}\,\log p_y,\qquad p = \operatorname{softmax}(x)

    Args:
        input: logits (N, C) or (N, C, d1, ...).
        target: class indices; ``ignore_index`` positions are skipped.
        gamma: focusing parameter γ ≥ 0 (2 in the paper); γ = 0 gives cross-entropy.
        weight: per-class α (C,), reduced like ``F.cross_entropy`` class weights (weighted mean).
        ignore_index: target value to skip.
        reduction: "mean" | "sum" | "none".

    Returns:
        The loss (scalar unless ``reduction="none"``).

    Example:
        >>> import torch, losslab.losses as L
        >>> float(L.focal(torch.tensor([[0.0, 0.0]]), torch.tensor([0]), gamma=1.0))  # 0.5 * log 2
        0.3465735912322998

    References:
        Lin, Goyal, Girshick, He, Dollár, "Focal Loss for Dense Object Detection", arXiv:1708.02002, 2017.

    Notes:
        kornia's ``focal_loss`` takes a scalar α and averages over all elements; here α is per class and the
        mean is weighted like ``F.cross_entropy``. (1 - p_y) is computed as ``-expm1(log p_y)`` for accuracy.
    """
    name = "focal"
    g = check_number("gamma", gamma, name, low=0.0)
    b = prepare(input, target, loss=name, reduction=reduction, weight=weight, ignore_index=ignore_index)
    logp = pick(torch.log_softmax(b.x, dim=1), b.target)
    one_minus = (-torch.expm1(logp)).clamp_min(torch.finfo(b.x.dtype).tiny)
    return b.reduce(-(one_minus**g) * logp if g > 0 else -logp)


@register("sigmoid_focal", summary="binary/multi-label sigmoid focal loss (RetinaNet; torchvision's formula)",
          reference="Lin, Goyal, Girshick, He, Dollár, Focal Loss for Dense Object Detection, arXiv:1708.02002, 2017",
          module="SigmoidFocalLoss", family="classification", target_kind="binary (same shape, in [0, 1])")
def sigmoid_focal(input: Tensor, target: Tensor, *, alpha: float | None = 0.25, gamma: float = 2.0,
                  reduction: str = "mean") -> Tensor:
    r"""Sigmoid focal loss for binary or multi-label targets, elementwise.

    .. math::
        p = \sigma(x),\ p_t = p\,t + (1-p)(1-t),\ \alpha_t = \alpha t + (1-\alpha)(1-t),\quad
        \ell = \alpha_t\,(1-p_t)^{\gamma}\,\operatorname{BCE}(x, t)

    Args:
        input: logits of any shape.
        target: targets in [0, 1], same shape as ``input``.
        alpha: α in [0, 1] balancing positives and negatives (0.25); None or a negative value (torchvision's -1)
            disables the weighting.
        gamma: focusing parameter γ ≥ 0 (2).
        reduction: "mean" (over all elements) | "sum" | "none".

    Returns:
        The loss (scalar unless ``reduction="none"``).

    Example:
        >>> import torch, losslab.losses as L
        >>> round(float(L.sigmoid_focal(torch.tensor([0.0]), torch.tensor([1.0]), alpha=None, gamma=1.0)), 4)
        0.3466

    References:
        Lin, Goyal, Girshick, He, Dollár, "Focal Loss for Dense Object Detection", arXiv:1708.02002, 2017.

    Notes:
        Same formula as ``torchvision.ops.sigmoid_focal_loss`` (whose default reduction is "none"; ours is "mean").
        1 - p_t is computed as t·σ(-x) + (1 - t)·σ(x), which does not cancel for confident logits, so gradients
        stay finite for 0 < γ < 1 at |x| ≥ 17 in float32 (where torchvision's literal 1 - p_t gives NaN).
    """
    name = "sigmoid_focal"
    check_reduction(reduction, name)
    g = check_number("gamma", gamma, name, low=0.0)
    a = None if alpha is None else check_number("alpha", alpha, name, high=1.0)
    x = check_float("input", input, name, min_dim=0)
    check_same_shape("input", x, "target", target, name)
    t = check_float("target", target, name, min_dim=0)
    if t.numel() and (float(t.min()) < 0 or float(t.max()) > 1):
        from losslab._errors import DataError

        raise DataError(f"{name}: target values must lie in [0, 1] (binary labels or probabilities), got "
                        f"[{float(t.min())}, {float(t.max())}]")
    dtype = compute_dtype(x)
    x, t = x.to(dtype), t.to(dtype)
    ce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
    loss = ce * one_minus_pt(x, t) ** g if g > 0 else ce
    if a is not None and a >= 0:
        loss = (a * t + (1 - a) * (1 - t)) * loss
    return reduce_loss(loss, reduction)


def one_minus_pt(x: Tensor, t: Tensor) -> Tensor:
    """1 - p_t = t·σ(-x) + (1 - t)·σ(x) for p_t = σ(x)·t + (1 - σ(x))(1 - t), without cancellation.

    ``1 - p_t`` written literally rounds to 0 in float32 once |x| ≳ 17 (σ(x) rounds to 1), and ``0**γ`` with
    0 < γ < 1 has an infinite derivative, so the gradient became NaN. Both terms here are non-negative, so the
    result keeps full relative precision; it is floored at the smallest normal number before any power is taken.
    """
    return (t * torch.sigmoid(-x) + (1 - t) * torch.sigmoid(x)).clamp_min(torch.finfo(x.dtype).tiny)


@register("squentropy", summary="cross-entropy plus the average square loss of the incorrect-class logits",
          reference="Hui, Belkin, Wright, Cut your Losses with Squentropy, arXiv:2302.03952, 2023",
          module="SquentropyLoss", family="classification")
def squentropy(input: Tensor, target: Tensor, *, weight: Tensor | None = None, ignore_index: int = -100,
               reduction: str = "mean") -> Tensor:
    r"""Squentropy: cross-entropy plus the mean squared logit over the incorrect classes.

    .. math:: \ell = -\log\operatorname{softmax}(x)_y + \frac{1}{C-1}\sum_{k \ne y} x_k^2

    Args:
        input: logits (N, C) or (N, C, d1, ...), C ≥ 2.
        target: class indices.
        weight: class weights (C,), applied to the whole per-element loss (weighted mean).
        ignore_index: target value to skip.
        reduction: "mean" | "sum" | "none".

    Returns:
        The loss (scalar unless ``reduction="none"``).

    Example:
        >>> import torch, losslab.losses as L
        >>> round(float(L.squentropy(torch.tensor([[1.0, 2.0]]), torch.tensor([0]))), 4)  # CE 1.3133 + 4
        5.3133

    References:
        Hui, Belkin, Wright, "Cut your Losses with Squentropy", arXiv:2302.03952, 2023. The authors' code squares
        the raw logits of the incorrect classes and divides by C - 1; so does this function.
    """
    name = "squentropy"
    b = prepare(input, target, loss=name, reduction=reduction, weight=weight, ignore_index=ignore_index,
                min_classes=2)
    lse = torch.logsumexp(b.x, dim=1)
    x_y = pick(b.x, b.target)
    sq = b.x.square().scatter(1, b.target.unsqueeze(1), 0.0).sum(1) / (b.n_classes - 1)
    return b.reduce(lse - x_y + sq)
