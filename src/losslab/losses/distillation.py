"""Knowledge-distillation losses on logits: KD, DKD, NKD, DHKD's BinaryKL-Norm and AlphaNet's α-divergence.

Every function takes the student logits first and the teacher logits second (then the class target, where the loss
uses one). The teacher is detached inside the loss: it never receives a gradient, whatever its ``requires_grad``.
The student's compute dtype decides the teacher's (half precision is computed in float32). Logits are (N, C),
(C,) or (N, C, d1, ...) with the classes on dim 1, as in ``F.cross_entropy``; ``reduction="none"`` returns one value
per row (N,) or position (N, d1, ...), the sum over the classes already taken.

These are the distillation terms only: the usual cross-entropy on the labels (and any loss weights or warm-up
schedules of the authors' training loops) is added by the caller.
"""

from __future__ import annotations

import math
from typing import cast

import torch
from torch import Tensor

from losslab._errors import ConfigError
from losslab.losses._catalogue import register
from losslab.losses._common import ClassBatch, pick, prepare, raise_few_classes
from losslab.losses._reduce import reduce_loss
from losslab.losses._validate import (
    check_float,
    check_number,
    check_reduction,
    check_same_shape,
    compute_dtype,
)

__all__ = ["alpha_divergence", "binary_kl_norm", "dkd", "kd", "nkd"]

_TARGET_KIND = "teacher logits (same shape)"
_TARGET_KIND_CLS = "teacher logits (same shape) + class index"


def _flat(x: Tensor) -> tuple[Tensor, tuple[int, ...]]:
    """(M, C) rows with the class dimension last, and the shape that ``reduction="none"`` restores."""
    if x.dim() == 1:
        return x.unsqueeze(0), ()
    if x.dim() == 2:
        return x, (x.shape[0],)
    return x.movedim(1, -1).reshape(-1, x.shape[1]), (x.shape[0], *x.shape[2:])


def _teacher(teacher: object, input: Tensor, dtype: torch.dtype, loss: str) -> Tensor:
    """Validated teacher logits flattened like the student's, detached, in the student's compute dtype."""
    t = check_float("teacher", teacher, loss)
    check_same_shape("input", input, "teacher", t, loss)
    return _flat(t.detach())[0].to(dtype)


def _pair(input: object, teacher: object, loss: str, reduction: str) -> tuple[Tensor, Tensor, tuple[int, ...]]:
    """Student rows (M, C) and detached teacher rows (M, C) in the compute dtype, plus the output shape."""
    check_reduction(reduction, loss)
    x = check_float("input", input, loss)
    if x.shape[0 if x.dim() == 1 else 1] < 1:
        raise_few_classes(loss, 0, 1)
    s, shape = _flat(x)
    dtype = compute_dtype(s)
    return s.to(dtype), _teacher(teacher, x, dtype, loss), shape


def _with_target(input: object, teacher: object, target: object, loss: str, reduction: str,
                 ignore_index: int | None) -> tuple[ClassBatch, Tensor]:
    """Validated student batch (class targets, ignore_index) and the detached teacher rows (M, C)."""
    b = prepare(input, target, loss=loss, reduction=reduction, ignore_index=ignore_index, min_classes=2)
    return b, _teacher(teacher, cast(Tensor, input), b.x.dtype, loss)  # prepare() has checked input


def _non_target(x: Tensor, target: Tensor) -> Tensor:
    """The (M, C - 1) entries of ``x`` other than the target column of each row, in class order."""
    keep = torch.ones_like(x, dtype=torch.bool).scatter(1, target.unsqueeze(1), False)
    return x[keep].reshape(x.shape[0], x.shape[1] - 1)


def _kl_rows(log_p: Tensor, log_q: Tensor) -> Tensor:
    """Σ_k p_k (log p_k - log q_k) per row from log-probabilities (finite even where p_k underflows to 0)."""
    return (log_p.exp() * (log_p - log_q)).sum(1)


