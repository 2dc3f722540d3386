"""losslab: choose, minimise, watch and predict the training loss of neural networks.

Sub-packages (imported on first use, so ``import losslab`` stays light and ``losslab.forecast`` never imports torch):

- :mod:`losslab.losses`      catalogue of loss functions (torch)
- :mod:`losslab.optim`       optimizers following torch.optim conventions
- :mod:`losslab.stability`   spike detectors, skip/rollback, z-loss, QK-norm and other stabilisers
- :mod:`losslab.monitor`     training monitor with CSV/JSONL/TensorBoard sinks and framework adapters
- :mod:`losslab.diagnostics` Hessian spectra, sharpness, loss landscapes, plasticity metrics
- :mod:`losslab.forecast`    loss-curve laws across LR schedules and scaling laws (NumPy/SciPy only)
- :mod:`losslab.schedules`   learning-rate schedules shared by training and forecasting
- :mod:`losslab.report`      plots and reports
"""

from __future__ import annotations

import importlib
from typing import Any

from losslab._errors import (
    ConfigError,
    DataError,
    FitError,
    LosslabError,
    NotFittedError,
    OptionalDependencyError,
    UnknownNameError,
)

__version__ = "0.1.0"

_SUBMODULES = ("diagnostics", "forecast", "losses", "monitor", "optim", "report", "schedules", "stability")

__all__ = [
    "ConfigError",
    "DataError",
    "FitError",
    "LosslabError",
    "NotFittedError",
    "OptionalDependencyError",
    "UnknownNameError",
    "__version__",
]


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        module = importlib.import_module(f"losslab.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module 'losslab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_SUBMODULES])
