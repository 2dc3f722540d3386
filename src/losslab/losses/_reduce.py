"""The one place where per-element losses are reduced (``torch.nn.functional`` semantics).

``reduction="none"`` returns the (weighted) per-element values, with 0 at ignored positions; ``"sum"`` adds them;
``"mean"`` divides the weighted sum by the sum of the weights of the non-ignored elements, exactly as
``F.cross_entropy`` does with class weights and ``ignore_index`` (without weights: mean over non-ignored elements).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["class_weights", "reduce_loss"]


def class_weights(target: Tensor, weight: Tensor | None, mask: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """Per-element weights w[target] (0 at ignored positions), or None when there are no class weights."""
    if weight is None:
        return None
    safe = target.clamp(0, weight.shape[0] - 1) if mask is not None else target
    w = weight.to(dtype)[safe]
    return w if mask is None else w * mask.to(dtype)


def reduce_loss(loss: Tensor, reduction: str, *, weight: Tensor | None = None, mask: Tensor | None = None,
                prescaled: bool = False, shape: tuple[int, ...] | None = None, empty: str = "nan") -> Tensor:
    """Reduce per-element ``loss`` (any shape).

    Args:
        loss: per-element values.
        reduction: "mean" | "sum" | "none".
        weight: per-element weights (e.g. class weight of each target); the mean divides by their sum.
        mask: boolean, True where the element counts (False for ``ignore_index``); masked elements give 0.
        prescaled: ``loss`` already includes ``weight`` (the weight is then used only in the denominator).
        shape: shape to give the "none" output (e.g. the target's original (N, d1, ...)).
        empty: what "mean" returns when no element counts: "nan" (torch's behaviour) or "zero".
    """
    if mask is not None:
        loss = torch.where(mask, loss, torch.zeros((), dtype=loss.dtype, device=loss.device))
    if weight is not None and not prescaled:
        loss = loss * weight
    if reduction == "none":
        return loss.reshape(shape) if shape is not None else loss
    if reduction == "sum":
        return loss.sum()
    if weight is not None:
        denom = weight.sum() if mask is None else torch.where(mask, weight, torch.zeros_like(weight)).sum()
    elif mask is not None:
        denom = mask.sum().to(loss.dtype)
    else:
        denom = torch.tensor(float(loss.numel()), dtype=loss.dtype, device=loss.device)
    if empty == "zero":
        return torch.where(denom > 0, loss.sum() / denom.clamp_min(torch.finfo(loss.dtype).tiny), loss.sum() * 0)
    return loss.sum() / denom
