"""Learning-to-rank losses on slates of scores: NeuralNDCG, ApproxNDCG, ListNet, ListMLE, RankNet.

Every function takes ``input`` (B, n) scores, ``target`` (B, n) graded relevance labels (≥ 0, any real dtype) and
an optional boolean ``mask`` (B, n), True at real items and False at padding (padding may sit anywhere). allRank
marks padding with the label -1 instead; its inputs map to ``mask=target != -1``. Negative labels at real items
are a DataError, so allRank-style padding cannot be mistaken for a label. Each loss gives one value per slate;
the reduction is over the slates of the batch. Slates with nothing to rank (no real item, no relevant item for
the NDCG losses, no pair with different labels for RankNet) give 0 and are left out of the mean; if no slate
counts, the mean is 0 (as in allRank's NDCG losses), so such a batch gives a zero gradient.
"""

from __future__ import annotations

import numbers

import torch
import torch.nn.functional as F
from torch import Tensor

from losslab._errors import ConfigError
from losslab.losses._catalogue import register
from losslab.losses._reduce import reduce_loss
from losslab.losses._slate import (
    check_k,
    check_temperature,
    discounts,
    gains,
    ideal_dcg,
    neural_sort,
    prepare_slates,
    sinkhorn,
)
from losslab.losses._validate import check_number

__all__ = ["approx_ndcg", "listmle", "listnet", "neural_ndcg", "ranknet"]

_TARGET = "graded relevance (batch, slate)"


def _fill(dtype: torch.dtype) -> float:
    """A finite score for padded items whose exp() is exactly 0 next to any real score (no -inf in the graph)."""
    return torch.finfo(dtype).min / 4



def _minus_ndcg(dcg: Tensor, idcg: Tensor, reduction: str) -> Tensor:
    """-DCG / IDCG per slate; slates without a relevant item (IDCG = 0) are left out of the mean."""
    has = idcg > 0
    return reduce_loss(-dcg / torch.where(has, idcg, torch.ones_like(idcg)), reduction, mask=has, empty="zero")

@register("neural_ndcg", summary="NeuralNDCG: −NDCG@k of the labels sorted by NeuralSort + Sinkhorn (soft ranks)",
          reference="Pobrotyn, Białobrzeski, NeuralNDCG: Direct Optimisation of a Ranking Metric via "
                    "Differentiable Relaxation of Sorting, arXiv:2102.07831, 2021",
          module="NeuralNDCGLoss", family="ranking", input_kind="regression", target_kind=_TARGET)
