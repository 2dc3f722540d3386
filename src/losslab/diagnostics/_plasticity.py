r"""Plasticity metrics, each named for exactly what it computes (the literature reuses the same words).

Features are ``(N, units)`` matrices or ``(N, channels, *spatial)`` maps (one unit per channel). Naming:

================== ===================================================================== ==========================
function           definition                                                            source
================== ===================================================================== ==========================
dead_units         unit is zero on *every* probe input                                    Dohare et al. (MNIST code)
dormant_units      unit is non-zero on fewer than ``threshold`` of the inputs (strict <)  Dohare et al. (CIFAR code)
redo_dormant_units normalised mean activation :math:`s_i \le \tau`                        Sokar et al. (ReDo)
effective_rank     :math:`\exp(-\sum p_k\log p_k)`, :math:`p_k = \sigma_k/\sum\sigma`       Roy & Vetterli 2007
srank              smallest k with :math:`\sum_{i\le k}\sigma_i/\sum\sigma \ge 1-\delta`     Kumar et al. 2021
feature_norm       mean over inputs of the feature vector's L2 norm                       Plasticine
weight_magnitude   mean :math:`|w|` over all parameters                                   Dohare et al. (CIFAR code)
================== ===================================================================== ==========================

"srank" is *not* the textbook stable rank :math:`\|A\|_F^2/\|A\|_2^2`, and Dohare et al.'s code calls it
"stable rank"; Plasticine's "dormant ratio" counts zero *entries*, not units. These functions never do either.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from losslab._errors import ConfigError, DataError
from losslab.diagnostics._common import check_float, check_model

__all__ = ["dead_units", "dormant_units", "effective_rank", "feature_norm", "redo_dormant_units", "srank",
           "weight_magnitude"]


def _features(features: Any, name: str = "features") -> torch.Tensor:
    if not isinstance(features, torch.Tensor) or features.dim() < 2:
        shape = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
        raise DataError(f"{name} must be a tensor (N, units) or (N, channels, *spatial), got {shape}")
    if features.shape[0] == 0 or features.shape[1] == 0:
        raise DataError(f"{name} is empty (shape {tuple(features.shape)}); give at least one input and one unit")
    if not bool(torch.isfinite(features).all()):
        raise DataError(f"{name} has NaN/Inf entries")
    return features.detach()


def _per_unit(features: torch.Tensor) -> torch.Tensor:
    """``(N * spatial, units)``: each unit's values over inputs (and positions, for conv maps)."""
    if features.dim() == 2:
        return features
    return features.transpose(0, 1).reshape(features.shape[1], -1).T


def dead_units(features: torch.Tensor) -> torch.Tensor:
    r"""Units that are exactly zero on every probe input (and position): :math:`\sum_x |h_i(x)| = 0`.

    Args:
        features: ``(N, units)`` or ``(N, channels, *spatial)`` post-activation features.

    Returns:
        Boolean mask of shape ``(units,)``; its mean is the dead fraction.

    Example:
        >>> import torch
        >>> dead_units(torch.tensor([[0.0, 1.0], [0.0, 0.0]])).tolist()
        [True, False]

    References:
        Dohare, Hernandez-Garcia, Lan, Rahman, Mahmood & Sutton, "Loss of plasticity in deep continual learning",
        Nature 2024, arXiv:2306.13812 (``lop/permuted_mnist/online_expr.py``: ``activations.abs().sum(dim=0) == 0``).
    """
    f = _per_unit(_features(features))
    return f.abs().sum(dim=0) == 0


def dormant_units(features: torch.Tensor, threshold: float = 0.01) -> torch.Tensor:
    r"""Units that are non-zero on fewer than ``threshold`` of the inputs: :math:`P_x[h_i(x) \ne 0] < \tau`.

    For conv maps the frequency is over inputs and positions. The comparison is strict, so with
    ``threshold=0`` no unit is dormant and a unit active on exactly ``threshold`` of the inputs is not dormant.

    Args:
        features: as in :func:`dead_units`.
        threshold: activity frequency :math:`\tau \in [0, 1]` (Dohare et al. use 0.01).

    Returns:
        Boolean mask ``(units,)``.

    Example:
        >>> import torch
        >>> f = torch.zeros(100, 2); f[:1, 0] = 1.0; f[:, 1] = 1.0
        >>> dormant_units(f, 0.01).tolist(), dormant_units(f, 0.02).tolist()
        ([False, False], [True, False])

    References:
        Dohare et al., Nature 2024 (``lop/incremental_cifar/post_run_analysis.py``:
        ``(features != 0).float().mean(dim=(0, 2, 3)) < 0.01``).
    """
    tau = check_float(threshold, "threshold", low=0.0, high=1.0)
    f = _per_unit(_features(features))
    return (f != 0).to(torch.float64).mean(dim=0) < tau


