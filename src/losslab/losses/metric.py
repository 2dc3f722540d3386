"""Set, hypersphere and multi-label retrieval losses: OKO, SFace, decoupled softmax."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from losslab._errors import DataError
from losslab.losses._catalogue import register
from losslab.losses._reduce import reduce_loss
from losslab.losses._validate import (
    check_class_target,
    check_float,
    check_number,
    check_reduction,
    check_same_shape,
    compute_dtype,
)

__all__ = ["decoupled_softmax", "oko", "sface"]


@register("oko", summary="odd-k-out set loss: cross-entropy of summed logits over a set with a pair and k odd ones",
          reference="Muttenthaler, Vandermeulen, Zhang, Unterthiner, Müller, Set Learning for Accurate and "
                    "Calibrated Models, arXiv:2307.02245, 2024",
          module="OKOLoss", family="metric", target_kind="pair class per set (+ odd classes)")
def oko(input: Tensor, target: Tensor, *, odd_target: Tensor | None = None, reduction: str = "mean") -> Tensor:
    r"""Odd-k-out (OKO) set loss: classify a set of k + 2 examples by the class that appears twice.

    .. math::
        s = \sum_{x\in\text{set}} f(x),\quad p = \operatorname{softmax}(s),\qquad
        \ell_{\text{hard}} = -\log p_c,\qquad
        \ell_{\text{soft}} = \sum_k t_k(\log t_k - \log p_k) - t_k + p_k,\
        t = \frac{2 e_c + \sum_{j=1}^{k} e_{o_j}}{k + 2}

    Args:
        input: per-example logits of each set, (S, k + 2, C): S sets of 2 examples of the pair class and k odd ones.
        target: the pair class of each set (S,).
        odd_target: classes of the k odd examples (S, k); when given, the soft targets t are used, otherwise the
            hard (one-hot pair class) targets.
        reduction: "mean" (over sets) | "sum" | "none".

    Returns:
        The loss (scalar unless ``reduction="none"``).

    Example:
        >>> import torch, losslab.losses as L
        >>> x = torch.zeros(1, 3, 2)           # one set of 3 examples (k = 1), 2 classes
        >>> round(float(L.oko(x, torch.tensor([0]))), 4)
        0.6931

    References:
        Muttenthaler et al., "Set Learning for Accurate and Calibrated Models", arXiv:2307.02245, 2024 (ICLR).
        Follows the authors' JAX code (``OKOHead.aggregation`` sums the logits of the set; soft targets use the
        generalised KL Σ t(log t - log p) - t + p). At test time use the single-example logits.
    """
    name = "oko"
    check_reduction(reduction, name)
    x = check_float("input", input, name, min_dim=3)
    if x.dim() != 3 or x.shape[1] < 3:
        raise DataError(f"{name}: input must have shape (S, k + 2, C) with k ≥ 1 odd examples per set, got "
                        f"{tuple(x.shape)}")
    s_, n, c = x.shape
    tgt = check_class_target(target, s_, c, None, name)
    logits = x.to(compute_dtype(x)).sum(1)
    logp = torch.log_softmax(logits, dim=1)
    if odd_target is None:
        loss = -logp.gather(1, tgt.unsqueeze(1)).squeeze(1)
        return reduce_loss(loss, reduction)
    if not isinstance(odd_target, Tensor) or tuple(odd_target.shape) != (s_, n - 2):
        shape = tuple(odd_target.shape) if isinstance(odd_target, Tensor) else type(odd_target).__name__
        raise DataError(f"{name}: odd_target must have shape ({s_}, {n - 2}) (k odd classes per set), got {shape}")
    odd = check_class_target(odd_target.reshape(-1), s_ * (n - 2), c, None, name, name="odd_target")
    t = 2 * F.one_hot(tgt, c).to(logp.dtype) + F.one_hot(odd.reshape(s_, n - 2), c).to(logp.dtype).sum(1)
    t = t / n
    loss = (torch.xlogy(t, t) - t * logp - t + logp.exp()).sum(1)
    return reduce_loss(loss, reduction)


@register("sface", summary="sigmoid-constrained hypersphere loss with detached intra/inter re-scaling weights",
          reference="Zhong, Deng, Hu, Zhao, Li, Wen, SFace: Sigmoid-Constrained Hypersphere Loss for Robust Face "
                    "Recognition, arXiv:2205.12010, 2021",
          module="SFaceLoss", family="metric", input_kind="embeddings")
def sface(input: Tensor, centers: Tensor, target: Tensor, *, s: float = 64.0, k: float = 80.0, a: float = 0.8,
          b: float = 1.23, reduction: str = "mean") -> Tensor:
    r"""SFace loss on embeddings and class centres (the weight of the classification layer).

    .. math::
        \cos\theta_j = \langle \hat x, \hat W_j\rangle,\quad
        r_{\text{intra}} = \operatorname{sg}\Big[\frac{1}{1 + e^{-k(\theta_y - a)}}\Big],\quad
        r_{\text{inter},j} = \operatorname{sg}\Big[\frac{1}{1 + e^{k(\theta_j - b)}}\Big]

    .. math:: \ell = -r_{\text{intra}}\, s\cos\theta_y + \sum_{j\ne y} r_{\text{inter},j}\, s\cos\theta_j

    The sigmoids only re-scale the gradients (sg = stop-gradient): the intra-class pull fades once θ_y < a, the
    inter-class push fades once θ_j > b.

    Args:
        input: embeddings (N, D).
        centers: class centres W (C, D) (the learnable weight of the head).
        target: class indices (N,).
        s: scale (64), k: sigmoid slope (80), a: intra-class angle (0.80 rad), b: inter-class angle (1.23 rad),
            the defaults of the authors' PyTorch class.
        reduction: "mean" | "sum" | "none".

    Returns:
        The loss (scalar unless ``reduction="none"``). Its value can be negative.

    Example:
        >>> import torch, losslab.losses as L
        >>> x, w = torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> round(float(L.sface(x, w, torch.tensor([0]), s=1.0)), 4)   # θ_y = 0: weight σ(-80·0.8) ≈ 0
        -0.0

    References:
        Zhong et al., "SFace: Sigmoid-Constrained Hypersphere Loss for Robust Face Recognition", IEEE TIP 2021,
        arXiv:2205.12010. Follows the authors' ``SFaceLoss`` (weights under no_grad, intra + inter summed over
        j ≠ y, mean over the batch). cos θ is clamped to ±(1 - 1e-7) before arccos.
    """
    name = "sface"
    check_reduction(reduction, name)
    s = check_number("s", s, name, low=0.0, low_open=True)
    k = check_number("k", k, name, low=0.0, low_open=True)
    a_ = check_number("a", a, name, low=0.0, high=math.pi)
    b_ = check_number("b", b, name, low=0.0, high=math.pi)
    x = check_float("input", input, name, min_dim=2)
    w = check_float("centers", centers, name, min_dim=2)
    if x.dim() != 2 or w.dim() != 2 or w.shape[1] != x.shape[1]:
        raise DataError(f"{name}: input must be (N, D) and centers (C, D) with the same D, got {tuple(x.shape)} and "
                        f"{tuple(w.shape)}")
    tgt = check_class_target(target, x.shape[0], w.shape[0], None, name)
    dtype = compute_dtype(x)
    cos = F.normalize(x.to(dtype), dim=1) @ F.normalize(w.to(dtype), dim=1).t()
    out = s * cos
    onehot = F.one_hot(tgt, w.shape[0]).to(dtype)
    wy = (onehot * out).sum(1)
    with torch.no_grad():
        lim = 1 - 1e-7
        theta = torch.acos(cos.clamp(-lim, lim))
        theta_y = (onehot * theta).sum(1)
        r_intra = torch.sigmoid(k * (theta_y - a_))
        r_inter = torch.sigmoid(-k * (theta - b_))
    loss = -r_intra * wy + (r_inter * (1 - onehot) * out).sum(1)
    return reduce_loss(loss, reduction)


@register("decoupled_softmax", summary="multi-label softmax that drops the other positives from each denominator",
          reference="Gupta, Khatri, Rawat, Bhojanapalli, Jain, Dhillon, Dual-Encoders for Extreme Multi-Label "
                    "Classification, arXiv:2310.10636, 2024",
          module="DecoupledSoftmaxLoss", family="metric", target_kind="multi-hot (same shape)")
def decoupled_softmax(input: Tensor, target: Tensor, *, temperature: float = 1.0, sample_positive: bool = False,
                      generator: torch.Generator | None = None, reduction: str = "mean") -> Tensor:
    r"""Decoupled softmax loss for multi-label (extreme) classification.

    .. math::
        \ell_q = \frac{1}{|P_q|}\sum_{l\in P_q} -\log\frac{e^{s_{ql}}}{e^{s_{ql}} + \sum_{j\notin P_q} e^{s_{qj}}}
        = \frac{1}{|P_q|}\sum_{l\in P_q}\operatorname{softplus}\Big(\log\sum_{j\notin P_q} e^{s_{qj}} - s_{ql}\Big)

    with s = input / temperature. Each positive competes only with the negatives.

    Args:
        input: scores (Q, L), e.g. cosine similarities of query and label embeddings.
        target: multi-hot positives (Q, L) (bool, int or float 0/1).
        temperature: τ > 0 dividing the scores (the authors use cosine / 0.05; pass 0.05 here for raw cosines).
        sample_positive: use one positive per query, drawn uniformly with ``generator`` (the authors' default
            training config samples one positive per step), instead of averaging over all positives.
        generator: torch.Generator for ``sample_positive`` (no global seeding).
        reduction: "mean" over queries with at least one positive | "sum" | "none" (0 for queries without one).

    Returns:
        The loss (scalar unless ``reduction="none"``).

    Example:
        >>> import torch, losslab.losses as L
        >>> s, t = torch.tensor([[0.0, 0.0, 0.0]]), torch.tensor([[1, 1, 0]])
        >>> round(float(L.decoupled_softmax(s, t)), 4)   # each positive vs. one negative: log 2
        0.6931

    References:
        Nilesh Gupta, Devvrit Khatri, Ankit Singh Rawat, Srinadh Bhojanapalli, Prateek Jain, Inderjit S. Dhillon,
        "Dual-Encoders for Extreme Multi-Label Classification", arXiv:2310.10636, 2024 (ICLR). Follows the authors' ``SimLoss`` 'decoupled-softmax' branch; the
        multi-GPU all-gather of the denominator is not included.
    """
    name = "decoupled_softmax"
    check_reduction(reduction, name)
    tau = check_number("temperature", temperature, name, low=0.0, low_open=True)
    x = check_float("input", input, name, min_dim=2)
    if x.dim() != 2:
        raise DataError(f"{name}: input must have shape (Q, L), got {tuple(x.shape)}")
    check_same_shape("input", x, "target", target, name)
    tf = target.to(torch.float64)
    check_finite_binary(tf, name)
    pos = tf > 0.5
    dtype = compute_dtype(x)
    sc = x.to(dtype) / tau
    very_neg = torch.finfo(dtype).min / 4
    lse_neg = torch.logsumexp(torch.where(pos, torch.full_like(sc, very_neg), sc), dim=1, keepdim=True)
    per_pos = F.softplus(lse_neg - sc)
    n_pos = pos.sum(1)
    has = n_pos > 0
    if sample_positive:
        probs = pos.to(dtype) + (~has).unsqueeze(1).to(dtype)  # rows without positives: dummy uniform, masked later
        pick_ = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        loss = per_pos.gather(1, pick_.unsqueeze(1)).squeeze(1)
    else:
        loss = torch.where(pos, per_pos, torch.zeros_like(per_pos)).sum(1) / n_pos.clamp_min(1).to(dtype)
    return reduce_loss(loss, reduction, mask=has)


def check_finite_binary(t: Tensor, loss: str) -> None:
    if t.numel() and not bool(((t == 0) | (t == 1)).all()):
        raise DataError(f"{loss}: target must be multi-hot (0/1 or bool); got other values. Threshold graded "
                        f"relevances before calling")
