"""Loss landscapes: filter-normalised random directions, Hessian directions, 1-D and 2-D slices."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from losslab._errors import ConfigError, DataError
from losslab._progress import progress
from losslab.diagnostics._common import (
    LossFn,
    call_model,
    check_batch,
    check_choice,
    check_int,
    check_loss_fn,
    check_model,
    evaluate_loss,
    make_generator,
)
from losslab.diagnostics._eigen import lanczos
from losslab.diagnostics._hessian import HessianOperator

__all__ = ["LossLandscape", "hessian_directions", "loss_line", "loss_plane", "random_direction"]

Direction = dict[str, torch.Tensor]


def random_direction(model: nn.Module, *, seed: int | torch.Generator = 0, norm: str = "filter",
                     ignore: str | None = "biasbn") -> Direction:
    r"""A Gaussian direction in parameter space, normalised as in Li et al.'s ``net_plotter``.

    A draw :math:`d \sim \mathcal N(0, I)` per parameter tensor (in ``named_parameters`` order), then

    - ``norm="filter"``: for tensors with ``dim > 1`` each slice along dim 0 (a conv filter, a Linear row) is
      rescaled, :math:`d_i \leftarrow d_i\,\|\theta_i\|/(\|d_i\| + 10^{-10})` (Frobenius norms), so per-filter norms
      equal the weights';
    - ``norm="layer"``: the same with one slice per tensor; ``norm="none"``: raw Gaussian;
    - tensors with ``dim <= 1`` (biases, BatchNorm :math:`\gamma, \beta`): zeroed with ``ignore="biasbn"``
      (the recommended setting), otherwise set to the weights themselves (``d = θ``) as in the authors' code
      (raw Gaussian under ``norm="none"``).

    Args:
        model: the network (read only).
        seed: int or :class:`torch.Generator` (CPU; the direction does not depend on the device).
        norm: ``"filter"`` (default), ``"layer"`` or ``"none"``.
        ignore: ``"biasbn"`` (default) or ``None``.

    Returns:
        ``{parameter name: tensor}`` shaped like the parameters.

    Example:
        >>> import torch
        >>> lin = torch.nn.Linear(4, 3)
        >>> d = random_direction(lin, seed=0)
        >>> torch.allclose(d["weight"].norm(dim=1), lin.weight.detach().norm(dim=1)), bool((d["bias"] == 0).all())
        (True, True)

    References:
        Li, Xu, Taylor, Studer & Goldstein, "Visualizing the Loss Landscape of Neural Nets", arXiv:1712.09913,
        2018 (rule checked against the authors' ``net_plotter.py``).

    Notes:
        The ``loss-landscapes`` package draws *uniform [0, 1)* directions (all positive, biased) and normalises 1-D
        tensors twice; LLA inherits the uniform draw. Here directions are Gaussian as in the paper and its code.
    """
    check_model(model)
    check_choice(norm, "norm", ("filter", "layer", "none"))
    if ignore not in ("biasbn", None):
        raise ConfigError(f"ignore must be 'biasbn' or None, got {ignore!r}")
    gen = make_generator(seed)
    out: Direction = {}
    for name, p in model.named_parameters():
        w = p.detach()
        d = torch.randn(w.shape, generator=gen, dtype=torch.float64).to(w.device, w.dtype)
        if w.dim() <= 1:
            if ignore == "biasbn":
                d = torch.zeros_like(w)
            elif norm != "none":
                d = w.clone()
        elif norm == "filter":
            wn = w.reshape(w.shape[0], -1).norm(dim=1)
            dn = d.reshape(d.shape[0], -1).norm(dim=1)
            d = d * (wn / (dn + 1e-10)).reshape((-1,) + (1,) * (w.dim() - 1))
        elif norm == "layer":
            d = d * (w.norm() / (d.norm() + 1e-10))
        out[name] = d
    return out


def hessian_directions(model: nn.Module, loss_fn: LossFn, batch: Any, k: int = 2, *, mode: str = "eval",
                       tol: float = 1e-6, max_iter: int = 100, seed: int | torch.Generator = 0) -> list[Direction]:
    r"""The top-``k`` Hessian eigenvectors (largest algebraic, unit norm) as landscape directions.

    Random directions can hide the landscape's curvature, notably with BatchNorm, where filter normalisation
    mis-scales the directions; plotting along the top eigenvectors shows the sharpest directions instead.

    Args:
        model, loss_fn, batch, mode: as in :class:`HessianOperator`.
        k: number of directions.
        tol, max_iter, seed: Lanczos settings.

    Returns:
        ``k`` directions ``{parameter name: tensor}``, each of unit Euclidean norm over all parameters.

    Example:
        >>> import torch
        >>> model = torch.nn.Linear(2, 1, bias=False)
        >>> d = hessian_directions(model, lambda m, b: (m(b) ** 2).sum(), torch.diag(torch.tensor([3.0, 1.0])), 1)
        >>> d[0]["weight"].abs().round(decimals=4)
        tensor([[1., 0.]])

    References:
        Gabdullin et al., "Loss Landscape Analysis" (LLA), arXiv:2412.10146, 2024 ("hessian axes" in the authors'
        ``viz_lla(axes='hessian')``).
    """
    op = HessianOperator(model, loss_fn, batch, mode=mode)
    k = check_int(k, "k", low=1, high=op.n, hint=f" (the model has n = {op.n} parameters)")
    res = lanczos(op, k, which="LA", tol=tol, max_iter=max(k, min(max_iter, op.n)), seed=seed, return_vectors=True)
    assert res.eigenvectors is not None
    names = dict(model.named_parameters())
    dirs = []
    for v in res.eigenvectors:
        d = {n: t.to(names[n].dtype) for n, t in op.unflatten(v).items()}
        for n, p in names.items():  # parameters that were not differentiated do not move
            d.setdefault(n, torch.zeros_like(p.detach()))
        dirs.append(d)
    return dirs


@dataclass
class LossLandscape:
    """Losses on a 1-D line (``betas is None``) or 2-D plane around ``center_loss``; non-finite points are inf."""

    alphas: np.ndarray
    betas: np.ndarray | None
    losses: np.ndarray
    center_loss: float
    n_nonfinite: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready arrays (inf written as ``None``)."""
        losses = np.asarray(self.losses, dtype=object)
        losses[~np.isfinite(self.losses)] = None
        return {"alphas": self.alphas.tolist(), "betas": None if self.betas is None else self.betas.tolist(),
                "losses": losses.tolist(), "center_loss": self.center_loss, "n_nonfinite": self.n_nonfinite}


def _check_direction(model: nn.Module, d: Any, what: str) -> Direction:
    if not isinstance(d, dict):
        raise ConfigError(f"{what} must be a dict {{parameter name: tensor}} as returned by random_direction")
    for name, p in model.named_parameters():
        if name not in d:
            raise DataError(f"{what} misses parameter {name!r}; build it with random_direction(model)")
        if tuple(d[name].shape) != tuple(p.shape):
            raise DataError(f"{what}[{name!r}] has shape {tuple(d[name].shape)}, the parameter {tuple(p.shape)}")
        if not bool(torch.isfinite(d[name]).all()):
            raise DataError(f"{what}[{name!r}] has NaN/Inf entries")
    return d


def _grid(values: Any, name: str) -> np.ndarray:
    a = np.asarray(values, dtype=np.float64).reshape(-1)
    if a.size == 0 or not np.all(np.isfinite(a)):
        raise ConfigError(f"{name} must be a non-empty sequence of finite numbers")
    return a


def _losses(model: nn.Module, loss_fn: LossFn, batch: Any, point: Callable[[int], dict[str, torch.Tensor]],
            count: int, mode: str, desc: str) -> np.ndarray:
    """Loss at ``point(i)`` for ``i < count``; points are built one at a time (memory: one parameter copy)."""
    out = np.empty(count)
    with torch.no_grad():
        for i in progress(range(count), total=count, desc=desc):
            val = call_model(model, loss_fn, batch, point(i), mode)
            if not isinstance(val, torch.Tensor) or val.numel() != 1:
                raise DataError("loss_fn(model, batch) must return a scalar tensor")
            v = float(val)
            out[i] = v if np.isfinite(v) else np.inf
    return out


def loss_line(model: nn.Module, loss_fn: LossFn, batch: Any, direction: Direction, *,
              alphas: Any = None, mode: str = "eval") -> LossLandscape:
    r"""Loss along a line :math:`\ell(\theta + \alpha d)` (a 1-D landscape).

    Args:
        model, loss_fn, batch, mode: as in :class:`HessianOperator` (the model is never modified).
        direction: from :func:`random_direction` or :func:`hessian_directions`.
        alphas: step sizes (default ``linspace(-1, 1, 51)``, Li et al.'s ``--x=-1:1:51``).

    Returns:
        :class:`LossLandscape` with ``betas=None``.

    Example:
        >>> import torch
        >>> model = torch.nn.Linear(1, 1, bias=False)
        >>> d = {"weight": torch.ones(1, 1)}
        >>> line = loss_line(model, lambda m, b: (m(b) ** 2).sum(), torch.ones(1, 1), d, alphas=[0.0])
        >>> line.losses.shape
        (1,)

    References:
        Goodfellow, Vinyals & Saxe, "Qualitatively characterizing neural network optimization problems",
        arXiv:1412.6544, 2015; Li et al., arXiv:1712.09913, 2018.
    """
    check_model(model)
    check_loss_fn(loss_fn)
    check_batch(batch)
    d = _check_direction(model, direction, "direction")
    a = _grid(np.linspace(-1, 1, 51) if alphas is None else alphas, "alphas")
    center = float(evaluate_loss(model, loss_fn, batch, None, mode).detach())
    base = {n: p.detach() for n, p in model.named_parameters()}
    losses = _losses(model, loss_fn, batch, lambda i: {n: base[n] + float(a[i]) * d[n].to(base[n]) for n in base},
                     a.size, mode, "loss line")
    return LossLandscape(a, None, losses, center, int(np.sum(~np.isfinite(losses))))


def loss_plane(model: nn.Module, loss_fn: LossFn, batch: Any, d1: Direction, d2: Direction, *,
               alphas: Any = None, betas: Any = None, mode: str = "eval") -> LossLandscape:
    r"""Loss on a plane :math:`\ell(\theta + \alpha d_1 + \beta d_2)` (a 2-D landscape), with a progress bar.

    Args:
        model, loss_fn, batch, mode: as in :func:`loss_line`.
        d1, d2: directions (e.g. two :func:`random_direction` draws with different seeds).
        alphas, betas: grids (default ``linspace(-1, 1, 21)`` each; Li et al. use 51 x 51).

    Returns:
        :class:`LossLandscape` with ``losses[i, j]`` at ``(alphas[i], betas[j])``.

    Example:
        >>> import torch
        >>> model = torch.nn.Linear(2, 1, bias=False)
        >>> d1, d2 = random_direction(model, seed=1), random_direction(model, seed=2)
        >>> plane = loss_plane(model, lambda m, b: m(b).pow(2).sum(), torch.eye(2), d1, d2, alphas=[0, 1], betas=[0])
        >>> plane.losses.shape
        (2, 1)

    References:
        Li, Xu, Taylor, Studer & Goldstein, "Visualizing the Loss Landscape of Neural Nets", arXiv:1712.09913, 2018.
    """
    check_model(model)
    check_loss_fn(loss_fn)
    check_batch(batch)
    e1 = _check_direction(model, d1, "d1")
    e2 = _check_direction(model, d2, "d2")
    a = _grid(np.linspace(-1, 1, 21) if alphas is None else alphas, "alphas")
    b = _grid(np.linspace(-1, 1, 21) if betas is None else betas, "betas")
    center = float(evaluate_loss(model, loss_fn, batch, None, mode).detach())
    base = {n: p.detach() for n, p in model.named_parameters()}
    def point(i: int) -> dict[str, torch.Tensor]:
        x, y = float(a[i // b.size]), float(b[i % b.size])
        return {n: base[n] + x * e1[n].to(base[n]) + y * e2[n].to(base[n]) for n in base}

    losses = _losses(model, loss_fn, batch, point, a.size * b.size, mode, "loss plane").reshape(a.size, b.size)
    return LossLandscape(a, b, losses, center, int(np.sum(~np.isfinite(losses))))
