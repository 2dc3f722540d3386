"""The loss registry: one info record per loss, filled by the ``@register`` decorator next to each function."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from losslab._registry import Info, Registry

__all__ = ["INPUT_KINDS", "LossInfo", "register", "registry"]

INPUT_KINDS = ("logits", "probabilities", "regression", "embeddings", "hidden_states")
ALL_FLOATS = ("float64", "float32", "bfloat16", "float16")


@dataclass(frozen=True)
class LossInfo(Info):
    """Info record of a loss.

    Attributes:
        input_kind: what the first argument holds: "logits", "probabilities", "regression", "embeddings"
            or "hidden_states" (last hidden layer, with the output projection weight passed separately).
        target_kind: what the target holds, e.g. "class index", "binary", "multi-hot", "token id".
        dtypes: floating dtypes accepted for the input (half precision is computed in float32).
        module: name of the ``nn.Module`` wrapper, exported by :mod:`losslab.losses`.
        family: the source file's family ("classification", "llm", "robust", "metric", "stochastic").
    """

    input_kind: str = "logits"
    target_kind: str = "class index"
    dtypes: tuple[str, ...] = ALL_FLOATS
    module: str = ""
    family: str = ""


registry: Registry[LossInfo] = Registry("loss")

F = TypeVar("F", bound=Callable[..., Any])


def register(name: str, *, summary: str, reference: str, module: str, family: str, input_kind: str = "logits",
             target_kind: str = "class index", dtypes: tuple[str, ...] = ALL_FLOATS,
             tags: tuple[str, ...] = (), aliases: tuple[str, ...] = ()) -> Callable[[F], F]:
    """Decorator registering a functional loss under ``name``."""
    assert input_kind in INPUT_KINDS, input_kind  # programming error, not user input

    def deco(fn: F) -> F:
        registry.register(
            LossInfo(name=name, summary=summary, reference=reference, obj=fn, tags=tags, input_kind=input_kind,
                     target_kind=target_kind, dtypes=dtypes, module=module, family=family),
            aliases=aliases,
        )
        return fn

    return deco
