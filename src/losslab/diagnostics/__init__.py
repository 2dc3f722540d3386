"""Diagnostics of the training loss: Hessian spectra, sharpness, loss landscapes and plasticity metrics.

Every routine evaluates ``loss_fn(model, batch) -> scalar tensor`` without side effects on the model (buffers such
as BatchNorm running statistics are cloned, every sub-module's ``training`` flag is restored) and every stochastic
routine takes ``seed=`` (an int or a :class:`torch.Generator`; the global RNG is never used).

- Hessian: :class:`HessianOperator`, :func:`hvp`, :func:`lanczos`, :func:`power_iteration`,
  :func:`hutchinson_trace`, :func:`spectral_density`, :func:`classwise_spectra`.
- Landscapes: :func:`random_direction`, :func:`hessian_directions`, :func:`loss_line`, :func:`loss_plane`,
  :func:`linear_interpolation`, :func:`layerwise_barriers`, :func:`sample_size_loss_change`.
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
from losslab.diagnostics._interpolation import (
    Interpolation,
    SampleSizeChange,
    layerwise_barriers,
    linear_interpolation,
    sample_size_loss_change,
)
from losslab.diagnostics._landscape import (
    LossLandscape,
    hessian_directions,
    loss_line,
    loss_plane,
    random_direction,
)
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
    "Interpolation",
    "LossLandscape",
    "MatrixOperator",
    "SampleSizeChange",
    "SharpnessRecord",
    "SharpnessTracker",
    "SpectralDensity",
    "TraceResult",
    "adam_preconditioned_sharpness",
    "as_operator",
    "classwise_spectra",
    "hessian_directions",
    "hutchinson_trace",
    "hvp",
    "lanczos",
    "lanczos_tridiagonal",
    "layerwise_barriers",
    "linear_interpolation",
    "loss_line",
    "loss_plane",
    "power_iteration",
    "random_direction",
    "sample_size_loss_change",
    "spectral_density",
    "stability_threshold",
]
