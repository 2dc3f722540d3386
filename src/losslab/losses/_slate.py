"""Shared pieces of the ranking losses: slate validation, DCG discounts, NeuralSort and Sinkhorn scaling.

A batch of slates is ``input`` (B, n) scores, ``target`` (B, n) graded relevance labels (≥ 0) and an optional
boolean ``mask`` (B, n), True at real items and False at padding. Padding may sit anywhere in a slate.
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor

from losslab._errors import ConfigError, DataError
from losslab.losses._validate import check_finite, check_float, check_number, check_reduction, compute_dtype


def prepare_slates(input: object, target: object, mask: object, loss: str,
                   reduction: str) -> tuple[Tensor, Tensor, Tensor]:
    """Validate a batch of slates; return scores and labels in the compute dtype and the boolean mask.

    Labels at padded positions are replaced by 0 (they never enter a loss); the input is never modified.
    """
    check_reduction(reduction, loss)
    x = check_float("input", input, loss)
    if x.dim() != 2:
        raise DataError(f"{loss}: input must hold scores of shape (batch, slate), got {tuple(x.shape)}; "
                        f"for a single slate use input.unsqueeze(0)")
    if not isinstance(target, Tensor) or target.is_complex():
        raise DataError(f"{loss}: target must be a real torch.Tensor of relevance labels with shape "
                        f"{tuple(x.shape)}, got {type(target).__name__ if not isinstance(target, Tensor) else target.dtype}")
    if target.shape != x.shape:
        raise DataError(f"{loss}: target must have the same shape as input {tuple(x.shape)} (one relevance label "
                        f"per item), got {tuple(target.shape)}")
    dtype = compute_dtype(x)
    if target.dtype.is_floating_point:
        check_finite("target", target, loss)
    y = target.to(dtype)
    valid = check_mask(mask, tuple(x.shape), x.device, loss)
    if bool((valid & (y < 0)).any()):
        raise DataError(
            f"{loss}: target holds negative relevance labels at real items; labels must be ≥ 0. If they mark "
            f"padding (allRank pads with -1), pass mask=target != -1 instead"
        )
    return x.to(dtype), torch.where(valid, y, 0.0), valid


def check_mask(mask: object, shape: tuple[int, ...], device: torch.device, loss: str) -> Tensor:
    """The boolean mask of real items on ``device`` (all True when ``mask`` is None); DataError on another type or
    shape."""
    if mask is None:
        return torch.ones(shape, dtype=torch.bool, device=device)
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool or tuple(mask.shape) != shape:
        got = f"{mask.dtype} {tuple(mask.shape)}" if isinstance(mask, Tensor) else type(mask).__name__
        raise DataError(f"{loss}: mask must be a torch.bool tensor of shape {shape} (True at real items, False at "
                        f"padding), got {got}")
    return mask.to(device)


def check_k(k: object, loss: str) -> int | None:
    """``k`` (truncation rank of NDCG@k) is None (the whole slate) or a positive integer."""
    if k is None:
        return None
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or int(k) < 1:
        raise ConfigError(f"{loss}: k must be a positive integer (NDCG@k) or None (the whole slate), got {k!r}")
    return int(k)


def check_temperature(value: object, loss: str) -> float:
    return check_number("temperature", value, loss, low=1e-6, high=1e6)  # 1/τ stays finite in float32


def discounts(n: int, k: int | None, dtype: torch.dtype, device: torch.device) -> Tensor:
    """d_r = 1 / log2(r + 1) for ranks r = 1..n, set to 0 beyond rank k."""
    r = torch.arange(1, n + 1, dtype=dtype, device=device)
    d = 1.0 / torch.log2(r + 1.0)
    if k is not None:
        d = torch.where(r <= k, d, torch.zeros_like(d))
    return d


def gains(y: Tensor, powered: bool, loss: str) -> Tensor:
    """2^y - 1 (``powered``) or y; padded labels are 0 and so are their gains.

    Exponential gains overflow for labels >= log2 of the dtype's largest number (128 in float32): that is a
    DataError, not the NaN that DCG / IDCG = inf / inf would give.
    """
    if not powered:
        return y
    limit = math.log2(torch.finfo(y.dtype).max)
    if y.numel() and float(y.max()) >= limit:
        raise DataError(f"{loss}: relevance label {float(y.max()):g} makes the gain 2^y - 1 overflow {y.dtype} "
                        f"(labels must stay below {limit:.0f}); pass powered_relevancies=False for linear gains, or "
                        f"map the labels to a small graded scale")
    return torch.expm1(y * math.log(2.0))


def ideal_dcg(g: Tensor, d: Tensor) -> Tensor:
    """DCG of the gains sorted in decreasing order (no gradient: the labels are constants)."""
    return (g.sort(dim=1, descending=True).values * d).sum(1)


def neural_sort(s: Tensor, valid: Tensor, tau: float, *, all_valid: bool = False) -> Tensor:
    """Deterministic NeuralSort (Grover et al. 2019) of each slate's real items; (B, n rank rows, n items).

    Row i (rank i = 1..m, m real items) is softmax_j(((m + 1 - 2i) s_j - Σ_k |s_j - s_k|) / τ) over real j;
    rows i > m and padded columns are 0. ``all_valid=True`` (no mask was given) skips the padding masks: the same
    values bit for bit, about twice as fast.
    """
    n = s.shape[1]
    if all_valid:
        a1 = (s.unsqueeze(2) - s.unsqueeze(1)).abs().sum(2)
        c = (n + 1 - 2 * torch.arange(1, n + 1, device=s.device)).to(s.dtype)  # (n,)
        return torch.softmax((c.view(1, n, 1) * s.unsqueeze(1) - a1.unsqueeze(1)) / tau, dim=2)
    m = valid.sum(1, keepdim=True)  # (B, 1)
    s = torch.where(valid, s, torch.zeros_like(s))
    both = valid.unsqueeze(2) & valid.unsqueeze(1)
    a1 = torch.where(both, (s.unsqueeze(2) - s.unsqueeze(1)).abs(), 0.0).sum(2)
    rank = torch.arange(1, n + 1, device=s.device)
    row_valid = rank.unsqueeze(0) <= m  # (B, n)
    c = (m + 1 - 2 * rank.unsqueeze(0)).to(s.dtype)  # (B, n)
    logits = (c.unsqueeze(2) * s.unsqueeze(1) - a1.unsqueeze(1)) / tau
    # every row fed to softmax keeps a finite entry (rows past m are all zeros), so no NaN reaches the backward
    logits = torch.where(row_valid.unsqueeze(2), torch.where(valid.unsqueeze(1), logits, float("-inf")), 0.0)
    p = torch.softmax(logits, dim=2)
    return torch.where(row_valid.unsqueeze(2) & valid.unsqueeze(1), p, 0.0)


def sinkhorn(p: Tensor, valid: Tensor, max_iter: int, tol: float) -> Tensor:
    """Sinkhorn scaling of the real block of each (rank × item) matrix towards a doubly stochastic one.

    As in allRank's ``sinkhorn_scaling``: the padded-rank × padded-item block is filled with ones so that every
    row and column has mass; columns are normalised, then rows (denominators floored at 1e-10), until every
    row and column sum is within ``tol`` of 1 or ``max_iter`` rounds have run. A slate stops being updated once
    it has converged (so a slate's value does not depend on the other slates of the batch); ``tol=0`` always
    runs ``max_iter`` rounds and skips the convergence test (one host synchronisation per round on a GPU).
    """
    n = p.shape[1]
    if n == 0:  # empty slates: nothing to scale
        return p
    m = valid.sum(1, keepdim=True)
    row_valid = torch.arange(1, n + 1, device=p.device).unsqueeze(0) <= m
    real = row_valid.unsqueeze(2) & valid.unsqueeze(1)
    pad = ~row_valid.unsqueeze(2) & ~valid.unsqueeze(1)
    mat = torch.where(real, p, torch.where(pad, 1.0, 0.0).to(p.dtype))
    done = torch.zeros(p.shape[0], dtype=torch.bool, device=p.device)
    any_done = False
    for _ in range(max_iter):
        new = mat / mat.sum(1, keepdim=True).clamp_min(1e-10)
        new = new / new.sum(2, keepdim=True).clamp_min(1e-10)
        mat = torch.where(done[:, None, None], mat, new) if any_done else new  # no select while none has stopped
        if tol > 0:
            err = torch.maximum((mat.sum(2) - 1).abs().amax(1), (mat.sum(1) - 1).abs().amax(1))
            done = done | (err < tol)
            any_done, all_done = torch.stack([done.any(), done.all()]).tolist()
            if all_done:
                break
    return torch.where(real, mat, 0.0)
