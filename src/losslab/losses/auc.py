"""AUC-driven retrieval loss: the Mann-Whitney (MW) loss over every positive-negative pair of a score matrix."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from losslab._errors import ConfigError, DataError
from losslab.losses._catalogue import register
from losslab.losses._reduce import reduce_loss
from losslab.losses._slate import check_mask
from losslab.losses._validate import check_finite, check_float, check_reduction, compute_dtype

__all__ = ["mw_loss"]

_CHUNK = 1 << 22  # pair terms per block: bounds the memory of the global pairing to about 16 MiB a block


def _global_pairs(s: Tensor, pos: Tensor, neg: Tensor) -> tuple[Tensor, int]:
    """For every positive cell, the sum over every negative cell of softplus(s_n - s_p); and the pair count."""
    sp, sn = s[pos], s[neg]
    if sp.numel() == 0 or sn.numel() == 0:
        return sp.new_zeros(sp.shape), 0
    rows = max(1, _CHUNK // sn.numel())
    sums = [F.softplus(sn.unsqueeze(0) - block.unsqueeze(1)).sum(1) for block in sp.split(rows)]
    return torch.cat(sums), sp.numel() * sn.numel()


@register("mw_loss", summary="MW loss: binary cross-entropy on the score difference of every positive-negative "
                             "pair (maximises the Mann-Whitney U statistic, i.e. AUC)",
          reference="Sheikholeslami, Hosseini, Bechard, Daruru, Rajeswar, Optimizing What Matters: AUC-Driven "
                    "Learning for Robust Neural Retrieval, arXiv:2510.00137, 2025",
          module="MWLoss", family="ranking", input_kind="regression",
          target_kind="binary relevance (queries, candidates)")
def mw_loss(input: Tensor, target: Tensor, mask: Tensor | None = None, *, pairing: str = "global",
            reduction: str = "mean") -> Tensor:
    r"""Mann-Whitney loss: the mean logistic loss over positive-negative pairs of a query-candidate score matrix.

    With positive cells :math:`P` (``target`` 1) and negative cells :math:`N` (``target`` 0) of the score matrix
    ``input`` (e.g. the in-batch similarities of a dual-encoder retriever, queries × passages):

    .. math::
        \mathcal L_{MW} = \frac{1}{|P|\,|N|}\sum_{p\in P}\sum_{n\in N}\log\big(1 + e^{-(s_p - s_n)}\big)

    the binary cross-entropy of each pair's score difference with label 1. Since
    :math:`\log(1 + e^{-d}) \ge \log 2\cdot[d \le 0]`, the loss bounds the area over the ROC curve:
    :math:`1 - \mathrm{AUC} \le \mathcal L_{MW} / \log 2` (tested).

    Args:
        input: scores (B, M), e.g. query-passage similarities.
        target: binary relevance (B, M): 1 (or True) for a positive pair, 0 for a negative.
        mask: optional torch.bool (B, M), True at cells that count (padding False).
        pairing: ``"global"`` (default): every positive cell against every negative cell of the whole matrix,
            across queries (many more pairs for the same similarity computation); ``"per_query"``: positives and
            negatives of the same row only (then the loss equals :func:`ranknet` on binary labels).
        reduction: ``"mean"`` over all pairs; ``"sum"``; ``"none"``: per positive cell (``"global"``, shape
            (|P|,), in row-major order) or per query (``"per_query"``, shape (B,)), the sum over its pairs.

    Returns:
        The loss (scalar unless ``reduction="none"``); 0 when there is no pair.

    Example:
        >>> import torch, losslab.losses as L
        >>> sim = torch.tensor([[2.0, 0.0], [1.0, 3.0]])     # diagonal positives
        >>> round(float(L.mw_loss(sim, torch.eye(2))), 4)    # pairs (2,0), (2,1), (3,0), (3,1)
        0.1539

    References:
        Nima Sheikholeslami, Erfan Hosseini, Patrice Bechard, Srivatsava Daruru, Sai Rajeswar, "Optimizing What
        Matters: AUC-Driven Learning for Robust Neural Retrieval", arXiv:2510.00137, 2025.

    Notes:
        No code was released. The formula (binary cross-entropy over positive-negative score differences) is
        the abstract's; that the pairs run over the whole in-batch matrix follows the paper's Figure 2
        description ("more pairwise comparisons without increasing the similarity computation") and is not
        verified against the paper's text, hence ``pairing``. A similarity temperature, if any, is the caller's:
        pass ``sim / tau``.
    """
    name = "mw_loss"
    red = check_reduction(reduction, name)
    if pairing not in ("global", "per_query"):
        raise ConfigError(f"{name}: pairing must be 'global' or 'per_query', got {pairing!r}")
    x = check_float("input", input, name)
    if x.dim() != 2:
        raise DataError(f"{name}: input must be a (queries, candidates) score matrix, got shape {tuple(x.shape)}; "
                        "for one query use input.unsqueeze(0)")
    if not isinstance(target, Tensor) or tuple(target.shape) != tuple(x.shape):
        got = tuple(target.shape) if isinstance(target, Tensor) else type(target).__name__
        raise DataError(f"{name}: target must be a tensor of binary relevance with the shape of input "
                        f"{tuple(x.shape)}, got {got}")
    if target.dtype.is_floating_point:
        check_finite("target", target, name)
    if not bool(((target == 0) | (target == 1)).all()):
        raise DataError(f"{name}: target must be binary (1 for a positive pair, 0 for a negative); threshold "
                        "graded labels first, or use ranknet for graded relevance")
    valid = check_mask(mask, tuple(x.shape), x.device, name)
    s = x.to(compute_dtype(x))
    pos, neg = valid & (target == 1), valid & (target == 0)
    if pairing == "per_query":
        pair = pos.unsqueeze(2) & neg.unsqueeze(1)
        per_pair = F.softplus(-(s.unsqueeze(2) - s.unsqueeze(1)))
        loss = torch.where(pair, per_pair, 0.0).sum((1, 2))
        count = pair.sum((1, 2)).to(s.dtype)
        return reduce_loss(loss, red, weight=count, mask=count > 0, prescaled=True, empty="zero")
    sums, pairs = _global_pairs(s, pos, neg)
    if red == "none":
        return sums
    if red == "sum" or pairs == 0:
        return sums.sum() if red == "sum" else s.sum() * 0
    return sums.sum() / pairs
