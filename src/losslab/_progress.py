"""Progress bars for long work (multi-start fits, bootstraps, sweeps, spectra); silent when ``quiet``."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

__all__ = ["progress"]

T = TypeVar("T")


def progress(items: Iterable[T], *, total: int | None = None, desc: str = "", quiet: bool | None = None) -> Iterator[T]:
    """Iterate over ``items`` with a tqdm bar on stderr.

    ``quiet=None`` (the default) shows the bar only on an interactive terminal and never when the environment
    variable ``LOSSLAB_QUIET`` is set (the CLI's ``--quiet`` sets it).
    """
    if quiet is None:
        quiet = bool(os.environ.get("LOSSLAB_QUIET")) or not sys.stderr.isatty()
    if quiet:
        yield from items
        return
    from tqdm.auto import tqdm

    yield from tqdm(items, total=total, desc=desc, leave=False, file=sys.stderr)
