"""``nn.Module`` forms of the multi-token prediction, censored-regression, aggregate-response and cascade losses.

Same base class and behaviour as :mod:`losslab.losses.modules` (kept in a second file so that each stays short).
``LCRONLoss`` also owns learnable parameters (the uncertainty weights of its stages).
"""

from __future__ import annotations

import numbers
from typing import Any

import torch
from torch import Tensor, nn

from losslab._errors import ConfigError
from losslab.losses._module_base import _LossModule, _make_doc

__all__ = ["AggregateLoss", "IPCWLoss", "LCRONLoss", "MTPLoss"]


class MTPLoss(_LossModule):
    __doc__ = _make_doc("MTPLoss", "mtp_loss")
    loss_name = "mtp_loss"


class IPCWLoss(_LossModule):
    __doc__ = _make_doc("IPCWLoss", "ipcw_loss")
    loss_name = "ipcw_loss"


class AggregateLoss(_LossModule):
    __doc__ = _make_doc("AggregateLoss", "aggregate_loss")
    loss_name = "aggregate_loss"


class LCRONLoss(_LossModule):
    """Module form of :func:`losslab.losses.lcron_loss` with the learnable uncertainty weights of the stages.

    ``LCRONLoss(num_stages=S, **options)(stage_scores, labels, mask)`` equals
    ``lcron_loss(stage_scores, labels, mask, stage_weights=crit.stage_weights, **options)``. The weights are an
    ``nn.Parameter`` of shape (S,) starting at 1, as the authors' ``LcronLossModel`` (one scalar per stage, trained
    by its own Adam at the models' learning rate): give ``crit.parameters()`` to an optimizer. They are part of
    ``state_dict()`` and follow ``.to(device)`` / ``.double()``.

    Example:
        >>> import torch, losslab.losses as L
        >>> crit = L.LCRONLoss(num_stages=2, top_k=1, tau=1e-6)
        >>> scores = torch.tensor([[[3.0, 1.0, 2.0]], [[1.0, 3.0, 2.0]]])   # (stages, queries, items)
        >>> loss = crit(scores, torch.tensor([[2.0, 1.0, 0.0]]))
        >>> round(loss.item(), 4), crit.stage_weights.tolist()
        (9.2103, [1.0, 1.0])
    """

    loss_name = "lcron"
    num_stages: int
    stage_weights: nn.Parameter

    def __init__(self, num_stages: int = 2, **options: Any) -> None:
        if "stage_weights" in options:
            raise ConfigError("LCRONLoss: stage_weights is the module's learnable parameter, not an option; pass "
                              "num_stages=S (the weights start at 1) or call lcron_loss(..., stage_weights=w)")
        super().__init__(**options)
        if isinstance(num_stages, bool) or not isinstance(num_stages, numbers.Integral) or int(num_stages) < 2:
            raise ConfigError(f"LCRONLoss: num_stages must be an integer ≥ 2 (the stages of the cascade), "
                              f"got {num_stages!r}")
        self.num_stages = int(num_stages)
        self.stage_weights = nn.Parameter(torch.ones(self.num_stages))

    def forward(self, *inputs: Tensor, **call_args: Any) -> Any:
        return self._fn(*inputs, stage_weights=self.stage_weights, **self._options(call_args))

    def extra_repr(self) -> str:
        return ", ".join([f"num_stages={self.num_stages}", *(f"{k}={v!r}" for k, v in self._plain.items())])
