"""losslab.losses: a catalogue of loss functions with one registry, a functional form and a module form.

Functional form: ``losslab.losses.<name>(input, target, ..., reduction="mean")``; every loss computes per-element
values and reduces them in one place (``_reduce.py``) with ``torch.nn.functional`` semantics for ``reduction``,
``weight`` and ``ignore_index``. Module form: ``losslab.losses.<CamelName>Loss(**options)``. Registry:
``registry``, ``names()``, ``get(name)``, ``info(name)``; ``losslab list losses`` prints it.

Example:
    >>> import torch, losslab.losses as L
    >>> "cross_entropy" in L.names()
    True
    >>> L.info("cross_entropy").input_kind
    'logits'
"""

from __future__ import annotations

from typing import Any

from losslab.losses._catalogue import LossInfo, registry
from losslab.losses.adversarial import score
from losslab.losses.auc import mw_loss
from losslab.losses.cascade_ranking import lcron_loss
from losslab.losses.censored_aggregate import aggregate_loss, ipcw_loss, ipcw_weights, kaplan_meier
from losslab.losses.classification import cross_entropy, focal, sigmoid_focal, softcap, squentropy
from losslab.losses.conformal import r2ccp_intervals, r2ccp_threshold
from losslab.losses.distillation import dkd, kd, nkd
from losslab.losses.distillation_divergences import alpha_divergence, binary_kl_norm
from losslab.losses.feature_distillation import nd
from losslab.losses.forecasting import (
    gmadl,
    madl,
    nrmse,
    relative_absolute_error,
    relative_squared_error,
    rmsle,
    rrmse,
)
from losslab.losses.histogram import hl_gauss, hl_gauss_target, hl_gauss_value
from losslab.losses.imbalance import (
    balanced_softmax,
    class_balanced_weights,
    ldam,
    logit_adjusted_cross_entropy,
)
from losslab.losses.imbalanced_regression import srl, srl_centroids
from losslab.losses.legendretron import LegendreTronLink, legendretron_loss
from losslab.losses.llm import linear_cross_entropy, ntl_mse, ntl_wasserstein
from losslab.losses.metric import decoupled_softmax, oko, sface
from losslab.losses.modules import (
    AdversarialCompSumLoss,
    ALDRKLLoss,
    AlphaDivergenceLoss,
    BalancedSoftmaxLoss,
    BinaryKLNormLoss,
    CompSumLoss,
    CrossEntropyLoss,
    DecoupledSoftmaxLoss,
    DKDLoss,
    EnsLoss,
    FocalLoss,
    GeneralizedCrossEntropyLoss,
    KDLoss,
    LDAMLoss,
    LDRKLLoss,
    LinearCrossEntropyLoss,
    LogitAdjustedCrossEntropyLoss,
    NKDLoss,
    NTLMSELoss,
    NTLWassersteinLoss,
    OKOLoss,
    Poly1CrossEntropyLoss,
    Poly1FocalLoss,
    PolyCrossEntropyLoss,
    SFaceLoss,
    SigmoidFocalLoss,
    SoftmaxMAELoss,
    SphericalZLoss,
    SquentropyLoss,
    StableMaxCrossEntropyLoss,
)
from losslab.losses.modules_extra import AggregateLoss, IPCWLoss, LCRONLoss, LegendreTronLoss, MTPLoss
from losslab.losses.modules_regression import (
    AnyLoss,
    ApproxNDCGLoss,
    DiceLoss,
    GMADLLoss,
    HLGaussLoss,
    HuberLoss,
    ListMLELoss,
    ListNetLoss,
    LogCoshLoss,
    MADLLoss,
    MAELoss,
    MAPELoss,
    MeanBiasErrorLoss,
    MSELoss,
    MSLELoss,
    MWLoss,
    NDLoss,
    NeuralNDCGLoss,
    NRMSELoss,
    QuantileLoss,
    R2CCPLoss,
    RankNetLoss,
    RegClsLoss,
    RelativeAbsoluteErrorLoss,
    RelativeSquaredErrorLoss,
    RMSLELoss,
    RRMSELoss,
    SCORELoss,
    SRLLoss,
    USKDLoss,
)
from losslab.losses.multi_token import main_and_mtp_loss, mtp_loss
from losslab.losses.overlap import anyloss, dice
from losslab.losses.poly import poly1_cross_entropy, poly1_focal, poly_cross_entropy
from losslab.losses.ranking import approx_ndcg, listmle, listnet, neural_ndcg, ranknet
from losslab.losses.regression import (
    huber,
    log_cosh,
    mae,
    mape,
    mean_bias_error,
    mse,
    msle,
    quantile,
)
from losslab.losses.regression_classification import r2ccp, reg_cls, reg_cls_bins, reg_cls_labels
from losslab.losses.robust import (
    adversarial_comp_sum,
    aldr_kl,
    comp_sum,
    generalized_cross_entropy,
    ldr_kl,
    softmax_mae,
)
from losslab.losses.self_distillation import uskd
from losslab.losses.spherical import spherical_z_loss, stablemax, stablemax_cross_entropy
from losslab.losses.stochastic import ensloss

