"""``losslab scaling``: fit scaling laws to runs, allocate compute, predict losses.

  losslab scaling fit RUNS.csv --law chinchilla [--bootstrap 1000] [--drop-highest 5] -o FIT.json [--plot FIT.png]
  losslab scaling optimal FIT.json --compute 1e21 [--json]
  losslab scaling predict FIT.json --params N --tokens D [--json]
"""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

from losslab._errors import ConfigError
from losslab._files import prepare_outputs, prepare_plot, save_figure


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("scaling", help="fit scaling laws across runs, allocate compute, predict",
                              description=(__doc__ or "").replace("``", ""), formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="scaling_command", metavar="ACTION")
    p.set_defaults(func=lambda args: _usage(p))

    f = sub.add_parser("fit", help="fit a law to RUNS.csv (columns params,tokens,loss; aliases N,D; or flops)")
    f.add_argument("runs", help="CSV file, one run or checkpoint a row")
    f.add_argument("--law", default="chinchilla", help="law name (losslab list scaling-laws); default chinchilla")
    f.add_argument("--bootstrap", type=int, default=0, metavar="B", help="bootstrap resamples (default 0)")
    f.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (default 0)")
    f.add_argument("--drop-highest", type=int, default=0, metavar="K", help="drop the K highest-loss rows first")
    f.add_argument("--starts", default="default", help="'default' (the law's grid) or 'coarse'")
    f.add_argument("--delta", type=float, default=None, help="Huber delta (default: the law's, 1e-3 on log loss)")
    f.add_argument("--min-tokens", type=float, default=None, help="drop checkpoints with tokens <= this")
    f.add_argument("--final-only", action="store_true", help="keep only each run's last checkpoint (by params)")
    f.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="law setting, e.g. --set e_x=1.8 for loss_to_loss (repeatable)")
    f.add_argument("-o", "--output", required=True, metavar="FIT.json", help="where to write the fit")
    f.add_argument("--plot", metavar="FIT.png", help="also save a plot of the fit")
    f.add_argument("--json", action="store_true", help="print the fit as JSON instead of a summary")
    f.set_defaults(func=run_fit)

    o = sub.add_parser("optimal", help="compute-optimal params and tokens for a budget C = 6 N D")
    o.add_argument("fit", metavar="FIT.json")
    o.add_argument("--compute", type=float, nargs="+", required=True, metavar="C", help="budget(s) in FLOP")
    o.add_argument("--level", type=float, default=0.95, help="interval coverage (default 0.95)")
    o.add_argument("--json", action="store_true")
    o.set_defaults(func=run_optimal)

    r = sub.add_parser("predict", help="predict the loss of a model from a fit")
    r.add_argument("fit", metavar="FIT.json")
    r.add_argument("--params", type=float, help="model size N")
    r.add_argument("--tokens", type=float, help="training tokens D")
    r.add_argument("--flops", type=float, help="compute C (tokens = C / (6 N) when --tokens is absent)")
    r.add_argument("--input", action="append", default=[], metavar="COL=VALUE",
                   help="other law inputs, e.g. --input loss_x=2.9 (repeatable)")
    r.add_argument("--level", type=float, default=0.95, help="interval coverage (default 0.95)")
    r.add_argument("--json", action="store_true")
    r.set_defaults(func=run_predict)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _pairs(items: list[str], what: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{what} {item!r} is not KEY=VALUE; write e.g. e_x=1.8")
        v = value.strip()
        try:
            out[key.strip()] = None if v.lower() == "none" else float(v)
        except ValueError:
            out[key.strip()] = v
    return out


def run_fit(args: argparse.Namespace) -> int:
    from losslab.forecast.scaling import fit_scaling_law, get_law, read_runs, select_checkpoints

    prepare_outputs(args.output)
    prepare_plot(args.plot)
    law = get_law(args.law, **_pairs(args.set, "--set"))  # unknown law or setting: fail before reading data
    data = read_runs(args.runs)
    if args.drop_highest:
        data.require([law.target], law=law.name)
        data = data.drop_highest(args.drop_highest, column=law.target)
    if args.min_tokens is not None or args.final_only:
        data = select_checkpoints(data, min_tokens=args.min_tokens or 0.0, final_only=args.final_only)
    fit = fit_scaling_law(data, law, starts=args.starts, delta=args.delta, bootstrap=args.bootstrap, seed=args.seed)
    fit.provenance["settings"].update(drop_highest=args.drop_highest, min_tokens=args.min_tokens,
                                      final_only=args.final_only)
    fit.save(args.output)
    if args.plot:
        from losslab.report.scaling_plots import plot_scaling_fit

        save_figure(plot_scaling_fit(fit, data), args.plot, dpi=100)
    if args.json:
        d = fit.to_dict()
        d["bootstrap"].pop("theta", None)
        print(json.dumps(d, indent=2))
        return 0
    se = fit.standard_errors() if fit.bootstrap is not None and len(fit.bootstrap) >= 2 else {}
    print(f"law {fit.law.name} on {fit.n_points} points from {args.runs}: objective {fit.objective:.6g} "
          f"(sum of Huber, delta {fit.delta:g})")
    for k, v in fit.params.items():
        print(f"  {k:>8} = {v:.6g}" + (f"  (se {se[k]:.3g})" if k in se else ""))
    print(f"starts: {fit.n_starts}, not converged: {fit.n_failed_starts}"
          + (f"; bootstrap: {fit.bootstrap_requested} resamples, {fit.bootstrap_failed} failed refits"
             if fit.bootstrap_requested else ""))
    if fit.at_bounds:
        print(f"warning: parameters at a bound: {', '.join(fit.at_bounds)}")
    print(f"wrote {args.output}" + (f" and {args.plot}" if args.plot else ""))
    return 0


def _num(x: Any) -> float | None:
    v = float(x)
    return v if math.isfinite(v) else None


def run_optimal(args: argparse.Namespace) -> int:
    from losslab.forecast.scaling import ScalingFit

    fit = ScalingFit.load(args.fit)
    out = fit.optimal(args.compute, level=args.level)
    rows = []
    for i, c in enumerate(out["flops"]):
        row: dict[str, Any] = {"flops": float(c)}
        for k in ("params", "tokens", "loss"):
            row[k] = _num(out[k][i])
            if f"{k}_interval" in out:
                row[f"{k}_interval"] = [_num(out[f"{k}_interval"][0][i]), _num(out[f"{k}_interval"][1][i])]
        rows.append(row)
    if args.json:
        print(json.dumps(rows[0] if len(rows) == 1 else rows, indent=2))
        return 0
    pct = f"{100 * args.level:g} %"
    for row in rows:
        print(f"C = {row['flops']:.3g} FLOP")
        for k in ("params", "tokens", "loss"):
            iv = row.get(f"{k}_interval")
            print(f"  {k:>6}* = {row[k]:.4g}" + (f"  [{iv[0]:.4g}, {iv[1]:.4g}] ({pct})" if iv else ""))
    return 0


def run_predict(args: argparse.Namespace) -> int:
    from losslab.forecast.scaling import ScalingFit

    fit = ScalingFit.load(args.fit)
    inputs: dict[str, Any] = _pairs(args.input, "--input")
    for k in ("params", "tokens", "flops"):
        if getattr(args, k) is not None:
            inputs[k] = getattr(args, k)
    if "tokens" in fit.law.inputs and "tokens" not in inputs and "flops" in inputs and "params" in inputs:
        inputs["tokens"] = inputs["flops"] / (6.0 * inputs["params"])
    missing = [c for c in fit.law.inputs if c not in inputs]
    if missing:
        flags = ", ".join(f"--{c}" if c in ("params", "tokens", "flops") else f"--input {c}=VALUE" for c in missing)
        raise ConfigError(f"law {fit.law.name!r} needs {', '.join(missing)} to predict; give {flags}")
    X = {c: inputs[c] for c in fit.law.inputs}
    value = float(fit.predict(X)[0])
    out: dict[str, Any] = {fit.law.target: value, "prediction": value, "law": fit.law.name,
                           "inputs": {k: float(v) for k, v in X.items()}}
    if fit.bootstrap is not None and len(fit.bootstrap) >= 2:
        lo, hi = fit.predict_interval(X, level=args.level)
        out["interval"] = [float(lo[0]), float(hi[0])]
        out["level"] = args.level
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    ins = ", ".join(f"{k}={v:.4g}" for k, v in out["inputs"].items())
    iv = f"  [{out['interval'][0]:.4g}, {out['interval'][1]:.4g}] ({100 * args.level:g} %)" if "interval" in out else ""
    print(f"{fit.law.target} = {value:.5g} at {ins}{iv}")
    return 0