def neural_ndcg(input: Tensor, target: Tensor, mask: Tensor | None = None, *, temperature: float = 1.0,
                k: int | None = None, powered_relevancies: bool = True, transposed: bool = False,
                sinkhorn_iters: int = 50, sinkhorn_tol: float = 1e-6, reduction: str = "mean") -> Tensor:
    r"""NeuralNDCG: minus the NDCG@k of a differentiable (NeuralSort) relaxation of the sorted slate.

    For a slate of m real items with scores s, NeuralSort gives a soft permutation matrix (row i = rank i):

    .. math::
        \hat P_{i,:} = \operatorname{softmax}\Big(\frac{(m + 1 - 2i)\,s - A_s\mathbf 1}{\tau}\Big),\qquad
        (A_s)_{jk} = |s_j - s_k|,

    made (nearly) doubly stochastic by Sinkhorn scaling. With gains g = 2^y − 1 (or y) and discounts
    d_r = 1/\log_2(r + 1):

    .. math::
        \ell = -\frac{\sum_{r=1}^{k} d_r\,(\hat P g)_r}{\mathrm{IDCG@}k},\qquad
        \ell^{\top} = -\frac{\sum_j g_j\,(\hat P^{\top} d^{(k)})_j}{\mathrm{IDCG@}k}

    (ℓ^⊤: the transposed variant, each item's gain times its expected discount; d^(k)_r = 0 for r > k). As τ → 0,
    \hat P tends to the sorting permutation and −ℓ to the exact NDCG@k. **The value is −NDCG (in [−1, 0]), to
    be minimised**, as in allRank; 1 + ℓ is the usual non-negative form.

    Args:
        input: scores (B, n).
        target: relevance labels (B, n), ≥ 0.
        mask: optional torch.bool (B, n), True at real items (allRank's ``y_true == -1`` padding is
            ``mask=target != -1``).
        temperature: τ in [1e-6, 1e6] of NeuralSort (allRank's default 1.0; smaller is closer to the exact sort and has
            steeper gradients).
        k: truncation rank of NDCG@k; None (default, as allRank) uses the whole slate.
        powered_relevancies: gains 2^y − 1 (default, as allRank) or y.
        transposed: the transposed variant NeuralNDCG^T (rows of the relaxed matrix spread each item over ranks).
        sinkhorn_iters: maximum Sinkhorn rounds (50, allRank's value); 0 skips the scaling (plain NeuralSort).
        sinkhorn_tol: stop a slate once its row and column sums are within this of 1 (1e-6, allRank's value);
            0 always runs ``sinkhorn_iters`` rounds (the value is then a smooth function of the scores, which
            finite-difference checks need; the early stop changes it by at most about the tolerance).
        reduction: "mean" over slates with a relevant item | "sum" | "none" (0 for slates without one).

    Returns:
        The loss (scalar unless ``reduction="none"``), −NDCG per slate.

    Raises:
        DataError: scores not (B, n) floats, labels of another shape, negative labels at real items, a mask that
            is not torch.bool of the same shape, NaN/Inf. ConfigError: τ ≤ 0, k < 1, negative Sinkhorn options.

    Example:
        >>> import torch, losslab.losses as L
        >>> s, y = torch.tensor([[2.0, 1.0]]), torch.tensor([[1.0, 0.0]])
        >>> round(float(L.neural_ndcg(s, y)), 4)   # -(σ(1) + σ(-1)/log2(3)), the relaxed rank-1 mass is σ(1)
        -0.9007
        >>> round(float(L.neural_ndcg(s, y, temperature=1e-3)), 4)   # τ → 0: minus the exact NDCG
        -1.0

    References:
        Przemysław Pobrotyn, Radosław Białobrzeski, "NeuralNDCG: Direct Optimisation of a Ranking Metric via
        Differentiable Relaxation of Sorting", arXiv:2102.07831, 2021. NeuralSort: Grover, Wang, Zweig, Ermon,
        "Stochastic Optimization of Sorting Networks via Continuous Relaxations", arXiv:1903.08850, 2019.

    Notes:
        Checked against allRank (allegro/allRank): ``neuralNDCG``, ``neuralNDCG_transposed``,
        ``loss_utils.deterministic_neural_sort`` and ``sinkhorn_scaling``, ``metrics.dcg``. Same defaults,
        the same Sinkhorn order (columns, then rows, denominators floored at 1e-10, padded block of ones) and the
        same treatment of slates without a relevant item (0, left out of the mean; 0 if none has one).
        Differences: padding may sit anywhere in a slate (allRank's masking of the rank rows assumes it sits at
        the end); the Sinkhorn stop is per slate, not for the whole batch; NDCG divides by IDCG exactly instead
        of IDCG + 1e-10; in the transposed variant with ``powered_relevancies=False`` the ideal DCG uses the
        linear gain too (allRank keeps 2^y − 1 there). The stochastic (Gumbel-perturbed) variant is not
        included. Cost: O(B n²) memory per Sinkhorn round, kept for the backward pass.
    """
    name = "neural_ndcg"
    x, y, valid = prepare_slates(input, target, mask, name, reduction)
    tau = check_temperature(temperature, name)
    k_ = check_k(k, name)
    iters = sinkhorn_iters
    if isinstance(iters, bool) or not isinstance(iters, numbers.Integral) or int(iters) < 0:
        raise ConfigError(f"{name}: sinkhorn_iters must be an integer ≥ 0 (50 is allRank's value), got {iters!r}")
    tol = check_number("sinkhorn_tol", sinkhorn_tol, name, low=0.0)
    g = gains(y, bool(powered_relevancies), name)
    d = discounts(x.shape[1], k_, x.dtype, x.device)
    p = sinkhorn(neural_sort(x, valid, tau, all_valid=mask is None), valid, int(iters), tol)
    if transposed:
        dcg = (g * (p.transpose(1, 2) @ d)).sum(1)
    else:
        dcg = ((p @ g.unsqueeze(2)).squeeze(2) * d).sum(1)
    return _minus_ndcg(dcg, ideal_dcg(g, d), reduction)


