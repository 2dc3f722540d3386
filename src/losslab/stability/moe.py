"""Auxiliary-loss-free load balancing for mixture-of-experts routers (DeepSeek)."""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from torch import nn

from losslab._buffers import keep_buffer_dtypes
from losslab._errors import ConfigError, DataError

__all__ = ["AuxLossFreeRouter", "aux_free_bias_update", "max_violation"]


def aux_free_bias_update(bias: torch.Tensor, load: torch.Tensor, update_rate: float = 1e-3) -> torch.Tensor:
    r"""One bias update of auxiliary-loss-free balancing: :math:`b_i \leftarrow b_i + u\,\mathrm{sign}(\bar c - c_i)`.

    :math:`c_i` is the number of tokens routed to expert :math:`i` in the last batch and :math:`\bar c` their
    mean: under-loaded experts get a higher selection bias, over-loaded ones a lower one.

    Args:
        bias: ``(n_experts,)`` current biases.
        load: ``(n_experts,)`` token counts of the last batch (all ranks summed in data-parallel training).
        update_rate: ``u`` > 0 (DeepSeek-V3: 0.001).

    Returns:
        The new bias (a new tensor; no gradient).

    Example:
        >>> aux_free_bias_update(torch.zeros(3), torch.tensor([5.0, 1.0, 3.0]), 0.1)
        tensor([-0.1000,  0.1000,  0.0000])

    References:
        Wang et al., "Auxiliary-Loss-Free Load Balancing Strategy for Mixture-of-Experts", arXiv:2408.15664,
        2024; DeepSeek-AI, "DeepSeek-V3 Technical Report", arXiv:2412.19437, 2024.
    """
    if not isinstance(update_rate, (int, float)) or not math.isfinite(update_rate) or update_rate <= 0:
        raise ConfigError(f"update_rate must be a finite number > 0, got {update_rate!r}; DeepSeek-V3 uses 1e-3")
    if bias.shape != load.shape or bias.ndim != 1:
        raise DataError(f"bias and load must both have shape (n_experts,), got {tuple(bias.shape)} and "
                        f"{tuple(load.shape)}")
    if load.is_floating_point() and not bool(torch.isfinite(load).all()):
        raise DataError(f"load has NaN/Inf entries ({load.tolist()}); token counts must be finite; check the all-reduce "
                        "or whatever produced them (the bias is left unchanged)")
    load = load.to(torch.float64)
    return (bias + update_rate * torch.sign(load.mean() - load).to(bias.dtype)).detach()


def max_violation(load: torch.Tensor) -> float:
    r"""Load imbalance :math:`\mathrm{MaxVio} = (\max_i c_i - \bar c) / \bar c` (0 = perfectly balanced).

    Example:
        >>> max_violation(torch.tensor([2.0, 2.0, 8.0]))
        1.0

    References:
        Wang et al., "Auxiliary-Loss-Free Load Balancing Strategy for Mixture-of-Experts", arXiv:2408.15664, 2024.
    """
    load = load.to(torch.float64)
    if not bool(torch.isfinite(load).all()):
        raise DataError(f"load has NaN/Inf entries ({load.tolist()}); token counts must be finite")
    mean = float(load.mean())
    if not mean > 0:
        raise DataError("load is empty or all zero; route some tokens before measuring the imbalance")
    return (float(load.max()) - mean) / mean


