"""``losslab forecast fit | predict | plan``: fit a loss-curve law to runs, predict any schedule, plan a schedule.

    losslab forecast fit RUN.csv [RUN.csv ...] [--law tissue|mpl|power|auto] [--warmup-steps N] -o FIT.json [--plot FIT.png]
    losslab forecast predict FIT.json --schedule SCHEDULE.csv|SPEC -o PRED.csv [--plot PRED.png] [--json]
    losslab forecast plan FIT.json --steps N [--family wsd|cosine] [--json]

Runs are CSV (``step,lr,loss``), JSONL or TensorBoard files (see ``losslab.forecast.io``). SPEC strings are
``losslab.schedules`` specs such as ``wsd:peak=3e-4,steps=24000,decay=0.2,cooldown=sqrt,warmup=2160``.
Errors print one line on stderr and exit with code 2. See docs/forecast-cli.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import types
from typing import Any

import numpy as np

from losslab._errors import ConfigError, DataError
from losslab._files import prepare_outputs, prepare_plot, save_figure, write_text

EXIT_USAGE = 2


class _OneLineParser(argparse.ArgumentParser):
    """Usage mistakes in a forecast sub-command print one line (``losslab: error: ...``) and exit with code 2."""

    def error(self, message: str) -> Any:  # argparse's own prints the whole usage first
        self.exit(EXIT_USAGE, f"losslab: error: {self.prog}: {message} (see {self.prog} --help)\n")


def _add_source_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("reading run and schedule files (see docs/forecast-cli.md#input-files)")
    g.add_argument("--warmup-steps", type=int, metavar="N", default=None,
                   help="the files start after an unlogged linear warmup of N steps: rebuild it as 0 -> lr")
    g.add_argument("--lr-fill", choices=("none", "linear"), default="none",
                   help="lr of steps between logged rows: 'none' (every step must be logged, default) or "
                        "'linear' (interpolate; exact for constant/linear pieces, wrong across sudden drops)")
    g.add_argument("--loss-from", type=int, default=None, metavar="STEP",
                   help="ignore measured losses before STEP (counted from 1); their lr still counts")
    g.add_argument("--run", default=None, metavar="ID",
                   help="for files holding several runs in a 'run' column: the run to read")
    g.add_argument("--loss-tag", default=None, metavar="NAME",
                   help="column / JSON key / TensorBoard scalar tag of the loss (default: loss)")
    g.add_argument("--lr-tag", default=None, metavar="NAME",
                   help="column / JSON key / TensorBoard scalar tag of the learning rate (default: lr)")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``losslab forecast`` and its three sub-commands."""
    top = subparsers.add_parser("forecast", help="fit loss-curve laws, predict schedules, plan a schedule",
                                description=__doc__.replace("``", ""), formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = top.add_subparsers(dest="forecast_command", metavar="{fit,predict,plan}", parser_class=_OneLineParser)
    top.error = types.MethodType(_OneLineParser.error, top)  # type: ignore[method-assign]
    top.set_defaults(func=_missing_command(top))

    fit = sub.add_parser("fit", help="fit a law jointly to one or more runs and save it as JSON",
                         description="Fit a loss-curve law (shared parameters) to the runs and write FIT.json.")
    fit.add_argument("runs", nargs="+", metavar="RUN", help="run files: .csv, .jsonl, TensorBoard file or directory")
    fit.add_argument("--law", default="auto", help="tissue | mpl | power | auto (default: auto, chosen by "
                                                   "leave-one-run-out, or the held-out tail of a single run; `losslab list laws`)")
    fit.add_argument("-o", "--output", required=True, metavar="FIT.json", help="where to write the fit")
    fit.add_argument("--plot", metavar="FIT.png", default=None, help="also draw measured vs fitted curves")
    fit.add_argument("--schedule", action="append", default=None, metavar="SPEC",
                     help="lr of every step from a schedule spec, for sparse files; give it once for all runs or "
                          "once per run, in the order of the runs")
    fit.add_argument("--seed", type=int, default=0, help="seed of the interval calibration (default 0)")
    fit.add_argument("--law-option", action="append", default=[], metavar="KEY=VALUE",
                     help="an option of the law, e.g. lam=0.999 or warmup=peak (repeatable)")
    fit.add_argument("--json", action="store_true", help="print the fit as JSON instead of a summary")
    _add_source_options(fit)
    fit.set_defaults(func=run_fit)

    pred = sub.add_parser("predict", help="predict the loss of every step of a schedule from a fit",
                          description="Predict the loss (with a 90 % interval) of every step of a schedule. With "
                                      "neither -o nor --json it prints a short summary instead.")
    pred.add_argument("fit", metavar="FIT.json")
    pred.add_argument("--schedule", required=True, metavar="SCHEDULE.csv|SPEC",
                      help="a file with columns step,lr or a spec such as cosine:peak=3e-4,steps=24000")
    pred.add_argument("--steps", type=int, default=None, metavar="N",
                      help="length of the prediction (default: the spec's steps, or the file's length)")
    pred.add_argument("-o", "--output", default=None, metavar="PRED.csv", help="write step,loss,lower,upper")
    pred.add_argument("--plot", default=None, metavar="PRED.png", help="draw the prediction and its interval")
    pred.add_argument("--json", action="store_true", help="print {step, loss, lower, upper} as JSON on stdout")
    pred.add_argument("--level", type=float, default=0.9, help="coverage of the interval (default 0.9)")
    pred.add_argument("--measured", default=None, metavar="RUN",
                      help="a measured run on the same schedule: drawn on the plot and scored in the summary")
    _add_source_options(pred)
    pred.set_defaults(func=run_predict)

    plan = sub.add_parser("plan", help="find the schedule of a family with the lowest predicted final loss",
                          description="Search a schedule family for the lowest predicted final loss.")
    plan.add_argument("fit", metavar="FIT.json")
    plan.add_argument("--steps", type=int, required=True, metavar="N", help="length of the run to plan")
    plan.add_argument("--family", default="wsd", help="wsd | cosine (default wsd)")
    plan.add_argument("--peak", type=float, default=None, help="peak lr (default: the peak of the fitted runs)")
    plan.add_argument("--warmup", type=int, default=0, metavar="N", help="linear warmup steps (default 0)")
    plan.add_argument("--min-final-ratio", type=float, default=None, metavar="R",
                      help="lowest final lr / peak searched (default: the lowest lr of the fitted runs; 0 = any)")
    plan.add_argument("-o", "--output", default=None, metavar="SCHEDULE.csv",
                      help="write the best schedule as step,lr (usable with predict --schedule)")
    plan.add_argument("--plot", default=None, metavar="PLAN.png", help="draw the best schedule and its prediction")
    plan.add_argument("--json", action="store_true", help="print the plan as JSON")
    plan.set_defaults(func=run_plan)


def _missing_command(parser: argparse.ArgumentParser) -> Any:
    def run(args: argparse.Namespace) -> int:
        parser.print_help(sys.stderr)
        return EXIT_USAGE

    return run


def _say(text: str) -> None:
    """Chatter for people (not for scripts): stdout, silenced by --quiet."""
    import os

    if not os.environ.get("LOSSLAB_QUIET"):
        print(text)


def _load_fit(path: str) -> Any:
    """CurveFit.load, with the file named in the error when the loader did not name it."""
    from losslab.forecast.fit import CurveFit

    try:
        return CurveFit.load(path)
    except DataError as exc:
        if path in str(exc):
            raise
        raise DataError(f"{path}: {exc}") from exc


def _law_options(items: list[str]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--law-option expects KEY=VALUE, got {item!r}; e.g. --law-option lam=0.999")
        value: Any = raw.strip()
        with contextlib.suppress(json.JSONDecodeError):  # a bare word such as warmup=peak stays a string
            value = json.loads(value)
        options[key.strip()] = value
    return options


def run_fit(args: argparse.Namespace) -> int:
    """``losslab forecast fit``."""
    from losslab.forecast.fit import fit_curves
    from losslab.forecast.io import load_curve

    prepare_outputs(args.output)
    prepare_plot(args.plot)
    specs = args.schedule or []
    if len(specs) not in (0, 1, len(args.runs)):
        raise ConfigError(f"got {len(specs)} --schedule specs for {len(args.runs)} runs; give one for all runs or "
                          f"one per run")
    curves = []
    for i, path in enumerate(args.runs):
        spec = specs[i] if len(specs) > 1 else (specs[0] if specs else None)
        curves.append(load_curve(path, warmup_steps=args.warmup_steps, lr_fill=args.lr_fill, schedule=spec,
                                 loss_tag=args.loss_tag, lr_tag=args.lr_tag, loss_from=args.loss_from, run=args.run))
    fit = fit_curves(curves, args.law, seed=args.seed, quiet=None, **_law_options(args.law_option))
    fit.save(args.output)
    if args.plot:
        from losslab.report import plot_curve_fit

        save_figure(plot_curve_fit(fit, curves), args.plot, dpi=110)
    if args.json:
        print(json.dumps(fit.to_dict(), indent=2))
    else:
        _say(fit.summary())
        _say(f"wrote {args.output}" + (f" and {args.plot}" if args.plot else ""))
    return 0


def prediction_dict(loss: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> dict[str, list[float] | list[int]]:
    """The ``--json`` output of ``predict``: keys ``step``, ``loss``, ``lower``, ``upper`` (lists of equal length)."""
    return {"step": list(range(1, loss.size + 1)), "loss": loss.tolist(), "lower": lower.tolist(),
            "upper": upper.tolist()}


def run_predict(args: argparse.Namespace) -> int:
    """``losslab forecast predict``."""
    from losslab.forecast.io import _looks_like_file, load_curve, load_schedule, write_prediction_csv

    if not (0.0 < args.level < 1.0):
        raise ConfigError(f"--level must be in (0, 1), got {args.level}; 0.9 gives a 90 % interval")
    prepare_outputs(args.output)
    prepare_plot(args.plot)
    fit = _load_fit(args.fit)
    if _looks_like_file(args.schedule):
        lr = load_schedule(args.schedule, steps=args.steps, warmup_steps=args.warmup_steps, lr_fill=args.lr_fill,
                           lr_tag=args.lr_tag)
    else:  # a spec: --warmup-steps / --lr-fill are for reading --measured only
        lr = load_schedule(args.schedule, steps=args.steps)
    loss, lower, upper = (np.asarray(a, dtype=np.float64) for a in fit.predict_interval(lr, level=args.level))
    if not all(np.all(np.isfinite(a)) for a in (loss, lower, upper)):
        bad = int(np.flatnonzero(~(np.isfinite(loss) & np.isfinite(lower) & np.isfinite(upper)))[0]) + 1
        raise DataError(f"{args.fit}: the fitted law predicts no finite loss at step {bad} of this schedule (first of "
                        "them); check that the schedule's lr is in the fitted range, or fit again")
    measured = None
    if args.measured:
        measured = load_curve(args.measured, warmup_steps=args.warmup_steps, lr_fill=args.lr_fill,
                              loss_tag=args.loss_tag, lr_tag=args.lr_tag, loss_from=args.loss_from, run=args.run)
    if args.output:
        write_prediction_csv(args.output, loss, lower, upper)
    if args.plot:
        from losslab.report import plot_loss_prediction

        save_figure(plot_loss_prediction(lr, loss, lower, upper, measured=measured, level=args.level), args.plot,
                    dpi=110)
    if args.json:
        print(json.dumps(prediction_dict(loss, lower, upper), allow_nan=False))
        return 0
    summary = _prediction_summary(fit.law, lr, loss, lower, upper, args.level, measured)
    if args.output:
        _say(summary[-1] if measured is None else "\n".join(summary[-2:]))
        _say(f"wrote {args.output} ({loss.size} rows)" + (f" and {args.plot}" if args.plot else ""))
    else:
        print("\n".join(summary))  # no -o and no --json: the summary is the output, even with --quiet
    return 0


def _prediction_summary(law: str, lr: np.ndarray, loss: np.ndarray, lower: np.ndarray, upper: np.ndarray,
                        level: float, measured: Any) -> list[str]:
    total = loss.size
    lines = [f"{law} law, {total} steps, peak lr {lr.max():.3g}, final lr {lr[-1]:.3g}",
             f"{'step':>8}  {'loss':>8}  {f'{level:.0%} interval':>19}"]
    for frac in (0.25, 0.5, 0.75):
        s = max(1, round(frac * total))
        lines.append(f"{s:>8}  {loss[s - 1]:8.4f}  [{lower[s - 1]:.4f}, {upper[s - 1]:.4f}]")
    if measured is not None:
        score = measured_errors(measured, loss, lower, upper)
        if score is None:
            lines.append(f"against {measured.name}: no measured point after the warmup within the {total} steps")
        else:
            lines.append(f"against {measured.name} (after warmup): mean rel. error {100 * score['mean_rel_err']:.3f} %,"
                         f" worst {100 * score['worst_rel_err']:.3f} %, {100 * score['coverage']:.0f} % of "
                         f"{score['n_points']} points inside the interval")
    lines.append(f"final loss (step {total}): {loss[-1]:.4f}  {level:.0%} interval [{lower[-1]:.4f}, {upper[-1]:.4f}]")
    return lines


def measured_errors(measured: Any, loss: np.ndarray, lower: np.ndarray | None = None,
                    upper: np.ndarray | None = None) -> dict[str, float] | None:
    """Relative errors of a prediction against a measured curve, on measured steps after the warmup.

    The warmup (steps before the measured run's lr first reaches its peak) is skipped, as in the fit: the laws do
    not model it. Returns None when no measured step is left; otherwise ``mean_rel_err``, ``worst_rel_err``,
    ``final_rel_err`` (signed, at the last measured step), ``n_points`` and, with an interval, ``coverage``.
    """
    warmup = int(np.argmax(measured.lr))
    m = measured.measured
    m = m[(m > warmup) & (m <= loss.size)]
    if m.size == 0:
        return None
    y = measured.loss[m - 1]
    rel = np.abs(loss[m - 1] - y) / y
    out = {"mean_rel_err": float(rel.mean()), "worst_rel_err": float(rel.max()),
           "final_rel_err": float((loss[m[-1] - 1] - y[-1]) / y[-1]), "n_points": int(m.size)}
    if lower is not None and upper is not None:
        out["coverage"] = float(np.mean((y >= lower[m - 1]) & (y <= upper[m - 1])))
    return out


def run_plan(args: argparse.Namespace) -> int:
    """``losslab forecast plan``."""
    prepare_outputs(args.output)
    prepare_plot(args.plot)
    fit = _load_fit(args.fit)
    from losslab.forecast.plan import plan_schedule

    plan = plan_schedule(fit, args.steps, args.family, peak=args.peak, warmup=args.warmup,
                         min_final_ratio=args.min_final_ratio)
    best_lr = plan.best.lr(args.steps)
    if args.output:
        lines = ["step,lr", *(f"{i},{v:.10g}" for i, v in enumerate(best_lr, start=1))]
        write_text(args.output, "\n".join(lines) + "\n")
    if args.plot:
        from losslab.report import plot_schedule_plan

        fig = plot_schedule_plan(fit, {f"best {args.family}": best_lr, **_baseline_lrs(plan, args.steps)},
                                 title=f"planned {args.family} schedule, {args.steps} steps")
        save_figure(fig, args.plot, dpi=110)
    if args.json:
        print(json.dumps(plan.to_dict(), indent=2, default=_jsonable))
        return 0
    print(plan.summary())
    if args.output or args.plot:
        _say("wrote " + " and ".join(p for p in (args.output, args.plot) if p))
    return 0


def _baseline_lrs(plan: Any, steps: int) -> dict[str, np.ndarray]:
    """Per-step lr of the plan's default schedules (drawn for comparison), same peak and warmup as the plan."""
    from losslab.schedules import Schedule, parse_schedule

    specs = getattr(plan, "baseline_schedules", None)  # recorded by the plan when available
    if not specs:
        common = f"peak={plan.peak},steps={steps},warmup={plan.warmup}"
        specs = {"cosine (to 10 %)": f"cosine:{common},final=0.1",
                 "wsd (20 % linear)": f"wsd:{common},decay=0.2,cooldown=linear,final=0"}
    return {name: (spec if isinstance(spec, Schedule) else parse_schedule(str(spec))).lr(steps)
            for name, spec in specs.items()}


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if hasattr(obj, "to_spec"):
        return obj.to_spec()
    raise TypeError(f"cannot serialise {type(obj).__name__}")
