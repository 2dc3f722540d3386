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

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from losslab._errors import ConfigError, DataError
from losslab.diagnostics._common import (
    call_model,
    check_batch,
    check_float,
    check_loss_fn,
    check_model,
    trainable_names,
)

__all__ = ["GradientCovariance", "collect_features", "dead_units", "dormant_units", "effective_rank",
           "feature_norm", "gradient_covariance", "plasticity_report", "redo_dormant_units", "srank",
           "weight_magnitude"]

_ACTIVATIONS = (nn.ReLU, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.ELU, nn.Softplus, nn.Mish)


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


def _default_forward(model: nn.Module, batch: Any) -> Any:
    return model(batch[0] if isinstance(batch, (list, tuple)) else batch)


def collect_features(model: nn.Module, batch: Any, modules: Sequence[str] | None = None, *,
                     forward: Callable[[nn.Module, Any], Any] | None = None, mode: str = "eval",
                     ) -> dict[str, torch.Tensor]:
    """Outputs of the named sub-modules on a probe batch, captured with forward hooks (removed afterwards).

    Args:
        model: the network (buffers cloned, modes restored, hooks removed even on error).
        batch: probe inputs; the model is called as ``forward(model, batch)``.
        modules: names from ``model.named_modules()`` (default: every activation module: ReLU, GELU, Tanh, ...).
        forward: default ``model(batch[0])`` for a tuple/list batch, else ``model(batch)``.
        mode: as in :class:`HessianOperator`.

    Returns:
        ``{module name: detached output}``.

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU())
        >>> collect_features(net, torch.ones(4, 2))["1"].shape
        torch.Size([4, 3])

    References:
        Lyle et al., arXiv:2303.01486, 2023 and Dohare et al., Nature 2024 probe features on a fixed batch of inputs
        in the same way (Dohare et al.: the first 2000 examples of a task, or one batch of 1000).
    """
    check_model(model)
    check_batch(batch)
    named = dict(model.named_modules())
    if modules is None:
        names = [n for n, m in named.items() if isinstance(m, _ACTIVATIONS)]
        if not names:
            raise ConfigError("the model has no activation modules; pass modules=[names] to probe")
    else:
        names = list(modules)
        unknown = [n for n in names if n not in named]
        if unknown:
            raise ConfigError(f"unknown module names {unknown}; valid names are e.g. {list(named)[1:6]}")
    out: dict[str, torch.Tensor] = {}
    handles = []
    for n in names:
        def hook(_m: nn.Module, _inp: Any, output: Any, n: str = n) -> None:
            out[n] = (output[0] if isinstance(output, tuple) else output).detach()
        handles.append(named[n].register_forward_hook(hook))
    try:
        with torch.no_grad():
            call_model(model, forward or _default_forward, batch, None, mode)
    finally:
        for h in handles:
            h.remove()
    return out


def plasticity_report(model: nn.Module, batch: Any, modules: Sequence[str] | None = None, *,
                      dormant_threshold: float = 0.01, redo_tau: float = 0.0, srank_delta: float = 0.01,
                      forward: Callable[[nn.Module, Any], Any] | None = None, mode: str = "eval",
                      ) -> dict[str, Any]:
    """Every feature metric per probed module plus the model's weight magnitude.

    Args:
        model, batch, modules, forward, mode: as in :func:`collect_features`.
        dormant_threshold: for :func:`dormant_units`; redo_tau: for :func:`redo_dormant_units`;
        srank_delta: for :func:`srank`.

    Returns:
        ``{"layers": {name: {"dead_fraction", "dormant_fraction", "redo_dormant_fraction", "effective_rank",
        "srank", "feature_norm", "units"}}, "weight_magnitude": float}``.

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU())
        >>> sorted(plasticity_report(net, torch.randn(8, 2, generator=torch.Generator().manual_seed(0)))["layers"]["1"])[:2]
        ['dead_fraction', 'dormant_fraction']

    References:
        Lyle et al., arXiv:2303.01486, 2023; Dohare et al., Nature 2024; Sokar et al., arXiv:2302.12902, 2023.
    """
    feats = collect_features(model, batch, modules, forward=forward, mode=mode)
    layers = {}
    for name, f in feats.items():
        layers[name] = {
            "units": int(f.shape[1]),
            "dead_fraction": float(dead_units(f).double().mean()),
            "dormant_fraction": float(dormant_units(f, dormant_threshold).double().mean()),
            "redo_dormant_fraction": float(redo_dormant_units(f, redo_tau).double().mean()),
            "effective_rank": effective_rank(f),
            "srank": srank(f, srank_delta),
            "feature_norm": feature_norm(f),
        }
    return {"layers": layers, "weight_magnitude": weight_magnitude(model)}


