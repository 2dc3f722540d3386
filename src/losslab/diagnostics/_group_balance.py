r"""Data balancing across groups or classes: subsample every cell to the smallest one, or reweight (SUBG / RWG).

A *cell* is a class, a group, or a (class, group) pair when both are given, as in the worst-group benchmarks
(Waterbirds: bird type × background). Subsampling throws examples away until every cell has the size of the
smallest; reweighting keeps them all and gives each example the weight ``N / n_cell`` (for a
``torch.utils.data.WeightedRandomSampler``).
"""

from __future__ import annotations

from typing import Any

import torch

from losslab._errors import DataError
from losslab.diagnostics._common import check_choice, make_generator
from losslab.diagnostics._data_pruning import _index_tensor

__all__ = ["balance_groups"]


def _cells(classes: Any, groups: Any) -> torch.Tensor:
    """One int64 cell id per example, numbered 0..K-1 in the order of the sorted (class, group) pairs present."""
    if classes is None and groups is None:
        raise DataError("balance_groups needs classes=, groups= or both (one integer label per example)")
    parts = [_index_tensor(v, name) for v, name in ((classes, "classes"), (groups, "groups")) if v is not None]
    if len({p.numel() for p in parts}) > 1:
        raise DataError(f"classes and groups must hold one label per example, got lengths "
                        f"{[p.numel() for p in parts]}")
    if parts[0].numel() == 0:
        raise DataError("balance_groups got no examples (empty labels)")
    if any(int(p.min()) < 0 for p in parts):
        raise DataError("class and group labels must be integers >= 0 (map them with torch.unique(..., "
                        "return_inverse=True))")
    return torch.unique(torch.stack(parts, dim=1), dim=0, return_inverse=True)[1]


def balance_groups(*, classes: Any = None, groups: Any = None, method: str = "subsample",
                   seed: int | torch.Generator = 0) -> torch.Tensor:
    r"""Balance a training set across cells: the indices of a subsample (SUBG/SUBY) or per-example weights (RWG/RWY).

    With :math:`n_c` examples in cell :math:`c` and :math:`m = \min_c n_c` over the cells present:

    - ``"subsample"``: keep :math:`m` examples of every cell, drawn uniformly without replacement, once (the set is
      fixed for the whole training run);
    - ``"reweight"``: keep every example with weight :math:`w_i = N / n_{c(i)}`, so that each cell carries the same
      total weight (pass the weights to ``WeightedRandomSampler(w, len(w))``).

    Args:
        classes: optional ``(N,)`` integer class labels (``y``).
        groups: optional ``(N,)`` integer group or attribute labels (``a``). Cells are the classes (SUBY/RWY),
            the groups, or the (class, group) pairs (SUBG/RWG) when both are given.
        method: ``"subsample"`` or ``"reweight"``.
        seed: an int or a ``torch.Generator`` for the subsample (unused by ``"reweight"``).

    Returns:
        ``"subsample"``: sorted int64 indices of the kept examples (``m`` times the number of cells).
        ``"reweight"``: float64 weights ``(N,)``.

    Raises:
        DataError: no labels, labels that are not 1-D non-negative integers, lengths that differ, no examples.
        ConfigError: an unknown ``method``.

    Example:
        >>> classes = [0, 0, 0, 0, 1, 1]
        >>> balance_groups(classes=classes, method="reweight").tolist()
        [1.5, 1.5, 1.5, 1.5, 3.0, 3.0]
        >>> kept = balance_groups(classes=classes, seed=0)
        >>> len(kept), sorted(torch.tensor(classes)[kept].tolist())
        (4, [0, 0, 1, 1])

    References:
        Idrissi, Arjovsky, Pezeshki, Lopez-Paz, "Simple data balancing achieves competitive worst-group-accuracy",
        CLeaR 2022, arXiv:2110.14503 (SUBG, SUBY, RWG, RWY; code facebookresearch/BalancingGroups).
        Chaudhuri, Ahuja, Arjovsky, Lopez-Paz, "Why does Throwing Away Data Improve Worst-Group Error?",
        ICML 2023, arXiv:2205.11672 (why subsampling helps when the data have heavy tails).

    Notes:
        Follows the authors' ``GroupDataset.subsample_``: one random permutation of all examples, then each
        example is kept while its cell holds fewer than ``m``; given the same permutation
        (``torch.randperm(N, generator=...)``) the kept set is theirs. Their ``m`` is the minimum over every
        (class, group) combination, so a combination that never occurs gives ``m = 0`` and an empty training set;
        here ``m`` is over the cells present. Their weights are ``N / n_cell`` as here.
    """
    check_choice(method, "method", ("subsample", "reweight"))
    cell = _cells(classes, groups)
    counts = torch.bincount(cell)
    if method == "reweight":
        return cell.numel() / counts[cell].to(torch.float64)
    perm = torch.randperm(cell.numel(), generator=make_generator(seed))
    in_order = cell[perm]
    # the rank of each example within its cell, in the order of the permutation
    by_cell = torch.sort(in_order, stable=True).indices
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(in_order)
    rank[by_cell] = torch.arange(in_order.numel()) - starts[in_order[by_cell]]
    return torch.sort(perm[rank < int(counts.min())]).values
