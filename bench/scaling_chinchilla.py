"""Chinchilla's recipe on Epoch AI's 240 points: losslab's vectorised 4500-start fit against the naive recipe.

The naive recipe is the replication's: ``scipy.optimize.minimize(method="L-BFGS-B")`` from every start of Hoffmann's
grid with numeric (finite-difference) gradients, one start at a time. It takes minutes, so by default it runs on a
random subset of the starts and its full-grid time is extrapolated (printed as such); ``--naive-full`` runs all
4500. A middle column uses scipy per start with losslab's analytic gradient. Repeats are interleaved and medians
reported; wall-clock and CPU time are both printed because the machine is shared.

    python bench/scaling_chinchilla.py [--data ../shared/data] [--repeats 3] [--naive-starts 60] [--bootstrap 1000]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
os.environ.setdefault("LOSSLAB_QUIET", "1")
# one BLAS thread for every contender: on a loaded 2-core box OpenBLAS thread hand-offs make each tiny BLAS call in
# scipy's L-BFGS-B cost milliseconds. Set before NumPy is imported (below) so that it takes effect.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402
from scipy.optimize import minimize  # noqa: E402
from scipy.special import huber, logsumexp  # noqa: E402

from losslab.forecast.scaling import absolute_relative_error, fit_scaling_law, get_law, read_runs  # noqa: E402
from losslab.forecast.scaling._fit import make_objective  # noqa: E402

TARGET = {"A": 477.8, "B": 2143, "E": 1.8172, "alpha": 0.3473, "beta": 0.3672}
TARGET_SE = {"A": 124.52, "B": 1293.28, "E": 0.026, "alpha": 0.015, "beta": 0.021}


def naive_objective(theta, lN, lD, lL):
    a, b, e, al, be = theta
    pred = logsumexp([a - al * lN, b - be * lD, np.full_like(lN, e)], axis=0)
    return np.sum(huber(1e-3, pred - lL))


def timed(fn):
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--naive-starts", type=int, default=60, help="starts timed for the naive recipe")
    ap.add_argument("--naive-full", action="store_true", help="run the naive recipe on all 4500 starts")
    ap.add_argument("--bootstrap", type=int, default=1000)
    args = ap.parse_args()

    data = read_runs(args.data / "chinchilla-epoch" / "svg_extracted_data.csv").drop_highest(5)
    lN, lD, lL = np.log(data["params"]), np.log(data["tokens"]), np.log(data["loss"])
    law = get_law("chinchilla")
    grid = law.default_starts()
    rng = np.random.default_rng(0)
    subset = grid if args.naive_full else grid[np.sort(rng.choice(len(grid), args.naive_starts, replace=False))]
    X, y = law.prepare(data)
    fun = make_objective(law, X, y, 1e-3)
    one = np.zeros(1, dtype=int)

    def analytic(t):
        f, g = fun(t[None, :], one)
        return float(f[0]), g[0]

    ours, naive, semi = [], [], []
    for r in range(args.repeats):
        fit, w, c = timed(lambda: fit_scaling_law(data, "chinchilla", quiet=True))
        ours.append((w, c))
        res_n, wn, cn = timed(lambda: [minimize(naive_objective, s, args=(lN, lD, lL), method="L-BFGS-B")
                                       for s in subset])
        naive.append((wn, cn))
        _, ws, cs = timed(lambda: [minimize(analytic, s, jac=True, method="L-BFGS-B") for s in subset])
        semi.append((ws, cs))
        print(f"repeat {r + 1}: losslab {w:.2f} s wall / {c:.2f} s CPU; naive {len(subset)} starts {wn:.1f} s wall "
              f"/ {cn:.1f} s CPU; scipy+analytic {len(subset)} starts {ws:.1f} s wall / {cs:.1f} s CPU", flush=True)
    scale = len(grid) / len(subset)
    mo = np.median(np.array(ours), axis=0)
    mn = np.median(np.array(naive), axis=0) * scale
    ms = np.median(np.array(semi), axis=0) * scale
    tag = "" if args.naive_full else f" (extrapolated from {len(subset)} random starts x {scale:.1f})"
    print(f"\nfull 4500-start grid, median of {args.repeats}:")
    print(f"  losslab (batched L-BFGS, analytic gradient)  {mo[0]:8.2f} s wall  {mo[1]:8.2f} s CPU")
    print(f"  scipy L-BFGS-B per start, analytic gradient  {ms[0]:8.1f} s wall  {ms[1]:8.1f} s CPU{tag}")
    print(f"  naive: scipy L-BFGS-B, numeric gradient      {mn[0]:8.1f} s wall  {mn[1]:8.1f} s CPU{tag}")
    print(f"  speed-up vs naive: {mn[0] / mo[0]:.0f}x wall, {mn[1] / mo[1]:.0f}x CPU; "
          f"vs scipy+analytic: {ms[0] / mo[0]:.0f}x wall, {ms[1] / mo[1]:.0f}x CPU")
    best_naive = min(res_n, key=lambda r: r.fun)
    nat = law.natural(best_naive.x[None, :])
    print(f"\n{'':8} {'target':>10} {'losslab':>12} {'naive best':>12}")
    for k, v in TARGET.items():
        print(f"{k:8} {v:>10.4g} {fit.params[k]:>12.5g} {float(nat[k][0]):>12.5g}")
    print(f"{'objective':8} {1.01827e-3:>10.6g} {fit.objective:>12.6g} {best_naive.fun:>12.6g}  (sum of Huber)")
    print(f"starts not converged: {fit.n_failed_starts} of {fit.n_starts}")

    boot, wb, cb = timed(lambda: fit_scaling_law(data, "chinchilla", bootstrap=args.bootstrap, seed=0, quiet=True))
    se = boot.standard_errors()
    ci = boot.intervals(0.95)
    print(f"\nbootstrap {args.bootstrap} resamples (incl. the grid fit): {wb:.1f} s wall / {cb:.1f} s CPU, "
          f"failed refits: {boot.bootstrap_failed}")
    print(f"{'':8} {'SE':>10} {'Epoch SE':>10} {'95% CI':>24}")
    for k in TARGET:
        print(f"{k:8} {se[k]:>10.4g} {TARGET_SE[k]:>10.4g}   ({ci[k][0]:.4g}, {ci[k][1]:.4g})")
    opt = boot.optimal([1e21, 5.76e23])
    for i, C in enumerate(opt["flops"]):
        lo, hi = opt["params_interval"][0][i], opt["params_interval"][1][i]
        print(f"C={C:.3g}: N*={opt['params'][i]:.3g} [{lo:.3g}, {hi:.3g}], D*={opt['tokens'][i]:.3g}")

    small, large = data.subset(data["params"] < 1e9), data.subset(data["params"] >= 1e9)
    ext, _, _ = timed(lambda: fit_scaling_law(small, "chinchilla", quiet=True))
    print(f"\nextrapolation: fit on N < 1e9 ({small.n} points), test on N >= 1e9 ({large.n} points): "
          f"ARE {100 * absolute_relative_error(ext, large):.2f} % (in-sample ARE of the full fit "
          f"{100 * absolute_relative_error(fit, data):.2f} %); params {ext.params}")


if __name__ == "__main__":
    main()