@dataclass
class GradientCovariance:
    """Normalised per-example gradient covariance ``C`` (cosines), its condition number and zero-gradient count."""

    matrix: torch.Tensor
    condition: float
    n_zero: int


def gradient_covariance(model: nn.Module, per_sample_loss_fn: Callable[[nn.Module, Any], torch.Tensor], batch: Any,
                        *, mode: str = "eval") -> GradientCovariance:
    r"""Normalised covariance of per-example gradients :math:`C_{ij} = \frac{\langle g_i, g_j\rangle}{\|g_i\|\|g_j\|}`.

    ``condition`` is :math:`\lambda_{\max}(C)/\lambda_{\min}(C)` (``inf`` when :math:`C` is singular, e.g. more
    examples than parameters or colinear gradients); large values mean strong interference between examples.
    Examples with a zero gradient get a zero row and column and are counted in ``n_zero``.

    Args:
        model, mode: as in :class:`HessianOperator`.
        per_sample_loss_fn: ``f(model, batch) -> (N,)`` losses, one per example.
        batch: probe examples.

    Returns:
        :class:`GradientCovariance`.

    Example:
        >>> import torch
        >>> lin = torch.nn.Linear(2, 1, bias=False)
        >>> g = gradient_covariance(lin, lambda m, b: m(b).squeeze(1), torch.eye(2))
        >>> g.matrix.tolist(), g.condition
        ([[1.0, 0.0], [0.0, 1.0]], 1.0)

    References:
        Lyle et al., "Understanding plasticity in neural networks", arXiv:2303.01486, 2023 (abstract verified:
        gradient covariance measures interference between inputs; the normalisation is this library's reading).
    """
    check_model(model)
    check_loss_fn(per_sample_loss_fn)
    check_batch(batch)
    names = trainable_names(model)
    named = dict(model.named_parameters())
    leaves = {n: named[n].detach().clone().requires_grad_(True) for n in names}
    losses = call_model(model, per_sample_loss_fn, batch, leaves, mode)
    if not isinstance(losses, torch.Tensor) or losses.dim() != 1 or losses.numel() == 0:
        raise DataError("per_sample_loss_fn must return a 1-D tensor with one loss per example")
    if not bool(torch.isfinite(losses.detach()).all()):
        raise DataError("per_sample_loss_fn returned NaN/Inf losses")
    rows = []
    for i in range(losses.numel()):
        gs = torch.autograd.grad(losses[i], list(leaves.values()), retain_graph=True, allow_unused=True)
        rows.append(torch.cat([(torch.zeros_like(t) if g is None else g).reshape(-1).to(torch.float64)
                               for t, g in zip(leaves.values(), gs)]))
    G = torch.stack(rows)
    norms = G.norm(dim=1)
    zero = norms == 0
    U = torch.where(zero[:, None], torch.zeros_like(G), G / norms.clamp_min(1e-300)[:, None])
    C = U @ U.T
    ev = torch.linalg.eigvalsh(C)
    cond = float(ev[-1] / ev[0]) if float(ev[0]) > 1e-12 * max(float(ev[-1]), 1e-300) else math.inf
    return GradientCovariance(C, cond, int(zero.sum()))
