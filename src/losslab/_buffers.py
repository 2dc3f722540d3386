"""Buffers that follow a module's device moves but keep their dtype under ``.half()`` / ``.to(torch.bfloat16)``."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from torch import nn

__all__ = ["keep_buffer_dtypes"]


def keep_buffer_dtypes(module: nn.Module, names: Iterable[str], apply: Callable[[], Any]) -> None:
    """Run ``apply`` (the module's ``nn.Module._apply``) and give the named buffers back their own dtype.

    Counts, biases and tables cast to 16 bits lose what they hold (a count of 5000 is 4992 in bfloat16, 70000 is
    inf in float16); device moves still apply to them.
    """
    before = {name: module._buffers[name] for name in names}
    apply()
    for name, old in before.items():
        new = module._buffers[name]
        if old is not None and new is not None and new.dtype != old.dtype:
            module._buffers[name] = old.to(device=new.device)
