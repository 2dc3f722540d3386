"""Auxiliary losses of mixture-of-experts routers: load balancing (Switch, DeepSeek-V3) and the router z-loss."""

from __future__ import annotations

import math
from typing import Any

import torch

from losslab._errors import ConfigError, DataError

__all__ = ["load_balancing_loss", "router_z_loss"]


def _check_coefficient(coefficient: float, usual: str) -> float:
    if isinstance(coefficient, bool) or not isinstance(coefficient, (int, float)) or not math.isfinite(coefficient) \
            or coefficient < 0:
        raise ConfigError(f"coefficient must be a finite number >= 0, got {coefficient!r}; {usual}")
    return float(coefficient)


def _check_mask(token_mask: torch.Tensor | None, shape: torch.Size, what: str) -> None:
    if token_mask is not None and tuple(token_mask.shape) != tuple(shape):
        raise DataError(f"token_mask shape {tuple(token_mask.shape)} must equal {what} shape without its last "
                        f"(expert) dimension {tuple(shape)}; pass True for the tokens that count (an attention mask)")


def _expert_counts(indices: torch.Tensor, n_experts: int, keep: torch.Tensor | None,
                   per_sequence: bool) -> torch.Tensor:
    """Routing slots per expert, ``(E,)`` or per sequence ``(..., E)``: one ``bincount`` over ``T * k`` keys.

    Each sequence gets its own block of ``E`` keys; masked tokens go to one extra key that is dropped. No
    ``(T, E)`` routing map is built, and no weights are passed, so the count is deterministic on CUDA too.
    """
    keys = indices.long()
    lead = indices.shape[:-2] if per_sequence else torch.Size()
    n_groups = math.prod(lead)
    if per_sequence:
        group = torch.arange(n_groups, device=keys.device).reshape(*lead, 1, 1)
        keys = keys + group * n_experts
    if keep is not None:
        keys = torch.where(keep.unsqueeze(-1), keys, n_groups * n_experts)
    counts = torch.bincount(keys.reshape(-1), minlength=n_groups * n_experts + 1)[:n_groups * n_experts]
    return counts.reshape(*lead, n_experts)


