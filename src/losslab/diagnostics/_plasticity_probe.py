"""Probing a network for plasticity: features captured with forward hooks, per-layer reports, gradient covariance."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from losslab._errors import ConfigError, DataError
from losslab.diagnostics._common import call_model, check_batch, check_loss_fn, check_model, trainable_names
from losslab.diagnostics._plasticity import (
    dead_units,
    dormant_units,
    effective_rank,
    feature_norm,
    redo_dormant_units,
    srank,
    weight_magnitude,
)

__all__ = ["GradientCovariance", "collect_features", "gradient_covariance", "plasticity_report"]

_ACTIVATIONS = (nn.ReLU, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.ELU, nn.Softplus, nn.Mish)


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
