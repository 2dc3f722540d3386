"""Plain power law in steps, ``L(t) = E + A * t^(-alpha)``: the schedule-blind baseline."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from losslab.forecast.laws._base import Law

__all__ = ["PowerLaw"]


class PowerLaw(Law):
    r"""Schedule-blind power law in the step number.

    .. math:: L(t) = E + A\,t^{-\alpha}

    The learning rate is ignored: the law only says how the loss falls with the number of steps. It is the
    baseline every schedule-aware law must beat on a held-out schedule, and the right law for runs at a constant
    learning rate (where ``S1 = eta * t`` and the Tissue law reduces to it).

    Args (options): none.

    Returns:
        ``evaluate(theta, feats)`` gives the loss at the feature steps; ``theta = (E, A, alpha)``.

    Example:
        >>> import numpy as np
        >>> law = PowerLaw()
        >>> law.predict(np.array([2.0, 1.0, 0.5]), np.full(4, 1e-3), np.array([1, 4])).tolist()
        [3.0, 2.5]

    References:
        Kaplan, McCandlish, Henighan, Brown, Chess, Child, Gray, Radford, Wu, Amodei, "Scaling Laws for Neural
        Language Models", arXiv:2001.08361, 2020 (the ``L(S)`` learning-curve law in steps).

    Notes:
        Kaplan et al. write ``(S_c / S)^alpha_S`` without an offset; the irreducible ``E`` follows the Chinchilla
        form. Other libraries often fit this law in linear space with least squares; losslab fits it like every
        law here, with a Huber loss on the log of the loss.
    """

    name = "power"
    param_names = ("E", "A", "alpha")
    has_annealing_term = False
    linear = ("E", "A")
    option_defaults: ClassVar[dict[str, Any]] = {}

    def features(self, lr: np.ndarray, steps: np.ndarray) -> np.ndarray:
        """Log of the step numbers."""
        return np.log(np.asarray(steps, dtype=np.float64))

    def evaluate(self, theta: np.ndarray, feats: np.ndarray, jac: bool = False) -> Any:
        """Loss ``E + A t^-alpha`` (and its Jacobian in ``(E, A, alpha)`` when ``jac``)."""
        e, a, alpha = theta
        p = np.exp(-alpha * feats)
        pred = e + a * p
        if not jac:
            return pred
        return pred, np.column_stack([np.ones_like(p), p, -a * feats * p])

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """``E, A >= 0``, ``0 <= alpha <= 5``."""
        return np.array([0.0, 0.0, 0.0]), np.array([np.inf, np.inf, 5.0])

    def grid(self) -> list[dict[str, float]]:
        """``alpha`` from 0.05 to 2."""
        return [{"alpha": float(a)} for a in np.geomspace(0.05, 2.0, 16)]
