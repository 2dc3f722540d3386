"""Opt-in forward hooks that measure the maximum attention logit of attention modules.

The attention logit of query :math:`i` and key :math:`j` is :math:`q_i \\cdot k_j / \\sqrt{d}` (before the
softmax). Its maximum over heads and unmasked positions grows without bound in the "attention logit growth"
instability (Dehghani et al. 2023; Wortsman et al. 2023) and is what Megatron-LM's ``log_max_attention_logit``
and MuonClip's QK-clip watch. Recomputing :math:`QK^\\top` costs as much as the attention itself, so the hooks
only compute on the monitor's sampled steps (``every_n_steps``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["AttentionLogitsFn", "mha_attention_logits"]

AttentionLogitsFn = Callable[[nn.Module, tuple[Any, ...], dict[str, Any], Any], "Tensor | None"]
"""``fn(module, args, kwargs, output) -> logits`` with masked positions set to ``-inf`` (or ``None`` to skip)."""


def _mask_logits(logits: Tensor, attn_mask: Tensor | None, key_padding_mask: Tensor | None, is_causal: bool,
                 batch: int, heads: int) -> Tensor:
    # logits: (B, H, L, S)
    L, S = logits.shape[-2:]
    if attn_mask is not None:
        m = attn_mask
        if m.dim() == 3:  # (B*H, L, S)
            m = m.reshape(batch, heads, L, S)
        if m.dtype == torch.bool:
            logits = logits.masked_fill(m, -math.inf)  # MultiheadAttention: True = not allowed
        else:
            logits = logits + m.to(logits.dtype)
    elif is_causal:
        causal = torch.ones(L, S, dtype=torch.bool, device=logits.device).triu(1)
        logits = logits.masked_fill(causal, -math.inf)
    if key_padding_mask is not None:
        kpm = key_padding_mask.reshape(batch, 1, 1, S)
        if kpm.dtype == torch.bool:
            logits = logits.masked_fill(kpm, -math.inf)
        else:
            logits = logits + kpm.to(logits.dtype)
    return logits


def mha_attention_logits(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> Tensor:
    r"""Pre-softmax attention logits of a :class:`torch.nn.MultiheadAttention` call, rebuilt from its inputs.

    .. math:: \ell_{bhij} = \frac{(x^q_{bi} W^q_h + b^q_h)\cdot(x^k_{bj} W^k_h + b^k_h)}{\sqrt{d_h}}

    with the call's ``attn_mask`` (boolean ``True`` = masked, or additive float), ``key_padding_mask`` and
    ``is_causal`` applied as ``-inf``. ``bias_k``/``add_zero_attn`` extra keys are not included.

    Args:
        module: the ``nn.MultiheadAttention``.
        args, kwargs: the positional and keyword arguments of its forward call (``query, key, value, ...``).
        output: its output (unused).

    Returns:
        Tensor of shape ``(batch, heads, L, S)``.

    Example:
        >>> mha = torch.nn.MultiheadAttention(8, 2, batch_first=True)
        >>> x = torch.randn(1, 3, 8)
        >>> mha_attention_logits(mha, (x, x, x), {}, None).shape
        torch.Size([1, 2, 3, 3])

    References:
        Dehghani et al., "Scaling Vision Transformers to 22 Billion Parameters", arXiv:2302.05442, 2023
        (attention logit growth); Wortsman et al., arXiv:2309.14322, 2023.
    """
    assert isinstance(module, nn.MultiheadAttention)
    names = ("query", "key", "value", "key_padding_mask", "need_weights", "attn_mask", "average_attn_weights",
             "is_causal")
    call = dict(zip(names, args))
    call.update(kwargs)
    query, key = call["query"].detach(), call["key"].detach()
    if not module.batch_first and query.dim() == 3:
        query, key = query.transpose(0, 1), key.transpose(0, 1)
    if query.dim() == 2:
        query, key = query.unsqueeze(0), key.unsqueeze(0)
    e, h = module.embed_dim, module.num_heads
    d = e // h
    if module._qkv_same_embed_dim:
        assert module.in_proj_weight is not None
        w_q, w_k = module.in_proj_weight[:e], module.in_proj_weight[e:2 * e]
    else:
        assert module.q_proj_weight is not None and module.k_proj_weight is not None
        w_q, w_k = module.q_proj_weight, module.k_proj_weight
    b_q = b_k = None
    if module.in_proj_bias is not None:
        b_q, b_k = module.in_proj_bias[:e], module.in_proj_bias[e:2 * e]
    with torch.no_grad():
        q = F.linear(query, w_q, b_q)
        k = F.linear(key, w_k, b_k)
        batch, L, S = q.shape[0], q.shape[1], k.shape[1]
        q = q.reshape(batch, L, h, d).transpose(1, 2)
        k = k.reshape(batch, S, h, d).transpose(1, 2)
        logits = (q @ k.transpose(-2, -1)) / math.sqrt(d)
        return _mask_logits(logits, call.get("attn_mask"), call.get("key_padding_mask"),
                            bool(call.get("is_causal") or False), batch, h)


class AttentionHooks:
    """Forward hooks on attention modules that keep, on device, the running max logit of each module."""

    def __init__(self) -> None:
        self.active = False
        self.maxima: dict[str, Tensor] = {}
        self.names: list[str] = []
        self._handles: list[Any] = []
        self.errors: list[str] = []

    def add(self, name: str, module: nn.Module, logits_fn: AttentionLogitsFn) -> None:
        if name not in self.names:
            self.names.append(name)

        def hook(mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
            if not self.active or not mod.training:  # sampled training forwards only (not evaluation)
                return
            try:
                logits = logits_fn(mod, args, kwargs, output)
                if logits is None:
                    return
                m = logits.detach().float().amax()
                prev = self.maxima.get(name)
                self.maxima[name] = m if prev is None else torch.maximum(prev, m)
            except Exception as exc:  # a monitor never breaks the forward pass
                self.errors.append(f"attention hook on {name!r}: {type(exc).__name__}: {exc}")

        self._handles.append(module.register_forward_hook(hook, with_kwargs=True))

    def pop(self) -> dict[str, Tensor]:
        out, self.maxima = self.maxima, {}
        return out

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
