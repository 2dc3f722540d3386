"""``nn.Module`` forms of the classification, LLM, imbalance and distillation losses, one thin class per entry.

``CrossEntropyLoss(z_loss=1e-4)(logits, target)`` equals ``cross_entropy(logits, target, z_loss=1e-4)``; the shared
behaviour (options checked at construction, tensor options as buffers) is in ``losses/_module_base.py``. The
ranking, regression and remaining wrappers are in :mod:`losslab.losses.modules_regression` and
:mod:`losslab.losses.modules_extra`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from losslab._errors import ConfigError, DataError
from losslab.losses._module_base import _LossModule, _make_doc

__all__ = [
    "ALDRKLLoss",
    "AdversarialCompSumLoss",
    "AlphaDivergenceLoss",
    "BalancedSoftmaxLoss",
    "BinaryKLNormLoss",
    "CompSumLoss",
    "CrossEntropyLoss",
    "DKDLoss",
    "DecoupledSoftmaxLoss",
    "EnsLoss",
    "FocalLoss",
    "GeneralizedCrossEntropyLoss",
    "KDLoss",
    "LDAMLoss",
    "LDRKLLoss",
    "LinearCrossEntropyLoss",
    "LogitAdjustedCrossEntropyLoss",
    "NKDLoss",
    "NTLMSELoss",
    "NTLWassersteinLoss",
    "OKOLoss",
    "Poly1CrossEntropyLoss",
    "Poly1FocalLoss",
    "PolyCrossEntropyLoss",
    "SFaceLoss",
    "SigmoidFocalLoss",
    "SoftmaxMAELoss",
    "SphericalZLoss",
    "SquentropyLoss",
    "StableMaxCrossEntropyLoss",
]


class CrossEntropyLoss(_LossModule):
    __doc__ = _make_doc("CrossEntropyLoss", "cross_entropy")
    loss_name = "cross_entropy"


class LinearCrossEntropyLoss(_LossModule):
    __doc__ = _make_doc("LinearCrossEntropyLoss", "linear_cross_entropy")
    loss_name = "linear_cross_entropy"


class FocalLoss(_LossModule):
    __doc__ = _make_doc("FocalLoss", "focal")
    loss_name = "focal"


class SigmoidFocalLoss(_LossModule):
    __doc__ = _make_doc("SigmoidFocalLoss", "sigmoid_focal")
    loss_name = "sigmoid_focal"


class SquentropyLoss(_LossModule):
    __doc__ = _make_doc("SquentropyLoss", "squentropy")
    loss_name = "squentropy"


class Poly1CrossEntropyLoss(_LossModule):
    __doc__ = _make_doc("Poly1CrossEntropyLoss", "poly1_cross_entropy")
    loss_name = "poly1_cross_entropy"


class PolyCrossEntropyLoss(_LossModule):
    __doc__ = _make_doc("PolyCrossEntropyLoss", "poly_cross_entropy")
    loss_name = "poly_cross_entropy"


class Poly1FocalLoss(_LossModule):
    __doc__ = _make_doc("Poly1FocalLoss", "poly1_focal")
    loss_name = "poly1_focal"


class SphericalZLoss(_LossModule):
    __doc__ = _make_doc("SphericalZLoss", "spherical_z_loss")
    loss_name = "spherical_z_loss"


class StableMaxCrossEntropyLoss(_LossModule):
    __doc__ = _make_doc("StableMaxCrossEntropyLoss", "stablemax_cross_entropy")
    loss_name = "stablemax_cross_entropy"


class CompSumLoss(_LossModule):
    __doc__ = _make_doc("CompSumLoss", "comp_sum")
    loss_name = "comp_sum"


class GeneralizedCrossEntropyLoss(_LossModule):
    __doc__ = _make_doc("GeneralizedCrossEntropyLoss", "generalized_cross_entropy")
    loss_name = "generalized_cross_entropy"


class SoftmaxMAELoss(_LossModule):
    __doc__ = _make_doc("SoftmaxMAELoss", "softmax_mae")
    loss_name = "softmax_mae"


class AdversarialCompSumLoss(_LossModule):
    __doc__ = _make_doc("AdversarialCompSumLoss", "adversarial_comp_sum")
    loss_name = "adversarial_comp_sum"


class LDRKLLoss(_LossModule):
    __doc__ = _make_doc("LDRKLLoss", "ldr_kl")
    loss_name = "ldr_kl"


class ALDRKLLoss(_LossModule):
    """Module form of :func:`losslab.losses.aldr_kl`, optionally keeping the per-example λ as the authors do.

    ``ALDRKLLoss(**options)(input, target)`` equals ``aldr_kl(input, target, **options)``. With
    ``num_examples=N`` the module holds a buffer ``lam_table`` (N,) initialised to ``lam0``; calling it with
    ``index`` (the dataset indices of the rows) uses ``lam_table[index]`` as ``lam_prev`` and stores the new λ_i
    there, like the ``Lambda[ids]`` buffer of the authors' ``ALDRLoss_V1``. The table is part of ``state_dict()``.
    ``index`` of any integer dtype (int64, int32, uint8, ...) holds dataset indices, one per row; only a
    ``torch.bool`` tensor is read as a mask over the dataset (shape (num_examples,), rows in increasing index
    order).

    Example:
        >>> import torch, losslab.losses as L
        >>> crit = L.ALDRKLLoss(num_examples=4)
        >>> loss = crit(torch.tensor([[1.0, -1.0]]), torch.tensor([0]), index=torch.tensor([2]))
        >>> round(float(crit.lam_table[2]), 4), float(crit.lam_table[0])
        (0.5271, 1.0)
    """

    loss_name = "aldr_kl"

    def __init__(self, num_examples: int | None = None, **options: Any) -> None:
        super().__init__(**options)
        if num_examples is not None:
            if isinstance(num_examples, bool) or not isinstance(num_examples, int) or num_examples < 1:
                raise ConfigError(f"ALDRKLLoss: num_examples must be a positive int, got {num_examples!r}")
            lam0 = float(self._plain.get("lam0", 1.0))
            self.register_buffer("lam_table", torch.full((num_examples,), lam0, dtype=torch.float64))
            self._state_buffers.append("lam_table")
        else:
            self.lam_table = None

    def forward(self, *inputs: Tensor, index: Tensor | None = None, **call_args: Any) -> Any:
        if index is None:
            return super().forward(*inputs, **call_args)
        if self.lam_table is None:
            raise ConfigError("ALDRKLLoss: index was given but the module keeps no λ table; "
                              "construct it with num_examples=<dataset size>")
        index = _lam_table_index(index, int(self.lam_table.shape[0]))
        options = self._options(call_args)
        options["lam_prev"] = self.lam_table[index].to(inputs[0].dtype if inputs[0].dtype == torch.float64
                                                       else torch.float32)
        loss, lam = self._fn(*inputs, return_lambda=True, **options)
        with torch.no_grad():
            self.lam_table[index] = lam.to(self.lam_table.dtype)
        return loss


def _lam_table_index(index: object, n: int) -> Tensor:
    """int64 positions into a λ table of n entries: any integer dtype holds indices, only torch.bool is a mask."""
    if not isinstance(index, Tensor) or index.dim() != 1 or index.dtype.is_floating_point or index.is_complex():
        raise DataError("ALDRKLLoss: index must be a 1-D integer tensor of dataset indices, one per row "
                        "(or a torch.bool mask over the dataset); convert it with .long()")
    if index.dtype == torch.bool:
        if index.shape[0] != n:
            raise DataError(f"ALDRKLLoss: a boolean index is a mask over the dataset and needs shape ({n},), "
                            f"got {tuple(index.shape)}; pass integer indices (one per row) instead")
        return index.nonzero().squeeze(1)
    index = index.long()  # uint8 / int32 indices stay indices (torch would index with uint8 as a mask)
    if index.numel() and (int(index.min()) < 0 or int(index.max()) >= n):
        raise DataError(f"ALDRKLLoss: index values must lie in [0, {n - 1}] (the table has num_examples={n} "
                        f"entries), got [{int(index.min())}, {int(index.max())}]")
    return index


class NTLMSELoss(_LossModule):
    __doc__ = _make_doc("NTLMSELoss", "ntl_mse")
    loss_name = "ntl_mse"


class NTLWassersteinLoss(_LossModule):
    __doc__ = _make_doc("NTLWassersteinLoss", "ntl_wasserstein")
    loss_name = "ntl_wasserstein"


class OKOLoss(_LossModule):
    __doc__ = _make_doc("OKOLoss", "oko")
    loss_name = "oko"


class SFaceLoss(_LossModule):
    __doc__ = _make_doc("SFaceLoss", "sface")
    loss_name = "sface"


class DecoupledSoftmaxLoss(_LossModule):
    __doc__ = _make_doc("DecoupledSoftmaxLoss", "decoupled_softmax")
    loss_name = "decoupled_softmax"


class EnsLoss(_LossModule):
    __doc__ = _make_doc("EnsLoss", "ensloss")
    loss_name = "ensloss"


class LDAMLoss(_LossModule):
    __doc__ = _make_doc("LDAMLoss", "ldam")
    loss_name = "ldam"


class LogitAdjustedCrossEntropyLoss(_LossModule):
    __doc__ = _make_doc("LogitAdjustedCrossEntropyLoss", "logit_adjusted_cross_entropy")
    loss_name = "logit_adjusted_cross_entropy"


class BalancedSoftmaxLoss(_LossModule):
    __doc__ = _make_doc("BalancedSoftmaxLoss", "balanced_softmax")
    loss_name = "balanced_softmax"


class KDLoss(_LossModule):
    __doc__ = _make_doc("KDLoss", "kd")
    loss_name = "kd"


class DKDLoss(_LossModule):
    __doc__ = _make_doc("DKDLoss", "dkd")
    loss_name = "dkd"


class NKDLoss(_LossModule):
    __doc__ = _make_doc("NKDLoss", "nkd")
    loss_name = "nkd"


class BinaryKLNormLoss(_LossModule):
    __doc__ = _make_doc("BinaryKLNormLoss", "binary_kl_norm")
    loss_name = "binary_kl_norm"


class AlphaDivergenceLoss(_LossModule):
    __doc__ = _make_doc("AlphaDivergenceLoss", "alpha_divergence")
    loss_name = "alpha_divergence"
