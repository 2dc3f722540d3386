"""Kaplan-form laws: L(N, D), and L(N, S) with the critical batch size (Kaplan et al. 2020; Su et al. 2024)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from losslab._errors import DataError
from losslab.forecast.scaling._data import ScalingData
from losslab.forecast.scaling._law import ScalingLaw, Vjp, jac_vjp, lse_terms, product_grid

__all__ = ["KaplanNDLaw", "KaplanNSLaw"]

KAPLAN_REF = ("Kaplan, McCandlish, Henighan et al., Scaling Laws for Neural Language Models, arXiv:2001.08361, 2020")
SU_REF = ("Su, Tian, Xu et al., Unraveling the Mystery of Scaling Laws: Part I, arXiv:2403.06563, 2024; " + KAPLAN_REF)


class KaplanNDLaw(ScalingLaw):
    """Kaplan's joint law ``L(N, D) = [(N_c / N)^(alpha_N / alpha_D) + D_c / D]^alpha_D`` (no irreducible term).

    Fit space ``theta = (log N_c, log D_c, alpha_N, alpha_D)``; ``log L = alpha_D LSE((alpha_N / alpha_D)
    (log N_c - log N), log D_c - log D)``; Huber(1e-3) on log loss. Exponents are bounded below by 1e-4.
    Kaplan et al. report alpha_N = 0.076, alpha_D = 0.095, N_c = 8.8e13, D_c = 5.4e13 (non-embedding parameters,
    tokens, nats).

    Example:
        >>> law = KaplanNDLaw()
        >>> theta = np.array([[np.log(8.8e13), np.log(5.4e13), 0.076, 0.095]])
        >>> round(float(law.predict_theta(theta, {"params": np.array([1e9]), "tokens": np.array([1e11])})[0, 0]), 3)
        2.389

    References:
        Kaplan et al., Scaling Laws for Neural Language Models, arXiv:2001.08361, 2020 (eq. 1.5).

    Notes:
        Kaplan et al. fit in linear space; this fit uses the Chinchilla recipe (Huber on log loss, grid of starts).
    """

    name = "kaplan_nd"
    summary = "L(N, D) = [(Nc/N)^(aN/aD) + Dc/D]^aD (Kaplan et al. 2020)"
    reference = KAPLAN_REF
    theta_names = ("log_Nc", "log_Dc", "alpha_N", "alpha_D")
    param_names = ("Nc", "Dc", "alpha_N", "alpha_D")
    inputs = ("params", "tokens")
    positive = ("params", "tokens", "loss")
    lower = (-np.inf, -np.inf, 1e-4, 1e-4)

    def model(self, theta: np.ndarray, X: Mapping[str, np.ndarray]) -> tuple[np.ndarray, Vjp]:
        lnc, ldc, an, ad = (theta[:, i, None] for i in range(4))
        lN, lD = np.log(X["params"]), np.log(X["tokens"])
        u1 = (an / ad) * (lnc - lN)
        u2 = ldc - lD
        S, w = lse_terms(np.stack(np.broadcast_arrays(u1, u2)))
        jac = np.stack(np.broadcast_arrays(an * w[0], ad * w[1], w[0] * (lnc - lN), S - w[0] * u1), axis=-1)
        return ad * S, jac_vjp(jac)

    def natural(self, theta: np.ndarray) -> dict[str, np.ndarray]:
        return {"Nc": np.exp(theta[..., 0]), "Dc": np.exp(theta[..., 1]), "alpha_N": theta[..., 2],
                "alpha_D": theta[..., 3]}

    def default_starts(self) -> np.ndarray:
        return product_grid([20.0, 25.0, 30.0, 35.0], [20.0, 25.0, 30.0, 35.0], [0.05, 0.1, 0.3], [0.05, 0.1, 0.3])


class KaplanNSLaw(ScalingLaw):
    """Kaplan's ``L(N, S_min) = (N_c / N)^alpha_N + (S_c / S_min)^alpha_S`` with the critical batch size.

    ``B_crit(L) = B_* / L^(1 / alpha_B)`` and ``S_min = S / (1 + B_crit(L) / B)`` convert the steps ``S`` taken at
    batch size ``B`` (tokens per step) to the minimal steps of an infinitely large batch (Kaplan et al. 2020,
    eq. 5.4 and 5.6; Su et al. 2024 estimate all six constants from 1M-60M models). Fitting uses the *observed* loss
    in ``B_crit(L)``, as Kaplan et al. do. Prediction of the loss trajectory at an arbitrary batch size ``B`` solves

        S = S_c (L - (N_c / N)^alpha_N)^(-1 / alpha_S) * (1 + B_* / (B L^(1 / alpha_B)))

    for ``L`` (the right side decreases monotonically in L, so bisection finds the unique root).

    Data columns: ``params``, ``steps``, ``batch_size`` (tokens per step), ``loss``.
    Fit space ``theta = (log N_c, alpha_N, log S_c, alpha_S, log B_*, alpha_B)``. Kaplan et al.: alpha_N = 0.076,
    N_c = 8.8e13, alpha_S = 0.76, S_c = 2.1e3, B_* = 2e8 tokens, alpha_B = 0.21.

    Example:
        >>> law = KaplanNSLaw()
        >>> th = np.array([[np.log(8.8e13), 0.076, np.log(2.1e3), 0.76, np.log(2e8), 0.21]])
        >>> L = law.predict_theta(th, {"params": np.array([1e9]), "steps": np.array([1e5]), "batch_size": np.array([5e5])})
        >>> round(float(L[0, 0]), 3)
        2.569

    References:
        Su et al., Unraveling the Mystery of Scaling Laws: Part I, arXiv:2403.06563, 2024.
        Kaplan et al., Scaling Laws for Neural Language Models, arXiv:2001.08361, 2020.

    Notes:
        The functional forms are Kaplan's, which Su et al. keep; Su et al.'s step-by-step estimation protocol (fit
        B_crit from gradient-noise measurements first, then the rest) is not reproduced: here all six constants
        are fitted jointly, which needs runs at several batch sizes to identify B_* and alpha_B.
    """

    name = "kaplan_ns"
    summary = "L(N, S) = (Nc/N)^aN + (Sc/Smin)^aS with critical batch B_crit(L) = B*/L^(1/aB) (Kaplan; Su et al.)"
    reference = SU_REF
    theta_names = ("log_Nc", "alpha_N", "log_Sc", "alpha_S", "log_Bstar", "alpha_B")
    param_names = ("Nc", "alpha_N", "Sc", "alpha_S", "Bstar", "alpha_B")
    inputs = ("params", "steps", "batch_size")
    positive = ("params", "steps", "batch_size", "loss")
    lower = (-np.inf, 1e-4, -np.inf, 1e-4, -np.inf, 1e-3)

    def prepare(self, data: ScalingData) -> tuple[dict[str, np.ndarray], np.ndarray]:
        X, y = super().prepare(data)
        X["loss_observed"] = np.exp(y)
        return X, y

    def model(self, theta: np.ndarray, X: Mapping[str, np.ndarray]) -> tuple[np.ndarray, Vjp]:
        if "loss_observed" not in X:
            raise DataError("kaplan_ns fits need the observed loss (use fit_scaling_law); predict with "
                            "ScalingFit.predict, which solves for the loss trajectory")
        lnc, an, lsc, as_, lbs, ab = (theta[:, i, None] for i in range(6))
        lN, lS, lB, lL = (np.log(X[c]) for c in ("params", "steps", "batch_size", "loss_observed"))
        q = lbs - lB - lL / ab
        sp = np.logaddexp(0.0, q)  # log(1 + B_crit / B)
        sig = np.exp(q - sp)  # B_crit / (B + B_crit)
        u1 = an * (lnc - lN)
        u2 = as_ * (lsc - lS + sp)
        pred, w = lse_terms(np.stack(np.broadcast_arrays(u1, u2)))
        g = w[1] * as_ * sig
        jac = np.stack(np.broadcast_arrays(w[0] * an, w[0] * (lnc - lN), w[1] * as_, w[1] * (lsc - lS + sp), g,
                                           g * lL / ab**2), axis=-1)
        return pred, jac_vjp(jac)

    def natural(self, theta: np.ndarray) -> dict[str, np.ndarray]:
        return {"Nc": np.exp(theta[..., 0]), "alpha_N": theta[..., 1], "Sc": np.exp(theta[..., 2]),
                "alpha_S": theta[..., 3], "Bstar": np.exp(theta[..., 4]), "alpha_B": theta[..., 5]}

    def default_starts(self) -> np.ndarray:
        return product_grid([25.0, 30.0, 35.0], [0.05, 0.1], [5.0, 8.0, 11.0], [0.5, 1.0], [15.0, 19.0, 23.0],
                            [0.2, 0.5])

    def coarse_starts(self) -> np.ndarray:
        return product_grid([30.0], [0.05, 0.1], [5.0, 8.0], [0.5, 1.0], [15.0, 19.0], [0.2, 0.5])

    def critical_batch(self, theta: np.ndarray, loss: np.ndarray) -> np.ndarray:
        """``B_crit(L) = B_* / L^(1 / alpha_B)`` in tokens, rows of theta x losses."""
        t = np.atleast_2d(theta)
        return np.exp(t[:, 4, None]) / np.asarray(loss, dtype=np.float64) ** (1.0 / t[:, 5, None])

    def steps_for_loss(self, theta: np.ndarray, loss: np.ndarray, params: np.ndarray,
                       batch_size: np.ndarray) -> np.ndarray:
        """Steps needed to reach ``loss`` at batch ``batch_size`` (inf where the loss is below the N-limit)."""
        t = np.atleast_2d(theta)
        L = np.asarray(loss, dtype=np.float64)
        LN = np.exp(t[:, 1, None] * (t[:, 0, None] - np.log(params)))
        gap = L - LN
        with np.errstate(divide="ignore", invalid="ignore"):
            s_min = np.where(gap > 0, np.exp(t[:, 2, None]) * np.abs(gap) ** (-1.0 / t[:, 3, None]), np.inf)
        return s_min * (1.0 + self.critical_batch(t, L) / batch_size)

    def predict_theta(self, theta: np.ndarray, X: Mapping[str, np.ndarray]) -> np.ndarray:
        t = np.atleast_2d(theta)
        N, S, B = (np.asarray(X[c], dtype=np.float64) for c in ("params", "steps", "batch_size"))
        LN = np.exp(t[:, 1, None] * (t[:, 0, None] - np.log(N)))  # (K, n): the loss of infinite training
        lo = np.log(np.full(LN.shape, 1e-12))
        hi = np.log(np.full(LN.shape, 1e6))
        for _ in range(120):  # bisection on log(L - L_N)
            mid = 0.5 * (lo + hi)
            steps = self.steps_for_loss(t, LN + np.exp(mid), N, B)
            too_many = steps > S  # this loss needs more steps than taken: the true loss is higher
            lo = np.where(too_many, mid, lo)
            hi = np.where(too_many, hi, mid)
        return LN + np.exp(0.5 * (lo + hi))
