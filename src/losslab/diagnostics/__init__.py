"""Diagnostics of the training loss: Hessian spectra, sharpness, loss landscapes and plasticity metrics.

Every routine evaluates ``loss_fn(model, batch) -> scalar tensor`` without side effects on the model (buffers such
as BatchNorm running statistics are cloned, every sub-module's ``training`` flag is restored) and every stochastic
routine takes ``seed=`` (an int or a :class:`torch.Generator`; the global RNG is never used).

- Hessian: :class:`HessianOperator`, :func:`hvp`, :func:`lanczos`, :func:`power_iteration`,
  :func:`hutchinson_trace`, :func:`spectral_density`, :func:`classwise_spectra`.
- Sharpness: :class:`SharpnessTracker`, :func:`stability_threshold`, :func:`adam_preconditioned_sharpness`.
"""

from losslab.diagnostics._density import (
    ClassSpectrum,
    SpectralDensity,
    TraceResult,
    classwise_spectra,
    hutchinson_trace,
    spectral_density,
)
from losslab.diagnostics._eigen import EigenResult, lanczos, lanczos_tridiagonal, power_iteration
from losslab.diagnostics._hessian import HessianOperator, MatrixOperator, as_operator, hvp
from losslab.diagnostics._sharpness import (
    SharpnessRecord,
    SharpnessTracker,
    adam_preconditioned_sharpness,
    stability_threshold,
)

__all__ = [
    "ClassSpectrum",
    "EigenResult",
    "HessianOperator",
    "MatrixOperator",
    "SharpnessRecord",
    "SharpnessTracker",
    "SpectralDensity",
    "TraceResult",
    "adam_preconditioned_sharpness",
    "as_operator",
    "classwise_spectra",
    "hutchinson_trace",
    "hvp",
    "lanczos",
    "lanczos_tridiagonal",
    "power_iteration",
    "spectral_density",
    "stability_threshold",
]