def load_balancing_loss(router_probs: torch.Tensor, expert_indices: torch.Tensor, *, coefficient: float = 1e-2,
                        token_mask: torch.Tensor | None = None, per_sequence: bool = False,
                        group: Any = None) -> torch.Tensor:
    r"""Load-balancing loss of a top-k MoE router, :math:`\alpha\,E \sum_i f_i P_i` (Switch Transformer).

    .. math:: f_i = \frac{1}{kT} \sum_t \mathbb{1}[i \in \mathcal{K}_t], \qquad
              P_i = \frac{1}{T} \sum_t p_{t,i}

    over the ``T`` tokens, with ``E`` experts, ``k`` experts per token, :math:`\mathcal{K}_t` the experts chosen for
    token ``t`` and :math:`p_{t,i}` its router probabilities. It is ``alpha`` for a uniform router and grows to
    ``alpha * E / k`` when every token goes to the same ``k`` experts. The gradient flows through ``P`` only
    (the choice :math:`\mathcal{K}` is discrete).

    Args:
        router_probs: ``(..., E)`` router probabilities of each token: the softmax of the router logits (Switch,
            GShard, Mixtral), or for sigmoid routers the normalised affinities :math:`s_{t,i} / \sum_j s_{t,j}`
            (DeepSeek-V3). Computed in at least float32.
        expert_indices: ``(..., k)`` integer indices of the experts each token was sent to (for example
            ``router_probs.topk(k).indices``; a router that selects with a bias passes its own choice).
        coefficient: ``alpha`` >= 0; Switch Transformer uses 1e-2, DeepSeek-V3's sequence-wise loss 1e-4.
        token_mask: optional ``(...)`` boolean mask, True for the tokens that count (padding is False).
        per_sequence: compute ``f`` and ``P`` per sequence (the second-to-last dimension of ``router_probs``
            holds the tokens of a sequence) and average the loss over sequences: DeepSeek-V3's complementary
            sequence-wise balance loss. False: one loss over all tokens.
        group: a ``torch.distributed`` process group (or ``torch.distributed.group.WORLD``) over which the
            expert counts and token count are summed before ``f`` is formed: balance over the global batch
            (Qiu et al.); ``P`` stays local, so the mean of the ranks' losses (what DDP's gradient averaging
            optimises, with equal tokens per rank) is the global-batch loss. Not with ``per_sequence``.

    Returns:
        A scalar tensor (0 when no token counts).

    Raises:
        DataError: mismatched shapes, non-integer or out-of-range indices, ``k > E``.
        ConfigError: a negative or non-finite coefficient, ``group`` with ``per_sequence`` or without an
            initialised process group.

    Example:
        >>> probs = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
        >>> round(float(load_balancing_loss(probs, probs.topk(1).indices, coefficient=1.0)), 6)  # 2 * (3/4 * 0.65 + 1/4 * 0.35)
        1.15

    References:
        Fedus, Zoph, Shazeer, "Switch Transformers: Scaling to Trillion Parameter Models with Simple and Efficient
        Sparsity", arXiv:2101.03961, 2021 (eq. 4-6); Lepikhin et al., "GShard", arXiv:2006.16668, 2020 (top-2);
        DeepSeek-AI, "DeepSeek-V3 Technical Report", arXiv:2412.19437, 2024 (eq. 17-20, sequence-wise);
        Qiu et al., "Demons in the Detail: On Implementing Load Balancing Loss for Training Specialized
        Mixture-of-Expert Models", arXiv:2501.11873, 2025 (global-batch counts).

    Notes:
        ``f`` is normalised by ``k T`` (it sums to 1), as in Megatron-LM and DeepSeek-V3; the Hugging Face Mixtral
        loss divides by ``T`` only and is ``k`` times this value. Index ranges are checked for CPU tensors only
        (a check on an accelerator would synchronise every call).
    """
    alpha = _check_coefficient(coefficient, "Switch Transformer uses 1e-2, DeepSeek-V3 1e-4")
    if not isinstance(router_probs, torch.Tensor) or not router_probs.is_floating_point() or router_probs.ndim < 1:
        raise DataError("router_probs must be a floating-point tensor of shape (..., n_experts)")
    n_experts = router_probs.shape[-1]
    if not isinstance(expert_indices, torch.Tensor) or expert_indices.is_floating_point() \
            or expert_indices.is_complex() or expert_indices.dtype == torch.bool:
        raise DataError("expert_indices must be an integer tensor of shape (..., k) (e.g. probs.topk(k).indices)")
    if expert_indices.shape[:-1] != router_probs.shape[:-1] or expert_indices.ndim != router_probs.ndim:
        raise DataError(f"expert_indices shape {tuple(expert_indices.shape)} must be router_probs shape "
                        f"{tuple(router_probs.shape)} with k in place of the last (expert) dimension")
    if expert_indices.device != router_probs.device:
        raise DataError(f"expert_indices is on {expert_indices.device} but router_probs on {router_probs.device}; "
                        "move both to one device")
    k = expert_indices.shape[-1]
    if n_experts == 0 or k == 0 or k > n_experts:
        raise DataError(f"need 1 <= k <= n_experts, got k={k} experts per token and n_experts={n_experts}")
    if expert_indices.device.type == "cpu" and expert_indices.numel() and \
            (int(expert_indices.min()) < 0 or int(expert_indices.max()) >= n_experts):
        raise DataError(f"expert_indices must lie in [0, {n_experts}), got values from {int(expert_indices.min())} to "
                        f"{int(expert_indices.max())}")
    _check_mask(token_mask, router_probs.shape[:-1], "router_probs")
    if per_sequence and router_probs.ndim < 3:
        raise DataError(f"per_sequence needs router_probs of shape (..., seq, n_experts), got "
                        f"{tuple(router_probs.shape)}")
    if group is not None:
        if per_sequence:
            raise ConfigError("group sums counts over ranks for one batch-level loss; it cannot be combined with "
                              "per_sequence (each sequence is balanced on its own)")
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            raise ConfigError("group was given but torch.distributed is not initialised; call init_process_group "
                              "first or pass group=None")

    probs = router_probs.to(torch.promote_types(router_probs.dtype, torch.float32))
    keep = None if token_mask is None else token_mask.to(device=probs.device, dtype=torch.bool)
    if keep is not None:  # where, not a product: padding may hold NaN, which must reach neither loss nor gradient
        probs = torch.where(keep.unsqueeze(-1), probs, 0.0)
    token_dims = (-2,) if per_sequence else tuple(range(probs.ndim - 1))
    prob_sums = probs.sum(dim=token_dims)
    counts = _expert_counts(expert_indices, n_experts, keep, per_sequence).to(probs.dtype)
    n_tokens = counts.sum(dim=-1) / k  # tokens that count (per sequence with per_sequence)
    n_tokens_f = n_tokens
    if group is not None:
        counts = counts.detach().clone()
        n_tokens_f = n_tokens.detach().clone()
        torch.distributed.all_reduce(counts, group=group)
        torch.distributed.all_reduce(n_tokens_f, group=group)
    safe = n_tokens.clamp(min=1.0)
    f = counts / (k * n_tokens_f.clamp(min=1.0)).unsqueeze(-1)
    p = prob_sums / safe.unsqueeze(-1)
    loss = alpha * n_experts * (f * p).sum(dim=-1)
    if per_sequence:
        present = n_tokens > 0
        return (loss * present).sum() / present.sum().clamp(min=1)
    return loss