def redo_dormant_units(features: torch.Tensor, tau: float = 0.0) -> torch.Tensor:
    r"""ReDo's :math:`\tau`-dormant units: :math:`s_i = \frac{E_x|h_i(x)|}{\frac1K\sum_k E_x|h_k(x)| + 10^{-9}} \le \tau`.

    Args:
        features: as in :func:`dead_units` (conv maps are averaged over positions too).
        tau: threshold :math:`\tau \ge 0` (0 counts only silent units; 0.025 and 0.1 are common).

    Returns:
        Boolean mask ``(units,)``.

    Example:
        >>> import torch
        >>> redo_dormant_units(torch.tensor([[1.0, 0.1, 2.0]]), tau=0.1).tolist()
        [False, True, False]

    References:
        Sokar, Agarwal, Castro & Evci, "The Dormant Neuron Phenomenon in Deep Reinforcement Learning",
        arXiv:2302.12902, 2023 (the ``labs/redo`` rule, including the 1e-9 and the ``<=``).
    """
    t = check_float(tau, "tau", low=0.0)
    f = _per_unit(_features(features))
    score = f.abs().to(torch.float64).mean(dim=0)
    return score / (score.mean() + 1e-9) <= t


def _singular_values(features: torch.Tensor) -> torch.Tensor:
    f = _features(features)
    return torch.linalg.svdvals(f.reshape(f.shape[0], -1).to(torch.float64))


def effective_rank(features: torch.Tensor) -> float:
    r"""Effective rank :math:`\exp(-\sum_k p_k \log p_k)` with :math:`p_k = \sigma_k/\sum_j\sigma_j`.

    Singular values of the ``N x features`` matrix (conv maps flattened); :math:`0\log 0 := 0`. Equals :math:`k`
    for :math:`k` equal non-zero singular values; 0 for an all-zero matrix (no direction is used).

    Args:
        features: ``(N, units)`` or ``(N, ...)``.

    Returns:
        A float in ``[0, min(N, units)]``.

    Example:
        >>> import torch
        >>> round(effective_rank(torch.eye(4)), 9), round(effective_rank(torch.ones(3, 5)), 9)
        (4.0, 1.0)

    References:
        Roy & Vetterli, "The effective rank: a measure of effective dimensionality", EUSIPCO 2007; Dohare et al.,
        Nature 2024 (``lop/utils/miscellaneous.py``).
    """
    s = _singular_values(features)
    total = s.sum()
    if float(total) == 0.0:
        return 0.0
    p = s / total
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def srank(features: torch.Tensor, delta: float = 0.01) -> int:
    r"""Kumar et al.'s :math:`\mathrm{srank}_\delta`: the smallest :math:`k` with
    :math:`\sum_{i\le k}\sigma_i / \sum_i\sigma_i \ge 1-\delta` (singular values *not* squared).

    Args:
        features: ``(N, units)`` or ``(N, ...)``.
        delta: :math:`\delta \in [0, 1)` (0.01 in Kumar et al., Lyle et al. and Dohare et al.'s code).

    Returns:
        An int in ``[0, min(N, units)]`` (0 for an all-zero matrix).

    Example:
        >>> import torch
        >>> srank(torch.diag(torch.tensor([1.0, 1.0, 0.001]))), srank(torch.eye(100))
        (2, 99)

    References:
        Kumar, Agarwal, Ghosh & Levine, "Implicit Under-Parameterization Inhibits Data-Efficient Deep
        Reinforcement Learning", arXiv:2010.14498, 2021.
    """
    d = check_float(delta, "delta", low=0.0, high=1.0, high_open=True)
    s = _singular_values(features)
    total = float(s.sum())
    if total == 0.0:
        return 0
    frac = torch.cumsum(s, 0) / total
    return int((frac < (1 - d) - 1e-12).sum()) + 1


def feature_norm(features: torch.Tensor) -> float:
    r"""Mean over inputs of the L2 norm of each input's feature vector, :math:`\frac1N\sum_x\|h(x)\|_2`.

    Example:
        >>> import torch
        >>> feature_norm(torch.tensor([[3.0, 4.0], [0.0, 0.0]]))
        2.5

    References:
        Lyle, Zheng, Nikishin, Pires, Pascanu & Dabney, "Understanding plasticity in neural networks",
        arXiv:2303.01486, 2023 (feature norm as a candidate explanation; the formula follows the Plasticine
        benchmark's ``metrics.py``).
    """
    f = _features(features)
    return float(f.reshape(f.shape[0], -1).to(torch.float64).norm(dim=1).mean())


def weight_magnitude(model: nn.Module) -> float:
    r"""Mean absolute parameter value over all parameters, :math:`\frac1P\sum|w|`.

    Example:
        >>> import torch
        >>> lin = torch.nn.Linear(2, 1)
        >>> with torch.no_grad(): _ = lin.weight.fill_(-2.0); _ = lin.bias.fill_(1.0)
        >>> round(weight_magnitude(lin), 6)
        1.666667

    References:
        Dohare et al., Nature 2024 (CIFAR analysis code; their MNIST code reports per-layer sums instead).
    """
    check_model(model)
    params = [p.detach().reshape(-1).to(torch.float64) for p in model.parameters()]
    if not params or sum(p.numel() for p in params) == 0:
        raise ConfigError("the model has no parameters")
    return float(torch.cat(params).abs().mean())
