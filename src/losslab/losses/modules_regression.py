"""``nn.Module`` forms of the ranking, regression, overlap, adversarial and feature/self-distillation losses.

Same base class and behaviour as :mod:`losslab.losses.modules` (split by family so that each file stays short).
"""

from __future__ import annotations

from losslab.losses._module_base import _LossModule, _make_doc

__all__ = [
    "AnyLoss",
    "ApproxNDCGLoss",
    "DiceLoss",
    "GMADLLoss",
    "HLGaussLoss",
    "HuberLoss",
    "ListMLELoss",
    "ListNetLoss",
    "LogCoshLoss",
    "MADLLoss",
    "MAELoss",
    "MAPELoss",
    "MSELoss",
    "MSLELoss",
    "MeanBiasErrorLoss",
    "NDLoss",
    "NRMSELoss",
    "NeuralNDCGLoss",
    "QuantileLoss",
    "R2CCPLoss",
    "RMSLELoss",
    "RRMSELoss",
    "MWLoss",
    "RankNetLoss",
    "RegClsLoss",
    "RelativeAbsoluteErrorLoss",
    "RelativeSquaredErrorLoss",
    "SCORELoss",
    "SRLLoss",
    "USKDLoss",
]


# ranking (losses/ranking.py): forward(scores, labels, mask=None)
class NeuralNDCGLoss(_LossModule):
    __doc__ = _make_doc("NeuralNDCGLoss", "neural_ndcg")
    loss_name = "neural_ndcg"


class ApproxNDCGLoss(_LossModule):
    __doc__ = _make_doc("ApproxNDCGLoss", "approx_ndcg")
    loss_name = "approx_ndcg"


class ListNetLoss(_LossModule):
    __doc__ = _make_doc("ListNetLoss", "listnet")
    loss_name = "listnet"


class ListMLELoss(_LossModule):
    __doc__ = _make_doc("ListMLELoss", "listmle")
    loss_name = "listmle"


class MWLoss(_LossModule):
    __doc__ = _make_doc("MWLoss", "mw_loss")
    loss_name = "mw_loss"


class RankNetLoss(_LossModule):
    __doc__ = _make_doc("RankNetLoss", "ranknet")
    loss_name = "ranknet"
# regression family (regression.py, forecasting.py, histogram.py)
class MAELoss(_LossModule):
    __doc__ = _make_doc("MAELoss", "mae")
    loss_name = "mae"


class MSELoss(_LossModule):
    __doc__ = _make_doc("MSELoss", "mse")
    loss_name = "mse"


class HuberLoss(_LossModule):
    __doc__ = _make_doc("HuberLoss", "huber")
    loss_name = "huber"


class LogCoshLoss(_LossModule):
    __doc__ = _make_doc("LogCoshLoss", "log_cosh")
    loss_name = "log_cosh"


class MSLELoss(_LossModule):
    __doc__ = _make_doc("MSLELoss", "msle")
    loss_name = "msle"


class MAPELoss(_LossModule):
    __doc__ = _make_doc("MAPELoss", "mape")
    loss_name = "mape"


class MeanBiasErrorLoss(_LossModule):
    __doc__ = _make_doc("MeanBiasErrorLoss", "mean_bias_error")
    loss_name = "mean_bias_error"


class QuantileLoss(_LossModule):
    __doc__ = _make_doc("QuantileLoss", "quantile")
    loss_name = "quantile"


class RMSLELoss(_LossModule):
    __doc__ = _make_doc("RMSLELoss", "rmsle")
    loss_name = "rmsle"


class RelativeAbsoluteErrorLoss(_LossModule):
    __doc__ = _make_doc("RelativeAbsoluteErrorLoss", "relative_absolute_error")
    loss_name = "relative_absolute_error"


class RelativeSquaredErrorLoss(_LossModule):
    __doc__ = _make_doc("RelativeSquaredErrorLoss", "relative_squared_error")
    loss_name = "relative_squared_error"


class NRMSELoss(_LossModule):
    __doc__ = _make_doc("NRMSELoss", "nrmse")
    loss_name = "nrmse"


class RRMSELoss(_LossModule):
    __doc__ = _make_doc("RRMSELoss", "rrmse")
    loss_name = "rrmse"


class MADLLoss(_LossModule):
    __doc__ = _make_doc("MADLLoss", "madl")
    loss_name = "madl"


class GMADLLoss(_LossModule):
    __doc__ = _make_doc("GMADLLoss", "gmadl")
    loss_name = "gmadl"


class HLGaussLoss(_LossModule):
    __doc__ = _make_doc("HLGaussLoss", "hl_gauss")
    loss_name = "hl_gauss"


# overlap, adversarial and feature/self distillation (overlap.py, adversarial.py, self_distillation.py,
# feature_distillation.py)
class DiceLoss(_LossModule):
    __doc__ = _make_doc("DiceLoss", "dice")
    loss_name = "dice"


class AnyLoss(_LossModule):
    __doc__ = _make_doc("AnyLoss", "anyloss")
    loss_name = "anyloss"


class SCORELoss(_LossModule):
    __doc__ = _make_doc("SCORELoss", "score")
    loss_name = "score"


class USKDLoss(_LossModule):
    __doc__ = _make_doc("USKDLoss", "uskd")
    loss_name = "uskd"


class NDLoss(_LossModule):
    __doc__ = _make_doc("NDLoss", "nd")
    loss_name = "nd"


# regression as classification, imbalanced regression (regression_classification.py, imbalanced_regression.py)
class R2CCPLoss(_LossModule):
    __doc__ = _make_doc("R2CCPLoss", "r2ccp")
    loss_name = "r2ccp"


class RegClsLoss(_LossModule):
    __doc__ = _make_doc("RegClsLoss", "reg_cls")
    loss_name = "reg_cls"


class SRLLoss(_LossModule):
    __doc__ = _make_doc("SRLLoss", "srl")
    loss_name = "srl"