def _kl_softmax_rows(u: Tensor, v: Tensor, high_temperature: bool) -> Tensor:
    """KL(softmax(u) ‖ softmax(v)) per row, accurate when u and v are close (high temperatures).

    With d = u - v: log p - log q = d - log Σ q e^d, so KL = Σ p d - log1p(Σ q expm1(d)). When max |d| < 1/2 that
    form keeps its relative precision (the plain Σ p (log p - log q) subtracts log-probabilities of size log C
    to get a KL of size d², which loses 17 % in float32 at T = 1000); otherwise the plain form is used.
    """
    log_p, log_q = torch.log_softmax(u, 1), torch.log_softmax(v, 1)
    plain = _kl_rows(log_p, log_q)
    if not high_temperature:  # below T = 16 the plain form keeps about 1e-6 relative precision in float32
        return plain
    d = u - v
    close = d.abs().amax(1, keepdim=True) < 0.5
    d = torch.where(close, d, 0.0)  # the other rows take the plain form; keep expm1 finite for their gradient
    near = (log_p.exp() * d).sum(1) - torch.log1p((log_q.exp() * torch.expm1(d)).sum(1))
    return torch.where(close.squeeze(1), near, plain)


def _temperature(value: object, loss: str) -> float:
    return check_number("temperature", value, loss, low=1e-2, high=1e3)


@register("kd", summary="Hinton's knowledge distillation: T² · KL(softmax(t/T) ‖ softmax(s/T))",
          reference="Hinton, Vinyals, Dean, Distilling the Knowledge in a Neural Network, arXiv:1503.02531, 2015",
          module="KDLoss", family="distillation", target_kind=_TARGET_KIND)
def kd(input: Tensor, teacher: Tensor, *, temperature: float = 4.0, reduction: str = "mean") -> Tensor:
    r"""Knowledge distillation (Hinton et al.): KL from the softened teacher to the softened student, times T².

    .. math::
        p^{t} = \operatorname{softmax}(t / T),\quad p^{s} = \operatorname{softmax}(s / T),\qquad
        \ell = T^2 \sum_{k} p^{t}_k \big(\log p^{t}_k - \log p^{s}_k\big)

    Args:
        input: student logits s, (N, C), (C,) or (N, C, d1, ...).
        teacher: teacher logits t, same shape (detached inside: it gets no gradient).
        temperature: T in [0.01, 1000] (4.0, mdistiller's ``CFG.KD.TEMPERATURE``). T² keeps the gradient's size comparable
            across temperatures (the soft-target gradient scales as 1/T²).
        reduction: "mean" (over rows/positions) | "sum" | "none" (one value per row, summed over the classes).

    Returns:
        The loss (scalar unless ``reduction="none"``); float32 for half-precision input.

    Raises:
        DataError: non-tensor, integer or non-finite logits, a teacher of another shape.
        ConfigError: T ≤ 0 or not a number, bad reduction.

    Example:
        >>> import math, torch, losslab.losses as L
        >>> s, t = torch.zeros(1, 2), torch.tensor([[0.0, math.log(3.0)]])   # p^t = (1/4, 3/4), p^s = (1/2, 1/2)
        >>> round(float(L.kd(s, t, temperature=1.0)), 4)   # 1/4 log(1/2) + 3/4 log(3/2)
        0.1308

    References:
        Hinton, Vinyals, Dean, "Distilling the Knowledge in a Neural Network", arXiv:1503.02531, 2015.

    Notes:
        Checked against mdistiller (megvii-research/mdistiller, ``mdistiller/distillers/KD.py::kd_loss``):
        ``F.kl_div(log_softmax(s/T), softmax(t/T), reduction="none").sum(1).mean() * T**2``, i.e.
        ``F.kl_div(..., reduction="batchmean") * T**2``, which ``reduction="mean"`` equals. mdistiller adds it to the
        label cross-entropy with weights 0.9 (KD) and 0.1 (CE); Hinton's paper mixes the two with a weighted
        average. Those weights are the caller's. Implementations written as a cross-entropy with the soft targets
        (e.g. yzd-v/cls_KD's ``KDLoss``) differ from this value by the teacher's entropy, a constant with no
        gradient.
    """
    name = "kd"
    temp = _temperature(temperature, name)
    s, t, shape = _pair(input, teacher, name, reduction)
    loss = temp**2 * _kl_softmax_rows(t / temp, s / temp, temp > 16.0)
    return reduce_loss(loss, reduction, shape=shape)


@register("dkd", summary="Decoupled KD: α·TCKD (target vs rest) + β·NCKD (among non-target classes), times T²",
          reference="Zhao, Cui, Song, Qiu, Liang, Decoupled Knowledge Distillation, arXiv:2203.08679, 2022",
          module="DKDLoss", family="distillation", target_kind=_TARGET_KIND_CLS)
