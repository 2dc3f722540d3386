"""balance_groups against the authors' subsampling loop (facebookresearch/BalancingGroups, GroupDataset.subsample_)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from losslab import ConfigError, DataError
from losslab.diagnostics import balance_groups


def authors_subsample(y: list[int], a: list[int], perm: list[int], what: str) -> list[int]:
    """Their loop: cells y * n_groups + a, m the minimum over every (class, group) combination, kept in perm order."""
    n_groups, n_labels = len(set(a)), len(set(y))
    group_sizes = [0] * (n_groups * n_labels)
    class_sizes = [0] * n_labels
    for yi, ai in zip(y, a):
        group_sizes[n_groups * yi + ai] += 1
        class_sizes[yi] += 1
    m = min(group_sizes) if what == "groups" else min(class_sizes)
    counts_g, counts_y, kept = [0] * (n_groups * n_labels), [0] * n_labels, []
    for p in perm:
        yi, ai = y[p], a[p]
        if (what == "groups" and counts_g[n_groups * yi + ai] < m) or (what == "classes" and counts_y[yi] < m):
            counts_g[n_groups * yi + ai] += 1
            counts_y[yi] += 1
            kept.append(p)
    return kept


@pytest.mark.parametrize("seed", range(6))
def test_subsample_matches_the_authors_loop(seed):
    rng = np.random.default_rng(seed)
    n = 200
    y = rng.integers(0, 2, n).tolist()
    a = [int(v) for v in (rng.random(n) < np.where(np.array(y) == 1, 0.9, 0.15))]  # a spurious attribute
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    for what, kwargs in (("groups", {"classes": y, "groups": a}), ("classes", {"classes": y})):
        got = balance_groups(**kwargs, seed=torch.Generator().manual_seed(seed))
        want = sorted(authors_subsample(y, a, perm, what))
        assert got.tolist() == want
    # the seed as an int is a fresh generator seeded with it
    assert torch.equal(balance_groups(classes=y, groups=a, seed=seed),
                       balance_groups(classes=y, groups=a, seed=torch.Generator().manual_seed(seed)))


def test_every_cell_keeps_the_smallest_cells_size():
    classes = torch.tensor([0] * 50 + [1] * 30)
    groups = torch.tensor([0] * 45 + [1] * 5 + [0] * 10 + [1] * 20)
    kept = balance_groups(classes=classes, groups=groups, seed=3)
    assert kept.dtype == torch.int64 and torch.equal(kept, torch.sort(kept).values) and kept.unique().numel() == 20
    cells = classes[kept] * 2 + groups[kept]
    assert torch.bincount(cells).tolist() == [5, 5, 5, 5]
    assert not torch.equal(kept, balance_groups(classes=classes, groups=groups, seed=4))  # another draw


def test_reweight_by_hand():
    w = balance_groups(classes=[0, 0, 0, 1], groups=[0, 0, 1, 0], method="reweight")
    assert w.dtype == torch.float64 and w.tolist() == [2.0, 2.0, 4.0, 4.0]  # N / n_cell: 4/2, 4/2, 4/1, 4/1
    # every cell carries the same total weight
    cells = torch.tensor([0, 0, 1, 2])
    assert torch.bincount(cells, weights=w).tolist() == [4.0, 4.0, 4.0]


def test_a_missing_combination_does_not_empty_the_set():
    # (class 1, group 1) never occurs: the authors' minimum over every combination would be 0 and keep nothing
    classes, groups = [0, 0, 0, 1, 1], [0, 1, 1, 0, 0]
    perm = torch.randperm(5, generator=torch.Generator().manual_seed(0)).tolist()
    assert authors_subsample(classes, groups, perm, "groups") == []
    kept = balance_groups(classes=classes, groups=groups, seed=0)
    assert kept.numel() == 3 and sorted((classes[i], groups[i]) for i in kept.tolist()) == [(0, 0), (0, 1), (1, 0)]


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({}, DataError, "classes=, groups="),
    ({"classes": [0, 1], "groups": [0, 1, 1]}, DataError, "one label per example"),
    ({"classes": torch.zeros(0, dtype=torch.long)}, DataError, "no examples"),
    ({"classes": [0, -1]}, DataError, ">= 0"),
    ({"classes": [0.5, 1.0]}, DataError, "integers"),
    ({"classes": [[0, 1]]}, DataError, "1-D"),
    ({"classes": [0, 1], "method": "oversample"}, ConfigError, "method"),
])
def test_bad_input(kwargs, error, match):
    with pytest.raises(error, match=match):
        balance_groups(**kwargs)


def test_labels_are_not_modified():
    classes = torch.tensor([1, 0, 1, 1])
    before = classes.clone()
    balance_groups(classes=classes)
    balance_groups(classes=classes, method="reweight")
    assert torch.equal(classes, before)


def test_docstring_examples():
    import doctest

    from losslab.diagnostics import _group_balance

    result = doctest.testmod(_group_balance, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0 and result.attempted > 0
