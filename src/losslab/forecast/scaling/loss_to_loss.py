"""Shifted power law between two losses (Brandfonbrener et al. 2024): train-to-train, train-to-test, test-to-test."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from losslab._errors import ConfigError, DataError
from losslab.forecast.scaling._data import ScalingData
from losslab.forecast.scaling._law import ScalingLaw, Vjp, jac_vjp, lse_terms, product_grid

__all__ = ["LossToLossLaw"]


class LossToLossLaw(ScalingLaw):
    """Shifted power law ``L_y = K (L_x - E_x)^kappa + E_y`` between two losses.

    ``E_x`` is the irreducible loss of the x-side (setting ``e_x``, required: take ``E`` from that dataset's
    Chinchilla fit, as the authors do). ``E_y`` is fixed by setting ``e_y`` or fitted when ``e_y`` is None
    (default). Data columns: ``loss_x`` and ``loss_y``; every ``loss_x`` must exceed ``E_x``.

    The three uses differ only in how pairs are formed: *train-to-train* pairs the train losses of two models
    trained on different data at equal compute; *train-to-test* pairs one model's train loss with its loss on a
    downstream set; *test-to-test* pairs the test losses of two models trained on different data.

    Fit space ``theta = (log K, kappa[, log E_y])``; log ``L_y`` = ``LSE(log K + kappa log(L_x - E_x), log E_y)``;
    Huber(1e-3) on log ``L_y``.

    Example:
        >>> law = LossToLossLaw(e_x=1.8)
        >>> round(float(law.predict_theta(np.array([[np.log(1.2), 1.1, np.log(2.0)]]), {"loss_x": np.array([2.8])})[0, 0]), 4)
        3.2

    References:
        Brandfonbrener, Anand, Vyas, Malach, Kakade, Loss-to-Loss Prediction: Scaling Laws for All Datasets,
        arXiv:2411.12925, 2024.

    Notes:
        The authors' notebooks (``power_law_with_constant``) clip ``L_x - E_x`` at 0; here such points are rejected
        with an error instead, since they carry no information about the power law.
    """

    name = "loss_to_loss"
    summary = "L_y = K (L_x - E_x)^kappa + E_y: shifted power law between losses (Brandfonbrener et al. 2024)"
    reference = ("Brandfonbrener, Anand, Vyas, Malach, Kakade, Loss-to-Loss Prediction: Scaling Laws for All "
                 "Datasets, arXiv:2411.12925, 2024")
    param_names = ("K", "kappa", "E_y")
    inputs = ("loss_x",)
    target = "loss_y"
    positive = ("loss_x", "loss_y")
    settings_names = ("e_x", "e_y")

    def __init__(self, e_x: float | None = None, e_y: float | None = None) -> None:
        if e_x is None or not (np.isfinite(e_x) and e_x >= 0):
            raise ConfigError(f"loss_to_loss needs e_x, the irreducible loss of the x-side (>= 0), e.g. E from that "
                              f"dataset's chinchilla fit; got {e_x!r}")
        if e_y is not None and not (np.isfinite(e_y) and e_y > 0):
            raise ConfigError(f"e_y={e_y!r} must be > 0, or None to fit it")
        super().__init__(e_x=float(e_x), e_y=None if e_y is None else float(e_y))
        self.theta_names = ("log_K", "kappa") + (("log_Ey",) if e_y is None else ())
        self.lower = (-np.inf, 1e-4) + ((-np.inf,) if e_y is None else ())

    def prepare(self, data: ScalingData) -> tuple[dict[str, np.ndarray], np.ndarray]:
        X, y = super().prepare(data)
        bad = X["loss_x"] <= self.settings["e_x"]
        if np.any(bad):
            i = int(np.flatnonzero(bad)[0])
            raise DataError(f"{data.source}: loss_x in row {i + 1} ({X['loss_x'][i]!r}) is not above e_x="
                            f"{self.settings['e_x']}; the shifted power law needs L_x > E_x (lower e_x or drop it)")
        return X, y

    def model(self, theta: np.ndarray, X: Mapping[str, np.ndarray]) -> tuple[np.ndarray, Vjp]:
        lk, ka = theta[:, 0, None], theta[:, 1, None]
        ley = theta[:, 2, None] if self.settings["e_y"] is None else np.full_like(lk, np.log(self.settings["e_y"]))
        with np.errstate(invalid="ignore", divide="ignore"):
            lg = np.log(X["loss_x"] - self.settings["e_x"])
        pred, w = lse_terms(np.stack(np.broadcast_arrays(lk + ka * lg, ley)))
        cols = [w[0], w[0] * lg] + ([w[1]] if self.settings["e_y"] is None else [])
        return pred, jac_vjp(np.stack(np.broadcast_arrays(*cols), axis=-1))

    def natural(self, theta: np.ndarray) -> dict[str, np.ndarray]:
        ey = np.exp(theta[..., 2]) if self.settings["e_y"] is None else np.full(theta.shape[:-1], self.settings["e_y"])
        return {"K": np.exp(theta[..., 0]), "kappa": theta[..., 1], "E_y": ey}

    def default_starts(self) -> np.ndarray:
        axes: list[list[float]] = [[-2.0, -1.0, 0.0, 1.0, 2.0], [0.5, 1.0, 1.5, 2.0]]
        if self.settings["e_y"] is None:
            axes.append([-1.0, 0.0, 1.0])
        return product_grid(*axes)