def dkd(input: Tensor, teacher: Tensor, target: Tensor, *, alpha: float = 1.0, beta: float = 8.0,
        temperature: float = 4.0, ignore_index: int | None = -100, reduction: str = "mean") -> Tensor:
    r"""Decoupled knowledge distillation: the KD loss split into a target-class and a non-target-class part.

    .. math::
        p = \operatorname{softmax}(z / T),\quad b = (p_y,\ 1 - p_y),\quad
        \hat p_k = \frac{e^{z_k/T}}{\sum_{j\ne y} e^{z_j/T}}\ (k \ne y)

        \mathrm{TCKD} = \mathrm{KL}(b^{t}\,\|\,b^{s}),\qquad
        \mathrm{NCKD} = \mathrm{KL}(\hat p^{t}\,\|\,\hat p^{s}),\qquad
        \ell = T^2\,(\alpha\,\mathrm{TCKD} + \beta\,\mathrm{NCKD})

    The paper shows KD = TCKD + (1 - p^t_y) NCKD (at the same T); DKD frees the NCKD weight from the teacher's
    confidence p^t_y (tested).

    Args:
        input: student logits, (N, C), (C,) or (N, C, d1, ...) with C ≥ 2.
        teacher: teacher logits, same shape (detached inside).
        target: class indices y, (N,), () or (N, d1, ...).
        alpha: weight α ≥ 0 of TCKD (1.0, mdistiller's ``CFG.DKD.ALPHA``).
        beta: weight β ≥ 0 of NCKD (8.0, ``CFG.DKD.BETA``; the paper tunes it per teacher, e.g. 1 to 8 on CIFAR-100
            and 0.5 on ImageNet).
        temperature: T in [0.01, 1000] (4.0, ``CFG.DKD.T``; ImageNet configs use 1).
        ignore_index: target value whose rows give 0 and are left out of the mean (-100); None keeps every row.
        reduction: "mean" | "sum" | "none".

    Returns:
        The loss (scalar unless ``reduction="none"``); float32 for half-precision input.

    Raises:
        DataError: bad logits, teacher of another shape, bad class indices, fewer than 2 classes.
        ConfigError: negative α or β, T ≤ 0, bad reduction.

    Example:
        >>> import math, torch, losslab.losses as L
        >>> s, t, y = torch.zeros(1, 3), torch.tensor([[0.0, 0.0, math.log(2.0)]]), torch.tensor([0])
        >>> # p^t = (1/4, 1/4, 1/2): TCKD = 1/4 log(3/4) + 3/4 log(9/8), NCKD = 1/3 log(2/3) + 2/3 log(4/3)
        >>> round(float(L.dkd(s, t, y, alpha=1.0, beta=1.0, temperature=1.0)), 4)
        0.073

    References:
        Zhao, Cui, Song, Qiu, Liang, "Decoupled Knowledge Distillation", CVPR 2022, arXiv:2203.08679.

    Notes:
        Checked against the authors' code (megvii-research/mdistiller, ``mdistiller/distillers/DKD.py::dkd_loss``,
        defaults in ``mdistiller/engine/cfg.py``); the values agree. Differences, all numerical: the authors take
        ``log`` of the summed non-target probability (``-inf`` and a NaN loss once the student's p_y rounds to 1)
        and remove the target class from NCKD by subtracting 1000 from its scaled logit; here log(1 - p_y) is a
        logsumexp over the non-target log-probabilities and the target column is dropped exactly, so very
        confident students and logits above 1000·T stay finite. mdistiller also multiplies the loss by a linear
        warm-up ``min(epoch / 20, 1)`` (``CFG.DKD.WARMUP``) and adds the label cross-entropy (weight 1); both are
        the training loop's, not part of this function.
    """
    name = "dkd"
    a = check_number("alpha", alpha, name, low=0.0)
    bt = check_number("beta", beta, name, low=0.0)
    temp = _temperature(temperature, name)
    b, t = _with_target(input, teacher, target, name, reduction, ignore_index)
    ls, lt = torch.log_softmax(b.x / temp, 1), torch.log_softmax(t / temp, 1)
    ls_rest, lt_rest = _non_target(ls, b.target), _non_target(lt, b.target)
    ls_bin = torch.stack([pick(ls, b.target), ls_rest.logsumexp(1)], 1)  # (log p_y, log(1 - p_y))
    lt_bin = torch.stack([pick(lt, b.target), lt_rest.logsumexp(1)], 1)
    tckd = _kl_rows(lt_bin, ls_bin)
    nckd = _kl_rows(torch.log_softmax(lt_rest, 1), torch.log_softmax(ls_rest, 1))
    return b.reduce(temp**2 * (a * tckd + bt * nckd))


