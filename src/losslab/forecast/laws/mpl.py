"""Multi-Power Law (Luo et al. 2025): power law in the LR area minus power-law loss drops after each LR decrease."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from losslab._errors import ConfigError
from losslab.forecast.laws._base import WARMUP_MODES, Law, effective_lr, positive_area

__all__ = ["MultiPowerLaw", "mpl_pairs"]

_LR_FLOOR = 1e-12  # relative to the peak: a zero LR enters eta_k^-gamma as 1e-12 * peak
PAIR_BUDGET = 4_000_000  # pairs evaluated at once (memory about 50 bytes a pair)
DENSE_BUDGET = 6_000_000  # above this many pairs, predict() interpolates LD between exact knots
MAX_NFEV = 200  # solver evaluations per start
# prior on (log C, beta, gamma): centred on the authors' fits at 25M-400M (C ~ 2, beta ~ 0.6, gamma ~ 0.64)
PRIOR_MEAN = np.array([np.log(2.0), 0.6, 0.6])
PRIOR_SD = np.array([1.0, 0.2, 0.2])
FIT_METHODS = ("gauss-newton", "authors")


@dataclass
class _MPLFeatures:
    log_s1: np.ndarray  # log S1 at each evaluation step
    pair_eval: np.ndarray  # evaluation index of each (step, change point) pair
    delta: np.ndarray  # eta_{k-1} - eta_k of the pair's change point
    log_eta: np.ndarray  # log eta_k
    log_s: np.ndarray  # log S_k(t) = log sum_{tau=k..t} eta_tau
    n_eval: int
    lr_now: np.ndarray  # eta_t of the annealing term at each evaluation step
    peak: float  # largest rate of the annealing term
    cache: dict[tuple[float, ...], np.ndarray] = field(default_factory=dict)


# Far from the evaluation step, G varies slowly with k, so LR change points are merged into blocks there:
# change points within LEVELS[0][1] steps of t are exact; then blocks of 16 steps up to 4096 steps back; then
# blocks of 256 steps. A block holding one change point is exact; see mpl_pairs for the error.
LEVELS = ((16, 256), (256, 4096))
ETA_BIN = 0.1  # width of the log-LR bins a block is split into


def _units(k: np.ndarray, delta: np.ndarray, c_prev: np.ndarray, log_eta: np.ndarray,
           block: int) -> tuple[np.ndarray, ...]:
    """Merge change points into blocks of ``block`` steps; Delta-weighted means inside.

    Drops and rises are kept apart, and so are rates more than ``ETA_BIN`` apart in log (a warmup ramp that spans
    decades inside one block would otherwise be represented by one mean rate).
    """
    if k.size == 0:
        return k, delta, c_prev, log_eta
    bid = (k - 1) // block
    sign = (delta > 0).astype(np.int64)
    # a block never mixes rates more than 10 % apart (warmup ramps span decades and stay finely resolved)
    ebin = np.floor(log_eta / ETA_BIN).astype(np.int64)
    ebin -= ebin.min()
    key = (bid * 2 + sign) * (int(ebin.max()) + 1) + ebin
    uniq, inv = np.unique(key, return_inverse=True)
    w = np.abs(delta)
    wsum = np.bincount(inv, w)
    d = np.bincount(inv, delta)
    cp = np.bincount(inv, w * c_prev) / wsum
    le = np.bincount(inv, w * log_eta) / wsum
    return uniq // (int(ebin.max()) + 1) // 2, d, cp, le


def _pairs_of(t: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (evaluation index, unit index) for unit index ranges [lo, hi) per evaluation step."""
    counts = np.maximum(hi - lo, 0)
    ev = np.repeat(np.arange(t.size), counts)
    unit = np.arange(ev.size) - np.repeat(np.cumsum(counts) - counts, counts) + np.repeat(lo, counts)
    return ev, unit


