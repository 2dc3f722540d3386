"""Paths between two checkpoints (linear and layer-wise interpolation) and the loss change as samples are added."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from losslab._errors import ConfigError, DataError
from losslab.diagnostics._common import (
    LossFn,
    call_model,
    check_batch,
    check_float,
    check_int,
    check_loss_fn,
    check_model,
    make_generator,
)
from losslab.diagnostics._landscape import _grid, _losses, random_direction

__all__ = ["Interpolation", "SampleSizeChange", "layerwise_barriers", "linear_interpolation",
           "sample_size_loss_change"]

State = Mapping[str, torch.Tensor]


@dataclass
class Interpolation:
    r"""Losses along :math:`\alpha \in [0, 1]` and the barrier height.

    ``barrier`` :math:`= \max_\alpha\, [L(\alpha) - ((1-\alpha)L(0) + \alpha L(1))]` (Frankle et al. 2020): zero or
    negative means the two end points are linearly connected.
    """

    alphas: np.ndarray
    losses: np.ndarray
    barrier: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary."""
        return {"alphas": self.alphas.tolist(), "losses": self.losses.tolist(), "barrier": self.barrier}


def _state(model: nn.Module, s: Any, what: str) -> dict[str, torch.Tensor]:
    if isinstance(s, nn.Module):
        s = s.state_dict()
    if not isinstance(s, Mapping):
        raise ConfigError(f"{what} must be a state_dict (mapping name -> tensor) or a model")
    own = model.state_dict()
    missing = [k for k in own if k not in s]
    if missing:
        raise DataError(f"{what} misses entries {missing[:5]}; pass a state_dict of the same architecture")
    for k, v in own.items():
        if tuple(s[k].shape) != tuple(v.shape):
            raise DataError(f"{what}[{k!r}] has shape {tuple(s[k].shape)}, the model {tuple(v.shape)}")
        if s[k].is_floating_point() and not bool(torch.isfinite(s[k]).all()):
            raise DataError(f"{what}[{k!r}] has NaN/Inf entries")
    return {k: s[k].detach().to(own[k].device) for k in own}


def _mix(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], alpha: float, keys: set[str] | None,
         ) -> dict[str, torch.Tensor]:
    out = {}
    for k, va in a.items():
        if va.is_floating_point() and (keys is None or k in keys):
            out[k] = (1 - alpha) * va + alpha * b[k].to(va)
        else:
            out[k] = va.clone()  # integer buffers (num_batches_tracked) come from the first end point
    return out


def _barrier(alphas: np.ndarray, losses: np.ndarray) -> float:
    i0, i1 = int(np.argmin(alphas)), int(np.argmax(alphas))
    a0, a1 = alphas[i0], alphas[i1]
    t = (alphas - a0) / (a1 - a0) if a1 > a0 else np.zeros_like(alphas)
    return float(np.max(losses - ((1 - t) * losses[i0] + t * losses[i1])))


def linear_interpolation(model: nn.Module, loss_fn: LossFn, batch: Any, state_a: Any, state_b: Any, *,
                         alphas: Any = None, mode: str = "eval") -> Interpolation:
    r"""Loss along :math:`\theta(\alpha) = (1-\alpha)\theta_A + \alpha\theta_B` between two checkpoints.

    Floating-point buffers (BatchNorm running statistics) are interpolated too, as Li et al. recommend for paths
    between two solutions (their ``--dir_type states``); integer buffers are taken from ``state_a``. The model
    itself is only used as the architecture and is never modified.

    Args:
        model: a network of the same architecture as both checkpoints.
        loss_fn, batch, mode: as in :class:`HessianOperator`.
        state_a, state_b: state dicts (or models).
        alphas: points on the path (default ``linspace(0, 1, 21)``).

    Returns:
        :class:`Interpolation`.

    Example:
        >>> import torch
        >>> model = torch.nn.Linear(1, 1, bias=False)
        >>> a, b = {"weight": torch.tensor([[-1.0]])}, {"weight": torch.tensor([[1.0]])}
        >>> r = linear_interpolation(model, lambda m, x: (1 - m(x) ** 2).pow(2).sum(), torch.ones(1, 1), a, b,
        ...                          alphas=[0, 0.5, 1])
        >>> r.barrier
        1.0

    References:
        Goodfellow, Vinyals & Saxe, arXiv:1412.6544, 2015; Frankle, Dziugaite, Roy & Carbin, "Linear Mode
        Connectivity and the Lottery Ticket Hypothesis", arXiv:1912.05595, 2020 (barrier definition).
    """
    check_model(model)
    check_loss_fn(loss_fn)
    check_batch(batch)
    sa, sb = _state(model, state_a, "state_a"), _state(model, state_b, "state_b")
    a = _grid(np.linspace(0, 1, 21) if alphas is None else alphas, "alphas")
    losses = _losses(model, loss_fn, batch, lambda i: _mix(sa, sb, float(a[i]), None), a.size, mode, "interpolation")
    return Interpolation(a, losses, _barrier(a, losses))