@register("nkd", summary="Normalized KD: -p^t_y log p^s_y - γλ² Σ_{k≠y} p̂^t_k log p̂^s_k (renormalised non-targets)",
          reference="Yang, Zeng, Li, Zhang, Yuan, Li, From Knowledge Distillation to Self-Knowledge Distillation: "
                    "A Unified Approach with Normalized Loss and Customized Soft Labels, arXiv:2303.13005, 2023",
          module="NKDLoss", family="distillation", target_kind=_TARGET_KIND_CLS)
def nkd(input: Tensor, teacher: Tensor, target: Tensor, *, gamma: float = 1.5, temperature: float = 1.0,
        ignore_index: int | None = -100, reduction: str = "mean") -> Tensor:
    r"""Normalized knowledge distillation: target-class term plus renormalised non-target soft cross-entropy.

    .. math::
        p = \operatorname{softmax}(z),\qquad
        \hat p_k = \frac{e^{z_k/\lambda}}{\sum_{j\ne y} e^{z_j/\lambda}}\ (k \ne y),\qquad
        \ell = -\,p^{t}_y \log p^{s}_y \;-\; \gamma\,\lambda^2 \sum_{k\ne y} \hat p^{t}_k \log \hat p^{s}_k

    The target term is at temperature 1; λ only softens the renormalised non-target distributions.

    Args:
        input: student logits, (N, C), (C,) or (N, C, d1, ...) with C ≥ 2.
        teacher: teacher logits, same shape (detached inside).
        target: class indices y, (N,), () or (N, d1, ...). For soft or mixed labels pass ``labels.argmax(1)``,
            which is what the authors' code does with 2-D labels.
        gamma: γ ≥ 0, weight of the non-target term (1.5, the authors' default and their ImageNet CNN setting;
            1.0 for DeiT, 3.5 on CIFAR-100).
        temperature: λ in [0.01, 1000] of the non-target term (1.0, the authors' default; 3.0 on CIFAR-100).
        ignore_index: target value whose rows give 0 and are left out of the mean (-100); None keeps every row.
        reduction: "mean" | "sum" | "none".

    Returns:
        The loss (scalar unless ``reduction="none"``); float32 for half-precision input.

    Raises:
        DataError: bad logits, teacher of another shape, bad class indices, fewer than 2 classes.
        ConfigError: γ < 0, λ ≤ 0, bad reduction.

    Example:
        >>> import math, torch, losslab.losses as L
        >>> s, t, y = torch.zeros(1, 3), torch.tensor([[math.log(2.0), 0.0, 0.0]]), torch.tensor([0])
        >>> # p^t_y = 1/2, p^s_y = 1/3, p̂^t = p̂^s = (1/2, 1/2): 1/2 log 3 + 1.5 log 2
        >>> round(float(L.nkd(s, t, y)), 4)
        1.589

    References:
        Yang, Zeng, Li, Zhang, Yuan, Li, "From Knowledge Distillation to Self-Knowledge Distillation: A Unified
        Approach with Normalized Loss and Customized Soft Labels", ICCV 2023, arXiv:2303.13005.

    Notes:
        Follows the authors' code (yzd-v/cls_KD, ``mmcls/models/dis_losses/nkd.py::NKDLoss``; defaults
        ``temp=1.0``, ``gamma=1.5``): both terms are cross-entropies with the teacher's (soft) labels, so the value
        is not 0 when the student equals the teacher (it exceeds the KL form by the teachers' entropies, constants
        without gradient). The authors add it to the label cross-entropy (weight 1); that term is the caller's.
    """
    name = "nkd"
    g = check_number("gamma", gamma, name, low=0.0)
    lam = _temperature(temperature, name)
    b, t = _with_target(input, teacher, target, name, reduction, ignore_index)
    target_term = -pick(torch.softmax(t, 1), b.target) * pick(torch.log_softmax(b.x, 1), b.target)
    s_rest, t_rest = _non_target(b.x, b.target) / lam, _non_target(t, b.target) / lam
    soft_ce = -(torch.softmax(t_rest, 1) * torch.log_softmax(s_rest, 1)).sum(1)
    return b.reduce(target_term + g * lam**2 * soft_ce)


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
