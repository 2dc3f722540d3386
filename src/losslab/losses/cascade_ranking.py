"""Cascade ranking: LCRON, one loss for every stage of a top-k selection cascade (retrieval → pre-rank → ...).

A batch of queries holds the same n candidate items scored by each of S ≥ 2 stages: ``stage_scores`` (S, B, n) or a
list of S tensors (B, n), ``labels`` (B, n) giving the ground-truth order (higher is better, any real values) and an
optional boolean ``mask`` (B, n), True at real items and False at padding (padding may sit anywhere). Each query
gives one value; the reduction is over the queries of the batch.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import torch
from torch import Tensor

from losslab._errors import ConfigError, DataError
from losslab.losses._catalogue import register
from losslab.losses._reduce import reduce_loss
from losslab.losses._slate import check_mask, neural_sort
from losslab.losses._validate import check_finite, check_float, check_number, check_reduction

__all__ = ["lcron_loss"]

_REF = ("Wang, Zhang, Wang, Yang, Li, Yang, Wen, Jiang, Gai, Learning Cascade Ranking as One Network, "
        "arXiv:2503.09492, 2025")
_EPS = 1e-6  # the authors' guard, added to the detached column sums and inside every log
_LABEL_TAU = 1e-4  # NeuralSort temperature the authors sort the labels with (a hard sort up to near-ties)


def _stages(stage_scores: object, name: str) -> Tensor:
    """(S, B, n) scores in the compute dtype from a 3-D tensor or a sequence of S (B, n) tensors (S ≥ 2)."""
    if isinstance(stage_scores, Tensor):
        x = check_float("stage_scores", stage_scores, name)
        if x.dim() != 3:
            raise DataError(f"{name}: stage_scores must have shape (stages, batch, items) or be a list of (batch, "
                            f"items) tensors, one per stage, got {tuple(x.shape)}")
        parts = list(x.unbind(0))
    elif isinstance(stage_scores, Sequence) and not isinstance(stage_scores, str):
        parts = list(stage_scores)
        if not all(isinstance(p, Tensor) for p in parts):
            raise DataError(f"{name}: stage_scores must be a torch.Tensor (S, B, n) or a sequence of S torch.Tensor "
                            f"(B, n), one per stage; got a sequence holding "
                            f"{sorted({type(p).__name__ for p in parts})}")
        for j, p in enumerate(parts):
            check_float(f"stage_scores[{j}]", p, name)
            if p.dim() != 2:
                raise DataError(f"{name}: stage_scores[{j}] must have shape (batch, items), got {tuple(p.shape)}")
        shapes = [tuple(p.shape) for p in parts]
        if len(set(shapes)) > 1:
            raise DataError(f"{name}: the stages' scores have different shapes {shapes}; every stage must score "
                            f"the same (batch, items) candidates, in the same order")
        if len({p.device for p in parts}) > 1:
            raise DataError(f"{name}: the stages' scores sit on different devices "
                            f"{sorted({str(p.device) for p in parts})}; move them to one device")
    else:
        raise DataError(f"{name}: stage_scores must be a torch.Tensor (S, B, n) or a sequence of S torch.Tensor "
                        f"(B, n), got {type(stage_scores).__name__}")
    if len(parts) < 2:
        raise DataError(f"{name}: LCRON trains a cascade and needs the scores of at least 2 stages, got "
                        f"{len(parts)}; for one stage use a single-stage ranking loss")
    dtype = torch.float64 if any(p.dtype == torch.float64 for p in parts) else torch.float32
    return torch.stack([p.to(dtype) for p in parts])


def _labels_and_mask(labels: object, mask: object, shape: tuple[int, int], device: torch.device,
                     name: str) -> tuple[Tensor, Tensor]:
    """Labels in float64 (float32 on MPS, which has no float64; 0 at padding) and the boolean mask of real items."""
    if not isinstance(labels, Tensor) or labels.is_complex():
        got = labels.dtype if isinstance(labels, Tensor) else type(labels).__name__
        raise DataError(f"{name}: labels must be a real torch.Tensor of shape {shape} (the ground-truth order of "
                        f"the items, higher is better), got {got}")
    if tuple(labels.shape) != shape:
        raise DataError(f"{name}: labels must have the shape of one stage's scores {shape} (one label per item), "
                        f"got {tuple(labels.shape)}")
    if labels.dtype.is_floating_point:
        check_finite("labels", labels, name)
    valid = check_mask(mask, shape, device, name)
    y = labels.detach().to(device=device, dtype=torch.float32 if device.type == "mps" else torch.float64)
    return torch.where(valid, y, 0.0), valid


def _top_k(top_k: object, n: int, name: str) -> int:
    if isinstance(top_k, bool) or not isinstance(top_k, numbers.Integral) or not 1 <= int(top_k) < n:
        raise ConfigError(f"{name}: top_k must be an integer in [1, n - 1] = [1, {n - 1}] (the number of items the "
                          f"cascade finally selects, fewer than the n = {n} candidates; the authors use 10 of 40), "
                          f"got {top_k!r}")
    return int(top_k)


def _weights(stage_weights: object, s: int, dtype: torch.dtype, device: torch.device, name: str) -> Tensor:
    """The uncertainty weights w (S,), ones when not given."""
    if stage_weights is None:
        return torch.ones(s, dtype=dtype, device=device)
    if isinstance(stage_weights, Tensor):
        w = stage_weights
        if not w.dtype.is_floating_point:
            raise DataError(f"{name}: stage_weights must be a floating tensor, got {w.dtype}")
    elif isinstance(stage_weights, Sequence) and all(
            isinstance(v, numbers.Real) and not isinstance(v, bool) for v in stage_weights):
        w = torch.tensor([float(v) for v in stage_weights], dtype=dtype, device=device)
    else:
        raise DataError(f"{name}: stage_weights must be a tensor or a list of S real numbers, one per stage, got "
                        f"{stage_weights!r}")
    if tuple(w.shape) != (s,):
        raise DataError(f"{name}: stage_weights has shape {tuple(w.shape)} but there are {s} stages; pass one weight "
                        f"per stage (LCRONLoss: num_stages={s})")
    check_finite("stage_weights", w, name)
    wd = w.detach()
    if bool((wd == 0).any()) or float(wd.double().prod()) <= 0:
        raise DataError(f"{name}: stage_weights {wd.tolist()} must be non-zero with a positive product: the loss "
                        f"has 1/w_j² and log(Π_j w_j) terms; start them at 1 (the authors' initial value)")
    return w.to(device=device, dtype=dtype)


@register("lcron", summary="LCRON: −log of the soft probability that the ground-truth top-k survives every stage of "
                           "a cascade, plus per-stage top-k losses with learnable uncertainty weights",
          reference=_REF, module="LCRONLoss", family="ranking", input_kind="regression",
          target_kind="ground-truth order (batch, items)", aliases=("lcron_loss",))
def lcron_loss(stage_scores: Tensor | Sequence[Tensor], labels: Tensor, mask: Tensor | None = None, *,
               top_k: int = 10, tau: float = 50.0, stage_weights: Tensor | Sequence[float] | None = None,
               label_threshold: float | None = None, reduction: str = "mean") -> Tensor:
    r"""LCRON: train every stage of a cascade ranking system (retrieval, pre-ranking, ...) as one network.

    For stage j, NeuralSort of its scores over the m real items of a query (rows = ranks, columns = items,
    temperature τ) gives :math:`P^j`; the soft probability that item i is in (out of) the stage's top k is its
    rank mass above (below) k over its column mass, the normaliser carrying no gradient (sg):

    .. math::
        h^j_i = \frac{\sum_{r\le k} P^j_{ri}}{\mathrm{sg}[\sum_r P^j_{ri}] + \epsilon},\qquad
        t^j_i = \frac{\sum_{r>k} P^j_{ri}}{\mathrm{sg}[\sum_r P^j_{ri}] + \epsilon},\qquad \epsilon = 10^{-6}.

    The labels are sorted the same way at τ = 1e-4 into L (a hard sort; tied items share the rows they span) and
    :math:`y_i = \sum_{r\le k} L_{ri}`, :math:`\bar y_i = \sum_{r>k} L_{ri}` (1 and 0 for an item of the true
    top k, 0 and 1 for the others). With means over the m real items:

    .. math::
        \mathcal L_{\mathrm{joint}} = \operatorname*{mean}_i\Big[-y_i\log\big(\textstyle\prod_j h^j_i + \epsilon\big)
            - \mathrm{clip}(1 - y_i, 0, 1)\log\big(1 - \textstyle\prod_j (1 - t^j_i) + \epsilon\big)\Big]

    .. math::
        \mathcal L^j_{\mathrm{single}} = [m > k]\operatorname*{mean}_i\big[-y_i\log(h^j_i + \epsilon)
            - \bar y_i\log(t^j_i + \epsilon)\big],\qquad
        \ell = \sum_j \frac{\mathcal L^j_{\mathrm{single}}}{2 w_j^2} + \mathcal L_{\mathrm{joint}}
            + \log\prod_j w_j

    (Kendall-style uncertainty weighting; the authors learn w, starting at 1: use :class:`LCRONLoss`).

    Args:
        stage_scores: the scores of S ≥ 2 stages for the same candidates, a tensor (S, B, n) or a list of S
            tensors (B, n); gradients flow to every stage.
        labels: the ground-truth order (B, n), higher is better (the authors: rank-stage priority). Values closer
            than about 1e-3 are partly tied (as in the authors' code); use integer ranks or separated values.
        mask: optional torch.bool (B, n), True at real items.
        top_k: k, the number of items the cascade finally selects (10, the authors' ``gt_num``); 1 ≤ k < n.
        tau: NeuralSort temperature τ of the stages' scores (50, the authors' default), in [1e-6, 1e6].
        stage_weights: the uncertainty weights w (S,), non-zero with a positive product; None: all 1 (each single
            loss then counts ½). Pass a learnable tensor to train them (what :class:`LCRONLoss` does).
        label_threshold: None (default, the authors' two-stage code): the label matrix L is the τ = 1e-4 NeuralSort
            itself, so a group of tied items shares each row it spans and y counts its share of the top k. A
            number in (0, 1) (the three-stage code uses 1e-3): entries above it become 1, the rest 0, so each tied
            item counts every row its group spans (y can exceed 1).
        reduction: "mean" over the queries with a real item | "sum" | "none" ((B,), 0 for a query without one).

    Returns:
        The loss (scalar unless ``reduction="none"``); a query's value is the authors' loss on a batch holding
        only that query, so the mean over a batch without padding equals the authors' batch value.

    Raises:
        DataError: scores not (S, B, n) floats or stages of different shapes, fewer than 2 stages, labels or mask
            of another shape, NaN/Inf, bad stage_weights. ConfigError: top_k not in [1, n − 1], τ out of range,
            label_threshold not in (0, 1).

    Example:
        >>> import torch, losslab.losses as L
        >>> retrieval = torch.tensor([[3.0, 1.0, 2.0]])   # puts item 0 (the true top-1) first
        >>> prerank = torch.tensor([[1.0, 3.0, 2.0]])     # puts it last: items 0 and 1 are misplaced
        >>> labels = torch.tensor([[2.0, 1.0, 0.0]])
        >>> loss = L.lcron_loss([retrieval, prerank], labels, top_k=1, tau=1e-6)   # hard sorts
        >>> round(float(loss), 4)   # ½·(2/3)(−log 1e−6) + (1/3)(−log 1e−6): −log ε per miss
        9.2103

    References:
        Yunli Wang, Zhen Zhang, Zhiqiang Wang, Zixuan Yang, Yu Li, Jian Yang, Shiyang Wen, Peng Jiang, Kun Gai,
        "Learning Cascade Ranking as One Network", ICML 2025, arXiv:2503.09492, 2025. NeuralSort: Grover, Wang,
        Zweig, Ermon, arXiv:1903.08850, 2019.

    Notes:
        Follows the authors' code (kwai/LCRON ``deep_components/loss/two_stage/lcron.py``: ``JointUltraLoss``,
        ``LsingleLoss``, ``LcronLossModel``, ``compute_lcron_metrics``; ``loss/sorting.py::neuralsort``): the
        detached column normaliser, the 1e-6 terms, the joint "down" term as 1 − Π(1 − t) with the clipped label
        while the single "down" term uses t and ȳ, [m > k] on the single losses, and one k for every stage and for
        the labels (the code's config names 30 and 20 for the two stages, but ``LCRON`` overrides both with
        ``gt_num``). In the two-stage code the labels' > 1e-3 threshold is computed after the label matrix was
        stored, so it is not applied (``label_threshold=None``); the three-stage file applies it. S stages: the
        two- and three-stage files are the same construction (products over stages, one weight per stage).
        Differences: NeuralSort runs over each query's real items only, and means are over them; the authors
        sort every slot of the padded width n (padding scores included) and average over n, which with
        padding at the end and very low padded scores gives (m/n) times these values, plus
        (n − m)/n·(−log 1e−6) in the joint term (a constant from the padded slots; tested). The loss with
        learnable weights is not bounded below (log w); the weights settle at w_j² = L^j_single.
        Cost: O(S B n²) memory, kept for the backward pass.
    """
    name = "lcron"
    red = check_reduction(reduction, name)
    x = _stages(stage_scores, name)
    s, b, n = (int(v) for v in x.shape)
    y, valid = _labels_and_mask(labels, mask, (b, n), x.device, name)
    k = _top_k(top_k, n, name)
    t = check_number("tau", tau, name, low=1e-6, high=1e6)
    thr = None if label_threshold is None else check_number("label_threshold", label_threshold, name, low=0.0,
                                                            high=1.0, low_open=True, high_open=True)
    w = _weights(stage_weights, s, x.dtype, x.device, name)

    with torch.no_grad():
        lab = neural_sort(y, valid, _LABEL_TAU, all_valid=mask is None)  # ties exact; gaps ≥ 1e-3 sort hard
        if thr is not None:
            lab = (lab > thr).to(lab.dtype)
        lab = lab.to(x.dtype)
    y_top, y_rest = lab[:, :k].sum(1), lab[:, k:].sum(1)  # (B, n)

    real = valid.to(x.dtype)
    m = valid.sum(1)
    per_item = real / m.clamp_min(1).to(x.dtype).unsqueeze(1)  # mean over the real items of a query
    singles, survive, drop = [], torch.ones_like(y_top), torch.ones_like(y_top)
    for j in range(s):
        p = neural_sort(x[j], valid, t, all_valid=mask is None)  # (B, rank, item), zero outside the real block
        norm = p.detach().sum(1) + _EPS
        head, tail = p[:, :k].sum(1) / norm, p[:, k:].sum(1) / norm
        single = -(y_top * torch.log(head + _EPS) + y_rest * torch.log(tail + _EPS))
        singles.append((single * per_item).sum(1) * (m > k).to(x.dtype))
        survive = survive * head
        drop = drop * (1 - tail)
    joint = -(y_top * torch.log(survive + _EPS) + (1 - y_top).clamp(0, 1) * torch.log(1 - drop + _EPS))
    loss = (joint * per_item).sum(1) + torch.log(w.prod())
    for j in range(s):
        loss = loss + singles[j] * (0.5 / w[j].square())
    return reduce_loss(loss, red, mask=m > 0, empty="zero")

