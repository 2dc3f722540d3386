"""The mean loss over a dataset from k + m evaluated examples: clustering-based sensitivity sampling (NumPy)."""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import sparse

from losslab._errors import ConfigError, DataError
from losslab._progress import progress

__all__ = ["LossSample", "kmeans", "sensitivity_sample"]

_CHUNK = 4096  # rows per block of the point-to-centre distance matrix


@dataclass(frozen=True)
class LossSample:
    """Examples to evaluate and the weights that turn their losses into an estimate of the dataset's mean loss.

    Attributes:
        indices: ``(k + m,)`` rows of the dataset to evaluate: the ``k`` cluster representatives first, then the
            ``m`` sampled rows (drawn with replacement, so a row may appear twice).
        weights: ``(k + m,)``; ``weights @ losses[indices]`` is the estimate. Representatives can get negative
            weights (they also serve as control variates): the weights are for estimating (monitoring) the mean
            loss, not for training on the subset.
        labels: ``(n,)`` cluster of every row; ``centers``: ``(k, d)`` cluster centres.
        cost: the clustering cost ``Φ = Σ_x ||e(x) - c(x)||^z`` (the k-means cost for ``z = 2``).
        probabilities: ``(n,)`` sampling probability of every row.
    """

    indices: np.ndarray
    weights: np.ndarray
    labels: np.ndarray
    centers: np.ndarray
    cost: float
    probabilities: np.ndarray

    def estimate(self, losses: Any) -> float:
        """The estimated mean loss from the losses of the rows in ``indices``, in that order (1-D, length k + m).

        Pass ``losses[sample.indices]`` if you hold the loss of every row. Tensors are accepted (detached).
        """
        values = _as_real_array(losses, "losses")
        if values.ndim != 1 or values.size != self.indices.size:
            raise DataError(f"estimate needs a 1-D array of one loss per selected row ({self.indices.size}, in the "
                            f"order of `indices`), got shape {values.shape}; with the loss of every row, pass "
                            f"losses[sample.indices]")
        if not np.all(np.isfinite(values)):
            raise DataError("estimate: the losses hold NaN/Inf; evaluate the selected rows again or drop them")
        return float(self.weights @ values)


def _as_real_array(obj: Any, name: str) -> np.ndarray:
    """A float64 NumPy copy of an array-like or tensor (detached, on the CPU); complex or non-numeric is refused."""
    if hasattr(obj, "detach"):  # a torch tensor
        if obj.is_complex():
            raise DataError(f"{name} must be real, got a complex tensor")
        obj = obj.detach().cpu().double().numpy()
    raw = np.asarray(obj)
    if raw.dtype.kind not in "biuf":
        raise DataError(f"{name} must hold real numbers, got dtype {raw.dtype}")
    return raw.astype(np.float64)


def _check_embeddings(embeddings: Any) -> np.ndarray:
    try:
        e = _as_real_array(embeddings, "embeddings")
    except DataError:
        raise
    except (TypeError, ValueError) as exc:
        raise DataError(f"embeddings must be a numeric (n, d) array, got {type(embeddings).__name__}") from exc
    if e.ndim != 2 or e.shape[0] == 0 or e.shape[1] == 0:
        raise DataError(f"embeddings must have shape (n, d) with n, d >= 1, got {e.shape}; one row per example")
    if not np.all(np.isfinite(e)):
        raise DataError(f"embeddings hold {int(np.sum(~np.isfinite(e)))} NaN/Inf value(s); embed those rows again "
                        "or drop them")
    return e


def _standardised(e: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """``(e - mean) / scale`` with its mean and scale: k-means is unchanged by them, and ||x||² - 2x·c + ||c||² then
    keeps its precision however far the data sit from the origin and whatever their magnitude."""
    mean = e.mean(axis=0)
    centred = e - mean
    scale = float(np.max(np.abs(centred)))
    return (centred / scale if scale > 0 else centred), mean, (scale if scale > 0 else 1.0)


def _check_real(name: str, value: Any, low: float, high: float, hint: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, np.floating, np.integer)):
        raise ConfigError(f"{name} must be a real number in ({low:g}, {high:g}], got {value!r}; {hint}")
    v = float(value)
    if not (np.isfinite(v) and low < v <= high):
        raise ConfigError(f"{name} must be a real number in ({low:g}, {high:g}], got {value!r}; {hint}")
    return v