def router_z_loss(router_logits: torch.Tensor, *, coefficient: float = 1e-3,
                  token_mask: torch.Tensor | None = None) -> torch.Tensor:
    r"""Router z-loss :math:`\alpha \cdot \frac{1}{T} \sum_t \big(\log \sum_i e^{x_{t,i}}\big)^2` (ST-MoE).

    Keeps the router logits small: large logits make the router's exponentials lose precision in bfloat16 and
    were a source of divergence in ST-MoE. Computed in at least float32; the mean is over the tokens that count.

    Args:
        router_logits: ``(..., E)`` router logits (before the softmax).
        coefficient: ``alpha`` >= 0; ST-MoE uses 1e-3 (Megatron-LM's recommended starting value too).
        token_mask: optional ``(...)`` boolean mask, True for the tokens that count.

    Returns:
        A scalar tensor (0 when no token counts).

    Example:
        >>> round(float(router_z_loss(torch.zeros(3, 4), coefficient=1.0)), 6)  # log(4)^2
        1.921812

    References:
        Zoph et al., "ST-MoE: Designing Stable and Transferable Sparse Expert Models", arXiv:2202.08906, 2022
        (eq. 5).
    """
    alpha = _check_coefficient(coefficient, "ST-MoE uses 1e-3")
    if not isinstance(router_logits, torch.Tensor) or not router_logits.is_floating_point() \
            or router_logits.ndim < 1 or router_logits.shape[-1] == 0:
        raise DataError("router_logits must be a floating-point tensor of shape (..., n_experts) with n_experts >= 1")
    _check_mask(token_mask, router_logits.shape[:-1], "router_logits")
    logits = router_logits.to(torch.promote_types(router_logits.dtype, torch.float32))
    if token_mask is None:
        z2 = torch.logsumexp(logits, dim=-1).square()
        return alpha * z2.mean() if z2.numel() else z2.sum()
    keep = token_mask.to(device=logits.device, dtype=torch.bool)
    # padding logits may hold NaN/Inf: they are replaced before the logsumexp so its gradient stays finite
    z2 = torch.logsumexp(torch.where(keep.unsqueeze(-1), logits, 0.0), dim=-1).square()
    return alpha * torch.where(keep, z2, 0.0).sum() / keep.sum().clamp(min=1).to(z2.dtype)