def _layers(model: nn.Module) -> dict[str, set[str]]:
    """Parameter groups: one per module that owns parameters directly, with that module's float buffers."""
    groups: dict[str, set[str]] = {}
    for mod_name, mod in model.named_modules():
        own = [n for n, _ in mod.named_parameters(recurse=False)]
        if not own:
            continue
        prefix = f"{mod_name}." if mod_name else ""
        keys = {prefix + n for n in own}
        keys |= {prefix + n for n, b in mod.named_buffers(recurse=False) if b.is_floating_point()}
        groups[mod_name or "<root>"] = keys
    return groups


def layerwise_barriers(model: nn.Module, loss_fn: LossFn, batch: Any, state_a: Any, state_b: Any, *,
                       alphas: Any = None, layers: Mapping[str, Any] | None = None, mode: str = "eval",
                       ) -> dict[str, Interpolation]:
    r"""Barrier of interpolating one layer at a time between two checkpoints.

    For a layer (group of parameters) :math:`l`, the path keeps every other parameter at :math:`\theta_A` and
    moves :math:`\theta_l(\alpha) = (1-\alpha)\theta_{A,l} + \alpha\theta_{B,l}`; its barrier is measured against
    the straight line between the path's own end points :math:`L(0) = L(\theta_A)` and
    :math:`L(1) = L(\theta_A \text{ with layer } l \text{ of } \theta_B)`.

    Args:
        model, loss_fn, batch, state_a, state_b, alphas, mode: as in :func:`linear_interpolation`.
        layers: ``{group name: iterable of state-dict keys}`` (default: one group per module owning parameters,
            with its floating-point buffers).

    Returns:
        ``{group name: Interpolation}``.

    Example:
        >>> import torch
        >>> model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
        >>> other = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
        >>> out = layerwise_barriers(model, lambda m, x: m(x).pow(2).mean(), torch.ones(3, 2), model, other)
        >>> sorted(out)
        ['0', '1']

    References:
        Adilova, Andriushchenko, Kamp, Fischer & Jaggi, "Layer-wise Linear Mode Connectivity", arXiv:2307.06966,
        2024 (the abstract is verified; the barrier's end points are this library's reading of the definition).
    """
    check_model(model)
    check_loss_fn(loss_fn)
    check_batch(batch)
    sa, sb = _state(model, state_a, "state_a"), _state(model, state_b, "state_b")
    a = _grid(np.linspace(0, 1, 11) if alphas is None else alphas, "alphas")
    groups = _layers(model) if layers is None else {str(k): set(v) for k, v in layers.items()}
    for name, keys in groups.items():
        unknown = sorted(keys - set(sa))
        if unknown or not keys:
            raise ConfigError(f"layer group {name!r} names unknown or no state-dict keys {unknown[:5]}")
    out = {}
    for name, keys in groups.items():
        def point(i: int, keys: set[str] = keys) -> dict[str, torch.Tensor]:
            return _mix(sa, sb, float(a[i]), keys)

        losses = _losses(model, loss_fn, batch, point, a.size, mode, f"layer {name}")
        out[name] = Interpolation(a, losses, _barrier(a, losses))
    return out