@register("approx_ndcg", summary="ApproxNDCG: −NDCG with sigmoid-smoothed ranks π̂_j = 1 + Σ_k σ(α(s_k − s_j))",
          reference="Qin, Liu, Li, A general approximation framework for direct optimization of information "
                    "retrieval measures, doi:10.1007/s10791-009-9124-x, 2010",
          module="ApproxNDCGLoss", family="ranking", input_kind="regression", target_kind=_TARGET)
def approx_ndcg(input: Tensor, target: Tensor, mask: Tensor | None = None, *, alpha: float = 1.0,
                reduction: str = "mean") -> Tensor:
    r"""ApproxNDCG: minus the NDCG computed with smooth approximate ranks.

    .. math::
        \hat\pi_j = 1 + \sum_{k\ne j}\sigma\big(\alpha(s_k - s_j)\big),\qquad
        \ell = -\frac{1}{\mathrm{IDCG}}\sum_j \frac{2^{y_j} - 1}{\log_2(1 + \hat\pi_j)}

    over the real items of a slate (π̂_j → the rank of item j as α → ∞). **The value is −NDCG, to be
    minimised**, as in allRank.

    Args:
        input: scores (B, n).
        target: relevance labels (B, n), ≥ 0.
        mask: optional torch.bool (B, n), True at real items (allRank: ``mask=target != -1``).
        alpha: α > 0, the slope of the sigmoid (allRank's default 1.0; the paper tunes it, larger is closer to
            the exact ranks and has steeper gradients).
        reduction: "mean" over slates with a relevant item | "sum" | "none" (0 for slates without one).

    Returns:
        The loss (scalar unless ``reduction="none"``), −NDCG per slate.

    Example:
        >>> import torch, losslab.losses as L
        >>> s, y = torch.tensor([[2.0, 1.0]]), torch.tensor([[1.0, 0.0]])
        >>> round(float(L.approx_ndcg(s, y)), 4)   # π̂ = 1 + σ(-1) = 1.2689: -1/log2(2.2689)
        -0.846

    References:
        Tao Qin, Tie-Yan Liu, Hang Li, "A general approximation framework for direct optimization of information
        retrieval measures", Information Retrieval 13(4), 2010, doi:10.1007/s10791-009-9124-x.

    Notes:
        Checked against allRank's ``approxNDCGLoss`` (allegro/allRank): gains 2^y − 1, no truncation at k,
        α = 1. Differences: allRank floors each σ term at 1e-10 (here the exact σ, a difference below 1e-10
        per pair) and counts slates whose IDCG is 0 in the mean as 0; here they are left out of the mean, as in
        allRank's NeuralNDCG (the two agree when every slate has a relevant item).
    """
    name = "approx_ndcg"
    x, y, valid = prepare_slates(input, target, mask, name, reduction)
    a = check_number("alpha", alpha, name, low=0.0, low_open=True)
    n = x.shape[1]
    pair = valid.unsqueeze(1) & valid.unsqueeze(2) & ~torch.eye(n, dtype=torch.bool, device=x.device)
    sig = torch.sigmoid(a * (x.unsqueeze(1) - x.unsqueeze(2)))  # [b, j, k] = σ(α (s_k - s_j))
    pos = 1 + torch.where(pair, sig, 0.0).sum(2)
    g = gains(y, True, name)
    dcg = (g / torch.log2(1 + pos)).sum(1)
    return _minus_ndcg(dcg, ideal_dcg(g, discounts(n, None, x.dtype, x.device)), reduction)


@register("listnet", summary="ListNet: cross-entropy between the top-one distributions softmax(y) and softmax(s)",
          reference="Cao, Qin, Liu, Tsai, Li, Learning to Rank: From Pairwise Approach to Listwise Approach, "
                    "doi:10.1145/1273496.1273513, 2007",
          module="ListNetLoss", family="ranking", input_kind="regression", target_kind=_TARGET)
