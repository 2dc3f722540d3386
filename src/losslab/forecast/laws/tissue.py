"""Scaling law with learning-rate annealing (Tissue et al. 2024): ``L = L0 + A*S1^-alpha - C*S2``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from scipy.signal import lfilter

from losslab._errors import ConfigError
from losslab.forecast.laws._base import WARMUP_MODES, Law, effective_lr, positive_area

__all__ = ["TissueLaw", "annealing_areas"]



def annealing_areas(lr: np.ndarray, lam: float = 0.999, warmup: str = "area",
                    dlam: bool = False) -> tuple[np.ndarray, ...]:
    r"""Forward area ``S1`` and annealing area ``S2`` at every step ``1..T`` in O(T).

    .. math::
        S_1(s) = \sum_{i=1}^{s} \eta_i, \qquad
        m_i = \lambda m_{i-1} + (\eta_{i-1} - \eta_i),\ m_0 = 0, \qquad S_2(s) = \sum_{i=1}^{s} m_i

    ``m`` is a first-order linear filter of the LR drops (``scipy.signal.lfilter``) and ``S2`` its cumulative
    sum, so the cost is linear in the number of steps. ``eta_0`` and the warmup rates follow the ``warmup``
    convention of :func:`losslab.forecast.laws._base.effective_lr`.

    Args:
        lr: per-step learning rate of steps ``1..T``.
        lam: decay factor ``lambda`` of the annealing momentum, in (0, 1).
        warmup: ``"area"`` (default), ``"raw"`` or ``"peak"``.
        dlam: also return ``dS2/dlambda`` (another filter pass: ``dm_i = m_{i-1} + lambda * dm_{i-1}``).

    Returns:
        ``(S1, S2)`` or ``(S1, S2, dS2_dlam)``, arrays of shape (T,).

    Example:
        >>> s1, s2 = annealing_areas(np.array([1.0, 1.0, 0.5, 0.5]), lam=0.5)
        >>> s1.tolist(), s2.tolist()
        ([1.0, 2.0, 2.5, 3.0], [0.0, 0.0, 0.5, 0.75])

    References:
        Tissue, Wang, Wang, "Scaling Law with Learning Rate Annealing", arXiv:2408.11029, 2024.
    """
    lr_area, lr_ann, eta0, _ = effective_lr(np.asarray(lr, dtype=np.float64), warmup)
    drops = np.empty_like(lr_ann)
    drops[0] = eta0 - lr_ann[0]
    drops[1:] = lr_ann[:-1] - lr_ann[1:]
    m = lfilter([1.0], [1.0, -lam], drops)
    out = (np.cumsum(lr_area), np.cumsum(m))
    if not dlam:
        return out
    shifted = np.concatenate([[0.0], m[:-1]])
    return (*out, np.cumsum(lfilter([1.0], [1.0, -lam], shifted)))


@dataclass
class _TissueFeatures:
    lr: np.ndarray
    idx: np.ndarray  # 0-based indices of the evaluation steps
    log_s1: np.ndarray
    s2: np.ndarray | None  # None when lambda is fitted (recomputed per evaluation)


class TissueLaw(Law):
    r"""Scaling law with learning-rate annealing: forward area plus annealing area.

    .. math::
        L(s) = L_0 + A\,S_1(s)^{-\alpha} - C\,S_2(s)

    with ``S1`` the area under the LR curve and ``S2`` the momentum-smoothed sum of LR drops (see
    :func:`annealing_areas`). Each drop ``Delta`` eventually lowers the loss by ``C * Delta / (1 - lambda)``,
    reached over about ``1/(1 - lambda)`` steps.

    Options:
        lam: ``lambda``, default 0.999 (the paper's value).
        fit_lambda: fit ``lambda`` too (bounded to [0.9, 0.99995]); default False, because ``lambda`` and ``C``
            trade off and a fixed 0.999 predicts held-out schedules as well on the data we measured.
        warmup: ``"area"`` (default: the warmup adds its area to ``S1`` and its LR rise is not annealing, i.e. the
            rates are taken as the peak in ``S2`` only, as in the public re-implementations), ``"raw"`` (the rise
            counts as negative annealing) or ``"peak"`` (warmup rates are the peak in ``S1`` too). See
            ``effective_lr``. On the benchmark data the choice moves the held-out error by up to 50 %
            (docs/benchmarks.md); ``"area"`` is the default because it is the published convention.

    Returns:
        ``evaluate(theta, feats)``: the loss at the feature steps; ``theta = (L0, A, alpha, C[, lam])``.

    Example:
        >>> import numpy as np
        >>> law = TissueLaw(lam=0.5)
        >>> law.predict(np.array([2.0, 1.0, 1.0, 1.0]), np.array([1.0, 1.0, 0.5, 0.5])).round(4).tolist()
        [3.0, 2.5, 1.9, 1.5833]

    References:
        Tissue, Wang, Wang, "Scaling Law with Learning Rate Annealing", arXiv:2408.11029, 2024.

    Notes:
        The authors' code is posted on the paper's discussion page only; the warmup convention is therefore an
        explicit option. Unlike re-implementations that loop over steps in Python (O(T) per step, O(T^2) in all),
        ``S2`` here is one linear filter pass.
    """

    name = "tissue"
    param_names = ("L0", "A", "alpha", "C", "lam")
    linear = ("L0", "A", "C")
    option_defaults: ClassVar[dict[str, Any]] = {"lam": 0.999, "fit_lambda": False, "warmup": "area"}

    def validate_options(self) -> None:
        """``0 < lam < 1`` and a known warmup mode."""
        lam = self.options["lam"]
        if not (isinstance(lam, (int, float)) and 0.0 < float(lam) < 1.0):
            raise ConfigError(f"tissue: lam must be a number in (0, 1), got {lam!r}; the paper uses 0.999")
        if self.options["warmup"] not in WARMUP_MODES:
            raise ConfigError(f"tissue: warmup must be one of {', '.join(WARMUP_MODES)}, got {self.options['warmup']!r}")

    @property
    def active_params(self) -> tuple[str, ...]:
        """``lam`` is fitted only with ``fit_lambda=True``."""
        return self.param_names if self.options["fit_lambda"] else self.param_names[:4]

    def features(self, lr: np.ndarray, steps: np.ndarray) -> _TissueFeatures:
        """``log S1`` and ``S2`` at ``steps`` (``S2`` left for later when lambda is fitted)."""
        lr = np.asarray(lr, dtype=np.float64)
        idx = np.asarray(steps, dtype=np.int64) - 1
        s1, s2 = annealing_areas(lr, float(self.options["lam"]), self.options["warmup"])
        s2_at = None if self.options["fit_lambda"] else s2[idx]
        return _TissueFeatures(lr, idx, np.log(positive_area(s1)[idx]), s2_at)

    def evaluate(self, theta: np.ndarray, feats: _TissueFeatures, jac: bool = False) -> Any:
        """Loss and, with ``jac``, the Jacobian in the active parameters."""
        l0, a, alpha, c = theta[:4]
        p = np.exp(-alpha * feats.log_s1)
        ds2 = None
        if feats.s2 is None:
            lam = float(theta[4]) if len(theta) > 4 else float(self.options["lam"])
            _, s2_all, ds2_all = annealing_areas(feats.lr, lam, self.options["warmup"], dlam=True)
            s2, ds2 = s2_all[feats.idx], ds2_all[feats.idx]
        else:
            s2 = feats.s2
        pred = l0 + a * p - c * s2
        if not jac:
            return pred
        cols = [np.ones_like(p), p, -a * feats.log_s1 * p, -s2]
        if self.options["fit_lambda"]:
            assert ds2 is not None
            cols.append(-c * ds2)
        return pred, np.column_stack(cols)

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """``L0, A, C >= 0``, ``0 <= alpha <= 5``, ``0.9 <= lam <= 0.99995``."""
        lo = np.array([0.0, 0.0, 0.0, 0.0, 0.9])
        hi = np.array([np.inf, np.inf, 5.0, np.inf, 0.99995])
        n = len(self.active_params)
        return lo[:n], hi[:n]

    def grid(self) -> list[dict[str, float]]:
        """``alpha`` from 0.1 to 2 (times ``lam`` in {0.99, 0.995, 0.999, 0.9995} when fitted)."""
        alphas = np.geomspace(0.1, 2.0, 12)
        if not self.options["fit_lambda"]:
            return [{"alpha": float(a)} for a in alphas]
        return [{"alpha": float(a), "lam": lam} for a in alphas for lam in (0.99, 0.995, 0.999, 0.9995)]