def mpl_pairs(lr: np.ndarray, steps: np.ndarray, warmup: str = "raw", exact: bool = False) -> _MPLFeatures:
    """Precompute the (evaluation step, LR change point) pairs of the loss-drop term.

    Only steps ``k`` where the LR changes (``eta_{k-1} != eta_k``) contribute to ``LD``; for each evaluation step
    ``t`` the pairs are the change points ``k <= t``, with ``S_k(t) = c_t - c_{k-1}`` from one cumulative sum.

    With ``exact=False`` (default) change points more than 256 steps before ``t`` are merged into blocks (16 steps
    wide up to 4096 steps back, 256 beyond): a block enters as one change point with the summed drop and the
    drop-weighted mean of ``c_{k-1}`` and ``log eta_k``. ``G`` varies on a scale of tens of steps right after a
    drop and ever more slowly with distance, so the merge error is second order in (block width / distance): on
    the cosine runs of the benchmark data the predicted loss moves by less than 1e-6 (relative), while the number of
    pairs falls 20-80 times. Schedules with isolated drops (step decay) are exact either way.
    """
    lr_area, lr_ann, eta0, _ = effective_lr(np.asarray(lr, dtype=np.float64), warmup)
    t = np.asarray(steps, dtype=np.int64)
    c = np.concatenate([[0.0], np.cumsum(lr_ann)])
    prev = np.concatenate([[eta0], lr_ann[:-1]])
    delta_all = prev - lr_ann
    k = np.flatnonzero(delta_all != 0.0) + 1  # 1-based change points
    peak = float(lr_ann.max())
    log_eta_all = np.log(np.maximum(lr_ann[k - 1], _LR_FLOOR * peak))
    s1 = positive_area(np.cumsum(lr_area))[t - 1]
    if exact:
        ev, unit = _pairs_of(t, np.zeros_like(t), np.searchsorted(k, t, side="right"))
        d, cp, le = delta_all[k - 1][unit], c[k - 1][unit], log_eta_all[unit]
    else:
        evs, ds, cps, les = [], [], [], []
        # level 0: single change points in (b1, t], b1 = start of the first block level
        (w1, r1), (w2, r2) = LEVELS
        b1 = np.maximum((t - r1) // w1 * w1, 0)
        b2 = np.minimum(np.maximum((t - r2) // w2 * w2, 0), b1)
        ev, unit = _pairs_of(t, np.searchsorted(k, b1, side="right"), np.searchsorted(k, t, side="right"))
        evs.append(ev)
        ds.append(delta_all[k - 1][unit])
        cps.append(c[k - 1][unit])
        les.append(log_eta_all[unit])
        for width, lo_edge, hi_edge in ((w1, b2, b1), (w2, np.zeros_like(b2), b2)):
            bid, ud, ucp, ule = _units(k, delta_all[k - 1], c[k - 1], log_eta_all, width)
            ev, unit = _pairs_of(t, np.searchsorted(bid, lo_edge // width, side="left"),
                                 np.searchsorted(bid, hi_edge // width, side="left"))
            evs.append(ev)
            ds.append(ud[unit])
            cps.append(ucp[unit])
            les.append(ule[unit])
        ev, d, cp, le = (np.concatenate(a) for a in (evs, ds, cps, les))
        cp_t = c[t[ev]]
    if exact:
        cp_t = c[t[ev]]
    with np.errstate(divide="ignore"):
        log_s = np.log(np.maximum(cp_t - cp, 0.0))
    return _MPLFeatures(log_s1=np.log(np.maximum(s1, 1e-300)), pair_eval=ev, delta=d, log_eta=le, log_s=log_s,
                        n_eval=t.size, lr_now=lr_ann[t - 1], peak=peak)


def _drop_sums(feats: _MPLFeatures, b_c_beta_gamma: tuple[float, float, float], jac: bool) -> np.ndarray:
    """``sum_k delta_k G(x_k)`` per evaluation step, and with ``jac`` its derivatives in C, beta, gamma."""
    c, beta, gamma = b_c_beta_gamma
    x = np.exp(feats.log_s - gamma * feats.log_eta)
    log_u = np.log1p(c * x)
    p = np.exp(-beta * log_u)  # (1 + C x)^-beta
    n = feats.n_eval
    ld = np.bincount(feats.pair_eval, feats.delta * (1.0 - p), minlength=n)
    if not jac:
        return ld
    q = feats.delta * beta * p * x / (1.0 + c * x)  # delta * dG/dC
    d_c = np.bincount(feats.pair_eval, q, minlength=n)
    d_beta = np.bincount(feats.pair_eval, feats.delta * p * log_u, minlength=n)
    d_gamma = np.bincount(feats.pair_eval, -c * q * feats.log_eta, minlength=n)
    return np.stack([ld, d_c, d_beta, d_gamma])


class MultiPowerLaw(Law):
    r"""Multi-Power Law: loss as a power law in the LR area minus a saturating power-law drop per LR decrease.

    .. math::
        L(t) = L_0 + A\,(S_1(t) + S_W)^{-\alpha} - LD(t), \qquad
        LD(t) = B \sum_{k=1}^{t} (\eta_{k-1} - \eta_k)\, G\!\left(\eta_k^{-\gamma} S_k(t)\right),

    .. math::
        G(x) = 1 - (C x + 1)^{-\beta}, \qquad S_k(t) = \sum_{\tau=k}^{t} \eta_\tau .

    Seven parameters ``(L0, A, alpha, B, C, beta, gamma)``. Conventions follow the authors' code
    (``thu-yao-01-luo/MultiPowerLaw``, ``src/models.py``): the LR array covers every step including warmup, so
    ``S1 + S_W`` is simply the cumulative sum of the LR up to ``t``; with the default ``warmup="raw"`` the rate
    before step 1 is 0 and the warmup's rises enter ``LD`` as negative drops (a near-constant offset that ``L0``
    absorbs). ``warmup="area"`` gives the paper's formula (warmup only in ``S_W``); ``"peak"`` treats warmup rates
    as the peak everywhere.

    Speed: only change points of the LR enter ``LD``, every (evaluation step, change point) pair is evaluated in
    one vectorised pass, and the Jacobian shares the pass (three transcendental functions per pair). Dense
    predictions over long cosine schedules evaluate ``LD`` exactly at knots (uniform, plus geometric offsets after
    every large drop) and interpolate it linearly between them; ``S1`` is exact at every step.

    Options:
        warmup: ``"raw"`` (default, authors' code), ``"area"`` (paper) or ``"peak"``.
        prior: strength of the Gaussian prior on ``(log C, beta, gamma)`` used by the fitter (0 disables it).
        exact: evaluate every (step, change point) pair instead of merging far change points into blocks
            (slower; the merged form differs by < 1e-6 relative on real schedules, see :func:`mpl_pairs`).
        method: ``"gauss-newton"`` (default): multi-start trust-region fit with the prior; ``"authors"``: the
            authors' procedure (a simplified-law start, then at most 200 early-stopped AdamW steps), see
            :mod:`losslab.forecast.laws._mpl_authors`. Which one predicts held-out schedules better depends on
            the data; docs/forecast.md compares them.

    Returns:
        ``evaluate(theta, feats)``: the loss at the feature steps.

    Example:
        >>> import numpy as np
        >>> law = MultiPowerLaw()
        >>> lr = np.r_[np.full(5000, 3e-4), np.full(1000, 3e-5)]  # a step decay at step 5001
        >>> theta = np.array([3.0, 0.5, 0.5, 400.0, 2.0, 0.6, 0.6])
        >>> law.predict(theta, lr, np.array([5000, 5010, 6000])).round(4).tolist()
        [3.5249, 3.5087, 3.4264]

    References:
        Luo, Wen, Hu, Sun, Liu, Sun, Lyu, Chen, "A Multi-Power Law for Loss Curve Prediction Across Learning Rate
        Schedules", arXiv:2503.12811, 2025 (ICLR 2025).

    Notes:
        The authors evaluate ``LD`` with a Python loop over evaluation steps and fit with 200 AdamW steps in
        PyTorch; here the same function is evaluated in NumPy with an analytic Jacobian and fitted with a
        trust-region Gauss-Newton method, which reaches lower training loss in a fraction of the time.
    """

    name = "mpl"
    param_names = ("L0", "A", "alpha", "B", "C", "beta", "gamma")
    linear = ("L0", "A", "B")
    default_starts = 3
    option_defaults: ClassVar[dict[str, Any]] = {"warmup": "raw", "prior": 10.0, "exact": False,
                                                 "method": "gauss-newton"}

    def validate_options(self) -> None:
        """Known warmup mode and a non-negative prior strength."""
        if self.options["warmup"] not in WARMUP_MODES:
            raise ConfigError(f"mpl: warmup must be one of {', '.join(WARMUP_MODES)}, got {self.options['warmup']!r}")
        prior = self.options["prior"]
        if not (isinstance(prior, (int, float)) and np.isfinite(prior) and prior >= 0):
            raise ConfigError(f"mpl: prior must be a number >= 0 (0 disables it), got {prior!r}")
        if self.options["method"] not in FIT_METHODS:
            raise ConfigError(f"mpl: method must be one of {', '.join(FIT_METHODS)}, got {self.options['method']!r}")

    def features(self, lr: np.ndarray, steps: np.ndarray) -> _MPLFeatures:
        """The (evaluation step, change point) pairs of ``LD`` (see :func:`mpl_pairs`)."""
        return mpl_pairs(lr, steps, self.options["warmup"], bool(self.options["exact"]))

    def evaluate(self, theta: np.ndarray, feats: _MPLFeatures, jac: bool = False) -> Any:
        """Loss and, with ``jac``, the analytic Jacobian (n_steps, 7)."""
        l0, a, alpha, b, c, beta, gamma = (float(v) for v in theta)
        p = np.exp(-alpha * feats.log_s1)
        sums = _drop_sums(feats, (c, beta, gamma), jac)
        ld = sums[0] if jac else sums
        pred = l0 + a * p - b * ld
        if not jac:
            return pred
        cols = [np.ones_like(p), p, -a * feats.log_s1 * p, -ld, -b * sums[1], -b * sums[2], -b * sums[3]]
        return pred, np.column_stack(cols)

    def basis(self, nonlinear: dict[str, float], feats: _MPLFeatures) -> np.ndarray:
        """Columns for ``(L0, A, B)`` and a zero constant; ``LD`` is cached per ``(C, beta, gamma)``."""
        key = (nonlinear["C"], nonlinear["beta"], nonlinear["gamma"])
        if key not in feats.cache:
            feats.cache[key] = _drop_sums(feats, key, jac=False)
        ld = feats.cache[key]
        return np.column_stack([np.ones(feats.n_eval), np.exp(-nonlinear["alpha"] * feats.log_s1), -ld,
                                np.zeros(feats.n_eval)])

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """``L0, A, B >= 0``; ``0 <= alpha <= 3``; ``1e-3 <= C <= 1e3``; ``0.01 <= beta <= 3``; ``0 <= gamma <= 2``."""
        return (np.array([0.0, 0.0, 0.0, 0.0, 1e-3, 0.01, 0.0]),
                np.array([np.inf, np.inf, 3.0, np.inf, 1e3, 3.0, 2.0]))

    def grid(self) -> list[dict[str, float]]:
        """``alpha`` in {0.3, 0.45, 0.6} times ``(C, beta, gamma)`` in {0.5, 2} x {0.4, 0.6} x {0.4, 0.6}."""
        return [{"alpha": a, "C": c, "beta": b, "gamma": g}
                for c in (0.5, 2.0) for b in (0.4, 0.6) for g in (0.4, 0.6) for a in (0.3, 0.45, 0.6)]

    def penalty(self, kappa: float) -> Any:
        """Gaussian prior rows on ``(log C, beta, gamma)``; None when ``prior == 0``.

        Rows ``sqrt(kappa * prior) * (u - PRIOR_MEAN) / PRIOR_SD``, so the penalty is ``prior`` times the negative
        log prior in the objective's units (``kappa``, see :func:`losslab.forecast._robust.multistart_fit`).
        ``prior = 1`` would be the Bayesian weight for independent residuals; neighbouring points of a loss curve
        share their error (lag-1 autocorrelation 0.9 and more on real curves, i.e. 10-20 times fewer independent
        points than points), hence the default 10. The prior only bites along the directions the curves leave
        flat, which is where ``(C, beta, gamma)`` wander off without it (e.g. ``beta -> 0.02`` with ``B`` tripled on a
        single noisy cosine log).
        """
        strength = float(self.options["prior"])
        if strength == 0:
            return None
        w = np.sqrt(kappa * strength) / PRIOR_SD

        def rows(theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            u = np.array([np.log(theta[4]), theta[5], theta[6]])
            jac = np.zeros((3, theta.size))
            jac[0, 4] = w[0] / theta[4]
            jac[1, 5] = w[1]
            jac[2, 6] = w[2]
            return w * (u - PRIOR_MEAN), jac

        return rows

    def fit(self, problems: Any, *, delta: float = 1e-3, quiet: bool | None = None,
            n_starts: int | None = None) -> Any:
        """Multi-start fit with the prior rows (see :meth:`penalty`), or the authors' procedure (``method``)."""
        from losslab.forecast._robust import multistart_fit

        if self.options["method"] == "authors":
            from losslab.forecast.laws._mpl_authors import fit_authors

            return fit_authors(self, problems, delta=delta, quiet=quiet)

        return multistart_fit(self, problems, delta=delta, n_starts=n_starts or self.default_starts, quiet=quiet,
                              penalty=self.penalty, max_nfev=MAX_NFEV, desc="fit mpl")

    def predict(self, theta: np.ndarray, lr: np.ndarray, steps: np.ndarray | None = None) -> np.ndarray:
        """Loss at ``steps`` (default every step).

        Explicit ``steps`` are evaluated directly (in chunks). For every step of a long schedule with LR changes at
        every step, ``LD`` is evaluated at knots (uniform within the pair budget, plus offsets 1..32 and geometric
        ones after each drop of at least 1 % of the peak) and interpolated linearly; ``S1`` stays exact. The
        interpolation error is below 1e-5 (relative) on the benchmark schedules (tested).
        """
        lr = np.asarray(lr, dtype=np.float64)
        theta = np.asarray(theta, dtype=np.float64)
        explicit = steps is not None
        steps = np.arange(1, lr.size + 1) if steps is None else np.asarray(steps, dtype=np.int64)
        lr_area, lr_ann, eta0, _ = effective_lr(lr, self.options["warmup"])
        prev = np.concatenate([[eta0], lr_ann[:-1]])
        delta = prev - lr_ann
        kpos = np.flatnonzero(delta != 0.0) + 1
        per_step = np.searchsorted(kpos, steps, side="right")
        if not self.options["exact"]:
            per_step = np.minimum(per_step, LEVELS[0][1] + LEVELS[1][1] // LEVELS[0][0] + lr.size // LEVELS[1][0])
        n_pairs = int(per_step.sum())
        l0, a, alpha, b = theta[:4]
        s1 = positive_area(np.cumsum(lr_area))[steps - 1]
        if n_pairs <= DENSE_BUDGET or explicit:
            return l0 + a * s1 ** (-alpha) - b * self._ld_at(theta, lr, steps, int(per_step.max()))
        knots = self._knots(steps, kpos, np.abs(delta[kpos - 1]), float(lr_ann.max()), n_pairs / steps.size)
        ld_knots = self._ld_at(theta, lr, knots, int(per_step.max()))
        return l0 + a * s1 ** (-alpha) - b * np.interp(steps, knots, ld_knots)

    def _ld_at(self, theta: np.ndarray, lr: np.ndarray, steps: np.ndarray, per: int) -> np.ndarray:
        """``LD / B`` at ``steps``, in chunks of at most PAIR_BUDGET pairs (``per``: pairs a step at most)."""
        order = np.argsort(steps, kind="stable")
        sorted_steps = steps[order]
        chunk = max(1, PAIR_BUDGET // max(per, 1))
        out = np.empty(steps.size)
        cbg = (float(theta[4]), float(theta[5]), float(theta[6]))
        for i in range(0, steps.size, chunk):
            part = sorted_steps[i:i + chunk]
            feats = mpl_pairs(lr, part, self.options["warmup"], bool(self.options["exact"]))
            out[i:i + chunk] = _drop_sums(feats, cbg, jac=False)
        result = np.empty_like(out)
        result[order] = out
        return result

    @staticmethod
    def _knots(steps: np.ndarray, kpos: np.ndarray, size: np.ndarray, peak: float, per: float) -> np.ndarray:
        """Uniform knots within the pair budget, plus geometric offsets after every drop of >= 1 % of the peak."""
        lo, hi = int(steps.min()), int(steps.max())
        n_uniform = int(np.clip(DENSE_BUDGET / max(per, 1.0), 64, 8192))
        knots = [np.linspace(lo, hi, n_uniform).round().astype(np.int64)]
        big = kpos[size >= 0.01 * peak]
        offsets = np.unique(np.r_[np.arange(1, 33), np.geomspace(32, max(hi - lo, 32), 64).round()].astype(np.int64))
        for k in big:
            knots.append(k - 1 + np.concatenate([[0], offsets]))
        all_knots = np.unique(np.concatenate(knots))
        return all_knots[(all_knots >= lo) & (all_knots <= hi)]
