"""Objectives for language models: memory-light linear cross-entropy and the number token loss."""

from __future__ import annotations

import torch
from torch import Tensor

from losslab._errors import DataError
from losslab.losses._catalogue import register
from losslab.losses._linear_ce import LCEConfig, LinearCrossEntropyFunction
from losslab.losses._reduce import reduce_loss
from losslab.losses._validate import (
    check_class_target,
    check_class_weight,
    check_float,
    check_ignore_index,
    check_number,
    check_reduction,
    compute_dtype,
)

__all__ = ["linear_cross_entropy", "ntl_mse", "ntl_wasserstein"]

CHUNK_ELEMENTS = 1 << 26  # default chunk: rows x vocab ≈ 64 Mi logits (256 MiB in float32); see docs/benchmarks.md


@register("linear_cross_entropy",
          summary="fused output projection + cross-entropy (+ z-loss) in chunks; never materialises the logits",
          reference="Wijmans et al., Cut Your Losses in Large-Vocabulary Language Models, arXiv:2411.09009, 2024",
          module="LinearCrossEntropyLoss", family="llm", input_kind="hidden_states", target_kind="token id")
def linear_cross_entropy(hidden: Tensor, weight: Tensor, target: Tensor, *, bias: Tensor | None = None,
                         class_weight: Tensor | None = None, ignore_index: int | None = -100,
                         label_smoothing: float = 0.0, z_loss: float = 0.0, logit_softcap: float | None = None,
                         reduction: str = "mean", chunk_size: int | None = None,
                         return_z_loss: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    r"""``cross_entropy(hidden @ weight.T + bias, target, ...)`` computed in row chunks, without the (N, V) logits.

    Same value and gradients as ``losslab.losses.cross_entropy(F.linear(hidden, weight, bias), target, ...)`` (to
    float tolerance), with peak extra memory O(chunk_size x V) instead of O(N x V). For ``reduction="mean"``/"sum"
    the gradients of ``hidden``, ``weight`` and ``bias`` are computed during the forward pass, chunk by chunk
    (Liger-Kernel's approach: no extra matrix product); for ``reduction="none"`` backward recomputes each chunk
    (Cut Cross-Entropy's approach: one extra matrix product).

    .. math::
        z = \text{softcap}(h W^\top + b),\quad \ell_i = (1-\varepsilon) w_{y_i}(\log Z_i - z_{i y_i})
        + \tfrac{\varepsilon}{V}\textstyle\sum_c w_c(\log Z_i - z_{ic}) + \lambda \log^2 Z_i

    Args:
        hidden: last hidden states (N, H) or (B, T, H) (float32/float64/bfloat16/float16).
        weight: output projection (V, H), same dtype as ``hidden``.
        target: token ids (N,) or (B, T); ``ignore_index`` positions are skipped.
        bias: optional output bias (V,).
        class_weight: optional per-class weights (V,) as ``weight`` in ``F.cross_entropy``.
        ignore_index: target value to skip (-100); None skips nothing. Any other non-int is a ConfigError.
        label_smoothing: ε in [0, 1].
        z_loss: λ ≥ 0 for the PaLM z-loss λ·log²Z (1e-4 is the common value; 0 = off), mean over non-ignored tokens.
        logit_softcap: c > 0 to use c·tanh(z/c) as logits.
        reduction: "mean" | "sum" | "none".
        chunk_size: rows per chunk; None picks ≈ 64 Mi logits per chunk (2**26 // V rows, at least 16): 512 rows
            for a 128k vocabulary. Smaller chunks save memory but re-read the (V, H) weight gradient more often.
        return_z_loss: also return the detached z-loss term.

    Returns:
        The loss (float32 for half-precision inputs), plus the z-loss term if ``return_z_loss``.

    Example:
        >>> import torch, losslab.losses as L
        >>> h, w, y = torch.randn(6, 4), torch.randn(10, 4), torch.tensor([1, 2, 3, -100, 5, 9])
        >>> fused = L.linear_cross_entropy(h, w, y, z_loss=1e-4, chunk_size=4)
        >>> naive = L.cross_entropy(h @ w.T, y, z_loss=1e-4)
        >>> bool(torch.allclose(fused, naive, atol=1e-6))
        True

    References:
        Wijmans, Huval, Hertzberg, Koltun, Krähenbühl, "Cut Your Losses in Large-Vocabulary Language Models",
        arXiv:2411.09009, 2024. Hsu et al., "Liger Kernel: Efficient Triton Kernels for LLM Training",
        arXiv:2410.10989, 2024. Chowdhery et al., PaLM, arXiv:2204.02311, 2022 (z-loss).

    Notes:
        Pure PyTorch (CPU or GPU), no Triton. Unlike Liger-Kernel the argument order is (hidden, weight, target),
        label smoothing and class weights are supported together with the z-loss, and the z-loss is not scaled by
        class weights (as in Liger and OLMo). Cut Cross-Entropy has no label smoothing. Half-precision inputs use
        float32 for the softmax and for accumulating the weight gradient across chunks.
    """
    name = "linear_cross_entropy"
    red = check_reduction(reduction, name)
    h = check_float("hidden", hidden, name)
    w = check_float("weight", weight, name, min_dim=2)
    if w.dim() != 2 or w.shape[1] != h.shape[-1]:
        raise DataError(f"{name}: weight must have shape (V, H) with H = hidden.shape[-1] = {h.shape[-1]}, "
                        f"got {tuple(w.shape)}; pass the output layer's weight (e.g. lm_head.weight)")
    if w.dtype != h.dtype:
        raise DataError(f"{name}: hidden ({h.dtype}) and weight ({w.dtype}) must have the same dtype; cast one of them")
    if not isinstance(target, Tensor) or tuple(target.shape) != tuple(h.shape[:-1]):
        shape = tuple(target.shape) if isinstance(target, Tensor) else type(target).__name__
        raise DataError(f"{name}: target must have shape {tuple(h.shape[:-1])} (one token id per hidden row), "
                        f"got {shape}")
    v = int(w.shape[0])
    h2 = h.reshape(-1, h.shape[-1])
    ign = check_ignore_index(ignore_index, name)
    tgt = check_class_target(target.reshape(-1), h2.shape[0], v, ign, name)
    if bias is not None:
        bias = check_float("bias", bias, name)
        if bias.shape != (v,):
            raise DataError(f"{name}: bias must have shape ({v},), got {tuple(bias.shape)}")
    acc = compute_dtype(h)
    cw = check_class_weight(class_weight, v, name)
    cw = None if cw is None else cw.to(acc)
    eps = check_number("label_smoothing", label_smoothing, name, low=0.0, high=1.0)
    lam = check_number("z_loss", z_loss, name, low=0.0)
    cap = None if logit_softcap is None else check_number("logit_softcap", logit_softcap, name, low=0.0,
                                                          low_open=True)
    if chunk_size is None:
        rows = max(16, CHUNK_ELEMENTS // v)
    else:
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            from losslab._errors import ConfigError

            raise ConfigError(f"{name}: chunk_size must be a positive int (rows per chunk) or None, got {chunk_size!r}")
        rows = chunk_size
    mask, safe = _ignore_mask(tgt, ign)
    grad_on = torch.is_grad_enabled()
    cfg = LCEConfig(label_smoothing=eps, z_loss=lam, softcap=cap, reduction=red, chunk_rows=rows,
                    need_hidden=grad_on and h.requires_grad, need_weight=grad_on and w.requires_grad,
                    need_bias=grad_on and bias is not None and bias.requires_grad)
    loss, zval = LinearCrossEntropyFunction.apply(h2, w, bias, safe, mask, cw, cfg)
    if red == "none":
        loss, zval = loss.reshape(target.shape), zval.reshape(target.shape)
    return (loss, zval) if return_z_loss else loss


def _ignore_mask(target: Tensor, ignore_index: int | None) -> tuple[Tensor, Tensor]:
    """(mask of the positions to use, target with ignored positions set to 0 so that it can index)."""
    if ignore_index is None:
        return torch.ones_like(target, dtype=torch.bool), target
    mask = target != ignore_index
    return mask, torch.where(mask, target, torch.zeros_like(target))


def _number_batch(input: Tensor, target: Tensor, number_tokens: Tensor, number_values: Tensor,
                  ignore_index: int | None, reduction: str,
                  name: str) -> tuple[Tensor, Tensor, Tensor, Tensor, tuple[int, ...]]:
    check_reduction(reduction, name)
    x = check_float("input", input, name)
    v = int(x.shape[-1])
    if not isinstance(target, Tensor) or tuple(target.shape) != tuple(x.shape[:-1]):
        shape = tuple(target.shape) if isinstance(target, Tensor) else type(target).__name__
        raise DataError(f"{name}: target must have shape {tuple(x.shape[:-1])} (input is (..., V) with the vocabulary "
                        f"last), got {shape}")
    ign = check_ignore_index(ignore_index, name)
    tgt = check_class_target(target.reshape(-1), int(target.numel()), v, ign, name)
    if not isinstance(number_tokens, Tensor) or number_tokens.dim() != 1 or number_tokens.dtype.is_floating_point:
        raise DataError(f"{name}: number_tokens must be a 1-D integer tensor of token ids")
    k = int(number_tokens.numel())
    if k == 0:
        raise DataError(f"{name}: number_tokens is empty; pass the ids of the number tokens (e.g. the digits 0-9)")
    tokens = check_class_target(number_tokens, k, v, None, name, name="number_tokens")  # int64: ids, never a mask
    if int(torch.unique(tokens).numel()) != k:
        raise DataError(f"{name}: number_tokens holds duplicate ids; each token maps to one value")
    vals = check_float("number_values", number_values, name)
    if vals.shape != (k,):
        raise DataError(f"{name}: number_values must have shape ({k},), one value per number token, "
                        f"got {tuple(vals.shape)}")
    dtype = compute_dtype(x)
    logits = x.reshape(-1, v).to(dtype)
    lookup = torch.full((v,), -1, dtype=torch.long, device=x.device)
    lookup[tokens] = torch.arange(k, device=x.device)
    keep, safe = _ignore_mask(tgt, ign)
    pos = lookup[safe]
    mask = keep & (pos >= 0)
    q = torch.softmax(logits[:, tokens], dim=1)
    vals = vals.to(dtype)
    return q, vals, vals[pos.clamp_min(0)], mask, tuple(target.shape)


_NTL = ("Zausinger et al., Regress, Don't Guess: A Regression-like Loss on Number Tokens for Language Models, "
        "arXiv:2411.02083, 2025")


@register("ntl_mse", summary="number token loss: squared error of the expected number value over number tokens",
          reference=_NTL, module="NTLMSELoss", family="llm", target_kind="token id")
def ntl_mse(input: Tensor, target: Tensor, *, number_tokens: Tensor, number_values: Tensor,
            ignore_index: int | None = -100, reduction: str = "mean") -> Tensor:
    r"""NTL-MSE: squared error between the expected value under the number-token softmax and the target's value.

    .. math:: q = \operatorname{softmax}(z_{\mathcal N}),\quad \hat y = \sum_{n\in\mathcal N} q_n v_n,\quad
        \ell = (\hat y - v_{y})^2 \quad\text{at positions whose target is a number token}

    Args:
        input: logits (..., V) with the vocabulary last, e.g. (B, T, V).
        target: token ids (...,); positions whose token is not a number token (or equal ``ignore_index``) are
            skipped.
        number_tokens: ids of the number tokens (K,), e.g. the tokens "0".."9"; any integer dtype (uint8 too)
            is read as ids, never as a boolean mask.
        number_values: their numeric values (K,).
        ignore_index: target value to skip (-100); None skips nothing.
        reduction: "mean" (over number-token positions; 0 when there are none, as in the authors' package) |
            "sum" | "none" (shape of ``target``, 0 elsewhere).

    Returns:
        The loss (scalar unless ``reduction="none"``). Add it to cross-entropy (the authors suggest CE + 0.3·NTL).

    Example:
        >>> import torch, losslab.losses as L
        >>> logits = torch.tensor([[0.0, 0.0, 5.0]])          # tokens 0, 1 are "1" and "3"; token 2 is a word
        >>> float(L.ntl_mse(logits, torch.tensor([1]), number_tokens=torch.tensor([0, 1]),
        ...                 number_values=torch.tensor([1.0, 3.0])))   # expected value 2, target 3
        1.0

    References:
        Zausinger et al., "Regress, Don't Guess: A Regression-like Loss on Number Tokens for Language Models",
        arXiv:2411.02083, 2025. Follows ``ntloss`` (``NTLossDotProduct`` with MSE): softmax over number-token logits
        only, loss only where the label is a number token. The package's optional ``reweigh`` (off in the paper)
        is not implemented.
    """
    q, vals, vy, mask, shape = _number_batch(input, target, number_tokens, number_values, ignore_index, reduction,
                                             "ntl_mse")
    return reduce_loss(((q * vals).sum(1) - vy).square(), reduction, mask=mask, shape=shape, empty="zero")


@register("ntl_wasserstein", summary="number token loss: 1-D Wasserstein distance to the target number value",
          reference=_NTL, module="NTLWassersteinLoss", family="llm", target_kind="token id")
def ntl_wasserstein(input: Tensor, target: Tensor, *, number_tokens: Tensor, number_values: Tensor,
                    ignore_index: int | None = -100, reduction: str = "mean") -> Tensor:
    r"""NTL-WAS: Wasserstein-1 distance between the number-token distribution and the target (a point mass).

    .. math:: q = \operatorname{softmax}(z_{\mathcal N}),\qquad \ell = \sum_{n\in\mathcal N} q_n\,|v_y - v_n|

    Args:
        input: logits (..., V) with the vocabulary last.
        target: token ids (...,); non-number targets and ``ignore_index`` are skipped.
        number_tokens: ids of the number tokens (K,).
        number_values: their values (K,).
        ignore_index: target value to skip (-100); None skips nothing.
        reduction: "mean" (over number-token positions; 0 if none) | "sum" | "none".

    Returns:
        The loss (scalar unless ``reduction="none"``).

    Example:
        >>> import torch, losslab.losses as L
        >>> logits = torch.tensor([[0.0, 0.0, 5.0]])
        >>> float(L.ntl_wasserstein(logits, torch.tensor([1]), number_tokens=torch.tensor([0, 1]),
        ...                         number_values=torch.tensor([1.0, 3.0])))   # 0.5 * |3 - 1|
        1.0

    References:
        Zausinger et al., arXiv:2411.02083, 2025; ``ntloss`` ``NTLoss`` (the paper's default NTL). The optional
        ``squash_factor`` and ``reweigh`` of the package are not implemented (the paper does not use them).
    """
    q, vals, vy, mask, shape = _number_batch(input, target, number_tokens, number_values, ignore_index, reduction,
                                             "ntl_wasserstein")
    dist = (vy.unsqueeze(1) - vals.unsqueeze(0)).abs()
    return reduce_loss((q * dist).sum(1), reduction, mask=mask, shape=shape, empty="zero")
