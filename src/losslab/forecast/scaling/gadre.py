"""Over-training law L(C, M) and loss-to-downstream-error law (Gadre et al. 2024)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from losslab.forecast.scaling._law import ScalingLaw, Vjp, jac_vjp, lse_terms, product_grid

__all__ = ["DownstreamErrorLaw", "OverTrainingLaw"]

GADRE_REF = ("Gadre, Smyrnis, Shankar et al., Language models scale reliably with over-training and on downstream "
             "tasks, arXiv:2403.08540, 2024")


class OverTrainingLaw(ScalingLaw):
    """Over-training law ``L(C, M) = E + (a M^eta + b M^(-eta)) C^(-eta)``, ``C = 6 N D``, ``M = D / N``.

    It is Chinchilla's law with equal exponents written in compute and token multiplier (the authors' code,
    ``scaling/laws.py``, writes it as ``alpha N^b + beta 6^(b/2) (M N)^b + E``). Data columns: ``params`` and
    ``tokens`` (or ``flops``). Fit space ``theta = (log E, log a, log b, eta)``, log loss
    ``LSE(log E, log a + eta log M - eta log C, log b - eta log M - eta log C)``, Huber(1e-3).

    Compute-optimal multiplier: ``d/dM (a M^eta + b M^-eta) = 0`` gives ``M* = (b / a)^(1 / (2 eta))``, so
    ``N* = sqrt(C / (6 M*))``, ``D* = M* N*`` and ``L* = E + 2 sqrt(a b) C^(-eta)``.

    Example:
        >>> law = OverTrainingLaw()
        >>> th = np.array([[np.log(1.8), np.log(60.0), np.log(600.0), 0.12]])
        >>> opt = law.optimal(th, np.array([1e21]))  # M* = (b / a)^(1 / (2 eta)) = 10^(1/0.24)
        >>> round(float(opt["tokens"][0, 0] / opt["params"][0, 0]), 1)
        14678.0

    References:
        Gadre et al., Language models scale reliably with over-training and on downstream tasks, arXiv:2403.08540,
        2024 (eq. 4).

    Notes:
        Fitted with this package's recipe (Huber on log loss from a grid of starts); the authors' fitting
        procedure is not reproduced.
    """

    name = "overtraining"
    summary = "L(C, M) = E + (a M^eta + b M^-eta) C^-eta with M = D/N (Gadre et al. 2024)"
    reference = GADRE_REF
    theta_names = ("log_E", "log_a", "log_b", "eta")
    param_names = ("E", "a", "b", "eta")
    inputs = ("params", "tokens")
    positive = ("params", "tokens", "loss")
    lower = (-np.inf, -np.inf, -np.inf, 1e-4)

    def model(self, theta: np.ndarray, X: Mapping[str, np.ndarray]) -> tuple[np.ndarray, Vjp]:
        le, la, lb, eta = (theta[:, i, None] for i in range(4))
        lM = np.log(X["tokens"]) - np.log(X["params"])
        lC = np.log(6.0) + np.log(X["tokens"]) + np.log(X["params"])
        pred, w = lse_terms(np.stack(np.broadcast_arrays(le, la + eta * (lM - lC), lb - eta * (lM + lC))))
        jac = np.stack([w[0], w[1], w[2], w[1] * (lM - lC) - w[2] * (lM + lC)], axis=-1)
        return pred, jac_vjp(jac)

    def natural(self, theta: np.ndarray) -> dict[str, np.ndarray]:
        return {"E": np.exp(theta[..., 0]), "a": np.exp(theta[..., 1]), "b": np.exp(theta[..., 2]),
                "eta": theta[..., 3]}

    def default_starts(self) -> np.ndarray:
        return product_grid([-1.0, 0.0, 1.0], [0.0, 5.0, 10.0, 15.0], [0.0, 5.0, 10.0, 15.0], [0.05, 0.1, 0.2, 0.4])

    def optimal(self, theta: np.ndarray, flops: np.ndarray) -> dict[str, np.ndarray]:
        p = self.natural(np.atleast_2d(theta))
        E, a, b, eta = (p[k][:, None] for k in ("E", "a", "b", "eta"))
        C = np.asarray(flops, dtype=np.float64)[None, :]
        M = (b / a) ** (1.0 / (2.0 * eta))
        n = np.sqrt(C / (6.0 * M))
        return {"params": n, "tokens": M * n, "loss": E + 2.0 * np.sqrt(a * b) * C ** (-eta)}


class DownstreamErrorLaw(ScalingLaw):
    """Loss-to-downstream-error law ``Err(L) = eps - k exp(-gamma L)`` (Gadre et al. 2024, eq. 5).

    Data columns: ``loss`` (input) and ``error`` (target, e.g. average top-1 error in [0, 1]). Residuals are
    linear (error units) with Huber delta 0.01. Fit space ``theta = (eps, log k, gamma)``; gamma >= 0.

    Example:
        >>> law = DownstreamErrorLaw()
        >>> round(float(law.predict_theta(np.array([[0.85, np.log(2.0), 0.5]]), {"loss": np.array([3.0])})[0, 0]), 4)
        0.4037

    References:
        Gadre et al., Language models scale reliably with over-training and on downstream tasks, arXiv:2403.08540,
        2024.

    Notes:
        The form matches the authors' ``decay_ours`` in ``scaling/laws.py``; their fitting procedure is not
        reproduced.
    """

    name = "downstream_error"
    summary = "Err(L) = eps - k exp(-gamma L): loss to downstream top-1 error (Gadre et al. 2024)"
    reference = GADRE_REF
    theta_names = ("eps", "log_k", "gamma")
    param_names = ("eps", "k", "gamma")
    inputs = ("loss",)
    target = "error"
    positive = ("loss",)
    space = "linear"
    delta = 1e-2
    lower = (-np.inf, -np.inf, 0.0)

    def model(self, theta: np.ndarray, X: Mapping[str, np.ndarray]) -> tuple[np.ndarray, Vjp]:
        eps, lk, g = (theta[:, i, None] for i in range(3))
        L = X["loss"]
        dec = np.exp(lk - g * L)
        pred = eps - dec
        jac = np.stack(np.broadcast_arrays(np.ones_like(dec), -dec, L * dec), axis=-1)
        return pred, jac_vjp(jac)

    def natural(self, theta: np.ndarray) -> dict[str, np.ndarray]:
        return {"eps": theta[..., 0], "k": np.exp(theta[..., 1]), "gamma": theta[..., 2]}

    def default_starts(self) -> np.ndarray:
        return product_grid([0.5, 0.75, 1.0], [-2.0, 0.0, 2.0, 4.0], [0.5, 1.0, 2.0, 4.0])
