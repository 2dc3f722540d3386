"""SGD-SaI: SGD with momentum and per-tensor learning rates fixed at initialisation by the gradient SNR."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from losslab.optim._atoms import check_number, params_with_grad
from losslab.optim._base import Optimizer, closure_loss

__all__ = ["SGDSaI"]


def gsnr(grad: torch.Tensor, eps: float) -> torch.Tensor:
    """``||g||_2 / (std(g) + eps)`` with the unbiased std and NaN (one element) mapped to 0, as the authors' code."""
    sigma = grad.std().nan_to_num() if grad.numel() > 1 else torch.zeros((), dtype=grad.dtype, device=grad.device)
    return torch.linalg.vector_norm(grad) / (sigma + eps)


class SGDSaI(Optimizer):
    r"""SGD-SaI: momentum SGD whose per-tensor step size is scaled once, at the first step, by the gradient SNR.

    .. math::

        s = \frac{\|g_1\|_2}{\operatorname{std}(g_1) + ε}\ (\text{frozen}),\qquad
        m_1 = g_1,\ \ m_t = μ m_{t-1} + (1-μ) g_t,\qquad p \leftarrow p\,(1 - ηλ) - η\,s\,m_t

    computed per parameter tensor from its first gradient (``std`` unbiased).

    Args:
        params: parameters or param groups. lr: ``η``. momentum: ``μ`` in [0, 1) (0: ``m_t = g_t``).
        eps: ``ε``. weight_decay: ``λ``, decoupled and not scaled by ``s``.

    Returns:
        ``step()`` returns the closure's loss (or None).

    Example:
        >>> import torch
        >>> w = torch.nn.Parameter(torch.zeros(2))
        >>> opt = SGDSaI([w], lr=0.1, weight_decay=0.0)
        >>> w.grad = torch.tensor([1.0, 3.0]); opt.step()   # s = sqrt(10)/sqrt(2) = sqrt(5)
        >>> [round(x, 4) for x in w.tolist()]
        [-0.2236, -0.6708]

    References:
        Minghao Xu, Lichuan Xiang, Xu Cai, Hongkai Wen, "No More Adam: Learning Rate Scaling at Initialization is
        All You Need", arXiv:2412.11768, 2024. Code: AnonymousAlethiometer/SGD_SaI (``sgd_sai/sgd_sai.py``),
        v1.0.3 at commit e213080 (2024-12-17), ``s = ||g|| / (std(g) + eps)``, followed here; later versions divide
        the SNR by the largest one across tensors (v1.0.4) or use ``sqrt(numel)`` (v1.1.0).

    Notes:
        As in the authors' code: a one-element tensor (std NaN → 0) or a constant gradient gets ``s = ||g||/ε``
        (huge), and a zero first gradient freezes the tensor (``s = 0``). pytorch-optimizer 4.1's ``SGDSaI``
        uses ``||g||`` for vectors, for tensors with ``size(0) == 1`` and when the std is 0, and starts the
        momentum buffer at zero instead of ``g_1``. Differences: the SNR of a tensor is taken at its first step *with* a gradient
        (their code fails later on a tensor without one); ``momentum=0`` uses ``m_t = g_t`` (their code leaves the
        buffer undefined); ``step(closure)`` evaluates the closure once (theirs twice at the first step).
    """

    def __init__(self, params: Iterable[Any], lr: float = 1e-2, momentum: float = 0.9, eps: float = 1e-8,
                 weight_decay: float = 1e-2) -> None:
        defaults = dict(lr=lr, momentum=momentum, eps=eps, weight_decay=weight_decay)
        super().__init__(params, defaults)

    def _check_group(self, group: dict[str, Any]) -> None:
        owner = type(self).__name__
        check_number(owner, "lr", group["lr"], low=0.0)
        check_number(owner, "momentum", group["momentum"], low=0.0, high=1.0, high_open=True)
        check_number(owner, "eps", group["eps"], low=0.0, low_open=True,
                     hint="eps keeps ||g|| / (std(g) + eps) finite for one-element or constant gradients; use e.g. 1e-8")
        check_number(owner, "weight_decay", group["weight_decay"], low=0.0)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """One SGD-SaI step; returns the closure's loss or None."""
        loss = closure_loss(closure)
        for group in self.param_groups:
            momentum, lr, wd = group["momentum"], group["lr"], group["weight_decay"]
            for p in params_with_grad(group):
                grad = p.grad
                assert grad is not None
                state = self.state[p]
                if "gsnr" not in state:
                    state["gsnr"] = gsnr(grad, group["eps"])
                if momentum != 0:
                    if "momentum_buffer" not in state:
                        buf = state["momentum_buffer"] = grad.clone()
                    else:
                        buf = state["momentum_buffer"].mul_(momentum).add_(grad, alpha=1 - momentum)
                else:
                    buf = grad
                if wd != 0:
                    p.mul_(1 - wd * lr)
                p.addcmul_(buf, state["gsnr"].to(p.dtype) * -lr)
        return loss
