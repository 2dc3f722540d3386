"""The plumbing every losslab optimizer shares, so each algorithm file holds only its own rule.

:class:`Optimizer` is ``torch.optim.Optimizer`` plus three things:

* validation: a subclass defines ``_check_group(group)``; the defaults are checked once in ``__init__`` and every
  group added later is checked with the defaults filled in, before torch (or the caller) sees any change;
* ``_count_step(p, *buffers)``: the lazily created state of ``p`` (``step`` counter and zero buffers), advanced;
* ``_split_fused(params)``: which parameters go to the fused-kernel fast path and which to the reference path.

:class:`Wrapper` is the shell of an optimizer that builds a base optimizer on its own param groups and shares them
(SAM, OrthoGrad): group forwarding and a ``state_dict`` that is the base optimizer's. :func:`closure_loss` runs a
closure with gradients enabled, as every ``step`` (decorated with ``no_grad``) must.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from losslab._errors import ConfigError
from losslab.optim._atoms import fused_ok, merged_group, resolve_fused

__all__: list[str] = []


def closure_loss(closure: Callable[[], Any] | None) -> Any:
    """``closure()`` with gradients enabled (``step`` runs under ``no_grad``), or None without a closure."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


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


class Wrapper(torch.optim.Optimizer):
    """An optimizer around a base optimizer that it builds on its own param groups and then shares them with."""

    _load_hint = ""  # appended to the error of load_state_dict on a dict without "base"

    def _wrap(self, factory: Callable[..., torch.optim.Optimizer], kwargs: dict[str, Any]) -> None:
        """Build ``factory(self.param_groups, **kwargs)`` and share its param groups and defaults from now on."""
        self.base_optimizer = factory(self.param_groups, **kwargs)
        self.param_groups = self.base_optimizer.param_groups
        self.defaults.update(self.base_optimizer.defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group (to the base optimizer once it exists)."""
        if hasattr(self, "base_optimizer"):
            self.base_optimizer.add_param_group(param_group)
        else:
            super().add_param_group(param_group)

    def state_dict(self) -> dict[str, Any]:
        """The base optimizer's state dict."""
        return {"base": self.base_optimizer.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load the base optimizer's state and share its new param groups."""
        if "base" not in state_dict:
            name = type(self).__name__
            raise ConfigError(f"{name}.load_state_dict expects the dict returned by {name}.state_dict(){self._load_hint}")
        self.base_optimizer.load_state_dict(state_dict["base"])
        self.param_groups = self.base_optimizer.param_groups
