"""A small generic registry: one per catalogue (losses, optimizers, laws, monitors).

Each entry is an info record (a frozen dataclass with at least ``name``, ``summary`` and ``reference``). The CLI's
``losslab list``, the docs tables and the parametrised tests all read the registry, so registering an entry is the one
step that makes it visible everywhere.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from losslab._errors import ConfigError, UnknownNameError

__all__ = ["Info", "Registry", "did_you_mean"]



def did_you_mean(value: str, choices: Sequence[str], *, n: int = 3, cutoff: float = 0.5, sep: str = ", ") -> str:
    """``"did you mean 'a', 'b'? "`` for the choices closest to ``value`` (``""`` when none is close).

    >>> did_you_mean("adamw", ["adam", "sgd"])
    "did you mean 'adam'? "
    """
    close = difflib.get_close_matches(value, choices, n=n, cutoff=cutoff)
    return f"did you mean {sep.join(repr(c) for c in close)}? " if close else ""

@dataclass(frozen=True)
class Info:
    """Minimal info record. Catalogues subclass it to add capabilities.

    Attributes:
        name: registry key, lower snake case.
        summary: one line describing the entry.
        reference: paper citation "Authors, Title, arXiv:XXXX.XXXXX, year" (empty for plain baselines).
        obj: the registered object (function or class).
        tags: free-form capability flags.
    """

    name: str
    summary: str
    reference: str = ""
    obj: Any = None
    tags: tuple[str, ...] = field(default_factory=tuple)


InfoT = TypeVar("InfoT", bound=Info)


class Registry(Generic[InfoT]):
    """Name -> info record, with "did you mean" suggestions on unknown names."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, InfoT] = {}
        self._aliases: dict[str, str] = {}

    def register(self, info: InfoT, aliases: tuple[str, ...] = ()) -> InfoT:
        """Add ``info``; raise ConfigError if the name (or an alias) is taken."""
        for key in (info.name, *aliases):
            if key in self._entries or key in self._aliases:
                raise ConfigError(f"{self.kind} '{key}' is registered twice; pick a unique name")
        self._entries[info.name] = info
        for alias in aliases:
            self._aliases[alias] = info.name
        return info

    def _canonical(self, name: str) -> str:
        key = name.strip().lower().replace("-", "_")
        key = self._aliases.get(key, key)
        if key not in self._entries:
            choices = sorted(self._entries) + sorted(self._aliases)
            hint = did_you_mean(key, choices)
            plural = self.kind + ("es" if self.kind.endswith("s") else "s")
            raise UnknownNameError(
                f"unknown {self.kind} '{name}'; {hint}known {plural}: {', '.join(sorted(self._entries))}"
            )
        return key

    def info(self, name: str) -> InfoT:
        """The info record of ``name`` (aliases and '-' vs '_' accepted)."""
        return self._entries[self._canonical(name)]

    def get(self, name: str) -> Any:
        """The registered object of ``name``."""
        return self.info(name).obj

    def names(self) -> list[str]:
        """Sorted registered names (aliases excluded)."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        try:
            self._canonical(name)
        except UnknownNameError:
            return False
        return True

    def __iter__(self) -> Iterator[InfoT]:
        return iter(self._entries[name] for name in self.names())

    def __len__(self) -> int:
        return len(self._entries)
