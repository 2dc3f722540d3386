"""Held-out schedule prediction on the Multi-Power-Law authors' data, side by side with their published figures.

Split of the authors (their config.py): fit on cosine_24000, constant_24000, wsdcon_9 jointly; predict the six
other schedules (two of them 3x longer). Metrics as in their evaluation.py: per test curve the mean and the max of
|L - Lhat| / L over its logged steps, averaged over the six curves. Also: the signed final-step error of each test
curve, the coverage of 90 % prediction intervals over all test points, the factor ``x90`` the intervals would have to
be scaled by to cover exactly 90 % of the test points (1 is perfect calibration), fit times, and the evaluation time of
the Multi-Power Law done naively (a Python loop over evaluation steps over all earlier steps, O(n^2), as in the
authors' evaluation code) against losslab's evaluation with its analytic Jacobian.

Usage: python bench/forecast_multipowerlaw.py [--data ../shared/data] [--sizes 25 100 400] [--repeats 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import _mpl_data as D

from losslab.forecast import fit_curves
from losslab.forecast.laws import MultiPowerLaw

# label -> (law, options); "mpl-authors" is the authors' own fitting procedure (MultiPowerLaw(method="authors"))
VARIANTS = {"power": ("power", {}), "tissue": ("tissue", {}), "mpl": ("mpl", {}),
            "mpl-authors": ("mpl", {"method": "authors"})}
LAWS = list(VARIANTS)


def naive_mpl(theta: np.ndarray, lr: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """The authors' evaluation loop: for each evaluation step, a sum over every earlier step."""
    l0, a, alpha, b, c, beta, gamma = theta
    lrs = np.concatenate([[0.0], lr])
    lr_sum = np.cumsum(lrs)
    gap = np.zeros_like(lrs)
    gap[1:] = np.diff(lrs)
    out = np.empty(steps.size)
    for i, s in enumerate(steps):
        ld = np.sum(gap[1:s + 1] * (1 - (1 + c * lrs[1:s + 1] ** (-gamma) * (lr_sum[s] - lr_sum[:s])) ** (-beta)))
        out[i] = l0 + a * lr_sum[s] ** (-alpha) + b * ld
    return out


