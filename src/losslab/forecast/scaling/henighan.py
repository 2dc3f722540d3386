"""Power law plus constant with compute-optimal model size (Henighan et al.); bivariate NMT law (Ghorbani et al.)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from losslab._errors import ConfigError, DataError
from losslab.forecast.scaling._data import ScalingData, as_data
from losslab.forecast.scaling._law import ScalingLaw, Vjp, jac_vjp, lse_terms, product_grid

__all__ = ["BivariateNMTLaw", "PowerLawConstant", "optimal_model_size"]

HENIGHAN_REF = ("Henighan, Kaplan, Katz et al., Scaling Laws for Autoregressive Generative Modeling, "
                "arXiv:2010.14701, 2020")
GHORBANI_REF = ("Ghorbani, Firat, Freitag et al., Scaling Laws for Neural Machine Translation, arXiv:2109.07740, "
                "2021")


class PowerLawConstant(ScalingLaw):
    """Power law plus constant ``L(x) = E + (x_0 / x)^alpha`` in one variable (Henighan et al. 2020).

    ``E`` is the irreducible loss (the entropy of the data in Henighan et al.'s reading) and ``(x_0 / x)^alpha``
    the reducible loss. Setting ``variable``: ``"flops"`` (default, L(C)) or ``"params"`` (L(N)). Fit space
    ``theta = (log E, log x_0, alpha)``, log loss ``LSE(log E, alpha (log x_0 - log x))``, Huber(1e-3); the
    starts for ``log x_0`` are placed around the data's median ``log x``.

    Example:
        >>> law = PowerLawConstant(variable="params")
        >>> round(float(law.predict_theta(np.array([[0.0, np.log(1e7), 0.3]]), {"params": np.array([1e9])})[0, 0]), 4)
        1.2512

    References:
        Henighan et al., Scaling Laws for Autoregressive Generative Modeling, arXiv:2010.14701, 2020.
    """

    name = "power_law_constant"
    summary = "L(x) = E + (x0/x)^alpha over compute or model size (Henighan et al. 2020)"
    reference = HENIGHAN_REF
    theta_names = ("log_E", "log_x0", "alpha")
    param_names = ("E", "x0", "alpha")
    settings_names = ("variable",)
    lower = (-np.inf, -np.inf, 1e-4)

    def __init__(self, variable: str = "flops") -> None:
        if variable not in ("flops", "params", "tokens"):
            raise ConfigError(f"variable={variable!r}: use 'flops', 'params' or 'tokens'")
        super().__init__(variable=variable)
        self.inputs = (variable,)
        self.positive = (variable, "loss")
        self._center = 20.0

    def configure(self, data: ScalingData) -> None:
        self._center = float(np.median(np.log(data[self.settings["variable"]])))

    def model(self, theta: np.ndarray, X: Mapping[str, np.ndarray]) -> tuple[np.ndarray, Vjp]:
        le, lx0, al = (theta[:, i, None] for i in range(3))
        lx = np.log(X[self.settings["variable"]])
        pred, w = lse_terms(np.stack(np.broadcast_arrays(le, al * (lx0 - lx))))
        jac = np.stack(np.broadcast_arrays(w[0], w[1] * al, w[1] * (lx0 - lx)), axis=-1)
        return pred, jac_vjp(jac)

    def natural(self, theta: np.ndarray) -> dict[str, np.ndarray]:
        return {"E": np.exp(theta[..., 0]), "x0": np.exp(theta[..., 1]), "alpha": theta[..., 2]}

    def default_starts(self) -> np.ndarray:
        c = self._center
        return product_grid([-1.0, 0.0, 1.0], [c - 30.0, c - 15.0, c - 5.0, c, c + 5.0], [0.05, 0.1, 0.3, 1.0])


def optimal_model_size(data: ScalingData | Mapping[str, Any] | str, *, n_grid: int = 30) -> dict[str, Any]:
    """Compute-optimal model size ``N_opt(C) = k C^exponent`` from loss-vs-compute curves of several model sizes.

    Each model size (column ``params``) contributes its checkpoints ``(flops, loss)``. On ``n_grid``
    log-spaced budgets inside the range where at least two sizes have data, every size's loss is interpolated
    (linear in log C), the size with the lowest loss is the optimum, and ``log N_opt = log k + exponent log C`` is
    fitted by least squares (Henighan et al. 2020 find exponents near 0.7 in every domain).

    Args:
        data: runs with columns ``params``, ``flops`` (or ``tokens``) and ``loss``.
        n_grid: number of compute budgets.

    Returns:
        ``{"k", "exponent", "flops": grid, "params": optimal size per budget}``.

    Example:
        >>> N = np.repeat([1e7, 1e8, 1e9, 1e10], 40); C = np.tile(np.logspace(16, 23, 40), 4)
        >>> L = 1.7 + 400 / N**0.34 + 400 / (C / (6 * N))**0.28  # Chinchilla-like curves
        >>> out = optimal_model_size({"params": N, "flops": C, "loss": L})
        >>> 0.4 < out["exponent"] < 0.6
        True

    References:
        Henighan et al., Scaling Laws for Autoregressive Generative Modeling, arXiv:2010.14701, 2020.
    """
    d = as_data(data)
    d.require(["params", "flops", "loss"], positive=["params", "flops", "loss"], law="optimal_model_size")
    if n_grid < 2:
        raise ConfigError(f"n_grid={n_grid} must be >= 2")
    sizes = np.unique(d["params"])
    if sizes.size < 2:
        raise DataError(f"{d.source}: needs curves of at least 2 model sizes; got {sizes.size}")
    curves = []
    for n in sizes:
        m = d["params"] == n
        order = np.argsort(d["flops"][m])
        curves.append((np.log(d["flops"][m][order]), d["loss"][m][order]))
    lo = sorted(c[0][0] for c in curves)[1]
    hi = sorted(c[0][-1] for c in curves)[-2]
    if not hi > lo:
        raise DataError(f"{d.source}: the compute ranges of the model sizes do not overlap; cannot compare sizes "
                        "at equal compute")
    grid = np.linspace(lo, hi, n_grid)
    losses = np.array([np.where((grid >= lc[0]) & (grid <= lc[-1]), np.interp(grid, lc, ll), np.inf)
                       for lc, ll in curves])
    best = sizes[np.argmin(losses, axis=0)]
    slope, intercept = np.polyfit(grid, np.log(best), 1)
    return {"k": float(np.exp(intercept)), "exponent": float(slope), "flops": np.exp(grid), "params": best}


class BivariateNMTLaw(ScalingLaw):
    """Encoder/decoder law ``L(N_e, N_d) = alpha (Nbar_e / N_e)^p_e (Nbar_d / N_d)^p_d + L_inf`` (Ghorbani et al.).

    ``Nbar_e``, ``Nbar_d`` are fixed normalisation sizes (settings ``ne_ref``, ``nd_ref``; default: the geometric
    means of the data, recorded in the fit). Data columns: ``encoder_params``, ``decoder_params``, ``loss``.
    Fit space ``theta = (log alpha, p_e, p_d, log L_inf)``; log loss
    ``LSE(log alpha + p_e log(Nbar_e / N_e) + p_d log(Nbar_d / N_d), log L_inf)``, Huber(1e-3).

    Example:
        >>> law = BivariateNMTLaw(ne_ref=1e8, nd_ref=1e8)
        >>> X = {"encoder_params": np.array([2e8]), "decoder_params": np.array([1e8])}
        >>> round(float(law.predict_theta(np.array([[0.0, 0.3, 0.4, np.log(1.5)]]), X)[0, 0]), 4)
        2.3123

    References:
        Ghorbani et al., Scaling Laws for Neural Machine Translation, arXiv:2109.07740, 2021.

    Notes:
        The abstract confirms a bivariate law in encoder and decoder size with different exponents; the exact
        multiplicative form above is written from the paper as recalled and is not verified against its text here.
    """

    name = "nmt_bivariate"
    summary = "L(Ne, Nd) = alpha (Ne_ref/Ne)^pe (Nd_ref/Nd)^pd + L_inf (Ghorbani et al. 2021)"
    reference = GHORBANI_REF
    theta_names = ("log_alpha", "p_e", "p_d", "log_Linf")
    param_names = ("alpha", "p_e", "p_d", "L_inf")
    inputs = ("encoder_params", "decoder_params")
    positive = ("encoder_params", "decoder_params", "loss")
    settings_names = ("ne_ref", "nd_ref")
    lower = (-np.inf, 0.0, 0.0, -np.inf)

    def __init__(self, ne_ref: float | None = None, nd_ref: float | None = None) -> None:
        for k, v in (("ne_ref", ne_ref), ("nd_ref", nd_ref)):
            if v is not None and not (np.isfinite(v) and v > 0):
                raise ConfigError(f"{k}={v!r} must be a positive size (or None for the data's geometric mean)")
        super().__init__(ne_ref=ne_ref, nd_ref=nd_ref)

    def configure(self, data: ScalingData) -> None:
        for k, c in (("ne_ref", "encoder_params"), ("nd_ref", "decoder_params")):
            if self.settings[k] is None:
                self.settings[k] = float(np.exp(np.mean(np.log(data[c]))))

    def model(self, theta: np.ndarray, X: Mapping[str, np.ndarray]) -> tuple[np.ndarray, Vjp]:
        if self.settings["ne_ref"] is None or self.settings["nd_ref"] is None:
            raise ConfigError("nmt_bivariate needs ne_ref and nd_ref (set by fitting, or give them)")
        la, pe, pd, li = (theta[:, i, None] for i in range(4))
        re = np.log(self.settings["ne_ref"]) - np.log(X["encoder_params"])
        rd = np.log(self.settings["nd_ref"]) - np.log(X["decoder_params"])
        pred, w = lse_terms(np.stack(np.broadcast_arrays(la + pe * re + pd * rd, li)))
        jac = np.stack(np.broadcast_arrays(w[0], w[0] * re, w[0] * rd, w[1]), axis=-1)
        return pred, jac_vjp(jac)

    def natural(self, theta: np.ndarray) -> dict[str, np.ndarray]:
        return {"alpha": np.exp(theta[..., 0]), "p_e": theta[..., 1], "p_d": theta[..., 2],
                "L_inf": np.exp(theta[..., 3])}

    def default_starts(self) -> np.ndarray:
        return product_grid([-2.0, -1.0, 0.0, 1.0], [0.1, 0.3, 0.6], [0.1, 0.3, 0.6], [-1.0, 0.0, 1.0])