def listnet(input: Tensor, target: Tensor, mask: Tensor | None = None, *, reduction: str = "mean") -> Tensor:
    r"""ListNet loss: cross-entropy between the top-one probabilities of the labels and of the scores.

    .. math:: \ell = -\sum_j \operatorname{softmax}(y)_j\,\log\operatorname{softmax}(s)_j

    over the real items of a slate (the top-one probability with φ = exp, the form used in the paper's
    experiments and by allRank).

    Args:
        input: scores (B, n).
        target: relevance labels (B, n), ≥ 0.
        mask: optional torch.bool (B, n), True at real items (allRank: ``mask=target != -1``).
        reduction: "mean" over slates with a real item | "sum" | "none".

    Returns:
        The loss (scalar unless ``reduction="none"``); ≥ the entropy of softmax(y).

    Example:
        >>> import torch, losslab.losses as L
        >>> round(float(L.listnet(torch.zeros(1, 2), torch.tensor([[1.0, 0.0]]))), 4)   # uniform scores: log 2
        0.6931

    References:
        Zhe Cao, Tao Qin, Tie-Yan Liu, Ming-Feng Tsai, Hang Li, "Learning to Rank: From Pairwise Approach to
        Listwise Approach", ICML 2007, doi:10.1145/1273496.1273513.

    Notes:
        Checked against allRank's ``listNet`` (allegro/allRank). Difference: allRank takes log(softmax(s) +
        1e-10); here log_softmax is exact (the two differ only where a probability is below about 1e-8, where
        allRank's gradient vanishes). Labels go through a softmax, so their scale matters (labels 0..4 and 0..40
        give different targets), as in allRank.
    """
    name = "listnet"
    x, y, valid = prepare_slates(input, target, mask, name, reduction)
    has = valid.any(1)
    logp = torch.log_softmax(torch.where(valid, x, _fill(x.dtype)), dim=1)
    label_fill = torch.where(has, float("-inf"), 0.0).to(x.dtype).unsqueeze(1)
    q = torch.softmax(torch.where(valid, y, label_fill), dim=1)
    loss = -(q * logp).sum(1)
    return reduce_loss(loss, reduction, mask=has, empty="zero")


@register("listmle", summary="ListMLE: Plackett-Luce negative log-likelihood of the order given by the labels",
          reference="Xia, Liu, Wang, Zhang, Li, Listwise Approach to Learning to Rank: Theory and Algorithm, "
                    "doi:10.1145/1390156.1390306, 2008",
          module="ListMLELoss", family="ranking", input_kind="regression", target_kind=_TARGET)
def listmle(input: Tensor, target: Tensor, mask: Tensor | None = None, *, generator: torch.Generator | None = None,
            reduction: str = "mean") -> Tensor:
    r"""ListMLE loss: minus the Plackett-Luce log-likelihood of the ground-truth order.

    With π the real items sorted by decreasing label:

    .. math:: \ell = \sum_{i=1}^{m}\Big(\log\sum_{j=i}^{m} e^{s_{\pi(j)}} - s_{\pi(i)}\Big)

    Args:
        input: scores (B, n).
        target: relevance labels (B, n), ≥ 0.
        mask: optional torch.bool (B, n), True at real items (allRank: ``mask=target != -1``).
        generator: break ties between equal labels uniformly at random with this torch.Generator (allRank
            shuffles the slate for that); None (default) breaks them by position (earlier item first), so the
            loss is deterministic.
        reduction: "mean" over slates with a real item | "sum" | "none".

    Returns:
        The loss (scalar unless ``reduction="none"``), ≥ 0.

    Example:
        >>> import torch, losslab.losses as L
        >>> round(float(L.listmle(torch.zeros(1, 2), torch.tensor([[1.0, 0.0]]))), 4)   # log 2 + log 1
        0.6931

    References:
        Fen Xia, Tie-Yan Liu, Jue Wang, Wensheng Zhang, Hang Li, "Listwise Approach to Learning to Rank: Theory
        and Algorithm", ICML 2008, doi:10.1145/1390156.1390306.

    Notes:
        Checked against allRank's ``listMLE`` (allegro/allRank). Differences: allRank adds 1e-10 inside the log
        (here an exact log-sum-exp) and always shuffles the slate with the global RNG before sorting (random
        tie-breaking); here ties are broken by position unless a ``generator`` is given.
    """
    name = "listmle"
    x, y, valid = prepare_slates(input, target, mask, name, reduction)
    b, n = x.shape
    if generator is None:
        idx = torch.arange(n, device=x.device).expand(b, n)
    else:
        keys = torch.rand(b, n, generator=generator, device=generator.device).to(x.device)
        idx = keys.argsort(dim=1)
    lab = torch.where(valid, y, -1.0).gather(1, idx)  # padding sorts last
    order = idx.gather(1, lab.sort(dim=1, descending=True, stable=True).indices)
    v = valid.gather(1, order)
    s = torch.where(v, x.gather(1, order), _fill(x.dtype))
    tail = torch.logcumsumexp(s.flip(1), dim=1).flip(1)  # log Σ_{j ≥ i} exp(s_j)
    loss = torch.where(v, tail - s, 0.0).sum(1)
    return reduce_loss(loss, reduction, mask=valid.any(1), empty="zero")