__all__ = [
    "ALDRKLLoss",
    "AdversarialCompSumLoss",
    "AggregateLoss",
    "AlphaDivergenceLoss",
    "AnyLoss",
    "ApproxNDCGLoss",
    "BalancedSoftmaxLoss",
    "BinaryKLNormLoss",
    "CompSumLoss",
    "CrossEntropyLoss",
    "DKDLoss",
    "DecoupledSoftmaxLoss",
    "DiceLoss",
    "EnsLoss",
    "FocalLoss",
    "GMADLLoss",
    "GeneralizedCrossEntropyLoss",
    "HLGaussLoss",
    "HuberLoss",
    "IPCWLoss",
    "KDLoss",
    "LCRONLoss",
    "LDAMLoss",
    "LDRKLLoss",
    "LegendreTronLink",
    "LegendreTronLoss",
    "LinearCrossEntropyLoss",
    "ListMLELoss",
    "ListNetLoss",
    "LogCoshLoss",
    "LogitAdjustedCrossEntropyLoss",
    "LossInfo",
    "MADLLoss",
    "MAELoss",
    "MAPELoss",
    "MSELoss",
    "MSLELoss",
    "MTPLoss",
    "MWLoss",
    "MeanBiasErrorLoss",
    "NDLoss",
    "NKDLoss",
    "NRMSELoss",
    "NTLMSELoss",
    "NTLWassersteinLoss",
    "NeuralNDCGLoss",
    "OKOLoss",
    "Poly1CrossEntropyLoss",
    "Poly1FocalLoss",
    "PolyCrossEntropyLoss",
    "QuantileLoss",
    "R2CCPLoss",
    "RMSLELoss",
    "RRMSELoss",
    "RankNetLoss",
    "RegClsLoss",
    "RelativeAbsoluteErrorLoss",
    "RelativeSquaredErrorLoss",
    "SCORELoss",
    "SFaceLoss",
    "SRLLoss",
    "SigmoidFocalLoss",
    "SoftmaxMAELoss",
    "SphericalZLoss",
    "SquentropyLoss",
    "StableMaxCrossEntropyLoss",
    "USKDLoss",
    "adversarial_comp_sum",
    "aggregate_loss",
    "aldr_kl",
    "alpha_divergence",
    "anyloss",
    "approx_ndcg",
    "balanced_softmax",
    "binary_kl_norm",
    "class_balanced_weights",
    "comp_sum",
    "cross_entropy",
    "decoupled_softmax",
    "dice",
    "dkd",
    "ensloss",
    "focal",
    "generalized_cross_entropy",
    "get",
    "gmadl",
    "hl_gauss",
    "hl_gauss_target",
    "hl_gauss_value",
    "huber",
    "info",
    "ipcw_loss",
    "ipcw_weights",
    "kaplan_meier",
    "kd",
    "lcron_loss",
    "ldam",
    "ldr_kl",
    "legendretron_loss",
    "linear_cross_entropy",
    "listmle",
    "listnet",
    "log_cosh",
    "logit_adjusted_cross_entropy",
    "madl",
    "mae",
    "main_and_mtp_loss",
    "mape",
    "mean_bias_error",
    "mse",
    "msle",
    "mtp_loss",
    "mw_loss",
    "names",
    "nd",
    "neural_ndcg",
    "nkd",
    "nrmse",
    "ntl_mse",
    "ntl_wasserstein",
    "oko",
    "poly1_cross_entropy",
    "poly1_focal",
    "poly_cross_entropy",
    "quantile",
    "r2ccp",
    "r2ccp_intervals",
    "r2ccp_threshold",
    "ranknet",
    "reg_cls",
    "reg_cls_bins",
    "reg_cls_labels",
    "registry",
    "relative_absolute_error",
    "relative_squared_error",
    "rmsle",
    "rrmse",
    "score",
    "sface",
    "sigmoid_focal",
    "softcap",
    "softmax_mae",
    "spherical_z_loss",
    "squentropy",
    "srl",
    "srl_centroids",
    "stablemax",
    "stablemax_cross_entropy",
    "uskd",
]


def names() -> list[str]:
    """Sorted names of the registered losses."""
    return registry.names()


def get(name: str) -> Any:
    """The functional loss registered as ``name`` (aliases and '-' accepted; unknown names get suggestions)."""
    return registry.get(name)


def info(name: str) -> LossInfo:
    """The :class:`LossInfo` record of ``name``: summary, reference, input kind, dtypes, module class name."""
    return registry.info(name)
