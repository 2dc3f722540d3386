"""Provenance block attached to every fit result and report: versions, platform and the time of creation."""

from __future__ import annotations

import datetime as _dt
import platform
import sys
from typing import Any

__all__ = ["provenance"]


def provenance(**settings: Any) -> dict[str, Any]:
    """Versions of losslab, Python, NumPy and SciPy, the platform, a UTC timestamp and the given settings."""
    import numpy
    import scipy

    from losslab import __version__

    return {
        "losslab": __version__,
        "python": sys.version.split()[0],
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
        "platform": platform.platform(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "settings": settings,
    }