@dataclass
class SampleSizeChange:
    r"""Mean absolute loss change :math:`\Delta_n` between :math:`n` and :math:`n+1` samples, and its decay.

    ``slope`` is the least-squares slope of :math:`\log\Delta_n` against :math:`\log n` (about -1 when the new
    sample's loss stays bounded, since :math:`L_{n+1}-L_n = (\ell_{n+1}-L_n)/(n+1)`).
    """

    n: np.ndarray
    delta: np.ndarray
    slope: float
    n_points: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary."""
        return {"n": self.n.tolist(), "delta": self.delta.tolist(), "slope": self.slope, "n_points": self.n_points}


def sample_size_loss_change(model: nn.Module, per_sample_loss_fn: Callable[[nn.Module, Any], torch.Tensor],
                            batch: Any, *, n_points: int = 16, radius: float = 0.1, mode: str = "eval",
                            seed: int | torch.Generator = 0) -> SampleSizeChange:
    r"""How much the empirical loss surface moves when one sample is added, around a trained point.

    With per-sample losses :math:`\ell_i(\theta)` (in the batch's order) and :math:`L_n = \frac1n\sum_{i\le n}\ell_i`,
    evaluated at :math:`\theta_j = \theta^* + r\,u_j d_j` for ``n_points`` filter-normalised Gaussian directions
    :math:`d_j` (bias/BN entries zeroed) and :math:`u_j \sim U[0, 1]` (plus :math:`\theta^*` itself):
    :math:`\Delta_n = \frac1J\sum_j |L_{n+1}(\theta_j) - L_n(\theta_j)|` for :math:`n = 1..N-1`.

    Args:
        model, mode: as in :class:`HessianOperator`.
        per_sample_loss_fn: ``f(model, batch) -> tensor of shape (N,)``, one loss per sample (``reduction="none"``).
        batch: the samples, in the order they are added.
        n_points: number of random points around :math:`\theta^*`.
        radius: neighbourhood size :math:`r` in filter-normalised units.
        seed: int or :class:`torch.Generator`.

    Returns:
        :class:`SampleSizeChange`.

    Example:
        >>> import torch
        >>> model = torch.nn.Linear(1, 1)
        >>> x = torch.linspace(-1, 1, 20).reshape(-1, 1)
        >>> r = sample_size_loss_change(model, lambda m, b: m(b).squeeze(1) ** 2, x, n_points=2)
        >>> r.delta.shape
        (19,)

    References:
        Kiselev & Grabovoy, "Unraveling the Hessian: A Key to Smooth Convergence in Loss Function Landscapes",
        arXiv:2409.11995, 2024 (abstract verified: the difference of loss values when adding an object to the
        sample; the neighbourhood sampling here is this library's choice).
    """
    check_model(model)
    check_loss_fn(per_sample_loss_fn)
    check_batch(batch)
    j = check_int(n_points, "n_points", low=1)
    r = check_float(radius, "radius", low=0.0)
    gen = make_generator(seed)
    base = {n: p.detach() for n, p in model.named_parameters()}
    rows = []
    with torch.no_grad():
        for i in range(j + 1):
            if i == 0:
                params = base
            else:
                d = random_direction(model, seed=gen)
                u = float(torch.rand((), generator=gen, dtype=torch.float64))
                params = {n: base[n] + r * u * d[n] for n in base}
            ell = call_model(model, per_sample_loss_fn, batch, params, mode)
            if not isinstance(ell, torch.Tensor) or ell.dim() != 1 or ell.numel() < 2:
                raise DataError("per_sample_loss_fn must return a 1-D tensor with one loss per sample (>= 2 samples)")
            if not bool(torch.isfinite(ell).all()):
                raise DataError("per_sample_loss_fn returned NaN/Inf losses; use a smaller radius or check inputs")
            rows.append(ell.to(torch.float64).cpu().numpy())
    losses = np.stack(rows)  # (points, N)
    counts = np.arange(1, losses.shape[1] + 1)
    L = np.cumsum(losses, axis=1) / counts
    delta = np.abs(L[:, 1:] - L[:, :-1]).mean(axis=0)
    n = counts[:-1]
    ok = delta > 0
    slope = float(np.polyfit(np.log(n[ok]), np.log(delta[ok]), 1)[0]) if ok.sum() >= 2 else float("nan")
    return SampleSizeChange(n, delta, slope, j + 1)
