"""``nn.Module`` forms of the multi-token prediction, censored-regression, aggregate-response, cascade and
LegendreTron losses.

Same base class and behaviour as :mod:`losslab.losses.modules` (kept in a second file so that each stays short).
``LCRONLoss`` also owns learnable parameters (the uncertainty weights of its stages), and ``LegendreTronLoss`` its
learned link.
"""

from __future__ import annotations

import numbers
from typing import Any

import torch
from torch import Tensor, nn

from losslab._errors import ConfigError
from losslab.losses._module_base import _LossModule, _make_doc
from losslab.losses.legendretron import LegendreTronLink

__all__ = ["AggregateLoss", "IPCWLoss", "LCRONLoss", "LegendreTronLoss", "MTPLoss"]


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


class LegendreTronLoss(_LossModule):
    """Module form of :func:`losslab.losses.legendretron_loss` that owns its learned link.

    ``LegendreTronLoss(num_classes, blocks=2, depth=4, hidden=2, **options)`` builds a
    :class:`~losslab.losses.LegendreTronLink` (``crit.link``, a submodule: its parameters are in
    ``crit.parameters()`` and ``state_dict()`` and follow ``.to()``); ``LegendreTronLoss(link=link, **options)``
    uses a given one. ``crit(input, target)`` equals ``legendretron_loss(input, target, link=crit.link, **options)``
    (options: ``weight``, ``ignore_index``, ``reduction``). Give ``crit.parameters()`` to the optimizer with the
    inner model's: the authors train both with one Adam.

    Example:
        >>> import torch, losslab.losses as L
        >>> _ = torch.manual_seed(0)
        >>> inner, crit = torch.nn.Linear(4, 2), L.LegendreTronLoss(num_classes=3)
        >>> opt = torch.optim.Adam([*inner.parameters(), *crit.parameters()], lr=0.01, weight_decay=0.01)
        >>> x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
        >>> loss = crit(inner(x), y); loss.backward(); opt.step()
        >>> crit.link.num_classes, bool(crit.link.initialized)
        (3, True)
    """

    loss_name = "legendretron"
    link: LegendreTronLink

    def __init__(self, num_classes: int | None = None, *, link: LegendreTronLink | None = None,
                 blocks: int | None = None, depth: int | None = None, hidden: int | None = None,
                 data_init: bool | None = None, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None, **options: Any) -> None:
        super().__init__(**options)
        built: dict[str, Any] = {k: v for k, v in (("blocks", blocks), ("depth", depth), ("hidden", hidden), ("data_init", data_init),
                                   ("device", device), ("dtype", dtype)) if v is not None}
        if link is not None:
            if not isinstance(link, LegendreTronLink):
                raise ConfigError(f"LegendreTronLoss: link must be a LegendreTronLink, got {type(link).__name__}")
            if built:
                raise ConfigError(f"LegendreTronLoss: {sorted(built)} configure a new link and cannot be combined "
                                  f"with link=; set them when building the LegendreTronLink")
            if num_classes is not None and num_classes != link.num_classes:
                raise ConfigError(f"LegendreTronLoss: num_classes={num_classes!r} but the given link has "
                                  f"{link.num_classes} classes; drop num_classes or pass a matching link")
            self.link = link
        elif num_classes is None:
            raise ConfigError("LegendreTronLoss: pass num_classes (C ≥ 2; the inner model outputs C − 1 values) to "
                              "build a link, or link=LegendreTronLink(...)")
        else:
            self.link = LegendreTronLink(num_classes, **built)

    def forward(self, *inputs: Tensor, **call_args: Any) -> Any:
        return self._fn(*inputs, link=self.link, **self._options(call_args))

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self._plain.items())
