"""The base of the ``nn.Module`` forms of the functional losses (:mod:`losslab.losses.modules` and its siblings).

Each class stores the keyword options of its function (validated by calling signature binding at construction) and
forwards the positional inputs: ``CrossEntropyLoss(z_loss=1e-4)(logits, target)`` equals
``cross_entropy(logits, target, z_loss=1e-4)``. Tensor options (class weights, token maps) are registered as
buffers so that ``.to(device)`` moves them.
"""

from __future__ import annotations

import inspect
from typing import Any

from torch import Tensor, nn

from losslab._buffers import keep_buffer_dtypes
from losslab._errors import ConfigError
from losslab.losses._catalogue import registry

__all__ = ["_LossModule", "_make_doc"]


class _LossModule(nn.Module):
    """Base: holds the keyword options of the registered function ``loss_name``."""

    loss_name = ""

    def __init__(self, **options: Any) -> None:
        super().__init__()
        fn = registry.get(self.loss_name)
        params = inspect.signature(fn).parameters
        allowed = [n for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY]
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            raise ConfigError(f"{type(self).__name__}: unknown option(s) {unknown}; accepted: {allowed}")
        self._fn = fn
        self._call_args = [n for n, p in params.items() if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
        self._plain: dict[str, Any] = {}
        self._buffers_names: list[str] = []
        self._state_buffers: list[str] = []
        for key, value in options.items():
            if isinstance(value, Tensor):
                self.register_buffer(key, value)
                self._buffers_names.append(key)
            else:
                self._plain[key] = value

    def _options(self, call_args: dict[str, Any]) -> dict[str, Any]:
        """The stored options plus the per-call arguments (the function's non-keyword-only parameters)."""
        unknown = sorted(set(call_args) - set(self._call_args))
        if unknown:
            raise ConfigError(f"{type(self).__name__}: {unknown} cannot be passed per call (options go to the "
                              f"constructor); per-call arguments: {self._call_args}")
        options = dict(self._plain)
        for key in self._buffers_names:
            options[key] = getattr(self, key)
        return {**call_args, **options}

    def forward(self, *inputs: Tensor, **call_args: Any) -> Any:
        return self._fn(*inputs, **self._options(call_args))

    def _apply(self, fn: Any, recurse: bool = True) -> Any:
        # tensor options (class counts, class weights, quantile levels) and state tables follow device moves but
        # keep their dtype: .half() or a bf16-true trainer would otherwise round counts (5000 -> 4992 in bf16)
        keep_buffer_dtypes(self, [*self._buffers_names, *self._state_buffers],
                           lambda: super(_LossModule, self)._apply(fn, recurse))
        return self

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self._plain.items())


def _make_doc(cls_name: str, loss: str) -> str:
    return (f"Module form of :func:`losslab.losses.{loss}`: ``{cls_name}(**options)(*inputs)`` equals "
            f"``{loss}(*inputs, **options)``; tensor options become buffers that follow device moves and keep their dtype.")
