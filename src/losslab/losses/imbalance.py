"""Losses for class-imbalanced (long-tailed) data: LDAM, logit-adjusted cross-entropy, Balanced Softmax.

Each takes the training-set size of every class as ``class_counts`` (a list, NumPy array or tensor of C positive
numbers, in class-index order). :func:`class_balanced_weights` turns the same counts into class weights (Cui et al.'s
effective number of samples) to pass as ``weight=`` to any loss, e.g. for LDAM's deferred re-weighting (DRW).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from losslab._errors import ConfigError
from losslab.losses._catalogue import register
from losslab.losses._common import ClassBatch, prepare
from losslab.losses._validate import check_number

__all__ = ["balanced_softmax", "class_balanced_weights", "ldam", "logit_adjusted_cross_entropy"]

_LDAM = ("Cao, Wei, Gaidon, Arechiga, Ma, Learning Imbalanced Datasets with Label-Distribution-Aware Margin Loss, "
         "arXiv:1906.07413, 2019")
_LA = ("Menon, Jayasumana, Rawat, Jain, Veit, Kumar, Long-tail learning via logit adjustment, arXiv:2007.07314, "
       "2020")
_BALMS = "Ren et al., Balanced Meta-Softmax for Long-Tailed Visual Recognition, arXiv:2007.10740, 2020"


def _check_counts(counts: object, n_classes: int | None, loss: str) -> Tensor:
    """Per-class counts as a float64 tensor (on the counts' own device): 1-D, length C, finite and positive."""
    hint = "pass the number of training examples of each class in class-index order, e.g. class_counts=[500, 120, 7]"
    if isinstance(counts, Tensor):
        if counts.dtype == torch.bool or counts.is_complex():
            raise ConfigError(f"{loss}: class_counts must hold real numbers, got a {counts.dtype} tensor; {hint}")
        n = counts.detach().to(torch.float64)
    else:
        try:
            arr = np.asarray(counts)
        except Exception:  # ragged or exotic input
            arr = np.asarray(None)
        if arr.dtype.kind not in "iuf":  # rejects bool, complex, strings, objects, None
            raise ConfigError(f"{loss}: class_counts must be a 1-D list, NumPy array or tensor of real numbers, "
                              f"got {counts!r}; {hint}")
        n = torch.from_numpy(arr.astype(np.float64))
    if n.dim() != 1 or n.shape[0] == 0:
        raise ConfigError(f"{loss}: class_counts must be 1-D with one entry per class, got shape {tuple(n.shape)}; "
                          f"{hint}")
    if n_classes is not None and n.shape[0] != n_classes:
        raise ConfigError(f"{loss}: class_counts has {n.shape[0]} entries but the input has {n_classes} classes; "
                          f"pass one count per class (dim 1 of the input), in class-index order")
    bad = ~torch.isfinite(n) | (n <= 0)
    if bool(bad.any()):
        j = int(bad.nonzero()[0, 0])
        raise ConfigError(f"{loss}: class_counts must be finite and positive, got {float(n[j])!r} for class {j}; a "
                          f"class without training examples has no prior (log 0 = -inf): drop it from the output "
                          f"layer or count it as 1")
    return n


def _on(values: Tensor, b: ClassBatch) -> Tensor:
    """A (C,) float64 tensor moved to the batch's device and compute dtype."""
    return values.to(device=b.x.device, dtype=b.x.dtype)


def _ce(z: Tensor, b: ClassBatch) -> Tensor:
    """Cross-entropy of the (adjusted) logits ``z``, reduced like ``F.cross_entropy`` (class weights, ignore)."""
    return b.reduce(F.cross_entropy(z, b.target, reduction="none"))  # lse(z) - z_y per row, one fused kernel


@register("ldam", summary="label-distribution-aware margin loss: CE of s·(x - m_y e_y), m_j ∝ n_j^(-1/4)",
          reference=_LDAM, module="LDAMLoss", family="imbalance")
def ldam(input: Tensor, target: Tensor, *, class_counts: Any, max_m: float = 0.5, s: float = 30.0,
         weight: Tensor | None = None, ignore_index: int = -100, reduction: str = "mean") -> Tensor:
    r"""LDAM loss: cross-entropy with a larger margin for rarer classes, subtracted from the target logit only.

    .. math::
        m_j = m_{\max}\,\frac{n_j^{-1/4}}{\max_k n_k^{-1/4}},\qquad
        \ell = -\log\frac{e^{s(x_y - m_y)}}{e^{s(x_y - m_y)} + \sum_{k \ne y} e^{s x_k}}

    where :math:`n_j` is the number of training examples of class j, so the rarest class gets the margin
    :math:`m_{\max}` and class j gets :math:`m_{\max}(n_{\min}/n_j)^{1/4}`.

    Args:
        input: logits (N, C), (C,) or (N, C, d1, ...). The authors feed cosine similarities (normalised
            features and class weights, in [-1, 1]); see Notes.
        target: class indices; ``ignore_index`` positions are skipped.
        class_counts: training examples per class (C,), positive (list, NumPy array or tensor).
        max_m: largest margin :math:`m_{\max} \ge 0` (0.5, the authors' value); 0 gives CE of s·x.
        s: logit scale s > 0 (30, the authors' value for cosine logits); use 1 for unnormalised logits.
        weight: class weights (C,) as in ``F.cross_entropy``; DRW passes
            ``class_balanced_weights(class_counts, beta=0.9999)`` after the first learning-rate decay.
        ignore_index: target value that contributes neither loss nor gradient (default -100).
        reduction: "mean" | "sum" | "none".

    Returns:
        The loss (scalar unless ``reduction="none"``), float32 for half-precision input.

    Raises:
        ConfigError: ``class_counts`` not positive or not one per class; ``max_m < 0``; ``s <= 0``.
        DataError: bad logits or targets (see the catalogue conventions).

    Example:
        >>> import torch, losslab.losses as L
        >>> x, y = torch.zeros(1, 2), torch.tensor([0])   # counts 16 and 1: margins 0.25 and 0.5
        >>> round(float(L.ldam(x, y, class_counts=[16, 1], s=1.0)), 4)   # log(1 + e^0.25)
        0.8259

    References:
        Cao, Wei, Gaidon, Arechiga, Ma, "Learning Imbalanced Datasets with Label-Distribution-Aware Margin Loss",
        arXiv:1906.07413, 2019 (NeurIPS 2019). Checked against the authors' code, kaidic/LDAM-DRW:
        ``losses.py`` ``LDAMLoss`` and the DRW weights in ``cifar_train.py``.

    Notes:
        The margins are the paper's Δ_j = C/n_j^{1/4}, with C set as in the authors' code so that the largest
        is ``max_m``. The scale s and its place follow the authors' ``LDAMLoss``: the margin is subtracted
        before the logits are scaled by s, so it is s·m_y in softmax units (the paper's full text was not
        checked on this point; the code is followed and tested). The defaults s = 30 and
        max_m = 0.5 are the authors' CIFAR settings, chosen for cosine logits from their ``NormedLinear`` head;
        with an ordinary linear head pass ``s=1`` (or normalise the head). Deferred re-weighting (DRW):
        the authors train with ``weight=None`` (their β = 0 gives all-ones weights) and switch to
        ``class_balanced_weights(class_counts, beta=0.9999)`` at epoch 160 of 200. Class weights and
        ``reduction="mean"`` follow ``F.cross_entropy`` (weighted mean), exactly as the authors' code does
        (which has no ``reduction`` or ``ignore_index``; neither has ``pytorch_optimizer.LDAMLoss``).
    """
    name = "ldam"
    mm = check_number("max_m", max_m, name, low=0.0)
    sc = check_number("s", s, name, low=0.0, low_open=True)
    b = prepare(input, target, loss=name, reduction=reduction, weight=weight, ignore_index=ignore_index)
    inv = _check_counts(class_counts, b.n_classes, name).pow(-0.25)
    margins = _on(mm * inv / inv.max(), b)
    delta = torch.zeros_like(b.x).scatter(1, b.target.unsqueeze(1), margins[b.target].unsqueeze(1))
    return _ce(sc * (b.x - delta), b)


@register("logit_adjusted_cross_entropy", summary="logit-adjusted CE: softmax CE of x + τ·log(class prior)",
          reference=_LA, module="LogitAdjustedCrossEntropyLoss", family="imbalance")
def logit_adjusted_cross_entropy(input: Tensor, target: Tensor, *, class_counts: Any, tau: float = 1.0,
                                 weight: Tensor | None = None, ignore_index: int = -100,
                                 reduction: str = "mean") -> Tensor:
    r"""Logit-adjusted cross-entropy: add τ times the log class prior to the logits during training.

    .. math::
        \pi_j = \frac{n_j}{\sum_k n_k},\qquad
        \ell = -\log\frac{e^{x_y + \tau\log\pi_y}}{\sum_k e^{x_k + \tau\log\pi_k}}

    Frequent classes get a head start during training, so the model's raw logits ``x`` become balanced: predict
    with ``argmax x`` (no adjustment at test time). τ = 0 is plain cross-entropy; τ = 1 equals
    :func:`balanced_softmax`.

    Args:
        input: logits (N, C), (C,) or (N, C, d1, ...).
        target: class indices; ``ignore_index`` positions are skipped.
        class_counts: training examples per class (C,), positive; only their ratios matter (the prior π).
        tau: temperature τ ≥ 0 of the adjustment (1, the paper's and the authors' default).
        weight: class weights (C,) as in ``F.cross_entropy``.
        ignore_index: target value to skip (default -100).
        reduction: "mean" | "sum" | "none".

    Returns:
        The loss (scalar unless ``reduction="none"``), float32 for half-precision input.

    Raises:
        ConfigError: ``class_counts`` not positive or not one per class; ``tau < 0``.
        DataError: bad logits or targets.

    Example:
        >>> import torch, losslab.losses as L
        >>> x, y = torch.zeros(1, 2), torch.tensor([1])   # prior (3/4, 1/4): -log(1/4)
        >>> round(float(L.logit_adjusted_cross_entropy(x, y, class_counts=[3, 1])), 4)
        1.3863

    References:
        Menon, Jayasumana, Rawat, Jain, Veit, Kumar, "Long-tail learning via logit adjustment",
        arXiv:2007.07314, 2020 (ICLR 2021), the logit-adjusted softmax cross-entropy. Checked against the
        authors' code, google-research/google-research ``logit_adjustment/utils.py`` ``build_loss_fn``.

    Notes:
        The authors' code adds ``log(π**τ + 1e-12)``, a guard against classes with prior 0. Here counts must be
        positive, so the guard is not needed and the paper's τ·log π is used exactly (computed as
        τ·(log n_j - log Σn) in float64); the two differ by at most 1e-12/π_j^τ in each logit, so by at most
        1e-6 for priors of at least 1e-6 at τ = 1. Negative τ is rejected: it would enlarge the bias toward frequent classes.
        The post-hoc variant (subtract τ·log π from a trained model's logits at test time) needs no loss.
    """
    name = "logit_adjusted_cross_entropy"
    t = check_number("tau", tau, name, low=0.0)
    b = prepare(input, target, loss=name, reduction=reduction, weight=weight, ignore_index=ignore_index)
    n = _check_counts(class_counts, b.n_classes, name)
    log_prior = n.log() - math.log(float(n.sum()))
    return _ce(b.x + _on(t * log_prior, b), b)


@register("balanced_softmax", summary="Balanced Softmax: softmax CE of x + log n_j (class counts)",
          reference=_BALMS, module="BalancedSoftmaxLoss", family="imbalance")
def balanced_softmax(input: Tensor, target: Tensor, *, class_counts: Any, weight: Tensor | None = None,
                     ignore_index: int = -100, reduction: str = "mean") -> Tensor:
    r"""Balanced Softmax loss: cross-entropy of the logits shifted by the log class counts.

    .. math:: \ell = -\log\frac{n_y\,e^{x_y}}{\sum_k n_k\,e^{x_k}}

    It models the label shift between the long-tailed training set and a balanced test set; predict with
    ``argmax x``. Equal to :func:`logit_adjusted_cross_entropy` with τ = 1 (log n_j and log π_j differ by a
    constant, which the softmax ignores).

    Args:
        input: logits (N, C), (C,) or (N, C, d1, ...).
        target: class indices; ``ignore_index`` positions are skipped.
        class_counts: training examples per class (C,), positive.
        weight: class weights (C,) as in ``F.cross_entropy`` (not in the paper; None by default).
        ignore_index: target value to skip (default -100).
        reduction: "mean" | "sum" | "none".

    Returns:
        The loss (scalar unless ``reduction="none"``), float32 for half-precision input.

    Raises:
        ConfigError: ``class_counts`` not positive or not one per class.
        DataError: bad logits or targets.

    Example:
        >>> import torch, losslab.losses as L
        >>> x, y = torch.zeros(1, 2), torch.tensor([1])   # -log(1 / (3 + 1))
        >>> round(float(L.balanced_softmax(x, y, class_counts=[3, 1])), 4)
        1.3863

    References:
        Ren, Yu, Sheng, Ma, Zhao, Yi, Li, "Balanced Meta-Softmax for Long-Tailed Visual Recognition",
        arXiv:2007.10740, 2020 (NeurIPS 2020). Checked against the authors' code,
        jiawei-ren/BalancedMetaSoftmax-Classification ``loss/BalancedSoftmaxLoss.py`` ``balanced_softmax_loss``.

    Notes:
        The authors cast the counts to the logits' dtype before the log; here log n is taken in float64 and
        added in the compute dtype (float32 for half inputs), so counts above 2048 are not rounded by float16.
        The Meta Sampler half of Balanced Meta-Softmax (a learned data sampler) is not a loss and is not included.
    """
    name = "balanced_softmax"
    b = prepare(input, target, loss=name, reduction=reduction, weight=weight, ignore_index=ignore_index)
    n = _check_counts(class_counts, b.n_classes, name)
    return _ce(b.x + _on(n.log(), b), b)


def class_balanced_weights(class_counts: Any, beta: float = 0.9999, *, dtype: torch.dtype = torch.float32
                           ) -> Tensor:
    r"""Class weights from the effective number of samples, normalised to sum to C.

    .. math::
        E_j = \frac{1 - \beta^{n_j}}{1 - \beta},\qquad
        w_j = C\,\frac{1/E_j}{\sum_k 1/E_k}

    β = 0 gives uniform weights (all 1), β → 1 weights proportional to the inverse frequency 1/n_j; β = 1 is
    accepted and returns that limit. Pass the result as ``weight=`` to any loss (e.g. :func:`ldam` for DRW,
    :func:`focal` or :func:`cross_entropy` for the class-balanced losses of the paper).

    Args:
        class_counts: training examples per class (C,), positive (list, NumPy array or tensor).
        beta: β in [0, 1] (0.9999, the value of the LDAM-DRW code and the paper's best on long-tailed CIFAR).
        dtype: floating dtype of the result (float32, like the authors' ``torch.FloatTensor``).

    Returns:
        A (C,) tensor of positive weights summing to C, on the device of ``class_counts`` if it is a tensor.

    Raises:
        ConfigError: ``class_counts`` not 1-D, finite and positive; β outside [0, 1]; ``dtype`` not floating.

    Example:
        >>> import losslab.losses as L
        >>> w = L.class_balanced_weights([1, 2], beta=0.5)   # 1/E = (1, 2/3), scaled to sum to 2
        >>> [round(v, 4) for v in w.tolist()]
        [1.2, 0.8]

    References:
        Cui, Jia, Lin, Song, Belongie, "Class-Balanced Loss Based on Effective Number of Samples",
        arXiv:1901.05555, 2019 (CVPR 2019). Checked against richardaecn/class-balanced-loss
        ``src/cifar_main.py`` (weights = (1 - β)/(1 - β^n), normalised to sum to C) and the same formula in
        kaidic/LDAM-DRW ``cifar_train.py`` (``Reweight`` and ``DRW`` rules).

    Notes:
        1 - β^n is computed as ``-expm1(n·log1p(β - 1))`` in float64, so β close to 1 (0.99999) loses no digits;
        otherwise the result equals the authors' NumPy expression. The authors' command-line default is β = 0
        (no re-weighting); 0.9999 is the value they use for re-weighting.
    """
    name = "class_balanced_weights"
    bt = check_number("beta", beta, name, low=0.0, high=1.0)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ConfigError(f"{name}: dtype must be a floating torch.dtype such as torch.float32, got {dtype!r}")
    n = _check_counts(class_counts, None, name)
    if bt == 0.0:
        inv_eff = torch.ones_like(n)  # (1 - 0)/(1 - 0^n) = 1
    elif bt == 1.0:
        inv_eff = 1.0 / n  # the β → 1 limit of (1 - β)/(1 - β^n)
    else:
        log_beta = math.log1p(bt - 1.0) if bt >= 0.5 else math.log(bt)  # log1p keeps β ≈ 1 exact
        inv_eff = (1.0 - bt) / -torch.expm1(n * log_beta)
    return (inv_eff / inv_eff.sum() * n.shape[0]).to(dtype)
