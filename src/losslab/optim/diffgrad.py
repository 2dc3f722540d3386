"""diffGrad: Adam with a friction coefficient from the change of the gradient (Dubey et al. 2019), authors' v2."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch

from losslab.optim._atoms import (
    Scratch,
    adam_direction_fused,
    check_adam_group,
    check_fused,
    params_with_grad,
)
from losslab.optim._base import Optimizer, closure_loss

__all__ = ["DiffGrad"]


class DiffGrad(Optimizer):
    r"""diffGrad (the authors' ``diffGrad_v2``): Adam whose step is damped where the gradient barely changes.

    .. math::

        g \leftarrow g + λ p\ (\text{coupled L2, if } λ \ne 0),\quad
        m \leftarrow β_1 m + (1-β_1) g,\quad v \leftarrow β_2 v + (1-β_2) g^2 \\
        ξ = \operatorname{sigmoid}(|g_{\text{prev}} - g|),\quad g_{\text{prev}} \leftarrow g,\quad
        p \leftarrow p - η\frac{\sqrt{1-β_2^t}}{1-β_1^t}\,\frac{ξ\,m}{\sqrt v + ε}

    with ``g_prev`` initialised to zero (so the first step uses ``sigmoid(|g|)``).

    Args:
        params: parameters or param groups.
        lr: ``η``. betas: ``(β1, β2)``. eps: ``ε`` (added to ``sqrt(v)``).
        weight_decay: ``λ``, coupled L2 added to the gradient, as in the authors' code.
        fused: None uses torch's fused AdamW kernel for the moments where possible, False the reference path.

    Returns:
        ``step()`` returns the closure's loss (or None).

    Example:
        >>> import torch
        >>> w = torch.nn.Parameter(torch.zeros(1))
        >>> opt = DiffGrad([w], lr=0.1)
        >>> w.grad = torch.tensor([100.0]); opt.step()   # xi = sigmoid(100) = 1: a plain first Adam step
        >>> round(w.item(), 4)
        -0.1

    References:
        Shiv Ram Dubey, Soumendu Chakraborty, Swalpa Kumar Roy, Snehasis Mukherjee, Satish Kumar Singh, Bidyut Baran
        Chaudhuri, "diffGrad: An Optimization Method for Convolutional Neural Networks", arXiv:1909.11015, 2019.
        Code: shivram1987/diffGrad (``diffGrad_v2.py``), followed here.

    Notes:
        The authors' first version (``diffGrad.py``, used in the paper) stored ``previous_grad = grad`` by reference,
        which makes the friction constant at sigmoid(0) = 0.5 when the caller zeroes gradients in place; v2 copies
        it. The authors add ``λ p`` into ``p.grad`` in place; here ``p.grad`` is left untouched (same update).
        pytorch-optimizer's ``DiffGrad`` matches v2 only with ``weight_decouple=False`` when ``weight_decay > 0``
        (its default is decoupled decay).
    """

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, *, fused: bool | None = None) -> None:
        self.fused = check_fused(type(self).__name__, fused)
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
        self._scratch = Scratch()
        self._scratch_grad = Scratch()
        super().__init__(params, defaults)

    def _check_group(self, group: dict[str, Any]) -> None:
        check_adam_group(type(self).__name__, group)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """One diffGrad step; returns the closure's loss or None."""
        loss = closure_loss(closure)
        for group in self.param_groups:
            params = params_with_grad(group)
            fast, rest = self._split_fused(params)
            for p in params:
                self._count_step(p, "exp_avg", "exp_avg_sq", "previous_grad")
            for p in fast:
                self._step_fused(group, p)
            for p in rest:
                self._step_reference(group, p)
        return loss

    def _step_reference(self, group: dict[str, Any], p: torch.Tensor) -> None:
        beta1, beta2 = group["betas"]
        state = self.state[p]
        grad = p.grad
        assert grad is not None
        if group["weight_decay"] != 0:
            grad = grad.add(p, alpha=group["weight_decay"])
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        denom = exp_avg_sq.sqrt().add_(group["eps"])
        bias_correction1 = 1 - beta1 ** state["step"]
        bias_correction2 = 1 - beta2 ** state["step"]
        friction = torch.sigmoid((state["previous_grad"] - grad).abs())
        state["previous_grad"].copy_(grad)
        step_size = group["lr"] * math.sqrt(bias_correction2) / bias_correction1
        p.addcdiv_(exp_avg * friction, denom, value=-step_size)

    def _step_fused(self, group: dict[str, Any], p: torch.Tensor) -> None:
        """Fused Adam pass into a scratch buffer (moments + direction), then the friction, all in place."""
        beta1, beta2 = group["betas"]
        state = self.state[p]
        grad = p.grad
        assert grad is not None
        if group["weight_decay"] != 0:
            grad = torch.add(grad, p, alpha=group["weight_decay"], out=self._scratch_grad.like(p))
        k = state["step"]
        update = self._scratch.like(p)  # = -lr*sqrt(bc2)/bc1 * m/(sqrt(v)+eps) with eps/sqrt(bc2) in the kernel
        adam_direction_fused(update, grad, state["exp_avg"], state["exp_avg_sq"], k, lr=group["lr"], beta1=beta1,
                             beta2=beta2, eps=group["eps"] / math.sqrt(1 - beta2**k))
        friction = state["previous_grad"].sub_(grad).abs_().sigmoid_()
        p.addcmul_(friction, update)
        state["previous_grad"].copy_(grad)
