"""Shared preparation of (logits, class index target) inputs, so every such loss validates the same way."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from losslab.losses._reduce import class_weights, reduce_loss
from losslab.losses._validate import (
    check_class_target,
    check_class_weight,
    check_float,
    check_ignore_index,
    check_reduction,
    compute_dtype,
    flatten_logits,
)


@dataclass
class ClassBatch:
    """Validated logits batch: ``x`` (M, C) in the compute dtype, ``target`` (M,) safe to index, ``mask`` (M,)."""

    x: Tensor
    target: Tensor
    mask: Tensor | None
    weight: Tensor | None  # per-element class weights (M,) or None
    class_weight: Tensor | None  # (C,) in the compute dtype, or None
    shape: tuple[int, ...]
    reduction: str

    @property
    def n_classes(self) -> int:
        return int(self.x.shape[1])

    def reduce(self, loss: Tensor, *, prescaled: bool = False, use_weight: bool = True,
               empty: str = "nan") -> Tensor:
        return reduce_loss(loss, self.reduction, weight=self.weight if use_weight else None, mask=self.mask,
                           prescaled=prescaled, shape=self.shape, empty=empty)


def prepare(input: object, target: object, *, loss: str, reduction: str, weight: object = None,
            ignore_index: int | None = None, min_classes: int = 1) -> ClassBatch:
    """Validate ``input`` (N, C[, d...]) logits and ``target`` class indices; upcast half precision to float32."""
    check_reduction(reduction, loss)
    x = check_float("input", input, loss)
    logits, tgt, shape = flatten_logits(x, target, loss)
    c = int(logits.shape[1])
    if c < min_classes:
        raise_few_classes(loss, c, min_classes)
    ignore_index = check_ignore_index(ignore_index, loss)
    tgt_t = check_class_target(tgt, int(logits.shape[0]), c, ignore_index, loss)
    w = check_class_weight(weight, c, loss)
    dtype = compute_dtype(logits)
    mask = None
    safe = tgt_t
    if ignore_index is not None:
        mask = tgt_t != ignore_index
        safe = torch.where(mask, tgt_t, torch.zeros_like(tgt_t))
    cw = None if w is None else w.to(dtype)
    return ClassBatch(x=logits.to(dtype), target=safe, mask=mask, weight=class_weights(safe, cw, mask, dtype),
                      class_weight=cw, shape=shape, reduction=reduction)


def raise_few_classes(loss: str, c: int, need: int) -> None:
    from losslab._errors import DataError

    raise DataError(f"{loss}: the input has {c} class(es) but this loss needs at least {need}; "
                    f"check the class dimension (dim 1) of the input")


def pick(values: Tensor, target: Tensor) -> Tensor:
    """values[i, target[i]] for a (M, C) tensor."""
    return values.gather(1, target.unsqueeze(1)).squeeze(1)
