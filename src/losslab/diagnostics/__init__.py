"""Diagnostics of the training loss: Hessian spectra, sharpness, loss landscapes and plasticity metrics.

Every routine evaluates ``loss_fn(model, batch) -> scalar tensor`` without side effects on the model (buffers such
as BatchNorm running statistics are cloned, every sub-module's ``training`` flag is restored) and every stochastic
routine takes ``seed=`` (an int or a :class:`torch.Generator`; the global RNG is never used).

Random draws of the model itself (dropout masks with ``mode="train"``, or ``"current"`` on a model in train mode)
come from a private copy of the global RNG, seeded afresh for every model call and restored afterwards (CPU and the
model's CUDA devices): the caller's RNG state is bit-identical after any diagnostic, so measuring mid-training does
not change the run, and results are reproducible. :class:`HessianOperator` and :class:`DatasetHessianOperator`
take ``seed=`` for these masks (batch ``i`` of a dataset operator uses ``seed + i`` in every product, so the
operator is one fixed symmetric matrix); every other model call uses the fixed seed ``0``.

- Hessian: :class:`HessianOperator`, :class:`DatasetHessianOperator`, :func:`hvp`, :func:`lanczos`,
  :func:`power_iteration`,  :func:`hutchinson_trace`, :func:`spectral_density`, :func:`classwise_spectra`.
- Landscapes: :func:`random_direction`, :func:`hessian_directions`, :func:`loss_line`, :func:`loss_plane`,
  :func:`linear_interpolation`, :func:`layerwise_barriers`, :func:`sample_size_loss_change`.
- Sharpness: :class:`SharpnessTracker`, :func:`stability_threshold`, :func:`adam_preconditioned_sharpness`.
- Plasticity (each name says exactly what is computed): :func:`dead_units`, :func:`dormant_units`,
  :func:`redo_dormant_units`, :func:`effective_rank`, :func:`srank`, :func:`feature_norm`,
  :func:`weight_magnitude`, :func:`gradient_covariance`, :func:`collect_features`, :func:`plasticity_report`.
- Continual learning: :func:`l2_init_penalty`, :func:`wasserstein_init_penalty`, :class:`SpectralRegularizer`,
  :class:`ContinualBackprop`.
- Loss estimation: :func:`sensitivity_sample` (the mean loss over a dataset from k + m evaluated rows),
  :func:`kmeans`, :class:`LossSample`.
- Probes: :func:`input_sensitivity`, :func:`tangent_alignment`, :func:`empirical_ntk`, :func:`kernel_distance`.
- Influence functions (K-FAC / EK-FAC): :func:`fit_influence_factors` -> :class:`InfluenceFactors`,
  :func:`influence_scores`, :func:`self_influence`.
- Data difficulty (per-example scores, higher = harder): :func:`el2n_scores`, :func:`grand_scores`,
  :func:`vog_scores`, :class:`ForgettingTracker`, :func:`prototype_scores`, and :func:`prune` to keep a fraction.
- Data quality from training dynamics (higher = more useful): :func:`pds_scores` -> :class:`PDSResult` (the
  co-state of a proxy SGD run) and :func:`pds_select` (Gumbel top-k).
- Group balance (worst-group accuracy): :func:`balance_groups` subsamples every (class, group) cell to the
  smallest, or reweights.
"""

from losslab.diagnostics._continual import (
    ContinualBackprop,
    SpectralRegularizer,
    l2_init_penalty,
    wasserstein_init_penalty,
)
from losslab.diagnostics._data_pruning import ForgettingTracker, prototype_scores, prune
from losslab.diagnostics._data_scores import el2n_scores, grand_scores, vog_scores
from losslab.diagnostics._density import (
    ClassSpectrum,
    SpectralDensity,
    TraceResult,
    classwise_spectra,
    hutchinson_trace,
    spectral_density,
)
from losslab.diagnostics._eigen import EigenResult, lanczos, lanczos_tridiagonal, power_iteration
from losslab.diagnostics._group_balance import balance_groups
from losslab.diagnostics._hessian import (
    DatasetHessianOperator,
    HessianOperator,
    MatrixOperator,
    as_operator,
    hvp,
)
from losslab.diagnostics._influence import influence_scores, self_influence
from losslab.diagnostics._interpolation import (
    Interpolation,
    SampleSizeChange,
    layerwise_barriers,
    linear_interpolation,
    sample_size_loss_change,
)
from losslab.diagnostics._kfac_factors import InfluenceFactors, LayerFactors, fit_influence_factors
from losslab.diagnostics._landscape import (
    LossLandscape,
    hessian_directions,
    loss_line,
    loss_plane,
    random_direction,
)
from losslab.diagnostics._pds import PDSResult, pds_scores, pds_select
from losslab.diagnostics._plasticity import (
    dead_units,
    dormant_units,
    effective_rank,
    feature_norm,
    redo_dormant_units,
    srank,
    weight_magnitude,
)
from losslab.diagnostics._plasticity_probe import (
    GradientCovariance,
    collect_features,
    gradient_covariance,
    plasticity_report,
)
from losslab.diagnostics._probes import (
    InputSensitivity,
    empirical_ntk,
    input_sensitivity,
    kernel_distance,
    tangent_alignment,
)
from losslab.diagnostics._sampling import LossSample, kmeans, sensitivity_sample
from losslab.diagnostics._sharpness import (
    SharpnessRecord,
    SharpnessTracker,
    adam_preconditioned_sharpness,
    stability_threshold,
)

__all__ = [
    "ClassSpectrum",
    "ContinualBackprop",
    "DatasetHessianOperator",
    "EigenResult",
    "ForgettingTracker",
    "GradientCovariance",
    "HessianOperator",
    "InfluenceFactors",
    "InputSensitivity",
    "Interpolation",
    "LayerFactors",
    "LossLandscape",
    "LossSample",
    "MatrixOperator",
    "PDSResult",
    "SampleSizeChange",
    "SharpnessRecord",
    "SharpnessTracker",
    "SpectralDensity",
    "SpectralRegularizer",
    "TraceResult",
    "adam_preconditioned_sharpness",
    "as_operator",
    "balance_groups",
    "classwise_spectra",
    "collect_features",
    "dead_units",
    "dormant_units",
    "effective_rank",
    "el2n_scores",
    "empirical_ntk",
    "feature_norm",
    "fit_influence_factors",
    "gradient_covariance",
    "grand_scores",
    "hessian_directions",
    "hutchinson_trace",
    "hvp",
    "influence_scores",
    "input_sensitivity",
    "kernel_distance",
    "kmeans",
    "l2_init_penalty",
    "lanczos",
    "lanczos_tridiagonal",
    "layerwise_barriers",
    "linear_interpolation",
    "loss_line",
    "loss_plane",
    "pds_scores",
    "pds_select",
    "plasticity_report",
    "power_iteration",
    "prototype_scores",
    "prune",
    "random_direction",
    "redo_dormant_units",
    "sample_size_loss_change",
    "self_influence",
    "sensitivity_sample",
    "spectral_density",
    "srank",
    "stability_threshold",
    "tangent_alignment",
    "vog_scores",
    "wasserstein_init_penalty",
    "weight_magnitude",
]
