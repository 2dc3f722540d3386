"""The mean loss over a dataset from k + m evaluated examples: clustering-based sensitivity sampling (NumPy)."""

from __future__ import annotations

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
            weights (they also serve as control variates), so use the estimate, not the weights, for training.
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
        """The estimated mean loss from the losses of ``indices`` (in that order), or of every row (``(n,)``)."""
        values = np.asarray(losses, dtype=np.float64).reshape(-1)
        if values.size == self.labels.size and values.size != self.indices.size:
            values = values[self.indices]
        if values.size != self.indices.size:
            raise DataError(f"estimate needs one loss per selected row ({self.indices.size}, in the order of "
                            f"`indices`) or one per dataset row ({self.labels.size}); got {values.size}")
        if not np.all(np.isfinite(values)):
            raise DataError("estimate: the losses hold NaN/Inf; evaluate the selected rows again or drop them")
        return float(self.weights @ values)


def _check_embeddings(embeddings: Any) -> np.ndarray:
    if hasattr(embeddings, "detach"):  # a torch tensor
        embeddings = embeddings.detach().cpu().double().numpy()
    try:
        e = np.asarray(embeddings, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DataError(f"embeddings must be a numeric (n, d) array, got {type(embeddings).__name__}") from exc
    if e.ndim != 2 or e.shape[0] == 0 or e.shape[1] == 0:
        raise DataError(f"embeddings must have shape (n, d) with n, d >= 1, got {e.shape}; one row per example")
    if not np.all(np.isfinite(e)):
        raise DataError(f"embeddings hold {int(np.sum(~np.isfinite(e)))} NaN/Inf value(s); embed those rows again "
                        "or drop them")
    return e


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

    No cluster is left empty (an empty one takes the row farthest from its centre).

    Args:
        embeddings: ``(n, d)`` rows.
        k: clusters, ``1 <= k <= n``.
        seed: seed of the k-means++ draws.
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
    n = e.shape[0]
    k = _check_int("k", k, 1)
    if k > n:
        raise ConfigError(f"k={k} clusters need at least as many rows, got {n}; lower k")
    max_iter = _check_int("max_iter", max_iter, 1)
    n_init = _check_int("n_init", n_init, 1)
    best: tuple[float, np.ndarray, np.ndarray] | None = None
    for attempt in progress(range(n_init), total=n_init, desc="k-means seedings", quiet=quiet):
        centers, labels = _lloyd(e, k, np.random.default_rng([seed, attempt]), max_iter)
        cost = float(np.sum((e - centers[labels]) ** 2))
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

    It is unbiased for any loss (every :math:`p(x) > 0`). When the loss is λ-Hölder in the embedding,
    :math:`|\ell(x) - \ell(r_{c(x)})| \le \lambda 2^z \|e(x) - c(x)\|^z`, so every correction term is bounded by
    :math:`\lambda 2^z \Phi / (1 - u)` and the error falls as :math:`\lambda\Phi / (n\sqrt m)`: the additive
    :math:`\varepsilon\lambda\Phi_k` of the paper with :math:`m \approx 1/\varepsilon^2` draws. The uniform part
    ``u`` bounds the terms for rows where the loss is not Hölder (mislabelled or atypical examples).

    Args:
        embeddings: ``(n, d)`` array or tensor, one row per example, in a space where the loss varies smoothly.
        k: clusters (and representatives), ``1 <= k <= n``.
        m: sampled rows (with replacement), ``>= 0``; the error of the correction falls as ``1/sqrt(m)``.
        z: exponent of the distance (2: the k-means cost), > 0.
        uniform: the share ``u`` of uniform probability, in (0, 1] (1: uniform sampling around the
            representatives).
        seed: seed of the k-means++ seeding and of the draws.
        max_iter: Lloyd iterations at most.
        quiet: hide the progress bar of the k-means (None: shown only on an interactive terminal).

    Returns:
        A :class:`LossSample`; evaluate the loss at ``indices`` and call ``estimate(losses)``.

    Raises:
        DataError: embeddings that are not a finite ``(n, d)`` array.
        ConfigError: ``k`` outside ``[1, n]``, ``m < 0``, ``z <= 0``, ``uniform`` outside (0, 1].

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
    k = _check_int("k", k, 1)
    m = _check_int("m", m, 0)
    if k > n:
        raise ConfigError(f"k={k} clusters need at least as many rows, got {n}; lower k")
    if isinstance(z, bool) or not isinstance(z, (int, float)) or not np.isfinite(z) or z <= 0:
        raise ConfigError(f"z must be a finite number > 0 (2 is the k-means cost), got {z!r}")
    if isinstance(uniform, bool) or not isinstance(uniform, (int, float)) or not 0.0 < uniform <= 1.0:
        raise ConfigError(f"uniform must be a share in (0, 1] (0.5 mixes distance and uniform sampling evenly), "
                          f"got {uniform!r}")
    centers, labels = kmeans(e, k, seed=seed, max_iter=max_iter, quiet=quiet)
    dist = np.sqrt(np.sum((e - centers[labels]) ** 2, axis=1))
    reps = np.array([np.flatnonzero(labels == j)[np.argmin(dist[labels == j])] for j in range(k)])
    sens = dist**z
    cost = float(sens.sum())
    prob = (1.0 - uniform) * sens / cost + uniform / n if cost > 0 else np.full(n, 1.0 / n)
    prob = prob / prob.sum()
    draws = np.random.default_rng([seed, 1]).choice(n, size=m, p=prob) if m else np.empty(0, dtype=np.int64)
    weights = _weights(labels, reps, prob, draws)
    return LossSample(indices=np.concatenate([reps, draws]).astype(np.int64), weights=weights, labels=labels,
                      centers=centers, cost=cost, probabilities=prob)


def _weights(labels: np.ndarray, reps: np.ndarray, prob: np.ndarray, draws: np.ndarray) -> np.ndarray:
    """Weights of the representatives then of the draws, so that ``weights @ losses`` is the estimator."""
    n, k, m = labels.size, reps.size, draws.size
    rep_w = np.bincount(labels, minlength=k) / n
    draw_w = 1.0 / (n * m * prob[draws]) if m else np.empty(0)
    if m:
        rep_w = rep_w - np.bincount(labels[draws], weights=draw_w, minlength=k)
    return np.concatenate([rep_w, draw_w])
