"""Sigmoidal compute-performance curve for RL training (ScaleRL, Khatri et al. 2025)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from losslab._errors import ConfigError
from losslab.forecast.scaling._data import ScalingData
from losslab.forecast.scaling._law import ScalingLaw, Vjp, jac_vjp, product_grid

__all__ = ["SigmoidComputeLaw"]


class SigmoidComputeLaw(ScalingLaw):
    """Sigmoidal compute-performance curve ``R(C) = R_0 + (A - R_0) / (1 + (C_mid / C)^B)``.

    ``A`` is the asymptotic performance, ``B`` the scaling exponent (compute efficiency), ``C_mid`` the compute at
    which half of the gain ``A - R_0`` is reached, ``R_0`` the performance at the start (setting ``r0``; fitted
    when None). Data columns: ``flops`` (any compute unit: the alias ``compute`` maps here, e.g. GPU-hours) and
    ``performance`` (e.g. validation pass rate). Residuals are linear with Huber delta 0.01.
    Fit space ``theta = (A, B, log C_mid[, R_0])``; B >= 1e-3.

    Example:
        >>> law = SigmoidComputeLaw(r0=0.2)
        >>> round(float(law.predict_theta(np.array([[0.6, 1.5, np.log(1e3)]]), {"flops": np.array([1e3])})[0, 0]), 3)
        0.4

    References:
        Khatri, Madaan, Tiwari et al., The Art of Scaling Reinforcement Learning Compute for LLMs, arXiv:2510.13786,
        2025.

    Notes:
        The abstract confirms "sigmoidal compute-performance curves" with an asymptote and a compute-efficiency
        parameter; the exact parameterisation above (with R_0 and C_mid) is written from the paper as recalled and
        is not verified against its text here. The author list in this reference is likewise unverified.
    """

    name = "sigmoid_compute"
    summary = "R(C) = R0 + (A - R0) / (1 + (Cmid/C)^B): sigmoidal RL compute-performance curve (ScaleRL 2025)"
    reference = ("Khatri, Madaan, Tiwari et al., The Art of Scaling Reinforcement Learning Compute for LLMs, "
                 "arXiv:2510.13786, 2025")
    param_names = ("A", "B", "C_mid", "R0")
    inputs = ("flops",)
    target = "performance"
    positive = ("flops",)
    space = "linear"
    delta = 1e-2
    settings_names = ("r0",)

    def __init__(self, r0: float | None = None) -> None:
        if r0 is not None and not np.isfinite(r0):
            raise ConfigError(f"r0={r0!r} must be finite, or None to fit it")
        super().__init__(r0=None if r0 is None else float(r0))
        self.theta_names = ("A", "B", "log_Cmid") + (("R0",) if r0 is None else ())
        self.lower = (-np.inf, 1e-3, -np.inf) + ((-np.inf,) if r0 is None else ())
        self._lc = np.array([0.0, 5.0, 10.0])
        self._r = np.array([0.0, 0.5, 1.0])

    def configure(self, data: ScalingData) -> None:
        self._lc = np.quantile(np.log(data["flops"]), [0.25, 0.5, 0.75])
        self._r = np.quantile(data["performance"], [0.0, 0.5, 1.0])

    def model(self, theta: np.ndarray, X: Mapping[str, np.ndarray]) -> tuple[np.ndarray, Vjp]:
        A, B, lcm = theta[:, 0, None], theta[:, 1, None], theta[:, 2, None]
        r0 = theta[:, 3, None] if self.settings["r0"] is None else np.full_like(A, self.settings["r0"])
        u = B * (np.log(X["flops"]) - lcm)
        sig = 0.5 * (1.0 + np.tanh(0.5 * u))  # 1 / (1 + (C_mid / C)^B), overflow-free
        gain = A - r0
        ds = sig * (1.0 - sig)
        cols = [sig, gain * ds * (np.log(X["flops"]) - lcm), -gain * ds * B]
        if self.settings["r0"] is None:
            cols.append(1.0 - sig)
        return r0 + gain * sig, jac_vjp(np.stack(np.broadcast_arrays(*cols), axis=-1))

    def natural(self, theta: np.ndarray) -> dict[str, np.ndarray]:
        r0 = theta[..., 3] if self.settings["r0"] is None else np.full(theta.shape[:-1], self.settings["r0"])
        return {"A": theta[..., 0], "B": theta[..., 1], "C_mid": np.exp(theta[..., 2]), "R0": r0}

    def default_starts(self) -> np.ndarray:
        lo, _, hi = self._r
        axes: list[list[float]] = [[float(hi), float(hi + (hi - lo)), float(2 * hi)], [0.5, 1.0, 2.0],
                                   [float(v) for v in self._lc]]
        if self.settings["r0"] is None:
            axes.append([float(lo), float(lo - 0.1 * abs(hi - lo))])
        return product_grid(*axes)
