"""The plumbing every losslab optimizer shares, so each algorithm file holds only its own rule.

:class:`Optimizer` is ``torch.optim.Optimizer`` plus four things:

* validation: a subclass defines ``_check_group(group)``; the defaults are checked once in ``__init__`` and every
  group added later is checked with the defaults filled in, before torch (or the caller) sees any change;
* ``_closure_loss(closure)``: the closure evaluated with gradients enabled (``step`` runs under ``no_grad``);
* ``_count_step(p, *buffers)``: the lazily created state of ``p`` (``step`` counter and zero buffers), advanced;
* ``_split_fused(params)``: which parameters go to the fused-kernel fast path and which to the reference path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from losslab.optim._atoms import fused_ok, merged_group, resolve_fused

__all__: list[str] = []


class Optimizer(torch.optim.Optimizer):
    """``torch.optim.Optimizer`` with validated param groups and the shared step helpers (private base class)."""

    def __init__(self, params: Iterable[Any], defaults: dict[str, Any]) -> None:
        self._check_group(defaults)
        super().__init__(params, defaults)

    def _check_group(self, group: dict[str, Any]) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Validate the merged group before torch adds it."""
        self._check_group(merged_group(self.defaults, param_group))
        super().add_param_group(param_group)

    @staticmethod
    def _closure_loss(closure: Callable[[], Any] | None) -> Any:
        """``closure()`` with gradients enabled, or None without a closure."""
        if closure is None:
            return None
        with torch.enable_grad():
            return closure()

    def _count_step(self, p: torch.Tensor, *buffers: str, like: torch.Tensor | None = None) -> dict[str, Any]:
        """The state of ``p`` with ``state["step"]`` advanced by one.

        On the first call the counter starts at 0 and each name in ``buffers`` gets ``torch.zeros_like(like)``
        (``like`` defaults to ``p``).
        """
        state = self.state[p]
        if "step" not in state:
            state["step"] = 0
            for name in buffers:
                state[name] = torch.zeros_like(p if like is None else like)
        state["step"] += 1
        return state

    def _split_fused(self, params: list[torch.Tensor], allowed: bool = True
                     ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """``(fused, reference)``: the non-empty parameters the fused kernel takes, and the rest.

        Everything goes to the reference path when ``allowed`` is False (then ``fused`` is not even resolved) or
        when :func:`~losslab.optim._atoms.resolve_fused` turns the fast path off; ``fused=True`` on an unsupported
        setup raises there.
        """
        if not (allowed and resolve_fused(type(self).__name__, getattr(self, "fused", None), params)):
            return [], params
        fast = [p for p in params if fused_ok(p) and p.numel() > 0]
        rest = [p for p in params if not (fused_ok(p) and p.numel() > 0)]
        return fast, rest