def metrics(fit, curves) -> dict[str, object]:
    from losslab.forecast.uncertainty import excess

    rel, worst, final, inside, n = [], [], {}, 0, 0
    half_in, half_out, cov_in, cov_out, ratio = [], [], [], [], []
    for c in curves:
        st = c.measured
        y = c.loss[st - 1]
        pred, lo, hi = fit.predict_interval(c.lr, 0.9, steps=st)
        e = np.abs(pred - y) / y
        rel.append(e.mean())
        worst.append(e.max())
        final[c.name] = (pred[-1] - y[-1]) / y[-1]
        ok = (y >= lo) & (y <= hi)
        ratio.append(np.abs(np.log(y / pred)) / np.log(hi / pred))  # intervals are symmetric in log
        inside += int(np.sum(ok))
        n += y.size
        half = (hi - lo) / 2 / pred
        ext = fit.uncertainty.get("extent")
        far = np.zeros(st.size, bool) if ext is None else np.any(np.stack(excess(c.lr, st, ext)) > 0, axis=0)
        half_in.append(half[~far])
        half_out.append(half[far])
        cov_in.append(ok[~far])
        cov_out.append(ok[far])
    return {"mean": float(np.mean(rel)), "worst": float(np.mean(worst)), "final": final, "coverage": inside / n,
            "scale90": float(np.quantile(np.concatenate(ratio), 0.9)),
            "half_in": float(np.mean(np.concatenate(half_in))) if np.concatenate(half_in).size else float("nan"),
            "half_out": float(np.mean(np.concatenate(half_out))) if np.concatenate(half_out).size else float("nan"),
            "cov_in": float(np.mean(np.concatenate(cov_in))) if np.concatenate(cov_in).size else float("nan"),
            "cov_out": float(np.mean(np.concatenate(cov_out))) if np.concatenate(cov_out).size else float("nan")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared" / "data")
    ap.add_argument("--sizes", nargs="+", default=["25", "100", "400"])
    ap.add_argument("--repeats", type=int, default=3, help="interleaved repeats of each fit (median time)")
    args = ap.parse_args()
    folder = args.data / "multipowerlaw"
    if not folder.is_dir():
        print(f"data folder {folder} is absent; pass --data", file=sys.stderr)
        return 2
    print(f"python {sys.version.split()[0]}, numpy {np.__version__}; 2-core shared machine, timings are medians")
    for size in args.sizes:
        loaded = {n: D.load(folder, size, n) for n in D.TRAIN + D.TEST}
        gap = max(g for _, g in loaded.values())
        train = [loaded[n][0] for n in D.TRAIN]
        test = [loaded[n][0] for n in D.TEST]
        print(f"\n=== {size}M  (rebuilt lr vs logged lr column: max relative gap {gap:.1e})")
        times: dict[str, list[float]] = {law: [] for law in LAWS}
        fits = {}
        for _ in range(args.repeats):
            for label, (law, opts) in VARIANTS.items():
                t0 = time.perf_counter()
                fits[label] = fit_curves(train, law, quiet=True, calibrate=False, **opts)
                times[label].append(time.perf_counter() - t0)
        t_cal = {}
        for label, (law, opts) in VARIANTS.items():
            t0 = time.perf_counter()
            fits[label] = fit_curves(train, law, quiet=True, **opts)
            t_cal[label] = time.perf_counter() - t0
        t0 = time.perf_counter()
        fits["auto"] = fit_curves(train, "auto", quiet=True)
        t_auto = time.perf_counter() - t0
        pub_mean, pub_worst = D.PUBLISHED[size]
        theta_pub = np.array(D.REPO_PARAMS[size])
        from losslab.forecast.fit import CurveFit

        repo = CurveFit(law="mpl", params=dict(zip(MultiPowerLaw.param_names, D.REPO_PARAMS[size])),
                        options=fits["mpl"].options, uncertainty=fits["mpl"].uncertainty)
        rows = [("MPL, authors' params (published)", None, pub_mean, pub_worst)]
        results = {"MPL, authors' params (our eval)": metrics(repo, test)}
        for law in [*LAWS, "auto"]:
            results[f"{law}" + (f" -> {fits[law].law}" if law == "auto" else "")] = metrics(fits[law], test)
        print(f"{'law':34s} {'fit s':>7s} {'test mean':>10s} {'test worst':>10s} {'90% cover':>9s} {'in/out cover':>13s} {'half-w in/out':>15s} {'x90':>5s}")
        for name, _, m, w in rows:
            print(f"{name:34s} {'':>7s} {100 * m:9.3f}% {100 * w:9.3f}%")
        for name, r in results.items():
            key = name.split()[0]
            t = np.median(times[key]) if key in times else (t_auto if key == "auto" else float("nan"))
            print(f"{name:34s} {t:7.2f} {100 * r['mean']:9.3f}% {100 * r['worst']:9.3f}% {100 * r['coverage']:8.1f}% {100 * r['cov_in']:6.1f}/{100 * r['cov_out']:5.1f}% "
                  f"{100 * r['half_in']:6.3f}/{100 * r['half_out']:6.3f}% {r['scale90']:5.2f}")
        print("(fit with interval calibration: " + ", ".join(f"{k} {v:.2f} s" for k, v in t_cal.items())
              + f"; auto incl. calibration: {t_auto:.2f} s)")
        sel = fits["auto"].diagnostics["selection"]
        print(f"auto ({sel['method']}) held-out mean rel. error: " + ", ".join(
            f"{k}={100 * v:.3f}%" for k, v in sel["holdout_error"].items() if v is not None) + f" -> {sel['chosen']}")
        print("signed final-step error (pred - true)/true, test curves:")
        print(f"{'':34s} " + " ".join(f"{n[:10]:>10s}" for n in D.TEST))
        for name, r in results.items():
            print(f"{name:34s} " + " ".join(f"{100 * r['final'][n]:9.2f}%" for n in D.TEST))
        for law in ("tissue", "mpl", "mpl-authors"):
            f = fits[law]
            print(f"{law} params: " + ", ".join(f"{k}={v:.4g}" for k, v in f.params.items())
                  + f"; at bounds: {f.diagnostics['at_bounds'] or 'none'}; failed starts {f.diagnostics['failed_starts']}")
        gap = np.max(np.abs(fits["mpl-authors"].theta / theta_pub - 1))
        print(f"mpl-authors vs the authors' published parameters: max relative difference {gap:.1e}; "
              f"{fits['mpl-authors'].diagnostics['starts'][0]['message']}")
        # naive vs losslab evaluation of MPL on the three training curves (one objective + Jacobian)
        theta = np.array(D.REPO_PARAMS[size])
        law = MultiPowerLaw()
        t0 = time.perf_counter()
        for c in train:
            naive_mpl(theta, c.lr, c.measured)
        t_naive = time.perf_counter() - t0
        t0 = time.perf_counter()
        for c in train:
            law.evaluate(theta, law.features(c.lr, c.measured), jac=True)
        t_fast = time.perf_counter() - t0
        print(f"MPL evaluation on the 3 training curves: naive O(n^2) loop {t_naive:.3f} s (value only); losslab "
              f"{t_fast:.4f} s (value + Jacobian, features included); ratio {t_naive / t_fast:.0f}x. A naive fit with "
              f"numeric gradients needs about 8 evaluations per L-BFGS iteration: ~{8 * t_naive:.1f} s per iteration.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