def _check_int(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < low:
        raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def _nearest(e: np.ndarray, centers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centre of every row and its squared distance, in blocks of rows (memory: a block x k, not n x k)."""
    c2 = np.sum(centers * centers, axis=1)
    labels = np.empty(e.shape[0], dtype=np.int64)
    d2min = np.empty(e.shape[0])
    for start in range(0, e.shape[0], _CHUNK):
        block = e[start:start + _CHUNK]
        d2 = np.sum(block * block, axis=1)[:, None] - 2.0 * block @ centers.T + c2[None, :]
        labels[start:start + _CHUNK] = np.argmin(d2, axis=1)
        d2min[start:start + _CHUNK] = np.maximum(np.min(d2, axis=1), 0.0)
    return labels, d2min


def kmeans(embeddings: Any, k: int, *, seed: int = 0, max_iter: int = 50, n_init: int = 4,
           quiet: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
    """k-means++ seeding then Lloyd iterations, best of ``n_init``: ``(centers (k, d), labels (n,))``.

    Rows are centred and scaled first (k-means does not change; the distance algebra keeps its precision far from
    the origin). No cluster is left empty: an empty one takes the farthest row of a cluster that keeps a member.

    Args:
        embeddings: ``(n, d)`` rows.
        k: clusters, ``1 <= k <= n``.
        seed: integer >= 0; each seeding takes its own stream of it.
        max_iter: Lloyd iterations at most (they stop when no label changes).
        n_init: independent seedings; the clustering of lowest cost is kept (one seeding can merge two
            well-separated groups and split a third).
        quiet: hide the progress bar over seedings (None: shown only on an interactive terminal).

    Example:
        >>> import numpy as np
        >>> centers, labels = kmeans(np.array([[0.0], [1.0], [10.0], [11.0]]), 2)
        >>> sorted(centers.ravel().tolist()), bool(labels[0] == labels[1] != labels[2] == labels[3])
        ([0.5, 10.5], True)

    References:
        Arthur, Vassilvitskii, "k-means++: The Advantages of Careful Seeding", doi:10.5555/1283383.1283494, 2007.
    """
    e = _check_embeddings(embeddings)
    k = _check_k(k, e.shape[0])
    seed = _check_int("seed", seed, 0)
    x, mean, scale = _standardised(e)
    centers, labels = _kmeans(x, k, np.random.SeedSequence(seed), _check_int("max_iter", max_iter, 1),
                              _check_int("n_init", n_init, 1), quiet)
    return centers * scale + mean, labels


def _check_k(k: Any, n: int) -> int:
    k = _check_int("k", k, 1)
    if k > n:
        raise ConfigError(f"k={k} clusters need at least as many rows, got {n}; lower k")
    return k


def _kmeans(x: np.ndarray, k: int, seeds: np.random.SeedSequence, max_iter: int, n_init: int,
            quiet: bool | None) -> tuple[np.ndarray, np.ndarray]:
    """Best of ``n_init`` seedings of standardised rows ``x``, each on its own child stream of ``seeds``."""
    best: tuple[float, np.ndarray, np.ndarray] | None = None
    streams = seeds.spawn(n_init)
    for attempt in progress(range(n_init), total=n_init, desc="k-means seedings", quiet=quiet):
        centers, labels = _lloyd(x, k, np.random.default_rng(streams[attempt]), max_iter)
        cost = float(np.sum((x - centers[labels]) ** 2))
        if best is None or cost < best[0]:
            best = (cost, centers, labels)
    assert best is not None
    return best[1], best[2]


def _lloyd(e: np.ndarray, k: int, rng: np.random.Generator, max_iter: int) -> tuple[np.ndarray, np.ndarray]:
    n = e.shape[0]
    centers = np.empty((k, e.shape[1]))
    centers[0] = e[rng.integers(n)]
    nearest = _nearest(e, centers[:1])[1]
    for j in range(1, k):
        total = nearest.sum()
        pick = int(rng.choice(n, p=nearest / total)) if total > 0 else int(rng.integers(n))
        centers[j] = e[pick]
        nearest = np.minimum(nearest, _nearest(e, centers[j:j + 1])[1])
    labels = np.full(n, -1)
    for _ in range(max_iter):
        new, d2 = _nearest(e, centers)
        counts = np.bincount(new, minlength=k)
        while not counts.all():  # an empty cluster takes the farthest row of a cluster that keeps a member
            far = int(np.argmax(np.where(counts[new] > 1, d2, -np.inf)))
            counts[new[far]] -= 1
            new[far] = int(np.flatnonzero(counts == 0)[0])
            counts[new[far]] += 1
            d2[far] = -np.inf
        if np.array_equal(new, labels):
            break
        labels = new
        members = sparse.csr_matrix((np.ones(n), (labels, np.arange(n))), shape=(k, n))
        centers = np.asarray(members @ e) / counts[:, None]  # every cluster is non-empty here
    return centers, labels


def sensitivity_sample(embeddings: Any, k: int, m: int, *, z: float = 2.0, uniform: float = 0.5, seed: int = 0,
                       max_iter: int = 50, quiet: bool | None = None) -> LossSample:
    r"""Pick ``k + m`` examples whose weighted losses estimate the mean loss over all ``n`` (sensitivity sampling).

    Cluster the embeddings (k-means), evaluate the loss at one representative per cluster (the row nearest to its
    centre), and correct with ``m`` rows drawn with probability

    .. math:: p(x) = (1 - u)\,\frac{\|e(x) - c(x)\|^z}{\Phi} + \frac{u}{n},\qquad
              \Phi = \sum_x \|e(x) - c(x)\|^z,

    the estimate being (representatives :math:`r_j`, cluster sizes :math:`|C_j|`, draws :math:`s_1..s_m`)

    .. math:: \hat L = \frac1n\Big[\sum_j |C_j|\,\ell(r_j)
              + \frac1m\sum_{i=1}^m \frac{\ell(s_i) - \ell(r_{c(s_i)})}{p(s_i)}\Big].

    With ``m >= 1`` it is unbiased for any loss (every :math:`p(x) > 0`, and the draws use a random stream of
    their own, independent of the clustering); with ``m = 0`` it is the representatives' weighted sum. If the loss
    varies within a cluster by at most :math:`|\ell(x) - \ell(r_{c(x)})| \le \lambda \|e(x) - c(x)\|^z`,
    every correction term is bounded by :math:`\lambda\Phi / (1 - u)` and the error falls as
    :math:`\lambda\Phi / (n\sqrt m)`: the additive :math:`\varepsilon\lambda\Phi_k` of the paper with
    :math:`m \approx 1/\varepsilon^2` draws. For ``z <= 1`` that condition follows from z-Hölder continuity with
    constant :math:`\lambda / 2^z` (the representative is the member nearest the centre); for ``z = 2`` it is a
    condition on the loss relative to the centre (a function Hölder of exponent above 1 is constant). The uniform
    share ``u`` bounds the terms of rows where the condition fails (mislabelled or atypical examples).

    Args:
        embeddings: ``(n, d)`` array or tensor, one row per example, in a space where the loss varies smoothly.
        k: clusters (and representatives), ``1 <= k <= n``.
        m: sampled rows (with replacement), ``>= 0``; the error of the correction falls as ``1/sqrt(m)``.
        z: exponent of the distance, in (0, 8] (2: the k-means cost; 1: the distance).
        uniform: the share ``u`` of uniform probability, in (0, 1] (1: uniform sampling around the
            representatives).
        seed: integer >= 0; the k-means++ seedings and the draws take separate streams of it.
        max_iter: Lloyd iterations at most.
        quiet: hide the progress bar of the k-means (None: shown only on an interactive terminal).

    Returns:
        A :class:`LossSample`; evaluate the loss at ``indices`` and call ``estimate(losses)``.

    Raises:
        DataError: embeddings that are not a finite ``(n, d)`` array.
        ConfigError: ``k`` outside ``[1, n]``, ``m < 0``, ``z`` outside (0, 8], ``uniform`` outside (0, 1], a
            seed that is not an integer >= 0.

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> emb = np.concatenate([rng.normal(0, 1, (500, 8)), rng.normal(6, 1, (500, 8))])
        >>> loss = np.linalg.norm(emb - 1, axis=1)         # a 1-Lipschitz loss of the embedding
        >>> s = sensitivity_sample(emb, k=10, m=50)        # 60 of the 1000 rows to evaluate
        >>> round(s.estimate(loss[s.indices]), 2), round(float(loss.mean()), 2)
        (9.09, 9.18)

    References:
        Axiotis, Cohen-Addad, Henzinger, Jerome, Mirrokni, Saulpic, Woodruff, Wunder, "Data-Efficient Learning via
        Clustering-Based Sensitivity Sampling: Foundation Models and Beyond", arXiv:2402.17327, 2024.

    Notes:
        The paper's algorithm listing could not be consulted; this is the estimator its abstract states the
        guarantee for (``k`` representatives plus ``1/ε²`` samples, multiplicative ``1 ± ε`` and additive
        ``ελΦ_k``), written as importance sampling with the representatives as control variates, which makes it
        unbiased and gives the additive bound above. The mixture with a uniform share follows the lightweight
        coresets of Bachem, Lucic, Krause (arXiv:1703.06476). The k-means is this module's :func:`kmeans`.
    """
    e = _check_embeddings(embeddings)
    n = e.shape[0]
    k = _check_k(k, n)
    m = _check_int("m", m, 0)
    seed = _check_int("seed", seed, 0)
    z = _check_real("z", z, 0.0, 8.0, "2 weighs by the squared distance (the k-means cost), 1 by the distance")
    uniform = _check_real("uniform", uniform, 0.0, 1.0, "0.5 mixes distance and uniform sampling evenly")
    kmeans_seeds, draw_seeds = np.random.SeedSequence(seed).spawn(2)  # the draws never share a stream with k-means
    x, mean, scale = _standardised(e)
    centers, labels = _kmeans(x, k, kmeans_seeds, _check_int("max_iter", max_iter, 1), 4, quiet)
    dist = np.sqrt(np.sum((x - centers[labels]) ** 2, axis=1))  # in standardised units; Φ is scaled back below
    by_cluster = np.lexsort((dist, labels))  # by cluster, then by distance (ties: lower row first)
    reps = by_cluster[np.searchsorted(labels[by_cluster], np.arange(k))]
    sens = dist**z
    total = float(sens.sum())
    prob = (1.0 - uniform) * sens / total + uniform / n if total > 0 else np.full(n, 1.0 / n)
    prob = prob / prob.sum()
    draws = np.random.default_rng(draw_seeds).choice(n, size=m, p=prob) if m else np.empty(0, dtype=np.int64)
    return LossSample(indices=np.concatenate([reps, draws]).astype(np.int64), weights=_weights(labels, reps, prob, draws),
                      labels=labels, centers=centers * scale + mean, cost=total * scale**z, probabilities=prob)


def _weights(labels: np.ndarray, reps: np.ndarray, prob: np.ndarray, draws: np.ndarray) -> np.ndarray:
    """Weights of the representatives then of the draws, so that ``weights @ losses`` is the estimator."""
    n, k, m = labels.size, reps.size, draws.size
    rep_w = np.bincount(labels, minlength=k) / n
    draw_w = 1.0 / (n * m * prob[draws]) if m else np.empty(0)
    if m:
        rep_w = rep_w - np.bincount(labels[draws], weights=draw_w, minlength=k)
    return np.concatenate([rep_w, draw_w])
