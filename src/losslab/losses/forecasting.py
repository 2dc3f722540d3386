"""Per-series forecasting losses (RMSLE, RAE, RSE, NRMSE, RRMSE) and directional trading losses (MADL, GMADL).

Ratios of sums are not element means, so they do not fit "elementwise, reduced in one place" as they stand. The
convention here: **each series is the last dimension**. A loss of input (..., T) is computed per series of length T
and gives one value per series, shape (...); ``reduction`` then averages or sums over the series like any other
loss (``"none"`` returns the (...) values). To get the authors' single batch-global number (the surveyed code sums
over the whole batch tensor), pass ``input.reshape(1, -1)`` and ``target.reshape(1, -1)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from losslab._errors import ConfigError, DataError
from losslab.losses._catalogue import register
from losslab.losses._reduce import reduce_loss
from losslab.losses._validate import check_eps, check_number
from losslab.losses.regression import JADON, pair

__all__ = ["gmadl", "madl", "nrmse", "relative_absolute_error", "relative_squared_error", "rmsle", "rrmse"]

_SERIES = "real (same shape; series along the last dimension)"
_MICHANKOW = "Michańków, Sakowski, Ślepaczuk"


def _series(input: object, target: object, loss: str, reduction: str, min_len: int = 1) -> tuple[Tensor, Tensor]:
    x, y = pair(input, target, loss, reduction, min_dim=1)
    if x.shape[-1] < min_len:
        raise DataError(f"{loss}: series are read along the last dimension and need at least {min_len} point(s), "
                        f"got shape {tuple(x.shape)}; put the time axis last (e.g. input.reshape(1, -1) for one "
                        f"series over the whole batch)")
    return x, y


def _safe_sqrt(m: Tensor) -> Tensor:
    """sqrt(m) for m ≥ 0 with gradient 0 (a subgradient of the norm) instead of inf·0 = NaN at m = 0."""
    pos = m > 0
    return torch.where(pos, torch.sqrt(torch.where(pos, m, torch.ones_like(m))), torch.zeros_like(m))


def _nonzero_spread(target: Tensor, den: Tensor, loss: str, what: str) -> Tensor:
    # equal values, not den == 0: the spread of a constant series around its rounded mean is tiny but not 0
    bad = int((target == target[..., :1]).all(-1).sum())
    if bad:
        raise DataError(f"{loss}: {bad} target series are constant ({what} = 0), so the relative error divides by "
                        f"zero and is undefined; drop constant series or use mae / mse for them")
    return den


@register("rmsle", summary="root mean squared log error per series √mean_t (log(1+max(ŷ,ε)) - log(1+max(y,ε)))²",
          reference=JADON, module="RMSLELoss", family="regression", input_kind="regression", target_kind=_SERIES)
def rmsle(input: Tensor, target: Tensor, *, eps: float = 1e-7, reduction: str = "mean") -> Tensor:
    r"""Root mean squared logarithmic error of each series (last dimension).

    .. math:: \ell = \sqrt{\frac1T\sum_{t}\big(\log(1 + \max(\hat y_t, \varepsilon))
        - \log(1 + \max(y_t, \varepsilon))\big)^2}

    Args:
        input: predictions (..., T), series along the last dimension.
        target: targets, same shape.
        eps: floor ε > 0 before the log (1e-7, Keras' ``backend.epsilon()``).
        reduction: "mean" (over series) | "sum" | "none" (shape (...)).

    Returns:
        The loss (scalar unless ``reduction="none"``).

    Example:
        >>> import math, torch, losslab.losses as L
        >>> y = torch.tensor([[math.e - 1, math.e**2 - 1]])     # log(1 + y) = (1, 2)
        >>> round(float(L.rmsle(torch.zeros(1, 2), y)), 4)     # √((1 + 4) / 2)
        1.5811

    References:
        Jadon, Patil, Jadon, arXiv:2211.02989, 2022 (loss 9; code checked: ``utils.RootMeanSquaredLogarithmicError``
        of aryan-jadon/Regression-Loss-Functions-in-Time-Series-Forecasting-Tensorflow, which also takes the mean
        over the last axis, then the square root, then the batch mean).

    Notes:
        The square root has gradient 0 at a perfect fit (instead of NaN). Predictions below ε get no gradient,
        as in :func:`msle`.
    """
    e = check_eps(eps, "rmsle")
    x, y = _series(input, target, "rmsle", reduction)
    d = torch.log1p(x.clamp_min(e)) - torch.log1p(y.clamp_min(e))
    return reduce_loss(_safe_sqrt(d.square().mean(-1)), reduction)


@register("relative_absolute_error", summary="per-series Σ_t|y - ŷ| / Σ_t|y - ȳ| (1 = as good as the mean)",
          reference=JADON, module="RelativeAbsoluteErrorLoss", family="regression", input_kind="regression",
          target_kind=_SERIES, aliases=("rae",))
def relative_absolute_error(input: Tensor, target: Tensor, *, reduction: str = "mean") -> Tensor:
    r"""Relative absolute error of each series: the absolute error relative to predicting the series mean.

    .. math:: \ell = \frac{\sum_t |y_t - \hat y_t|}{\sum_t |y_t - \bar y|},\qquad \bar y = \frac1T\sum_t y_t

    Args:
        input: predictions (..., T), series along the last dimension (T ≥ 2).
        target: targets, same shape; no series may be constant.
        reduction: "mean" (over series) | "sum" | "none" (shape (...)).

    Returns:
        The loss (scalar unless ``reduction="none"``).

    Raises:
        DataError: a target series is constant (the ratio is undefined), or T < 2.

    Example:
        >>> import torch, losslab.losses as L
        >>> y = torch.tensor([[0.0, 2.0]])                       # mean 1: Σ|y - ȳ| = 2
        >>> float(L.relative_absolute_error(torch.tensor([[1.0, 1.0]]), y))
        1.0

    References:
        Jadon, Patil, Jadon, arXiv:2211.02989, 2022 (loss 4; code checked: ``utils.RelativeAbsoluteError``, whose
        sums run over the whole batch tensor: pass ``reshape(1, -1)`` views to get that number).
    """
    x, y = _series(input, target, "relative_absolute_error", reduction, min_len=2)
    den = _nonzero_spread(y, (y - y.mean(-1, keepdim=True)).abs().sum(-1), "relative_absolute_error", "Σ_t |y_t - ȳ|")
    return reduce_loss((y - x).abs().sum(-1) / den, reduction)


@register("relative_squared_error", summary="per-series Σ_t(y - ŷ)² / Σ_t(y - ȳ)² (= 1 - R²)", reference=JADON,
          module="RelativeSquaredErrorLoss", family="regression", input_kind="regression", target_kind=_SERIES,
          aliases=("rse",))
def relative_squared_error(input: Tensor, target: Tensor, *, reduction: str = "mean") -> Tensor:
    r"""Relative squared error of each series: the squared error relative to predicting the series mean.

    .. math:: \ell = \frac{\sum_t (y_t - \hat y_t)^2}{\sum_t (y_t - \bar y)^2} = 1 - R^2

    Args:
        input: predictions (..., T), series along the last dimension (T ≥ 2).
        target: targets, same shape; no series may be constant.
        reduction: "mean" (over series) | "sum" | "none" (shape (...)).

    Returns:
        The loss (scalar unless ``reduction="none"``).

    Raises:
        DataError: a target series is constant (the ratio is undefined), or T < 2.

    Example:
        >>> import torch, losslab.losses as L
        >>> y = torch.tensor([[0.0, 2.0]])                       # Σ(y - ȳ)² = 2
        >>> float(L.relative_squared_error(torch.tensor([[0.0, 0.0]]), y))   # 4 / 2
        2.0

    References:
        Jadon, Patil, Jadon, arXiv:2211.02989, 2022 (loss 5).

    Notes:
        This is the standard definition. The authors' ``utils.RelativeSquaredError`` (code checked) divides the
        squared error by itself, so their RSE is the constant 1 with zero gradient; that bug is not reproduced
        (a test checks the loss is not constant and its gradient is not zero).
    """
    x, y = _series(input, target, "relative_squared_error", reduction, min_len=2)
    den = _nonzero_spread(y, (y - y.mean(-1, keepdim=True)).square().sum(-1), "relative_squared_error",
                          "Σ_t (y_t - ȳ)²")
    return reduce_loss((y - x).square().sum(-1) / den, reduction)


@register("nrmse", summary="per-series RMSE / std: of the predictions (authors' code) or of the target",
          reference=JADON, module="NRMSELoss", family="regression", input_kind="regression", target_kind=_SERIES)
def nrmse(input: Tensor, target: Tensor, *, normalizer: str = "prediction_std", eps: float = 1e-8,
          reduction: str = "mean") -> Tensor:
    r"""Normalised root mean squared error of each series.

    .. math:: \ell = \frac{\sqrt{\frac1T\sum_t (y_t - \hat y_t)^2}}{\max(s, \varepsilon)},\qquad
        s = \operatorname{std}_t(\hat y)\ \text{or}\ \operatorname{std}_t(y)\ \text{(population std)}

    Args:
        input: predictions (..., T), series along the last dimension (T ≥ 2).
        target: targets, same shape.
        normalizer: "prediction_std" (the authors' code: std of the predictions) or "target_std" (the usual
            metric definition; a constant target series is then a DataError).
        eps: floor ε > 0 of the prediction std (1e-8): a collapsed prediction series (zero-initialised head)
            gives RMSE/ε with no gradient through the std instead of a division by zero.
        reduction: "mean" (over series) | "sum" | "none" (shape (...)).

    Returns:
        The loss (scalar unless ``reduction="none"``).

    Raises:
        ConfigError: unknown ``normalizer`` or bad ``eps``.
        DataError: T < 2, or a constant target series with ``normalizer="target_std"``.

    Example:
        >>> import torch, losslab.losses as L
        >>> x, y = torch.tensor([[0.0, 2.0]]), torch.tensor([[1.0, 1.0]])   # RMSE 1, std(ŷ) 1
        >>> float(L.nrmse(x, y))
        1.0

    References:
        Jadon, Patil, Jadon, arXiv:2211.02989, 2022 (loss 10; code checked: ``utils.NormalizedRootMeanSquaredError``,
        RMSE over the batch divided by ``backend.std(y_pred)``).

    Notes:
        The default follows the authors' code, which normalises by the spread of the *predictions*: as a training
        loss this also rewards spreading the predictions out. Metric definitions normalise by the target (std,
        mean or range); ``normalizer="target_std"`` gives the std one.
    """
    name = "nrmse"
    if normalizer not in ("prediction_std", "target_std"):
        raise ConfigError(f"{name}: normalizer must be 'prediction_std' (authors' code) or 'target_std', "
                          f"got {normalizer!r}")
    e = check_eps(eps, name)
    x, y = _series(input, target, name, reduction, min_len=2)
    rmse = _safe_sqrt((y - x).square().mean(-1))
    if normalizer == "target_std":
        std = _nonzero_spread(y, y.var(-1, correction=0), name, "std_t(y)").sqrt()
    else:
        std = _safe_sqrt(x.var(-1, correction=0)).clamp_min(e)
    return reduce_loss(rmse / std, reduction)


@register("rrmse", summary="per-series relative RMSE √(Σ_t(y - ŷ)² / Σ_t ŷ²) (authors' code)", reference=JADON,
          module="RRMSELoss", family="regression", input_kind="regression", target_kind=_SERIES)
def rrmse(input: Tensor, target: Tensor, *, eps: float = 1e-8, reduction: str = "mean") -> Tensor:
    r"""Relative root mean squared error of each series, as the authors' code computes it.

    .. math:: \ell = \sqrt{\frac{\sum_t (y_t - \hat y_t)^2}{\max(\sum_t \hat y_t^2, \varepsilon)}}

    Args:
        input: predictions (..., T), series along the last dimension.
        target: targets, same shape.
        eps: floor ε > 0 of Σ ŷ² (1e-8), so an all-zero prediction series gives a finite loss.
        reduction: "mean" (over series) | "sum" | "none" (shape (...)).

    Returns:
        The loss (scalar unless ``reduction="none"``).

    Raises:
        ConfigError: bad ``eps``.

    Example:
        >>> import torch, losslab.losses as L
        >>> round(float(L.rrmse(torch.tensor([[3.0, 4.0]]), torch.tensor([[3.0, 7.0]]))), 4)   # √(9 / 25)
        0.6

    References:
        Jadon, Patil, Jadon, arXiv:2211.02989, 2022 (loss 11; code checked: ``utils.RelativeRootMeanSquaredError``,
        sqrt(Σ(y - ŷ)² / Σ ŷ²) over the batch).

    Notes:
        Follows the code: the denominator is the predictions' sum of squares. Metric definitions often divide by
        the target's instead (and some put an extra 1/T in the numerator); the survey's text could not be checked.
    """
    e = check_eps(eps, "rrmse")
    x, y = _series(input, target, "rrmse", reduction)
    return reduce_loss(_safe_sqrt((y - x).square().sum(-1) / x.square().sum(-1).clamp_min(e)), reduction)


@register("madl", summary="mean absolute directional loss -sign(R·R̂)·|R| (zero gradient; for model selection)",
          reference=f"{_MICHANKOW}, Mean Absolute Directional Loss as a New Loss Function for Machine Learning "
                    "Problems in Algorithmic Investment Strategies, arXiv:2309.10546, 2023",
          module="MADLLoss", family="regression", input_kind="regression", target_kind="realised return (same shape)")
def madl(input: Tensor, target: Tensor, *, reduction: str = "mean") -> Tensor:
    r"""Mean absolute directional loss: minus the return earned by trading in the predicted direction.

    .. math:: \ell = -\operatorname{sign}(R\,\hat R)\,|R|

    Args:
        input: predicted returns R̂, any shape.
        target: realised returns R, same shape.
        reduction: "mean" | "sum" | "none".

    Returns:
        The loss in [-|R|, |R|] per element; lower is better, negative means a profit.

    Example:
        >>> import torch, losslab.losses as L
        >>> round(float(L.madl(torch.tensor([0.5, -1.0]), torch.tensor([0.02, 0.01]))), 4)  # (-0.02 + 0.01)/2
        -0.005

    References:
        Michańków, Sakowski, Ślepaczuk, "Mean Absolute Directional Loss as a New Loss Function for Machine Learning
        Problems in Algorithmic Investment Strategies", arXiv:2309.10546, 2023. No official code was found; the
        formula is the paper's.

    Notes:
        The gradient is zero almost everywhere (sign): use MADL to select models or hyper-parameters, and
        :func:`gmadl` (its smooth version) to train. sign(0) = 0: a zero prediction or return scores 0.
    """
    x, y = pair(input, target, "madl", reduction)
    return reduce_loss(-torch.sign(y * x) * y.abs(), reduction)


@register("gmadl", summary="generalized MADL -(σ(a·R·R̂) - ½)·|R|^b, a smooth directional trading loss",
          reference=f"{_MICHANKOW}, Generalized Mean Absolute Directional Loss as a Solution to Overfitting and "
                    "High Transaction Costs in Machine Learning Models Used in High-Frequency Algorithmic "
                    "Investment Strategies, arXiv:2412.18405, 2024",
          module="GMADLLoss", family="regression", input_kind="regression",
          target_kind="realised return (same shape)")
def gmadl(input: Tensor, target: Tensor, *, a: float = 1000.0, b: float = 1.0, reduction: str = "mean") -> Tensor:
    r"""Generalized mean absolute directional loss: MADL with the sign replaced by a sigmoid.

    .. math:: \ell = -\Big(\sigma(a\,R\,\hat R) - \tfrac12\Big)\,|R|^{b}
        = -\tfrac12\tanh\big(\tfrac{a}{2} R\,\hat R\big)\,|R|^{b}

    For a → ∞ and b = 1 it tends to ½·MADL (not MADL: σ - ½ lies in (-½, ½)).

    Args:
        input: predicted returns R̂, any shape.
        target: realised returns R, same shape.
        a: slope a > 0 of the sigmoid around R·R̂ = 0 (1000). It must match the scale of the returns: a·R·R̂ of
            order 1 keeps the gradient alive; for returns of 1e-2 that is a ≈ 1e4.
        b: exponent b ≥ 0 of the return magnitude (1.0, the value at which the large-a limit is MADL/2; larger b
            focuses on large moves, b = 0 ignores magnitude).
        reduction: "mean" | "sum" | "none".

    Returns:
        The loss (scalar unless ``reduction="none"``); lower is better, negative means a profit.

    Raises:
        ConfigError: a ≤ 0 or b < 0.

    Example:
        >>> import torch, losslab.losses as L
        >>> round(float(L.gmadl(torch.tensor([1.0]), torch.tensor([-2.0]), a=0.5, b=2.0)), 4)  # (σ(-1) - ½)·-4
        0.9242

    References:
        Michańków, Sakowski, Ślepaczuk, "Generalized Mean Absolute Directional Loss as a Solution to Overfitting
        and High Transaction Costs in Machine Learning Models Used in High-Frequency Algorithmic Investment
        Strategies", arXiv:2412.18405, 2024. No official code was found; the formula is the paper's.

    Notes:
        The paper tunes (a, b) per experiment; their values could not be checked, so the defaults are not the
        paper's: a = 1000 is what public PyTorch ports use, b = 1 keeps MADL's magnitude weighting. Computed in
        the tanh form, which is exact and saturates without overflow.
    """
    a_ = check_number("a", a, "gmadl", low=0.0, low_open=True)
    b_ = check_number("b", b, "gmadl", low=0.0)
    x, y = pair(input, target, "gmadl", reduction)
    return reduce_loss(-0.5 * torch.tanh(0.5 * a_ * y * x) * y.abs().pow(b_), reduction)
