"""Stochastic trace (Hutchinson), spectral density (stochastic Lanczos quadrature) and class-wise spectra."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from losslab._errors import ConfigError, DataError
from losslab.diagnostics._common import (
    LossFn,
    check_batch,
    check_choice,
    check_float,
    check_int,
    make_generator,
)
from losslab.diagnostics._eigen import EigenResult, _run, _tridiag_eig, lanczos
from losslab.diagnostics._hessian import HessianOperator, as_operator

__all__ = ["ClassSpectrum", "SpectralDensity", "TraceResult", "classwise_spectra", "hutchinson_trace",
           "spectral_density"]


@dataclass
class TraceResult:
    """Hutchinson estimate of :math:`\\mathrm{tr}(H)` with its standard error and the individual samples."""

    estimate: float
    stderr: float
    samples: np.ndarray
    n_matvec: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary."""
        return {"estimate": self.estimate, "stderr": self.stderr, "n_samples": int(self.samples.size),
                "n_matvec": self.n_matvec}


def hutchinson_trace(op: Any, n_samples: int = 100, *, distribution: str = "rademacher",
                     seed: int | torch.Generator = 0) -> TraceResult:
    r"""Hutchinson's unbiased estimate of :math:`\mathrm{tr}(H)` with a standard error.

    :math:`\widehat{\mathrm{tr}} = \frac1m\sum_{i=1}^m z_i^\top H z_i` with :math:`E[zz^\top]=I`;
    standard error :math:`s/\sqrt m` with :math:`s` the sample standard deviation (ddof = 1). A fixed number of
    samples (no early stop) keeps the estimate unbiased and the error bar honest.

    Args:
        op: a :class:`HessianOperator`, :class:`MatrixOperator` or square symmetric tensor.
        n_samples: number of probe vectors ``m >= 2`` (one product each).
        distribution: ``"rademacher"`` (±1, lowest variance for a fixed diagonal) or ``"gaussian"``.
        seed: int or :class:`torch.Generator`.

    Returns:
        :class:`TraceResult`.

    Example:
        >>> import torch
        >>> r = hutchinson_trace(torch.diag(torch.tensor([1.0, 2.0, 3.0])), n_samples=10)
        >>> r.estimate, r.stderr   # Rademacher probes are exact on a diagonal matrix
        (6.0, 0.0)

    References:
        Hutchinson, "A stochastic estimator of the trace of the influence matrix for Laplacian smoothing splines",
        1990; Avron & Toledo, "Randomized algorithms for estimating the trace of an implicit symmetric positive
        semi-definite matrix", J. ACM, 2011.

    Notes:
        PyHessian's ``trace()`` stops when the running mean changes by < 1e-3 relative (biased early stop; its PyPI
        0.1 release even stops on a negative running mean) and returns the raw samples without an error bar.
    """
    operator = as_operator(op)
    m = check_int(n_samples, "n_samples", low=2, hint=" (a standard error needs at least two samples)")
    check_choice(distribution, "distribution", ("rademacher", "gaussian"))
    gen = make_generator(seed)
    start = operator.n_matvec
    samples = np.empty(m)
    for i in range(m):
        if distribution == "rademacher":
            z = torch.randint(0, 2, (operator.n,), generator=gen, dtype=torch.int64).to(torch.float64) * 2 - 1
        else:
            z = torch.randn(operator.n, generator=gen, dtype=torch.float64)
        z = z.to(operator.device)
        samples[i] = float(torch.dot(z, operator.matvec(z)))
    return TraceResult(float(samples.mean()), float(samples.std(ddof=1) / math.sqrt(m)), samples,
                       operator.n_matvec - start)


