"""Point-forecast regression losses, elementwise: MAE, MSE, Huber, log-cosh, MSLE, MAPE, mean bias error, pinball.

Every loss here takes a real-valued prediction ``input`` and a ``target`` (float) and returns one value per element,
reduced in ``_reduce.py``. Sign convention of the error, as in Keras (which the surveyed code uses): e = y - ŷ.
The per-series losses (RAE, RSE, NRMSE, RRMSE, RMSLE) and the trading losses (MADL, GMADL) are in
``forecasting.py``; HL-Gauss (regression as classification) is in ``histogram.py``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from losslab._errors import ConfigError, DataError
from losslab.losses._catalogue import register
from losslab.losses._reduce import reduce_loss
from losslab.losses._validate import (
    check_eps,
    check_float,
    check_number,
    check_reduction,
    check_same_shape,
    compute_dtype,
)

__all__ = ["huber", "log_cosh", "mae", "mape", "mean_bias_error", "mse", "msle", "quantile"]

JADON = ("Jadon, Patil, Jadon, A Comprehensive Survey of Regression Based Loss Functions for Time Series "
         "Forecasting, arXiv:2211.02989, 2022")
_KERAS_EPS = 1e-7  # keras.backend.epsilon(), the floor used by Keras' MSLE and MAPE


def pair(input: object, target: object, loss: str, reduction: str, min_dim: int = 0) -> tuple[Tensor, Tensor]:
    """Validate a (prediction, target) pair of the same shape; both returned in the compute dtype."""
    check_reduction(reduction, loss)
    x = check_float("input", input, loss, min_dim=min_dim)
    y = check_float("target", target, loss, min_dim=min_dim)
    check_same_shape("input", x, "target", y, loss)
    dtype = compute_dtype(x)
    return x.to(dtype), y.to(dtype)


@register("mae", summary="mean absolute error |y - ŷ| (F.l1_loss)", reference=JADON, module="MAELoss",
          family="regression", input_kind="regression", target_kind="real (same shape)")
def mae(input: Tensor, target: Tensor, *, reduction: str = "mean") -> Tensor:
    r"""Mean absolute error (L1 loss).

    .. math:: \ell = |y - \hat y|

    Args:
        input: predictions ŷ, any shape.
        target: targets y, same shape.
        reduction: "mean" | "sum" | "none".

    Returns:
        The loss (scalar unless ``reduction="none"``, which keeps the input's shape).

    Example:
        >>> import torch, losslab.losses as L
        >>> float(L.mae(torch.tensor([1.0, 2.0]), torch.tensor([2.0, 4.0])))   # (1 + 2) / 2
        1.5

    References:
        Jadon, Patil, Jadon, "A Comprehensive Survey of Regression Based Loss Functions for Time Series
        Forecasting", arXiv:2211.02989, 2022 (loss 1; the authors' code trains with Keras ``MeanAbsoluteError``).

    Notes:
        Equals ``torch.nn.functional.l1_loss`` (tested).
    """
    x, y = pair(input, target, "mae", reduction)
    return reduce_loss((y - x).abs(), reduction)


@register("mse", summary="mean squared error (y - ŷ)² (F.mse_loss)", reference=JADON, module="MSELoss",
          family="regression", input_kind="regression", target_kind="real (same shape)")
def mse(input: Tensor, target: Tensor, *, reduction: str = "mean") -> Tensor:
    r"""Mean squared error (L2 loss).

    .. math:: \ell = (y - \hat y)^2

    Args:
        input: predictions ŷ, any shape.
        target: targets y, same shape.
        reduction: "mean" | "sum" | "none".

    Returns:
        The loss (scalar unless ``reduction="none"``).

    Example:
        >>> import torch, losslab.losses as L
        >>> float(L.mse(torch.tensor([1.0, 2.0]), torch.tensor([2.0, 4.0])))   # (1 + 4) / 2
        2.5

    References:
        Jadon, Patil, Jadon, arXiv:2211.02989, 2022 (loss 2, Keras ``MeanSquaredError``).

    Notes:
        Equals ``torch.nn.functional.mse_loss`` (tested). The survey's "RMSE" experiment (loss 7) trains with this
        loss too: in the authors' code RMSE is only a reported metric, the model is compiled with ``loss='mse'``.
    """
    x, y = pair(input, target, "mse", reduction)
    return reduce_loss((y - x).square(), reduction)


@register("huber", summary="Huber loss: ½e² for |e| ≤ δ, δ(|e| - ½δ) beyond (F.huber_loss)", reference=JADON,
          module="HuberLoss", family="regression", input_kind="regression", target_kind="real (same shape)")
def huber(input: Tensor, target: Tensor, *, delta: float = 1.0, reduction: str = "mean") -> Tensor:
    r"""Huber loss: quadratic near zero, linear in the tails.

    .. math::
        \ell = \begin{cases} \tfrac12 e^2 & |e| \le \delta \\ \delta\,(|e| - \tfrac12\delta) & |e| > \delta
        \end{cases},\qquad e = y - \hat y

    Args:
        input: predictions ŷ, any shape.
        target: targets y, same shape.
        delta: δ > 0, where the loss turns from quadratic to linear (1.0, the default of ``torch.nn.HuberLoss``
            and Keras ``Huber``; the survey's experiments used 0.5).
        reduction: "mean" | "sum" | "none".

    Returns:
        The loss (scalar unless ``reduction="none"``).

    Raises:
        ConfigError: ``delta`` is not a positive finite number.

    Example:
        >>> import torch, losslab.losses as L
        >>> L.huber(torch.tensor([0.0, 0.0]), torch.tensor([0.5, 3.0]), reduction="none").tolist()  # ½·¼, 3 - ½
        [0.125, 2.5]

    References:
        Huber, "Robust Estimation of a Location Parameter", doi:10.1214/aoms/1177703732, 1964.
        Jadon, Patil, Jadon, arXiv:2211.02989, 2022 (loss 12; the authors' code compiles Keras ``Huber(delta=0.5)``).

    Notes:
        Equals ``torch.nn.functional.huber_loss(input, target, delta=delta)`` (tested). ``smooth_l1_loss`` with
        β = δ is this loss divided by δ.
    """
    d = check_number("delta", delta, "huber", low=0.0, low_open=True)
    x, y = pair(input, target, "huber", reduction)
    a = (y - x).abs()
    return reduce_loss(torch.where(a <= d, 0.5 * a.square(), d * (a - 0.5 * d)), reduction)


@register("log_cosh", summary="log cosh(ŷ - y), computed as |e| + softplus(-2|e|) - log 2 (stable)",
          reference=JADON, module="LogCoshLoss", family="regression", input_kind="regression",
          target_kind="real (same shape)")
def log_cosh(input: Tensor, target: Tensor, *, reduction: str = "mean") -> Tensor:
    r"""Log-cosh loss: ≈ ½e² for small errors, ≈ |e| - log 2 for large ones.

    .. math:: \ell = \log\cosh(e) = |e| + \log(1 + e^{-2|e|}) - \log 2,\qquad e = y - \hat y

    Args:
        input: predictions ŷ, any shape.
        target: targets y, same shape.
        reduction: "mean" | "sum" | "none".

    Returns:
        The loss (scalar unless ``reduction="none"``).

    Example:
        >>> import torch, losslab.losses as L
        >>> round(float(L.log_cosh(torch.tensor([0.0]), torch.tensor([1.0]))), 4)   # log((e + 1/e) / 2)
        0.4338

    References:
        Jadon, Patil, Jadon, arXiv:2211.02989, 2022 (loss 13, Keras ``LogCosh``).

    Notes:
        ``torch.log(torch.cosh(e))`` overflows to inf for |e| > 89 in float32; the form above is finite for every
        finite e, with gradient tanh(e). Keras writes it as e + softplus(-2e) - log 2 (same value; the |e| form
        keeps full precision for large negative e).
    """
    x, y = pair(input, target, "log_cosh", reduction)
    a = (y - x).abs()
    return reduce_loss(a + F.softplus(-2.0 * a) - math.log(2.0), reduction)


@register("msle", summary="mean squared logarithmic error (log(1 + max(ŷ, ε)) - log(1 + max(y, ε)))²",
          reference=JADON, module="MSLELoss", family="regression", input_kind="regression",
          target_kind="real (same shape, ≥ 0 meaningful)")
def msle(input: Tensor, target: Tensor, *, eps: float = _KERAS_EPS, reduction: str = "mean") -> Tensor:
    r"""Mean squared logarithmic error, with Keras' floor at ε.

    .. math:: \ell = \big(\log(1 + \max(\hat y, \varepsilon)) - \log(1 + \max(y, \varepsilon))\big)^2

    Args:
        input: predictions ŷ, any shape (non-negative quantities such as counts or prices).
        target: targets y, same shape.
        eps: floor ε > 0 applied to both before the log (1e-7, Keras' ``backend.epsilon()``).
        reduction: "mean" | "sum" | "none".

    Returns:
        The loss (scalar unless ``reduction="none"``).

    Raises:
        ConfigError: ``eps`` is not positive or underflows in float32.

    Example:
        >>> import torch, losslab.losses as L
        >>> import math
        >>> round(float(L.msle(torch.tensor([0.0]), torch.tensor([math.e - 1]))), 4)   # (log 1 - log e)²
        1.0

    References:
        Jadon, Patil, Jadon, arXiv:2211.02989, 2022 (loss 8, Keras ``MeanSquaredLogarithmicError``).

    Notes:
        As in Keras, predictions below ε are floored, so a negative prediction gets no gradient (the floor is
        flat): use a non-negative output layer (softplus, exp) with this loss. log(1 + ·) is computed with log1p.
    """
    e = check_eps(eps, "msle")
    x, y = pair(input, target, "msle", reduction)
    return reduce_loss((torch.log1p(x.clamp_min(e)) - torch.log1p(y.clamp_min(e))).square(), reduction)


@register("mape", summary="mean absolute percentage error 100·|y - ŷ| / max(|y|, ε)", reference=JADON,
          module="MAPELoss", family="regression", input_kind="regression", target_kind="real (same shape)")
def mape(input: Tensor, target: Tensor, *, eps: float = _KERAS_EPS, reduction: str = "mean") -> Tensor:
    r"""Mean absolute percentage error (in percent), with Keras' floor on the denominator.

    .. math:: \ell = 100\,\frac{|y - \hat y|}{\max(|y|, \varepsilon)}

    Args:
        input: predictions ŷ, any shape.
        target: targets y, same shape.
        eps: floor ε > 0 of |y| (1e-7, Keras' ``backend.epsilon()``). Targets at or near 0 make the loss huge
            (|ŷ|/ε·100); MAPE suits targets bounded away from 0.
        reduction: "mean" | "sum" | "none".

    Returns:
        The loss (scalar unless ``reduction="none"``).

    Raises:
        ConfigError: ``eps`` is not positive or underflows in float32.

    Example:
        >>> import torch, losslab.losses as L
        >>> float(L.mape(torch.tensor([90.0, 3.0]), torch.tensor([100.0, 2.0])))   # (10% + 50%) / 2
        30.0

    References:
        Jadon, Patil, Jadon, arXiv:2211.02989, 2022 (loss 6, Keras ``MeanAbsolutePercentageError``).

    Notes:
        Asymmetric: an over-forecast can cost more than 100%, an under-forecast of a positive target at most 100%.
    """
    e = check_eps(eps, "mape")
    x, y = pair(input, target, "mape", reduction)
    return reduce_loss(100.0 * (y - x).abs() / y.abs().clamp_min(e), reduction)


@register("mean_bias_error", summary="mean bias error y - ŷ (signed; a diagnostic, unbounded below)",
          reference=JADON, module="MeanBiasErrorLoss", family="regression", input_kind="regression",
          target_kind="real (same shape)", aliases=("mbe",))
def mean_bias_error(input: Tensor, target: Tensor, *, reduction: str = "mean") -> Tensor:
    r"""Mean bias error: the signed error, positive when the model under-forecasts.

    .. math:: \ell = y - \hat y

    Args:
        input: predictions ŷ, any shape.
        target: targets y, same shape.
        reduction: "mean" | "sum" | "none".

    Returns:
        The signed error (scalar unless ``reduction="none"``).

    Example:
        >>> import torch, losslab.losses as L
        >>> float(L.mean_bias_error(torch.tensor([1.0, 5.0]), torch.tensor([2.0, 2.0])))   # (1 - 3) / 2
        -1.0

    References:
        Jadon, Patil, Jadon, arXiv:2211.02989, 2022 (loss 3, the authors' ``utils.MeanBiasError``:
        sum(y - ŷ) / size).

    Notes:
        Not a proper training loss: it is unbounded below (predicting ŷ → +∞ drives it to -∞) and its gradient is
        the constant -1/n whatever the prediction. Use it to measure bias, or add it to another loss with care.
    """
    x, y = pair(input, target, "mean_bias_error", reduction)
    return reduce_loss(y - x, reduction)


def _check_quantiles(quantiles: object, loss: str) -> list[float]:
    if getattr(quantiles, "ndim", None) == 1 and hasattr(quantiles, "tolist"):  # 1-D tensor or NumPy array
        quantiles = quantiles.tolist()
    if isinstance(quantiles, (str, bytes)) or not isinstance(quantiles, Sequence) or len(quantiles) == 0:
        raise ConfigError(f"{loss}: quantiles must be a non-empty sequence of levels in [0, 1] such as "
                          f"(0.1, 0.5, 0.9), got {quantiles!r}")
    return [check_number(f"quantiles[{i}]", q, loss, low=0.0, high=1.0) for i, q in enumerate(quantiles)]


@register("quantile", summary="pinball loss Σ_q q·max(e, 0) + (1 - q)·max(-e, 0) over quantile outputs",
          reference="Lim, Arık, Loeff, Pfister, Temporal Fusion Transformers for Interpretable Multi-horizon Time "
                    "Series Forecasting, arXiv:1912.09363, 2019",
          module="QuantileLoss", family="regression", input_kind="regression",
          target_kind="real (input shape without the last, quantile, dimension)", aliases=("pinball",))
def quantile(input: Tensor, target: Tensor, *, quantiles: Sequence[float] = (0.1, 0.5, 0.9),
             reduction: str = "mean") -> Tensor:
    r"""Quantile (pinball) loss, summed over the predicted quantiles.

    .. math:: \ell = \sum_{j} q_j \max(y - \hat y_{j}, 0) + (1 - q_j)\max(\hat y_{j} - y, 0)

    Args:
        input: predictions (..., Q): the last dimension holds one prediction per quantile level.
        target: targets (...), the input's shape without its last dimension.
        quantiles: the Q levels q_j in [0, 1] ((0.1, 0.5, 0.9), as in the Temporal Fusion Transformer).
        reduction: "mean" (over target elements) | "sum" | "none" (shape of the target).

    Returns:
        The loss (scalar unless ``reduction="none"``).

    Raises:
        ConfigError: a level outside [0, 1], or an empty / non-sequence ``quantiles``.
        DataError: the input's last dimension is not Q, or the other dimensions differ from the target's.

    Example:
        >>> import torch, losslab.losses as L
        >>> x = torch.tensor([[0.0, 1.0, 2.0]])        # predicted 10%, 50%, 90% quantiles
        >>> round(float(L.quantile(x, torch.tensor([1.5]))), 4)   # 0.1·1.5 + 0.5·0.5 + 0.1·0.5
        0.45

    References:
        Lim, Arık, Loeff, Pfister, "Temporal Fusion Transformers for Interpretable Multi-horizon Time Series
        Forecasting", arXiv:1912.09363, 2019 (quantile loss of the training procedure). Jadon, Patil, Jadon,
        arXiv:2211.02989, 2022 (loss 14; code checked: ``utils.tensorflow_quantile_loss`` in
        aryan-jadon/Regression-Loss-Functions-in-Time-Series-Forecasting-Tensorflow, summed over quantiles by
        TFT's ``QuantileLossCalculator``).

    Notes:
        At q = 0.5 the loss is |e|/2, half the MAE (tested). Like the TFT code, the loss is summed over quantiles
        and averaged over the other elements. TFT's evaluation metric (q-risk, 2·mean(QL)/mean|y|) is not a
        per-element loss and is not included.
    """
    name = "quantile"
    qs = _check_quantiles(quantiles, name)
    check_reduction(reduction, name)
    x = check_float("input", input, name)
    y = check_float("target", target, name, min_dim=0)
    if x.shape[-1] != len(qs) or x.shape[:-1] != y.shape:
        shape = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
        raise DataError(f"{name}: input {tuple(x.shape)} must be the target's shape {shape} plus a last "
                        f"dimension of {len(qs)} (one prediction per quantile level {tuple(qs)})")
    dtype = compute_dtype(x)
    x, y = x.to(dtype), y.to(dtype)
    q = torch.tensor(qs, dtype=dtype, device=x.device)
    e = y.unsqueeze(-1) - x
    return reduce_loss((q * e.clamp_min(0) + (1 - q) * (-e).clamp_min(0)).sum(-1), reduction)

