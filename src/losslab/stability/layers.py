"""Stabilising building blocks for transformers: gradient shrink, QK-norm, depth-scaled norms, soft-cap, z-loss."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from losslab._errors import ConfigError, DataError

__all__ = [
    "LayerNormScaling",
    "QKNorm",
    "ShrinkEmbeddingGradient",
    "SoftCap",
    "apply_layernorm_scaling",
    "shrink_embedding_gradient",
    "softcap",
    "z_loss",
]


def _check_unit_interval(name: str, value: float) -> float:
    if not isinstance(value, (int, float)) or not (0.0 < float(value) <= 1.0):
        raise ConfigError(f"{name} must be in (0, 1], got {value!r}; GLM-130B uses {name}=0.1")
    return float(value)


def shrink_embedding_gradient(x: torch.Tensor, alpha: float = 0.1) -> torch.Tensor:
    r"""Scale the gradient flowing into ``x`` by ``alpha`` while leaving its value unchanged (GLM-130B).

    .. math:: y = \alpha x + (1 - \alpha)\,\mathrm{sg}(x), \qquad y = x, \quad \partial y / \partial x = \alpha

    where :math:`\mathrm{sg}` is stop-gradient (``detach``). Apply it to the output of the word embedding.

    Args:
        x: the embedding output.
        alpha: gradient scale in (0, 1]; GLM-130B's final recommendation is 0.1 (1 is a no-op).

    Returns:
        A tensor equal to ``x`` whose gradient to ``x`` is multiplied by ``alpha``.

    Example:
        >>> x = torch.ones(2, requires_grad=True)
        >>> shrink_embedding_gradient(x, 0.1).sum().backward(); x.grad
        tensor([0.1000, 0.1000])

    References:
        Zeng et al., "GLM-130B: An Open Bilingual Pre-trained Model", arXiv:2210.02414, 2022 (§3.1,
        "Embedding Layer Gradient Shrink").

    Notes:
        GLM-130B's training log shows ``alpha`` was changed during the run after spikes; 0.1 is the value the
        paper recommends. The forward value may differ from ``x`` in the last bit (a float rounding of the sum).
    """
    alpha = _check_unit_interval("alpha", alpha)
    return x * alpha + x.detach() * (1.0 - alpha)


class ShrinkEmbeddingGradient(nn.Module):
    """Wrap an embedding module so its output gradient is scaled by ``alpha`` (GLM-130B; see
    :func:`shrink_embedding_gradient`).

    Example:
        >>> emb = ShrinkEmbeddingGradient(torch.nn.Embedding(10, 4), alpha=0.1)
        >>> emb(torch.tensor([1, 2])).shape
        torch.Size([2, 4])

    References:
        Zeng et al., "GLM-130B: An Open Bilingual Pre-trained Model", arXiv:2210.02414, 2022.
    """

    def __init__(self, embedding: nn.Module, alpha: float = 0.1) -> None:
        super().__init__()
        self.alpha = _check_unit_interval("alpha", alpha)
        self.embedding = embedding

    def forward(self, *args: object, **kwargs: object) -> torch.Tensor:
        return shrink_embedding_gradient(self.embedding(*args, **kwargs), self.alpha)


class QKNorm(nn.Module):
    r"""Normalise queries and keys before the attention dot product ("QK-layernorm").

    .. math:: z_{ij} = \langle \mathrm{LN}(q_i), \mathrm{LN}(k_j) \rangle / \sqrt{d_h}

    With a LayerNorm/RMSNorm without affine weights each normalised vector has norm :math:`\approx \sqrt{d_h}`,
    so :math:`|z_{ij}| \le \sqrt{d_h}` however large the projections grow: attention-logit growth, the
    instability Dehghani et al. saw at 22B parameters, cannot happen.

    Args:
        head_dim: size of the last dimension of ``q`` and ``k`` (per head, or the full projection).
        norm: ``"layernorm"`` (Dehghani et al.; Wortsman et al.) or ``"rmsnorm"`` (OLMo 2, Qwen3).
        eps: the norm's epsilon.
        elementwise_affine: learnable gains (and LayerNorm biases), separate for q and k.

    Returns:
        ``forward(q, k)`` returns ``(norm_q(q), norm_k(k))``; use them in any attention implementation.

    Apply it to the projected queries and keys **before** rotary position embeddings (RoPE), then rotate the
    normalised q and k: OLMo 2 (its ``q_norm``/``k_norm`` over the whole projection) and Qwen3 (per head) do so.
    RoPE is a rotation, so it keeps the norms and the logit bound holds either way; but normalising after RoPE
    lets the per-feature gains (and LayerNorm's mean subtraction) act on rotated coordinates, so the logits
    would no longer depend on the relative position alone.

    Example:
        >>> qk = QKNorm(8)
        >>> q, k = qk(torch.randn(2, 4, 5, 8) * 1e3, torch.randn(2, 4, 5, 8))
        >>> bool((q @ k.transpose(-1, -2) / 8 ** 0.5).abs().max() <= 8 ** 0.5 + 1e-3)
        True

    References:
        Dehghani et al., "Scaling Vision Transformers to 22 Billion Parameters", arXiv:2302.05442, 2023;
        Wortsman et al., "Small-scale proxies for large-scale Transformer training instabilities",
        arXiv:2309.14322, 2023; Team OLMo, "2 OLMo 2 Furious", arXiv:2501.00656, 2024 (QK-norm, then RoPE);
        Qwen Team, "Qwen3 Technical Report", arXiv:2505.09388, 2025 (per-head QK-norm, then RoPE).

    Notes:
        OLMo-core normalises the whole projection (``n_heads * head_dim``) by default and per head optionally;
        pass ``head_dim`` accordingly. ``torch.nn.RMSNorm`` needs torch >= 2.4.
    """

    def __init__(self, head_dim: int, norm: Literal["layernorm", "rmsnorm"] = "layernorm", eps: float = 1e-5,
                 elementwise_affine: bool = True) -> None:
        super().__init__()
        if isinstance(head_dim, bool) or not isinstance(head_dim, int) or head_dim < 1:
            raise ConfigError(f"head_dim must be a positive integer, got {head_dim!r}")
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps <= 0:
            raise ConfigError(f"eps must be a finite number > 0 (it keeps the norm's division away from zero), got "
                              f"{eps!r}; the usual values are 1e-5 (LayerNorm) or 1e-6 (RMSNorm)")
        if norm == "layernorm":
            self.q_norm: nn.Module = nn.LayerNorm(head_dim, eps=eps, elementwise_affine=elementwise_affine)
            self.k_norm: nn.Module = nn.LayerNorm(head_dim, eps=eps, elementwise_affine=elementwise_affine)
        elif norm == "rmsnorm":
            self.q_norm = nn.RMSNorm(head_dim, eps=eps, elementwise_affine=elementwise_affine)
            self.k_norm = nn.RMSNorm(head_dim, eps=eps, elementwise_affine=elementwise_affine)
        else:
            raise ConfigError(f"norm must be 'layernorm' or 'rmsnorm', got {norm!r}")
        self.head_dim = head_dim

    def forward(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if q.shape[-1] != self.head_dim or k.shape[-1] != self.head_dim:
            raise DataError(f"QKNorm({self.head_dim}) got q/k with last dimension {q.shape[-1]}/{k.shape[-1]}; "
                            f"build it with head_dim equal to the size of q and k's last dimension")
        return self.q_norm(q), self.k_norm(k)


class LayerNormScaling(nn.Module):
    r"""Scale a normalisation layer's output by :math:`1/\sqrt{\ell}` (``ℓ`` = 1-based layer index).

    .. math:: h \leftarrow h + F(\mathrm{LN}(h) / \sqrt{\ell})

    Pre-LN transformers' output variance grows with depth so that deep layers become near-identities ("the
    curse of depth"); scaling the pre-norm outputs by :math:`1/\sqrt{\ell}` keeps it in check.

    Args:
        norm: the wrapped normalisation module (LayerNorm, RMSNorm, ...).
        layer_index: the 1-based index ℓ of the transformer block the norm belongs to.

    Example:
        >>> ln = LayerNormScaling(torch.nn.LayerNorm(4, elementwise_affine=False), layer_index=4)
        >>> ln(torch.tensor([[1.0, -1.0, 1.0, -1.0]]))
        tensor([[ 0.5000, -0.5000,  0.5000, -0.5000]])

    References:
        Sun et al., "The Curse of Depth in Large Language Models", arXiv:2502.05795, 2025.

    Notes:
        Follows the authors' code (``LlamaDecoderLayer``): the same factor for both the attention and the MLP
        pre-norm of a block, and the final norm unscaled. Their code computes ``1/sqrt(layer_idx + 1)`` from a
        0-based ``layer_idx``; ``layer_index`` here is already 1-based (:func:`apply_layernorm_scaling` counts
        for you). The authors advise against combining it with depth-scaled initialisation.
    """

    def __init__(self, norm: nn.Module, layer_index: int) -> None:
        super().__init__()
        if isinstance(layer_index, bool) or not isinstance(layer_index, int) or layer_index < 1:
            raise ConfigError(f"layer_index must be a 1-based positive integer, got {layer_index!r}")
        self.norm = norm
        self.layer_index = layer_index
        self.scale = 1.0 / math.sqrt(layer_index)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x) * self.scale


def apply_layernorm_scaling(blocks: Sequence[nn.Module], norm_names: Sequence[str]) -> int:
    """Wrap the named pre-norms of each block in :class:`LayerNormScaling` with ℓ = position + 1, in place.

    Args:
        blocks: the transformer blocks in depth order (e.g. ``model.layers``).
        norm_names: attribute names of the norms inside each block, e.g.
            ``("input_layernorm", "post_attention_layernorm")`` for Hugging Face LLaMA.

    Returns:
        The number of norms wrapped.

    Example:
        >>> blocks = torch.nn.ModuleList([torch.nn.Module() for _ in range(3)])
        >>> for b in blocks: b.ln = torch.nn.LayerNorm(4)
        >>> apply_layernorm_scaling(blocks, ["ln"]), blocks[2].ln.layer_index
        (3, 3)

    References:
        Sun et al., "The Curse of Depth in Large Language Models", arXiv:2502.05795, 2025.
    """
    if not norm_names:
        raise ConfigError("norm_names is empty; name the norm attributes of a block, e.g. ['input_layernorm']")
    for i, block in enumerate(blocks):
        for name in norm_names:
            if not isinstance(getattr(block, name, None), nn.Module):
                raise ConfigError(f"block {i} has no norm module {name!r}; its children are "
                                  f"{[n for n, _ in block.named_children()]}")
            if isinstance(getattr(block, name), LayerNormScaling):
                raise ConfigError(f"block {i}.{name} is already wrapped in LayerNormScaling")
    count = 0
    for i, block in enumerate(blocks):
        for name in norm_names:
            setattr(block, name, LayerNormScaling(getattr(block, name), i + 1))
            count += 1
    return count


def softcap(x: torch.Tensor, cap: float) -> torch.Tensor:
    r"""Soft-cap logits smoothly into :math:`(-c, c)`: :math:`c \tanh(x / c)` (Gemma 2).

    Args:
        x: logits (attention scores or output logits).
        cap: the cap ``c`` > 0; Gemma 2 uses 30 for final logits and 50 for attention logits.

    Returns:
        ``cap * tanh(x / cap)``, same shape and dtype.

    Example:
        >>> softcap(torch.tensor([0.0, 1e6]), 30.0)
        tensor([ 0., 30.])

    References:
        Gemma Team, "Gemma 2: Improving Open Language Models at a Practical Size", arXiv:2408.00118, 2024.

    Notes:
        modded-nanogpt moved from a tanh cap of 30, then 15, to a shifted sigmoid form; only the tanh form is
        implemented here.
    """
    if not isinstance(cap, (int, float)) or not math.isfinite(cap) or cap <= 0:
        raise ConfigError(f"cap must be a finite number > 0, got {cap!r}; Gemma 2 uses 30.0 for output logits")
    return torch.tanh(x / cap) * cap


class SoftCap(nn.Module):
    """Module form of :func:`softcap` (Gemma 2, arXiv:2408.00118, 2024).

    Example:
        >>> SoftCap(30.0)(torch.tensor([1e6])).item()
        30.0

    References:
        Gemma Team, "Gemma 2: Improving Open Language Models at a Practical Size", arXiv:2408.00118, 2024.
    """

    def __init__(self, cap: float = 30.0) -> None:
        super().__init__()
        softcap(torch.zeros(()), cap)  # validates
        self.cap = float(cap)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return softcap(x, self.cap)

    def extra_repr(self) -> str:
        return f"cap={self.cap:g}"


def z_loss(logits: torch.Tensor, targets: torch.Tensor | None = None, *, coefficient: float = 1e-4,
           ignore_index: int = -100, reduction: Literal["mean", "sum", "none"] = "mean") -> torch.Tensor:
    r"""Auxiliary z-loss :math:`\lambda\,\log^2 Z` that keeps the softmax normaliser near 1 (PaLM).

    .. math:: \mathcal{L}_z = \lambda \cdot \frac{1}{|M|} \sum_{i \in M} \big(\log \textstyle\sum_j e^{x_{ij}}\big)^2

    over the positions :math:`M` whose target is not ``ignore_index``. Computed in at least float32. Add it
    to the cross-entropy loss.

    Args:
        logits: ``(..., vocab)`` logits.
        targets: ``(...)`` integer targets, used only to mask ``ignore_index`` positions (``None``: no mask).
        coefficient: λ; PaLM and Wortsman et al. use 1e-4, Chameleon and OLMo 2 use 1e-5.
        ignore_index: target value of positions to leave out (as in ``F.cross_entropy``).
        reduction: ``"mean"`` over non-ignored positions (0 if there are none), ``"sum"``, or ``"none"``
            (per position, 0 at ignored ones).

    Returns:
        The scaled z-loss (a scalar unless ``reduction="none"``).

    Example:
        >>> round(float(z_loss(torch.zeros(1, 4), coefficient=1.0)), 6)  # log(4)^2
        1.921812

    References:
        Chowdhery et al., "PaLM: Scaling Language Modeling with Pathways", arXiv:2204.02311, 2022;
        Wortsman et al., "Small-scale proxies for large-scale Transformer training instabilities",
        arXiv:2309.14322, 2023.

    Notes:
        The mean is over non-ignored positions as in OLMo-core; OLMo (v1) divides by all positions.
    """
    if not isinstance(coefficient, (int, float)) or not math.isfinite(coefficient) or coefficient < 0:
        raise ConfigError(f"coefficient must be a finite number >= 0, got {coefficient!r}; PaLM uses 1e-4")
    if reduction not in ("mean", "sum", "none"):
        raise ConfigError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    if logits.ndim < 1 or logits.shape[-1] == 0:
        raise DataError(f"logits must have a non-empty last (vocabulary) dimension, got shape {tuple(logits.shape)}")
    if targets is not None and targets.shape != logits.shape[:-1]:
        raise DataError(f"targets shape {tuple(targets.shape)} must equal logits shape without its last "
                        f"dimension {tuple(logits.shape[:-1])}")
    dtype = torch.promote_types(logits.dtype, torch.float32)
    lse = torch.logsumexp(logits.to(dtype), dim=-1)
    z2 = lse.square()
    if targets is not None:
        mask = targets != ignore_index
        z2 = torch.where(mask, z2, torch.zeros((), dtype=dtype, device=z2.device))
        count = mask.sum()
    else:
        count = torch.tensor(z2.numel(), device=z2.device)
    if reduction == "none":
        return coefficient * z2
    total = z2.sum()
    if reduction == "sum":
        return coefficient * total
    return coefficient * total / count.clamp(min=1).to(dtype)