@dataclass
class SpectralDensity:
    r"""Gauss-quadrature nodes :math:`\theta_{v,i}` and weights :math:`\tau_{v,i}` (one row per probe vector).

    The density is :math:`\phi(t) = \frac1{n_v}\sum_v\sum_i \tau_{v,i}\, \mathcal N(t; \theta_{v,i}, \sigma^2)`;
    for each probe the weights sum to one, so :math:`\phi` integrates to one.
    """

    nodes: list[np.ndarray]
    weights: list[np.ndarray]
    n: int
    n_matvec: int

    def moment(self, p: int) -> float:
        r"""Estimate of :math:`\frac1n\mathrm{tr}(H^p)` (exact per probe for :math:`p \le 2m-1`)."""
        check_int(p, "p", low=0)
        return float(np.mean([np.sum(w * t ** p) for t, w in zip(self.nodes, self.weights)]))

    def trace(self) -> float:
        """Estimate of :math:`\\mathrm{tr}(H) = n \\cdot` first moment."""
        return self.n * self.moment(1)

    def support(self) -> tuple[float, float]:
        """Smallest and largest node (the extreme Ritz values)."""
        allt = np.concatenate(self.nodes)
        return float(allt.min()), float(allt.max())

    def default_sigma(self) -> float:
        """Kernel width: 1 % of the node range (or 1e-3 when all nodes coincide)."""
        lo, hi = self.support()
        return 0.01 * (hi - lo) if hi > lo else 1e-3 * max(1.0, abs(hi))

    def grid(self, num: int = 1000, sigma: float | None = None) -> np.ndarray:
        """Evaluation points covering the support widened by 5 kernel widths."""
        s = self.default_sigma() if sigma is None else sigma
        lo, hi = self.support()
        return np.linspace(lo - 5 * s, hi + 5 * s, check_int(num, "num", low=2))

    def density(self, grid: np.ndarray | None = None, sigma: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(grid, phi)``: the Gaussian-smoothed density on ``grid`` (default :meth:`grid`)."""
        s = self.default_sigma() if sigma is None else check_float(sigma, "sigma", low=0.0, low_open=True)
        t = self.grid(sigma=s) if grid is None else np.asarray(grid, dtype=np.float64)
        phi = np.zeros_like(t)
        for nodes, w in zip(self.nodes, self.weights):
            phi += (w[None, :] * np.exp(-0.5 * ((t[:, None] - nodes[None, :]) / s) ** 2)).sum(1)
        return t, phi / (len(self.nodes) * s * math.sqrt(2 * math.pi))

    def lla_criteria(self, n: float = 0.5) -> dict[str, float]:
        r"""LLA's Hessian criteria from the quadrature: ``re`` and ``Kh_n``.

        :math:`re = |\theta_{\min}/\theta_{\max}|` over all nodes and
        :math:`Kh_n = \sum_{\theta<0}|\theta\tau|^n / \sum_{\theta>0}(\theta\tau)^n` over every probe's nodes
        :math:`\theta` and weights :math:`\tau` (``inf`` without positive nodes). Large values flag strong
        negative curvature (saddle-like regions).

        Args:
            n: exponent (LLA's default "KH05" uses 0.5).

        Returns:
            ``{"re": ..., "kh": ...}``.

        Example:
            >>> import numpy as np
            >>> d = SpectralDensity([np.array([-1.0, 4.0])], [np.array([0.5, 0.5])], 2, 0)
            >>> d.lla_criteria(1.0)
            {'re': 0.25, 'kh': 0.25}

        References:
            Gabdullin et al., "Loss Landscape Analysis", arXiv:2412.10146, 2024 (``hessian/viz.py::hessian_criteria``
            in the authors' code, read for our research notes).
        """
        p = check_float(n, "n", low=0.0, low_open=True)
        t = np.concatenate(self.nodes)
        w = np.concatenate(self.weights)
        lo, hi = float(t.min()), float(t.max())
        re = abs(lo / hi) if hi != 0 else float("inf")
        neg = float(np.sum(np.abs(t[t < 0] * w[t < 0]) ** p))
        pos = float(np.sum((t[t > 0] * w[t > 0]) ** p))
        return {"re": re, "kh": neg / pos if pos > 0 else float("inf")}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready nodes and weights."""
        return {"n": self.n, "n_matvec": self.n_matvec, "nodes": [x.tolist() for x in self.nodes],
                "weights": [w.tolist() for w in self.weights]}


def spectral_density(op: Any, n_iter: int = 80, n_vectors: int = 1, *,
                     seed: int | torch.Generator = 0) -> SpectralDensity:
    r"""Spectral density of a symmetric operator by stochastic Lanczos quadrature (SLQ).

    For each Gaussian probe :math:`v` (normalised), ``n_iter`` Lanczos steps with full reorthogonalisation give
    :math:`T = S\,\mathrm{diag}(\theta) S^\top`; the nodes are :math:`\theta_i` and the weights
    :math:`\tau_i = S_{1i}^2`, a Gauss quadrature with
    :math:`\sum_i \tau_i f(\theta_i) \approx v^\top f(H) v`, exact for polynomials of degree :math:`\le 2m-1`.

    Args:
        op: a :class:`HessianOperator`, :class:`MatrixOperator` or square symmetric tensor.
        n_iter: Lanczos steps per probe (``1 <= n_iter <= n``); each costs one product.
        n_vectors: number of probes (averaged).
        seed: int or :class:`torch.Generator`.

    Returns:
        :class:`SpectralDensity`; smooth it with :meth:`SpectralDensity.density`.

    Example:
        >>> import torch
        >>> d = spectral_density(torch.diag(torch.tensor([1.0, 2.0, 4.0])), n_iter=3)
        >>> round(float(sum(d.weights[0])), 12), sorted(round(float(x), 6) for x in d.nodes[0])
        (1.0, [1.0, 2.0, 4.0])

    References:
        Lin, Saad & Yang, "Approximating spectral densities of large matrices", SIAM Review, 2016; Ghorbani,
        Krishnan & Xiao, "An investigation into neural net optimization via Hessian eigenvalue density",
        arXiv:1901.10159, 2019; Yao et al., "PyHessian", arXiv:1912.07145, 2020.

    Notes:
        PyHessian 0.1 from PyPI calls the removed ``torch.eig`` here and fails on torch 2.x; its probes are unseeded.
    """
    operator = as_operator(op)
    m = check_int(n_iter, "n_iter", low=1, high=operator.n, hint=f" (the operator has size n = {operator.n})")
    nv = check_int(n_vectors, "n_vectors", low=1)
    gen = make_generator(seed)
    start = operator.n_matvec
    nodes, weights = [], []
    for _ in range(nv):
        alphas, betas, _Q, _, _ = _run(operator, m, gen, None, lambda *_: False)
        theta, S = _tridiag_eig(alphas, betas)
        # a restart inside _run (exhausted Krylov space) leaves a zero beta: only the first block carries weight
        nodes.append(theta)
        weights.append(S[0, :] ** 2)
    return SpectralDensity(nodes, weights, operator.n, operator.n_matvec - start)


@dataclass
class ClassSpectrum:
    """Curvature of the loss restricted to one class: extreme eigenvalues and optionally its density."""

    label: int
    n_samples: int
    lambda_max: float
    lambda_min: float
    density: SpectralDensity | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary."""
        return {"label": self.label, "n_samples": self.n_samples, "lambda_max": self.lambda_max,
                "lambda_min": self.lambda_min,
                "density": None if self.density is None else self.density.to_dict()}


def _subset(batch: Any, mask: torch.Tensor) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch[mask] if batch.dim() > 0 and batch.shape[0] == mask.shape[0] else batch
    if isinstance(batch, (list, tuple)):
        return type(batch)(_subset(b, mask) for b in batch)
    if isinstance(batch, dict):
        return {k: _subset(v, mask) for k, v in batch.items()}
    return batch


def classwise_spectra(model: nn.Module, loss_fn: LossFn, batch: Any, *, labels: torch.Tensor | None = None,
                      classes: list[int] | None = None, density: bool = False, n_iter: int = 40,
                      tol: float = 1e-6, mode: str = "eval", seed: int | torch.Generator = 0,
                      ) -> dict[int, ClassSpectrum]:
    r"""Hessian spectra of the class-wise losses :math:`\ell_c(\theta) = \mathrm{loss}(\{(x_i,y_i): y_i = c\})`.

    For each class the batch is restricted to the samples of that class (every tensor in the batch whose first
    dimension equals the number of labels is indexed) and :math:`\lambda_{\max}`, :math:`\lambda_{\min}`
    (Lanczos, ``"LA"`` and ``"SA"``) and optionally the SLQ density are computed. A clearly negative
    :math:`\lambda_{\min}` of a minority class is the saddle-point signature Rangwani et al. report for
    class-imbalanced training.

    Args:
        model, loss_fn, batch, mode: as in :class:`HessianOperator`.
        labels: integer class labels of the batch (default: ``batch[1]``).
        classes: classes to analyse (default: every label present).
        density: also compute the SLQ density (``n_iter`` steps, one probe).
        n_iter: Lanczos steps (capped at the number of parameters).
        tol: Lanczos tolerance.
        seed: int or :class:`torch.Generator`.

    Returns:
        ``{class: ClassSpectrum}``.

    Example:
        >>> import torch
        >>> torch.manual_seed(0) and None
        >>> model = torch.nn.Linear(2, 2)
        >>> x, y = torch.randn(8, 2), torch.tensor([0, 1] * 4)
        >>> out = classwise_spectra(model, lambda m, b: torch.nn.functional.cross_entropy(m(b[0]), b[1]), (x, y))
        >>> sorted(out)
        [0, 1]

    References:
        Rangwani, Aithal, Mishra & Babu, "Escaping Saddle Points for Effective Generalization on Class-Imbalanced
        Data", arXiv:2212.13827, 2022 (class-wise loss Hessian spectral density; the abstract is verified, the
        batch restriction rule is this library's reading).
    """
    check_batch(batch)
    gen = make_generator(seed)
    if labels is None:
        if not isinstance(batch, (list, tuple)) or len(batch) < 2 or not isinstance(batch[1], torch.Tensor):
            raise DataError("cannot find labels: pass labels=... or a batch (inputs, labels, ...)")
        labels = batch[1]
    if not isinstance(labels, torch.Tensor) or labels.dim() != 1 or labels.dtype.is_floating_point:
        raise DataError("labels must be a 1-D integer tensor of class indices")
    present = sorted({int(c) for c in labels.tolist()})
    wanted = present if classes is None else [int(c) for c in classes]
    missing = [c for c in wanted if c not in present]
    if missing:
        raise ConfigError(f"classes {missing} have no samples in the batch (present: {present})")
    out: dict[int, ClassSpectrum] = {}
    for c in wanted:
        mask = labels == c
        op = HessianOperator(model, loss_fn, _subset(batch, mask), mode=mode)
        m = min(n_iter, op.n)
        top: EigenResult = lanczos(op, 1, which="LA", tol=tol, max_iter=m, seed=gen)
        bottom: EigenResult = lanczos(op, 1, which="SA", tol=tol, max_iter=m, seed=gen)
        dens = spectral_density(op, m, 1, seed=gen) if density else None
        out[c] = ClassSpectrum(c, int(mask.sum()), float(top.eigenvalues[0]), float(bottom.eigenvalues[0]), dens)
    return out
