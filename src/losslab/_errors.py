"""Exception tree of losslab.

Every error raised on bad user input derives from :class:`LosslabError` and from the builtin exception a
user would expect (``ValueError`` for bad values, ``KeyError`` for unknown names, ``RuntimeError`` for failed
fits), so ``except ValueError`` keeps working. Messages say what went wrong, why, and how to fix it.

- :class:`ConfigError` (``ValueError``): a hyperparameter, option or spec string is out of range or malformed.
- :class:`DataError` (``ValueError``): input data (tensors, arrays, files) has the wrong shape, NaN/Inf, or is malformed.
- :class:`UnknownNameError` (``KeyError``): a registry lookup failed; the message lists the closest names.
- :class:`FitError` (``RuntimeError``): a fit could not produce a usable result.
- :class:`NotFittedError` (``RuntimeError``): a result was used before it was fitted or loaded.
- :class:`OptionalDependencyError` (``ImportError``): an optional extra is missing; the message names the install command.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "DataError",
    "FitError",
    "LosslabError",
    "NotFittedError",
    "OptionalDependencyError",
    "UnknownNameError",
]


class LosslabError(Exception):
    """Base class of every error that losslab raises on purpose."""


class ConfigError(LosslabError, ValueError):
    """A hyperparameter, option or specification is invalid."""


class DataError(LosslabError, ValueError):
    """Input data is malformed: wrong shape, non-finite values, empty, or an unreadable file."""


class UnknownNameError(LosslabError, KeyError):
    """A name is not in a registry; the message suggests the closest registered names."""

    def __str__(self) -> str:  # KeyError would wrap the message in quotes
        return str(self.args[0]) if self.args else ""


class FitError(LosslabError, RuntimeError):
    """A fit failed to produce a usable result."""


class NotFittedError(LosslabError, RuntimeError):
    """An object was used before being fitted or loaded."""


class OptionalDependencyError(LosslabError, ImportError):
    """An optional dependency is not installed."""


def require(module: str, extra: str, feature: str) -> object:
    """Import ``module`` or raise :class:`OptionalDependencyError` naming the extra that installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise OptionalDependencyError(
            f"{feature} needs the optional package '{module}', which is not installed; "
            f"install it with: pip install 'losslab[{extra}]'"
        ) from exc
