"""Training-dynamics probes: input sensitivity, layer-wise tangent-feature alignment and the tangent kernel."""

from __future__ import annotations

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
    check_int,
    check_loss,
    check_loss_fn,
    check_model,
    trainable_names,
)
from losslab.diagnostics._interpolation import _layers

__all__ = ["InputSensitivity", "empirical_ntk", "input_sensitivity", "kernel_distance", "tangent_alignment"]


@dataclass
class InputSensitivity:
    r"""Per input feature: mean :math:`|\partial L/\partial x|`, mean :math:`\partial L/\partial x` and mean
    :math:`\partial^2 L/\partial x^2` over the samples (arrays shaped like one input)."""

    first_abs: np.ndarray
    first: np.ndarray
    second: np.ndarray

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready arrays."""
        return {"first_abs": self.first_abs.tolist(), "first": self.first.tolist(), "second": self.second.tolist()}


def _replace(batch: Any, index: int, x: torch.Tensor) -> Any:
    if isinstance(batch, torch.Tensor):
        return x
    items = list(batch)
    items[index] = x
    return type(batch)(items)


def input_sensitivity(model: nn.Module, loss_fn: LossFn, batch: Any, *, input_index: int = 0,
                      mode: str = "eval") -> InputSensitivity:
    r"""Sensitivity of the loss to each input feature from its first and second derivatives.

    With :math:`L` = ``loss_fn(model, batch)`` and inputs :math:`x \in \mathbb R^{N\times d}`:
    ``first_abs[j]`` :math:`= \frac1N\sum_i|\partial L/\partial x_{ij}|`, ``first[j]`` the signed mean and
    ``second[j]`` :math:`= \frac1N\sum_i \partial^2 L/\partial x_{ij}^2`. The diagonal second derivatives come from
    one Hessian-vector product per feature with the vector :math:`e_j` repeated over samples, which is exact when
    samples do not interact (true in eval mode; not with train-mode BatchNorm).

    Args:
        model, loss_fn, mode: as in :class:`HessianOperator`.
        batch: a tensor of inputs or a tuple/list holding them at ``input_index``.
        input_index: position of the inputs in the batch.

    Returns:
        :class:`InputSensitivity`.

    Example:
        >>> import torch
        >>> x = torch.tensor([[1.0, 2.0]])
        >>> s = input_sensitivity(torch.nn.Identity(), lambda m, b: (m(b) ** 2 * torch.tensor([1.0, 3.0])).sum(), x)
        >>> s.first.tolist(), s.second.tolist()
        ([2.0, 12.0], [2.0, 6.0])

    References:
        Faroz, "Sensitivity Analysis On Loss Landscape", arXiv:2403.01128, 2024 (abstract verified: first, second and
        third derivatives of the loss with respect to the inputs; third derivatives are not computed here).
    """
    check_model(model)
    check_loss_fn(loss_fn)
    check_batch(batch)
    x0 = batch if isinstance(batch, torch.Tensor) else (
        batch[check_int(input_index, "input_index", low=0, high=len(batch) - 1)]
        if isinstance(batch, (list, tuple)) else None)
    if not isinstance(x0, torch.Tensor) or not x0.is_floating_point() or x0.dim() < 1:
        raise DataError("the inputs must be a floating-point tensor (N, ...) at batch[input_index]")
    x = x0.detach().clone().requires_grad_(True)
    loss = check_loss(call_model(model, loss_fn, _replace(batch, input_index, x), None, mode))
    (g,) = torch.autograd.grad(loss, x, create_graph=True)
    feat_shape = x.shape[1:]
    d = int(np.prod(feat_shape)) if len(feat_shape) else 1
    second = np.empty(d)
    for j in range(d):
        e = torch.zeros(d, dtype=x.dtype, device=x.device)
        e[j] = 1.0
        v = e.reshape(feat_shape).expand_as(x) if len(feat_shape) else torch.ones_like(x)
        if g.requires_grad:
            (hv,) = torch.autograd.grad(g, x, grad_outputs=v, retain_graph=True, allow_unused=True)
        else:
            hv = None
        hv = torch.zeros_like(x) if hv is None else hv
        second[j] = float((hv.reshape(x.shape[0], -1)[:, j]).to(torch.float64).mean())
    gd = g.detach().to(torch.float64).reshape(x.shape[0], -1)
    shape = tuple(feat_shape)
    return InputSensitivity(gd.abs().mean(0).numpy().reshape(shape), gd.mean(0).numpy().reshape(shape),
                            second.reshape(shape))


def _jacobians(model: nn.Module, inputs: torch.Tensor, mode: str) -> tuple[dict[str, torch.Tensor], int]:
    """``{param name: (N, C, P_l)}`` Jacobians of the outputs and the number of outputs C."""
    names = trainable_names(model)
    named = dict(model.named_parameters())
    params = {n: named[n].detach() for n in names}

    def f(p: dict[str, torch.Tensor]) -> torch.Tensor:
        out = call_model(model, lambda m, b: m(b), inputs, p, mode)
        return out.reshape(inputs.shape[0], -1)

    out = f(params)
    if not bool(torch.isfinite(out).all()):
        raise DataError("the model's outputs are NaN/Inf on these inputs")
    jac = torch.func.jacrev(f)(params)
    c = out.shape[1]
    return {n: j.reshape(inputs.shape[0], c, -1).to(torch.float64) for n, j in jac.items()}, c


def _check_inputs(inputs: Any) -> torch.Tensor:
    if not isinstance(inputs, torch.Tensor) or inputs.dim() < 1 or inputs.shape[0] == 0:
        raise DataError("inputs must be a non-empty tensor (N, ...)")
    if inputs.is_floating_point() and not bool(torch.isfinite(inputs).all()):
        raise DataError("inputs have NaN/Inf entries")
    return inputs


def empirical_ntk(model: nn.Module, inputs: torch.Tensor, *, mode: str = "eval") -> torch.Tensor:
    r"""Empirical tangent kernel :math:`K_{ij} = \sum_c \langle \nabla_\theta f_c(x_i), \nabla_\theta f_c(x_j)\rangle`.

    Args:
        model, mode: as in :class:`HessianOperator`.
        inputs: ``(N, ...)`` probe inputs.

    Returns:
        ``(N, N)`` float64 kernel (trace over outputs).

    Example:
        >>> import torch
        >>> lin = torch.nn.Linear(2, 1, bias=False)
        >>> empirical_ntk(lin, torch.eye(2)).tolist()
        [[1.0, 0.0], [0.0, 1.0]]

    References:
        Jacot, Gabriel & Hongler, "Neural Tangent Kernel", arXiv:1806.07572, 2018.
    """
    check_model(model)
    jac, _ = _jacobians(model, _check_inputs(inputs), mode)
    return sum(torch.einsum("icp,jcp->ij", j, j) for j in jac.values())  # type: ignore[return-value]


def kernel_distance(k0: torch.Tensor, kt: torch.Tensor) -> float:
    r"""Kernel distance :math:`1 - \langle K_0, K_t\rangle_F / (\|K_0\|_F\|K_t\|_F)`: 0 for a kernel that only
    rescaled (lazy training), growing as features are learned (rich training).

    Example:
        >>> import torch
        >>> kernel_distance(torch.eye(2), 3 * torch.eye(2)), round(kernel_distance(torch.eye(2), torch.ones(2, 2)), 4)
        (0.0, 0.2929)

    References:
        Fort, Dziugaite, Paul, Kharaghani, Roy & Ganguli, "Deep learning versus kernel learning", arXiv:2010.15110,
        2020 (kernel distance); Kumar, Bordelon, Gershman & Pehlevan, "Grokking as the transition from lazy to rich
        training dynamics", arXiv:2310.06110, 2023.
    """
    for name, k in (("k0", k0), ("kt", kt)):
        if not isinstance(k, torch.Tensor) or k.dim() != 2 or k.shape[0] != k.shape[1] or k.shape[0] == 0:
            raise DataError(f"{name} must be a non-empty square matrix")
        if not bool(torch.isfinite(k).all()):
            raise DataError(f"{name} has NaN/Inf entries")
    if k0.shape != kt.shape:
        raise DataError(f"kernels differ in shape: {tuple(k0.shape)} vs {tuple(kt.shape)}")
    a, b = k0.to(torch.float64), kt.to(torch.float64)
    na, nb = float(a.norm()), float(b.norm())
    if na == 0 or nb == 0:
        raise DataError("a kernel is identically zero; the distance is undefined")
    # Cauchy-Schwarz bounds the cosine by 1; clip the round-off so identical kernels give exactly 0, never -4e-16
    return float(min(2.0, max(0.0, 1 - float((a * b).sum()) / (na * nb))))


def tangent_alignment(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, *,
                      layers: dict[str, list[str]] | None = None, center: bool = True,
                      mode: str = "eval") -> dict[str, float]:
    r"""Layer-wise alignment of the tangent features with the labels.

    For each layer :math:`l` (the parameters of one module), :math:`K_l = \sum_c \Phi_{l,c}\Phi_{l,c}^\top` with
    tangent features :math:`\Phi_{l,c} = \partial f_c(X)/\partial\theta_l`, and
    :math:`A_l = \langle \tilde K_l, \tilde K_Y\rangle_F / (\|\tilde K_l\|_F\|\tilde K_Y\|_F)` with
    :math:`K_Y = YY^\top` (one-hot for integer labels) and :math:`\tilde K = HKH`,
    :math:`H = I - \mathbf 1\mathbf 1^\top/N` when ``center`` (centred kernel alignment).

    Args:
        model, mode: as in :class:`HessianOperator`.
        inputs: ``(N, ...)`` probe inputs.
        labels: ``(N,)`` integer classes or ``(N, C)`` float targets.
        layers: ``{name: [parameter names]}`` (default: one group per module owning parameters).
        center: centre both kernels.

    Returns:
        ``{layer: alignment in [-1, 1]}``.

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Tanh(), torch.nn.Linear(3, 2))
        >>> x = torch.randn(6, 2, generator=torch.Generator().manual_seed(0))
        >>> sorted(tangent_alignment(net, x, torch.tensor([0, 1, 0, 1, 0, 1])))
        ['0', '2']

    References:
        Lou, Mingard, Nam & Hayou, "Feature Learning and Signal Propagation in Deep Neural Networks", arXiv:2110.11749,
        2022 (abstract verified: alignment as the Euclidean product of the tangent feature matrix with the label
        matrix, per layer); Baratin et al., "Implicit regularization via neural feature alignment",
        arXiv:2008.00938, 2021 (centred kernel alignment).
    """
    check_model(model)
    x = _check_inputs(inputs)
    if not isinstance(labels, torch.Tensor) or labels.shape[0] != x.shape[0]:
        raise DataError("labels must be a tensor with one row per input")
    if labels.dtype.is_floating_point:
        Y = labels.reshape(x.shape[0], -1).to(torch.float64)
    else:
        if labels.dim() != 1 or int(labels.min()) < 0:
            raise DataError("integer labels must be a 1-D tensor of non-negative class indices")
        Y = torch.nn.functional.one_hot(labels.long()).to(torch.float64)
    jac, _ = _jacobians(model, x, mode)
    if layers is None:
        groups = {k: [n for n in v if n in jac] for k, v in _layers(model).items()}
        groups = {k: v for k, v in groups.items() if v}
    else:
        groups = {str(k): list(v) for k, v in layers.items()}
        bad = [n for v in groups.values() for n in v if n not in jac]
        if bad:
            raise ConfigError(f"unknown or frozen parameter names {bad[:5]}")
    n = x.shape[0]
    H = torch.eye(n, dtype=torch.float64) - 1.0 / n if center else torch.eye(n, dtype=torch.float64)
    KY = H @ (Y @ Y.T) @ H
    out = {}
    for name, pnames in groups.items():
        K = sum(torch.einsum("icp,jcp->ij", jac[p], jac[p]) for p in pnames)
        K = H @ K @ H  # type: ignore[operator]
        denom = float(K.norm() * KY.norm())
        out[name] = float((K * KY).sum() / denom) if denom > 0 else 0.0
    return out
