"""Forecast demo: fit a loss-curve law on two bundled runs, predict three unseen schedules, plan a schedule.

The bundled curves (``losslab/data/demo/*.csv``, made by ``examples/make_demo_curves.py``) come from the same small
network trained under five learning-rate schedules. We fit on ``constant`` and ``cosine`` only, predict ``wsd_linear``,
``wsd_sqrt`` and ``step`` from their schedules alone, and compare with what was measured. The law is
chosen by ``law="auto"``; the Tissue law and the schedule-blind power law in steps (the baseline a schedule-aware law
has to beat) are fitted too, for comparison. Finally a WSD schedule is planned from the fit and, when torch is
installed, trained for real on the same task to check the plan against a measurement.

Errors are relative, on the measured steps after the warmup; "noise" is the robust spread of successive evaluations,
the floor below which no forecast of these runs can be judged.

Run it alone with ``python examples/demo_forecast.py --out demo-out``; ``make demo`` calls :func:`run`.
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np

from losslab.forecast import Curve
from losslab.forecast.fit import CurveFit, fit_curves
from losslab.forecast.io import load_curve
from losslab.report import plot_curve_fit, plot_loss_prediction, plot_schedule_plan

TRAIN = ("constant", "cosine")
TEST = ("wsd_linear", "wsd_sqrt", "step")
LAW = "auto"  # scores every law on a held-out tail of each training run and keeps the best (simplest within 5 %)
COMPARE = ("tissue", "power")  # also fitted, for comparison (power: the schedule-blind baseline)


def demo_curves() -> dict[str, Curve]:
    """The five bundled runs, by name."""
    folder = files("losslab") / "data" / "demo"
    return {n: load_curve(Path(str(folder / f"{n}.csv"))) for n in (*TRAIN, *TEST)}


def noise_level(curve: Curve) -> float:
    """Relative measurement noise of a curve: spread of successive differences of the measured loss, / sqrt(2)."""
    y = curve.loss[curve.measured - 1]
    y = y[len(y) // 4:]  # past the fast initial drop
    return float(np.median(np.abs(np.diff(y))) / 0.6745 / np.sqrt(2) / np.median(y))


def score(fit: CurveFit, curve: Curve, level: float = 0.9) -> dict[str, float]:
    """Mean / worst / final relative error and interval coverage on the measured steps after the warmup."""
    loss, lower, upper = fit.predict_interval(curve.lr, level=level)
    m = curve.measured[curve.measured > int(np.argmax(curve.lr))]
    y = curve.loss[m - 1]
    rel = (loss[m - 1] - y) / y
    return {"mean": float(np.abs(rel).mean()), "worst": float(np.abs(rel).max()), "final": float(rel[-1]),
            "coverage": float(np.mean((y >= lower[m - 1]) & (y <= upper[m - 1])))}


def _save(fig: Any, path: Path) -> None:
    fig.savefig(path, dpi=110)  # report figures are plain Figures (no pyplot state), nothing to close


def run(out: Path, quiet: bool = False, train_planned: bool = True) -> str:
    """Run the forecast demo, write PNGs into ``out`` and return the text summary.

    With ``train_planned`` (and torch installed) the planned schedule is also trained for real on the demo task
    (about 10 s), so the plan's predicted final loss can be checked against a measurement.
    """
    start = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    curves = demo_curves()
    train = [curves[n] for n in TRAIN]
    fit = fit_curves(train, LAW, quiet=quiet)
    others = {law: fit_curves(train, law, quiet=True) for law in COMPARE if law != fit.law}
    fit.save(out / "forecast_fit.json")
    _save(plot_curve_fit(fit, train), out / "forecast_fit.png")
    noise = float(np.median([noise_level(c) for c in curves.values()]))

    lines = [f"forecast: {fit.law} law (chosen by law={LAW!r}) fitted on {' + '.join(TRAIN)} ({len(train[0])} steps each); "
             f"measurement noise of the curves about {100 * noise:.2f} %",
             f"  {'held-out run':<11} {'mean err':>9} {'worst':>7} {'final':>8} {'90% cover':>9}   "
             + "   ".join(f"{law}: mean / final" for law in others)]
    scores = {}
    for name in TEST:
        s = score(fit, curves[name])
        scores[name] = s
        rest = "   ".join(f"{100 * o['mean']:.3f}% / {100 * o['final']:+.3f}%"
                          for o in (score(f, curves[name]) for f in others.values()))
        lines.append(f"  {name:<11} {100 * s['mean']:8.3f}% {100 * s['worst']:6.2f}% {100 * s['final']:+7.3f}% "
                     f"{100 * s['coverage']:8.0f}%   {rest}")
        loss, lower, upper = fit.predict_interval(curves[name].lr, level=0.9)
        _save(plot_loss_prediction(curves[name].lr, loss, lower, upper, measured=curves[name],
                                   title=f"{fit.law} law fitted on {'+'.join(TRAIN)}, predicting {name}"),
              out / f"forecast_predict_{name}.png")
    mean_err = float(np.mean([s["mean"] for s in scores.values()]))
    verdict = ("within about twice the measurement noise" if mean_err <= 2 * noise
               else f"{mean_err / noise:.1f}x the measurement noise")
    lines.append(f"  mean error over held-out runs {100 * mean_err:.3f} % ({verdict})")
    off = {n: s["final"] for n, s in scores.items() if abs(s["final"]) > 2 * noise}
    if off:
        lines.append("  final loss off by more than twice the noise: " + ", ".join(
            f"{n} {100 * f:+.2f} % ({'under' if f > 0 else 'over'}-credits its decay)" for n, f in off.items()))
    lines += _plan_part(fit, curves, out, train_planned, noise)
    lines.append(f"  plots: forecast_fit.png, forecast_predict_*.png, forecast_plan.png "
                 f"({time.perf_counter() - start:.1f} s)")
    return "\n".join(lines)


def _plan_part(fit: CurveFit, curves: dict[str, Curve], out: Path, train_planned: bool, noise: float) -> list[str]:
    from losslab.forecast.plan import plan_schedule

    # schedules' warmup=W puts the peak at step W, i.e. at index W - 1
    steps, warmup = len(curves["cosine"]), int(np.argmax(curves["cosine"].lr)) + 1
    plan = plan_schedule(fit, steps, "wsd", warmup=warmup)
    best_lr = plan.best.lr(steps)
    measured_final = {n: float(c.loss[c.measured[-1] - 1]) for n, c in curves.items()}
    compare = {f"planned {plan.best.to_spec().split(':')[0]}": best_lr}
    compare.update({n: curves[n].lr for n in ("cosine", "wsd_sqrt")})
    _save(plot_schedule_plan(fit, compare, title=f"planned schedule vs bundled runs ({fit.law} law)"),
          out / "forecast_plan.png")
    best_measured = min(measured_final, key=measured_final.__getitem__)
    lines = [f"  plan (wsd family, {steps} steps): {plan.best.to_spec()}",
             f"    predicted final loss {plan.best_loss:.4f}; baselines "
             + ", ".join(f"{k} {v:.4f}" for k, v in plan.baselines.items()),
             f"    best bundled run: {best_measured}, measured final loss {measured_final[best_measured]:.4f}"]
    if train_planned:
        _, loss = _generator().train(plan.best.to_spec(), steps, 20, 0)
        real = float(loss[-1])
        lines.append(f"    planned schedule trained for real (same init and batches): measured final loss "
                     f"{real:.4f}, predicted {plan.best_loss:.4f} ({100 * (plan.best_loss - real) / real:+.2f} %)")
        margin = (real - measured_final[best_measured]) / measured_final[best_measured]
        if real < measured_final[best_measured] and -margin <= noise:
            lines.append(f"    the plan edges out the best bundled run by {-100 * margin:.2f} %, within the "
                         f"measurement noise ({100 * noise:.2f} %): a tie with the best hand-made schedule")
        elif real > measured_final[best_measured]:
            lowest = min(float(c.lr[np.argmax(c.lr):].min() / c.lr.max()) for c in (curves[n] for n in TRAIN))
            final_ratio = float(best_lr[-1] / best_lr.max())
            why = (f"it decays to {final_ratio:.2g} x peak, below the lowest lr the law was fitted on "
                   f"({lowest:.2g} x peak), so the law extrapolates" if final_ratio < lowest
                   else "the law mispredicts this schedule")
            lines.append(f"    the plan does NOT beat the best bundled run: {why}; a plan is a hypothesis to train, "
                         f"not an answer")
        else:
            lines.append(f"    the plan beats every bundled run by {-100 * margin:.2f} % (noise {100 * noise:.2f} %)")
    return lines


def _generator() -> Any:
    """examples/make_demo_curves.py as a module (it needs torch)."""
    spec = importlib.util.spec_from_file_location("make_demo_curves", Path(__file__).with_name("make_demo_curves.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.torch.set_num_threads(1)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("demo-out"))
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--no-train", action="store_true", help="do not train the planned schedule to check it")
    args = parser.parse_args()
    print(run(args.out, quiet=args.quiet, train_planned=not args.no_train))


if __name__ == "__main__":
    main()