class AuxLossFreeRouter(nn.Module):
    r"""Top-k MoE router with a per-expert selection bias updated without an auxiliary loss (DeepSeek).

    .. math:: s_{i,t} = \sigma(u_t^\top e_i), \quad
              \mathcal{K}_t = \mathrm{TopK}_i(s_{i,t} + b_i), \quad
              g_{i,t} = \frac{s_{i,t}}{\sum_{j \in \mathcal{K}_t} s_{j,t}} \ (i \in \mathcal{K}_t)

    The bias :math:`b` is a buffer (no gradient) used **only** to choose the experts; the gating weights use
    the raw scores. In training mode each forward adds the routed token counts to :attr:`load` (int64);
    :meth:`update_bias` applies :func:`aux_free_bias_update` and clears it (call it after each optimizer step).

    Args:
        dim: token feature size.
        n_experts: number of routed experts.
        top_k: experts per token.
        update_rate: bias update speed ``u`` (DeepSeek-V3: 1e-3).
        score_fn: ``"sigmoid"`` (DeepSeek-V3) or ``"softmax"``.
        normalize: renormalise the selected gating weights to sum to 1 (DeepSeek-V3 does for sigmoid scores).

    Returns:
        ``forward(x)`` with ``x`` of shape ``(..., dim)`` returns ``(weights, indices)``, both ``(..., top_k)``.

    Example:
        >>> router = AuxLossFreeRouter(dim=4, n_experts=8, top_k=2)
        >>> w, idx = router(torch.randn(16, 4))
        >>> w.shape, idx.shape, int(router.load.sum())
        (torch.Size([16, 2]), torch.Size([16, 2]), 32)

    References:
        Wang et al., "Auxiliary-Loss-Free Load Balancing Strategy for Mixture-of-Experts", arXiv:2408.15664,
        2024; DeepSeek-AI, "DeepSeek-V3 Technical Report", arXiv:2412.19437, 2024.

    Notes:
        DeepSeek-V3 also uses group-limited routing and a small sequence-wise balance loss (1e-4); neither is
        included. :attr:`expert_bias` stays float32 and :attr:`load` int64 whatever dtype the module is cast
        to (``.half()``, ``.to(torch.bfloat16)``); the bias is cast to the scores' dtype only to choose the
        experts. In data-parallel training all-reduce :attr:`load` (sum) before :meth:`update_bias` so all
        ranks keep the same bias.
    """

    expert_bias: torch.Tensor
    load: torch.Tensor

    def __init__(self, dim: int, n_experts: int, top_k: int = 2, *, update_rate: float = 1e-3,
                 score_fn: Literal["sigmoid", "softmax"] = "sigmoid", normalize: bool = True) -> None:
        super().__init__()
        for name, value in (("dim", dim), ("n_experts", n_experts), ("top_k", top_k)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if top_k > n_experts:
            raise ConfigError(f"top_k ({top_k}) cannot exceed n_experts ({n_experts})")
        if score_fn not in ("sigmoid", "softmax"):
            raise ConfigError(f"score_fn must be 'sigmoid' or 'softmax', got {score_fn!r}")
        aux_free_bias_update(torch.zeros(1), torch.zeros(1), update_rate)  # validates update_rate
        self.gate = nn.Linear(dim, n_experts, bias=False)
        self.register_buffer("expert_bias", torch.zeros(n_experts, dtype=torch.float32))
        self.register_buffer("load", torch.zeros(n_experts, dtype=torch.int64))
        self.top_k, self.update_rate, self.score_fn, self.normalize = top_k, float(update_rate), score_fn, normalize

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.gate(x)
        scores = logits.sigmoid() if self.score_fn == "sigmoid" else logits.softmax(dim=-1)
        indices = torch.topk(scores.detach() + self.expert_bias.to(scores.dtype), self.top_k, dim=-1).indices
        weights = scores.gather(-1, indices)
        if self.normalize:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        if self.training:
            self.load += torch.bincount(indices.reshape(-1), minlength=self.load.numel()).to(self.load.dtype)
        return weights, indices

    def _apply(self, fn: Any, recurse: bool = True) -> AuxLossFreeRouter:
        # .to(dtype)/.half()/.bfloat16() cast the gate only: the bias stays float32 (a +-u step of 1e-3 is lost or
        # rounded one-sided in 16-bit) and the load int64 (counts overflow float16 at 65504); device moves apply.
        keep_buffer_dtypes(self, ("expert_bias", "load"), lambda: super(AuxLossFreeRouter, self)._apply(fn, recurse))
        return self

    @torch.no_grad()
    def update_bias(self) -> torch.Tensor:
        """Apply the sign update with the accumulated :attr:`load`, clear it, and return the load used."""
        used = self.load.clone()
        if used.is_floating_point() and not bool(torch.isfinite(used).all()):
            raise DataError(f"load has NaN/Inf entries ({used.tolist()}); it must hold token counts (was it "
                            "overwritten, or all-reduced from a rank that diverged?); the bias was not updated")
        if used.sum() > 0:
            self.expert_bias.copy_(aux_free_bias_update(self.expert_bias, used, self.update_rate))
        self.load.zero_()
        return used