@register("ranknet", summary="RankNet: logistic loss log(1 + e^{−(s_i − s_j)}) over pairs with y_i > y_j",
          reference="Burges, Shaked, Renshaw, Lazier, Deeds, Hamilton, Hullender, Learning to Rank using Gradient "
                    "Descent, doi:10.1145/1102351.1102363, 2005",
          module="RankNetLoss", family="ranking", input_kind="regression", target_kind=_TARGET)
def ranknet(input: Tensor, target: Tensor, mask: Tensor | None = None, *, reduction: str = "mean") -> Tensor:
    r"""RankNet loss: pairwise logistic (binary cross-entropy) loss on score differences.

    .. math::
        \ell_b = \sum_{(i,j):\,y_i > y_j} \log\big(1 + e^{-(s_i - s_j)}\big),\qquad
        \text{mean} = \frac{\sum_b \ell_b}{\#\{\text{pairs in the batch}\}}

    over ordered pairs of real items with different labels (target probability 1 for the better item; pairs
    with equal labels are skipped).

    Args:
        input: scores (B, n).
        target: relevance labels (B, n), ≥ 0.
        mask: optional torch.bool (B, n), True at real items (allRank: ``mask=target != -1``).
        reduction: "none": ℓ_b, the sum over each slate's pairs; "sum": their total; "mean" (default): the
            total divided by the number of pairs in the batch, i.e. the mean over all pairs, as allRank (and
            ``F.binary_cross_entropy_with_logits`` on the pooled pairs) computes it.

    Returns:
        The loss (scalar unless ``reduction="none"``), ≥ 0.

    Example:
        >>> import torch, losslab.losses as L
        >>> round(float(L.ranknet(torch.zeros(1, 2), torch.tensor([[1.0, 0.0]]))), 4)   # one pair: log 2
        0.6931

    References:
        Chris Burges, Tal Shaked, Erin Renshaw, Ari Lazier, Matt Deeds, Nicole Hamilton, Greg Hullender,
        "Learning to Rank using Gradient Descent", ICML 2005, doi:10.1145/1102351.1102363.

    Notes:
        Checked against allRank's ``rankNet`` (allegro/allRank; pairs with y_i > y_j, BCE-with-logits target 1,
        mean over the pooled pairs). allRank's optional weighting of pairs by the label difference is not
        included. The paper's cost also allows target probability 1/2 for tied pairs; like allRank (and
        TF-Ranking's pairwise logistic loss) tied pairs are skipped.
    """
    name = "ranknet"
    x, y, valid = prepare_slates(input, target, mask, name, reduction)
    pair = valid.unsqueeze(2) & valid.unsqueeze(1) & (y.unsqueeze(2) > y.unsqueeze(1))
    per_pair = F.softplus(-(x.unsqueeze(2) - x.unsqueeze(1)))
    loss = torch.where(pair, per_pair, 0.0).sum((1, 2))
    count = pair.sum((1, 2)).to(x.dtype)
    return reduce_loss(loss, reduction, weight=count, mask=count > 0, prescaled=True, empty="zero")
