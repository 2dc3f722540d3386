"""Chinchilla's parametric law L(N, D) = E + A / N^alpha + B / D^beta, fitted by the published recipe."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from losslab.forecast.scaling._law import ScalingLaw, Vjp, product_grid

__all__ = ["ChinchillaLaw", "chinchilla_optimal"]

HOFFMANN_REF = ("Hoffmann, Borgeaud, Mensch et al., Training Compute-Optimal Large Language Models, "
                "arXiv:2203.15556, 2022; Besiroglu, Erdil, Barnett, You, Chinchilla Scaling: A replication attempt, "
                "arXiv:2404.10102, 2024")


def chinchilla_optimal(A: np.ndarray | float, B: np.ndarray | float, alpha: np.ndarray | float,
                       beta: np.ndarray | float, flops: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    """Compute-optimal model size and tokens of ``E + A/N^alpha + B/D^beta`` under ``C = 6 N D``.

    Minimising the loss along ``N D = C / 6`` gives (Hoffmann et al. 2022, Appendix D.2)

        G = (alpha A / (beta B))^(1 / (alpha + beta))
        N*(C) = G (C / 6)^(beta / (alpha + beta)),   D*(C) = (C / 6) / N*(C).

    Args:
        A, B, alpha, beta: law parameters (scalars or arrays that broadcast with ``flops``).
        flops: compute budgets C in FLOP.

    Returns:
        ``(N*, D*)`` as float64 arrays.

    Example:
        >>> n, d = chinchilla_optimal(406.4, 410.7, 0.34, 0.28, 5.76e23)
        >>> f"{float(n):.2e} {float(d):.2e}"
        '3.22e+10 2.98e+12'

    References:
        Hoffmann et al., Training Compute-Optimal Large Language Models, arXiv:2203.15556, 2022.
    """
    A, B, alpha, beta, C = (np.asarray(v, dtype=np.float64) for v in (A, B, alpha, beta, flops))
    G = (alpha * A / (beta * B)) ** (1.0 / (alpha + beta))
    n_opt = G * (C / 6.0) ** (beta / (alpha + beta))
    return n_opt, (C / 6.0) / n_opt


class ChinchillaLaw(ScalingLaw):
    """Chinchilla's law ``L(N, D) = E + A / N^alpha + B / D^beta`` (Hoffmann et al. 2022, Approach 3).

    Fit space: ``theta = (a, b, e, alpha, beta)`` with ``A = e^a``, ``B = e^b``, ``E = e^e``; the log loss is
    predicted as ``LSE(a - alpha log N, b - beta log D, e)`` and the objective is the **sum** over points of
    ``huber_delta(LSE(...) - log L)`` with ``delta = 1e-3``. (The sum, not the mean: on Epoch AI's 240 points the
    optimum is 1.01827e-3 with the sum; the mean would be 240 times smaller. The sum and the mean share the same
    minimiser; only the reported objective and L-BFGS's relative tolerances differ.)

    Starts: Hoffmann's grid ``alpha, beta in {0, 0.5, ..., 2}``, ``e in {-1, -0.5, ..., 1}``,
    ``a, b in {0, 5, ..., 25}``: 5 * 5 * 5 * 6 * 6 = 4500 starts, every one run to convergence with L-BFGS.

    Compute-optimal allocation (C = 6 N D): see :func:`chinchilla_optimal`.

    Example:
        >>> law = ChinchillaLaw()
        >>> theta = np.log([[406.4, 410.7, 1.69, 1.0, 1.0]]); theta[0, 3:] = [0.34, 0.28]
        >>> round(float(law.predict_theta(theta, {"params": np.array([70e9]), "tokens": np.array([1.4e12])})[0, 0]), 3)
        1.937

    References:
        Hoffmann et al., Training Compute-Optimal Large Language Models, arXiv:2203.15556, 2022.
        Besiroglu, Erdil, Barnett, You, Chinchilla Scaling: A replication attempt, arXiv:2404.10102, 2024.

    Notes:
        Epoch AI's replication fits by maximum likelihood with BFGS; their plain Huber fit from Hoffmann's grid is
        what this law reproduces (A=477.8, B=2143, E=1.8172, alpha=0.3473, beta=0.3672 on their 240 points).
        Libraries that fit ``E + A/N^alpha + B/D^beta`` by least squares in linear space (``curve_fit``) weight
        high-loss points more and give different parameters on the same data.
    """

    name = "chinchilla"
    summary = "L(N, D) = E + A/N^alpha + B/D^beta; Huber(1e-3) on log loss from Hoffmann's 4500-start grid"
    reference = HOFFMANN_REF
    theta_names = ("a", "b", "e", "alpha", "beta")
    param_names = ("A", "B", "E", "alpha", "beta")
    inputs = ("params", "tokens")
    positive = ("params", "tokens", "loss")

    def model(self, theta: np.ndarray, X: Mapping[str, np.ndarray]) -> tuple[np.ndarray, Vjp]:
        a, b, e, al, be = (theta[:, i, None] for i in range(5))
        lN, lD = np.log(X["params"]), np.log(X["tokens"])
        t1 = a - al * lN
        t2 = b - be * lD
        # |t| bounded per row without touching the (K, n) arrays: skip the max shift when exp cannot overflow
        bound = np.abs(theta[:, :3]).max() + np.abs(theta[:, 3:]).max() * max(np.abs(lN).max(), np.abs(lD).max())
        if bound < 600.0:
            w1, w2 = np.exp(t1), np.exp(t2)
            s = w1 + w2
            s += np.exp(e)
            pred = np.log(s)
        else:
            m = np.maximum(np.maximum(t1, t2), e)
            w1, w2 = np.exp(t1 - m), np.exp(t2 - m)
            s = w1 + w2
            s += np.exp(e - m)
            pred = m + np.log(s)
        np.reciprocal(s, out=s)
        w1 *= s
        w2 *= s  # softmax weights of the first two terms; the third is 1 - w1 - w2
        B1 = np.stack([np.ones_like(lN), -lN], axis=1)
        B2 = np.stack([np.ones_like(lD), -lD], axis=1)

        def vjp(v: np.ndarray) -> np.ndarray:
            g1 = (v * w1) @ B1  # d/da, d/dalpha
            g2 = (v * w2) @ B2  # d/db, d/dbeta
            g3 = v.sum(axis=1) - g1[:, 0] - g2[:, 0]  # d/de
            return np.stack([g1[:, 0], g2[:, 0], g3, g1[:, 1], g2[:, 1]], axis=1)

        return pred, vjp

    def natural(self, theta: np.ndarray) -> dict[str, np.ndarray]:
        return {"A": np.exp(theta[..., 0]), "B": np.exp(theta[..., 1]), "E": np.exp(theta[..., 2]),
                "alpha": theta[..., 3], "beta": theta[..., 4]}

    def default_starts(self) -> np.ndarray:
        ab = np.arange(0.0, 30.0, 5.0)
        e = np.arange(-1.0, 1.5, 0.5)
        ex = np.arange(0.0, 2.5, 0.5)
        return product_grid(ab, ab, e, ex, ex)

    def coarse_starts(self) -> np.ndarray:
        return product_grid([0.0, 5.0, 10.0], [0.0, 5.0, 10.0], [0.0, 0.5], [0.5, 1.0], [0.5, 1.0])

    def optimal(self, theta: np.ndarray, flops: np.ndarray) -> dict[str, np.ndarray]:
        p = self.natural(np.atleast_2d(theta))
        C = np.asarray(flops, dtype=np.float64)[None, :]
        n, d = chinchilla_optimal(p["A"][:, None], p["B"][:, None], p["alpha"][:, None], p["beta"][:, None], C)
        loss = p["E"][:, None] + p["A"][:, None] / n ** p["alpha"][:, None] + p["B"][:, None] / d ** p["beta"][:, None]
        return {"params": n, "tokens": d, "loss": loss}
