"""Distillation by other divergences than the softmax KL: DHKD's BinaryKL-Norm and AlphaNet's α-divergence.

Conventions as in :mod:`losslab.losses.distillation`: student logits first, teacher logits second (detached inside),
classes on dim 1, ``reduction="none"`` gives one value per row or position.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from losslab._errors import ConfigError
from losslab.losses._catalogue import register
from losslab.losses._reduce import reduce_loss
from losslab.losses._validate import check_number
from losslab.losses.distillation import _TARGET_KIND, _pair, _temperature

__all__ = ["alpha_divergence", "binary_kl_norm"]


@register("binary_kl_norm", summary="DHKD BinaryKL-Norm: T² Σ_k KL(Bern(1/2) ‖ Bern(σ((s_k - t_k)/T)))",
          reference="Yang, Zong, Huang, Feng, An, Dual-Head Knowledge Distillation: Enhancing Logits Utilization "
                    "with an Auxiliary Head, arXiv:2411.08937, 2024",
          module="BinaryKLNormLoss", family="distillation", target_kind=_TARGET_KIND)
def binary_kl_norm(input: Tensor, teacher: Tensor, *, temperature: float = 2.0, reduction: str = "mean") -> Tensor:
    r"""DHKD's logit-level BinaryKL-Norm loss: a per-class binary KL that is minimal where s_k = t_k.

    .. math::
        d_k = \sigma\!\big((s_k - t_k)/T\big),\qquad
        \ell = T^2 \sum_k \mathrm{KL}\big(\mathrm{Bern}(\tfrac12)\,\|\,\mathrm{Bern}(d_k)\big)
             = T^2 \sum_k \log\cosh\frac{s_k - t_k}{2T}

    (the two forms are equal: ½log(½/d) + ½log(½/(1-d)) = log cosh(u/2) for d = σ(u)). Unlike the softmax KD
    losses it sees the logits themselves, not only their differences across classes: adding a constant to the
    student's logits changes it.

    Args:
        input: student logits s, (N, C), (C,) or (N, C, d1, ...). In DHKD these come from the auxiliary head.
        teacher: teacher logits t, same shape (detached inside).
        temperature: T in [0.01, 1000] (2.0, the authors' ``--BinaryKL_T`` default and the value in their commands).
        reduction: "mean" | "sum" | "none" (one value per row, summed over the classes).

    Returns:
        The loss (scalar unless ``reduction="none"``); float32 for half-precision input.

    Raises:
        DataError: non-tensor, integer or non-finite logits, a teacher of another shape.
        ConfigError: T ≤ 0 or not a number, bad reduction.

    Example:
        >>> import torch, losslab.losses as L
        >>> s, t = torch.tensor([[2.0, 0.0]]), torch.zeros(1, 2)
        >>> round(float(L.binary_kl_norm(s, t, temperature=1.0)), 4)   # log cosh(1) + log cosh(0)
        0.4338

    References:
        Yang, Zong, Huang, Feng, An, "Dual-Head Knowledge Distillation: Enhancing Logits Utilization with an
        Auxiliary Head", arXiv:2411.08937, 2024.

    Notes:
        Checked against the authors' code (penghui-yang/DHKD, ``distiller_zoo/BinaryKLNorm.py::BinaryKLNorm``;
        training loop ``helper/loops.py``): the same value, summed over classes and averaged over rows, times T².
        The authors clamp d to [1e-8, 1 - 1e-8] before the logarithms; in float64 that makes their loss flat
        (zero gradient) once |s_k - t_k|/T > 18.4, and in float32, where 1 - 1e-8 rounds to 1, infinite once
        |s_k - t_k|/T exceeds about 17. Here log cosh is evaluated exactly (|u| + log1p(e^{-2|u|}) - log 2), so the
        two agree wherever the clamp is inactive and this one keeps a finite gradient T·tanh(u)/2 beyond it. In DHKD
        the total is γ·CE(main head, y) + α·BinaryKL-Norm(auxiliary head, teacher), with γ = 1 and α = 1 (CIFAR) or
        0.1 (ImageNet); the two heads and those weights are the caller's.
    """
    name = "binary_kl_norm"
    temp = _temperature(temperature, name)
    s, t, shape = _pair(input, teacher, name, reduction)
    u = ((s - t) / (2 * temp)).abs()
    log_cosh = u + torch.log1p(torch.exp(-2 * u)) - math.log(2.0)
    return reduce_loss(temp**2 * log_cosh.sum(1), reduction, shape=shape)


def _alpha_terms(lq: Tensor, lp: Tensor, alpha: float, iw_clip: float) -> tuple[Tensor, Tensor]:
    """AlphaNet's (divergence value, q·ρ(w)) per class for one α, from log q (detached) and log p.

    w = p / q is the importance ratio; the value and the weights follow ``loss_ops.py::f_divergence``, computed
    from log-probabilities (w^α = exp(α log w), clipped in the log domain) so that nothing overflows.
    """
    log_w = lp - lq
    log_clip = math.log(iw_clip)
    q = lq.exp()
    if abs(alpha) < 1e-3:  # KL(q ‖ p) branch: w itself is clipped
        lw = log_w.clamp_max(log_clip)
        return -(q * lw).sum(1), q * (lw - 1)
    if abs(alpha - 1) < 1e-3:  # KL(p ‖ q) branch: no clipping; q · w = p
        p = lp.exp()
        return (p * log_w).sum(1), p
    c = 1.0 / (alpha * (alpha - 1))
    q_wa = torch.exp(lq + (alpha * log_w).clamp_max(log_clip))  # q · min(w^α, iw_clip)
    return c * (q_wa - q).sum(1), q_wa / alpha + c * q


@register("alpha_divergence", summary="AlphaNet adaptive α-divergence: max over α ∈ {α₋, α₊} of D_α(teacher ‖ student)",
          reference="Wang, Gong, Li, Liu, Chandra, AlphaNet: Improved Training of Supernets with Alpha-Divergence, "
                    "arXiv:2102.07954, 2021",
          module="AlphaDivergenceLoss", family="distillation", target_kind=_TARGET_KIND)
def alpha_divergence(input: Tensor, teacher: Tensor, *, alpha_min: float = -1.0, alpha_max: float = 1.0,
                     iw_clip: float = 5.0, reduction: str = "mean") -> Tensor:
    r"""AlphaNet's adaptive α-divergence from the teacher p to the student q, with the authors' clipped gradient.

    .. math::
        q = \operatorname{softmax}(s),\quad p = \operatorname{softmax}(t),\quad w = p / q,\qquad
        D_\alpha(p\,\|\,q) = \frac{1}{\alpha(\alpha-1)} \sum_k q_k \big(\min(w_k^{\alpha}, c) - 1\big)

        \ell = \max\big(D_{\alpha_-},\ D_{\alpha_+}\big),\qquad
        \nabla_s \ell = -\nabla_s \sum_k \operatorname{sg}[q_k\,\rho(w_k)]\,\log q_k,\quad
        \rho(w) = \frac{\min(w^{\alpha}, c)}{\alpha} + \frac{1}{\alpha(\alpha-1)}

    with α the one that gives the larger divergence for that row (α₊ on ties) and c = ``iw_clip``. The limits are
    the two KL divergences: α → 0 gives KL(q ‖ p) = -Σ q log min(w, c) with ρ = log min(w, c) - 1, and α → 1 gives
    KL(p ‖ q) = Σ p log w with ρ = w, unclipped (the authors switch to these forms when |α| < 1e-3 or
    |α - 1| < 1e-3; so does this function).

    **Value and gradient.** The value returned is the divergence D (of the selected α), which is 0 when the
    student equals the teacher and can be monitored. The gradient is the authors' surrogate gradient
    -Σ_k sg[q_k ρ(w_k)] ∇ log q_k. Without clipping (w^α ≤ c everywhere) the two agree: the surrogate's gradient is
    the gradient of D. Where w^α is clipped they differ by design (the clip bounds the importance weights in the
    gradient), so the gradient is then not the derivative of the value.

    Args:
        input: student logits s, (N, C), (C,) or (N, C, d1, ...).
        teacher: teacher logits t, same shape (detached inside).
        alpha_min: α₋ (-1.0, the AlphaNet training config; penalises a student that over-estimates the
            teacher's uncertainty).
        alpha_max: α₊ ≥ α₋ (1.0, the config; KL(p ‖ q), penalises under-estimation). ``alpha_min == alpha_max``
            gives the plain (non-adaptive) α-divergence.
        iw_clip: c > 0, clip of the importance weight w^α (5.0, the config and ``AdaptiveLossSoft``'s default;
            ``f_divergence`` alone defaults to 1e3).
        reduction: "mean" | "sum" | "none" (one value per row).

    Returns:
        The divergence (scalar unless ``reduction="none"``), carrying the surrogate gradient; float32 for
        half-precision input.

    Raises:
        ConfigError: non-finite α, α₋ > α₊, c ≤ 0, bad reduction. DataError: bad logits or shapes.

    Example:
        >>> import math, torch, losslab.losses as L
        >>> s, t = torch.zeros(1, 2), torch.tensor([[0.0, math.log(3.0)]])   # q = (1/2, 1/2), p = (1/4, 3/4)
        >>> # D_{-1} = (Σ q²/p - 1)/2 = 1/6, D_{+1} = KL(p ‖ q) = 0.1308; the larger one is returned
        >>> round(float(L.alpha_divergence(s, t)), 4)
        0.1667

    References:
        Wang, Gong, Li, Liu, Chandra, "AlphaNet: Improved Training of Supernets with Alpha-Divergence", ICML 2021,
        arXiv:2102.07954.

    Notes:
        Checked against the authors' code (facebookresearch/AlphaNet, ``loss_ops.py::f_divergence`` and
        ``AdaptiveLossSoft``; defaults from ``configs/train_alphanet_models.yml``: α₋ = -1, α₊ = 1, iw_clip = 5).
        ``AdaptiveLossSoft`` returns the surrogate -Σ sg[q ρ] log q itself, whose value is not the divergence (it is
        not 0 at q = p); here the value is the divergence and only the gradient is the surrogate's (tested against
        the authors' surrogate written out in float64). The weights are computed from log-probabilities, so no
        0/0 or log 0 arises where the authors' p / q would underflow. The authors' ``alpha_min or default`` makes
        an explicit α = 0.0 fall back to the default; here 0.0 means 0. AlphaNet applies the loss at temperature 1
        to the sub-networks only (the supernet is trained with label-smoothed cross-entropy) and recommends
        gradient clipping (norm 1.0) with it.
    """
    name = "alpha_divergence"
    a_lo = check_number("alpha_min", alpha_min, name)
    a_hi = check_number("alpha_max", alpha_max, name)
    if a_lo > a_hi:
        raise ConfigError(f"{name}: alpha_min={alpha_min!r} is larger than alpha_max={alpha_max!r}; pass the smaller "
                          f"α as alpha_min (AlphaNet uses alpha_min=-1.0, alpha_max=1.0)")
    clip = check_number("iw_clip", iw_clip, name, low=0.0, low_open=True)
    s, t, shape = _pair(input, teacher, name, reduction)
    lq = torch.log_softmax(s, 1)
    lq_d, lp = lq.detach(), torch.log_softmax(t, 1)
    d_lo, w_lo = _alpha_terms(lq_d, lp, a_lo, clip)
    d_hi, w_hi = _alpha_terms(lq_d, lp, a_hi, clip)
    pick_lo = (d_lo > d_hi).unsqueeze(1)
    surrogate = -(torch.where(pick_lo, w_lo, w_hi) * lq).sum(1)
    value = torch.maximum(d_lo, d_hi)
    return reduce_loss(value + (surrogate - surrogate.detach()), reduction, shape=shape)
