"""``losslab stability``: LR sensitivity from a table of runs, and offline spike detection on a logged series.

    losslab stability sensitivity RESULTS.csv --init-loss 10.4 [--plot sweep.png] [--json]
    losslab stability spikes LOG.csv --column loss [--detector zscore --window 128 --threshold 6]
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path
from typing import Any

from losslab._errors import ConfigError, DataError

_SENS_HELP = ("CSV with one row per run: columns lr and final_loss (empty, nan or inf for diverged runs), "
              "optionally setting (one LR sensitivity per setting) and init_loss")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("stability", help="LR sensitivity and offline spike detection",
                              description=(__doc__ or "").replace("``", ""), formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="stability_command", metavar="SUBCOMMAND")

    s = sub.add_parser("sensitivity", help="LR sensitivity (Wortsman et al. 2023) from a CSV of final losses",
                       description=_SENS_HELP)
    s.add_argument("results", help="CSV file")
    s.add_argument("--init-loss", type=float, default=None,
                   help="loss at initialisation ℓ0 (default: the init_loss column)")
    s.add_argument("--lr-column", default="lr")
    s.add_argument("--loss-column", default="final_loss")
    s.add_argument("--setting-column", default="setting", help="column naming the setting (optional)")
    s.add_argument("--plot", metavar="PNG", default=None, help="write loss against LR to this image")
    s.add_argument("--json", action="store_true", help="print JSON instead of text")
    s.set_defaults(func=run_sensitivity)

    d = sub.add_parser("spikes", help="detect spikes in one column of a CSV log")
    d.add_argument("log", help="CSV file with one row per step")
    d.add_argument("--column", default="loss", help="column to scan (default: loss)")
    d.add_argument("--step-column", default="step", help="column holding the step (default: row number)")
    d.add_argument("--detector", default="zscore", help="detector name (see `losslab list detectors`)")
    d.add_argument("--window", type=int, default=None)
    d.add_argument("--threshold", type=float, default=None, help="z-score threshold (zscore)")
    d.add_argument("--ratio", type=float, default=None, help="ratio to the running mean (ratio)")
    d.add_argument("--max-value", type=float, default=None, help="upper bound (threshold)")
    d.add_argument("--json", action="store_true", help="print events as a JSON array")
    d.set_defaults(func=run_spikes)
    p.set_defaults(func=_usage(p))


def _usage(parser: argparse.ArgumentParser) -> Any:
    def show(args: argparse.Namespace) -> int:
        parser.print_help()
        return 2
    return show


def _read_csv(path: str) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """Header and ``(line number, row)`` pairs; a row with fewer or more fields than the header is an error."""
    from losslab._files import read_text_lines

    reader = csv.reader(read_text_lines(path))
    rows: list[tuple[int, dict[str, str]]] = []
    fields: list[str] = []
    try:
        for cells in reader:
            if not fields:
                fields = cells
            elif cells:  # blank lines are skipped, as csv.DictReader does
                if len(cells) != len(fields):
                    raise DataError(f"{path}: line {reader.line_num}: expected {len(fields)} fields "
                                    f"({', '.join(fields)}), got {len(cells)}; fix the row (an empty value is an "
                                    f"empty field between commas, e.g. a diverged run's final_loss)")
                rows.append((reader.line_num, dict(zip(fields, cells))))
    except csv.Error as exc:
        raise DataError(f"{path} line {reader.line_num}: not a readable CSV row ({exc})") from None
    if not rows:
        raise DataError(f"{path} has no data rows; it needs a header line and one row per run/step")
    return fields, rows


def _number(text: str | None, what: str, line: int, path: str) -> float:
    if text is None or text.strip() == "":
        return math.nan
    try:
        return float(text)
    except ValueError:
        raise DataError(f"{path} line {line}: {what} {text!r} is not a number") from None


def _step(text: str | None, line: int, path: str, column: str) -> int:
    value = _number(text, column, line, path)
    if not math.isfinite(value) or not value.is_integer():
        raise DataError(f"{path} line {line}: {column} {text!r} is not a whole number; every row needs its step "
                        f"(or pass --step-column to a column that holds them)")
    return int(value)


def _json_safe(x: Any) -> Any:
    """Strict JSON: NaN becomes null and infinities the strings "Infinity"/"-Infinity" (as ``monitor show``)."""
    if isinstance(x, float) and not math.isfinite(x):
        return None if math.isnan(x) else ("Infinity" if x > 0 else "-Infinity")
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    return x


def _need(fields: list[str], column: str, path: str, flag: str) -> None:
    if column not in fields:
        raise DataError(f"{path} has no column {column!r} (columns: {', '.join(fields)}); rename it or pass {flag}")


def run_sensitivity(args: argparse.Namespace) -> int:
    import numpy as np

    from losslab._files import prepare_plot, save_figure
    from losslab.stability.sensitivity import LRSweepResult, lr_sensitivity

    path = args.results
    prepare_plot(args.plot)
    fields, rows = _read_csv(path)
    _need(fields, args.lr_column, path, "--lr-column")
    _need(fields, args.loss_column, path, "--loss-column")
    has_setting = args.setting_column in fields
    if args.init_loss is None and "init_loss" not in fields:
        raise ConfigError("no loss at initialisation: pass --init-loss or add an init_loss column")
    table: dict[str, dict[float, float]] = {}
    init: dict[str, list[float]] = {}
    for i, row in rows:
        name = row[args.setting_column] if has_setting else "baseline"
        lr = _number(row[args.lr_column], "lr", i, path)
        if not (math.isfinite(lr) and lr > 0):
            raise DataError(f"{path} line {i}: lr {row[args.lr_column]!r} is not a finite learning rate > 0; every "
                            f"run needs its learning rate (mark a diverged run by its final_loss, not its lr)")
        if name in table and lr in table[name]:
            raise DataError(f"{path} line {i}: learning rate {lr:g} appears twice for setting {name!r}")
        table.setdefault(name, {})[lr] = _number(row[args.loss_column], "final_loss", i, path)
        if args.init_loss is None:
            init.setdefault(name, []).append(_number(row.get("init_loss"), "init_loss", i, path))
    out: dict[str, Any] = {}
    l0s: dict[str, float] = {}
    for name, losses in table.items():
        if args.init_loss is not None:
            l0 = args.init_loss
        else:
            finite = [v for v in init[name] if math.isfinite(v)]
            l0 = float(np.median(finite)) if finite else math.nan
        l0s[name] = l0
        out[name] = {"lr_sensitivity": lr_sensitivity(losses, l0), "init_loss": l0, "n_runs": len(losses),
                     "n_diverged": sum(1 for v in losses.values() if not (math.isfinite(v) and v <= l0))}
    written = None
    if args.plot:
        lrs = np.array(sorted({lr for t in table.values() for lr in t}))
        finals = {n: np.array([t.get(lr, math.nan) for lr in lrs]) for n, t in table.items()}
        result = LRSweepResult(lrs, finals, l0s, {n: o["lr_sensitivity"] for n, o in out.items()})
        fig = result.plot(title=f"LR sensitivity: {Path(path).name}")
        written = save_figure(fig, args.plot, dpi=120)
    if args.json:
        print(json.dumps(_json_safe(out), indent=2, allow_nan=False))
    else:
        for name, o in out.items():
            print(f"{name}: LR sensitivity {o['lr_sensitivity']:.4g} (ℓ0 {o['init_loss']:.4g}, "
                  f"{o['n_diverged']}/{o['n_runs']} runs diverged or no better than init)")
        if written is not None:
            print(f"wrote {written}")
    return 0


def run_spikes(args: argparse.Namespace) -> int:
    import inspect

    from losslab.stability import registry

    cls = registry.get(args.detector)
    options = {"window": args.window, "threshold": args.threshold, "ratio": args.ratio, "max_value": args.max_value}
    accepted = inspect.signature(cls).parameters
    unused = sorted(k for k, v in options.items() if v is not None and k not in accepted)
    if unused:
        raise ConfigError(f"detector {args.detector!r} takes no option {', '.join('--' + u.replace('_', '-') for u in unused)}")
    detector = cls(**{k: v for k, v in options.items() if v is not None and k in accepted})
    fields, rows = _read_csv(args.log)
    _need(fields, args.column, args.log, "--column")
    values = [_number(r[args.column], args.column, i, args.log) for i, r in rows]
    steps = ([_step(r[args.step_column], i, args.log, args.step_column) for i, r in rows]
             if args.step_column in fields else list(range(1, len(rows) + 1)))
    events = [e for step, v in zip(steps, values) if (e := detector.update(v, step=step, metric=args.column))]
    if args.json:
        print(json.dumps([_json_safe(e.to_dict()) for e in events], indent=2, allow_nan=False))
    else:
        print(f"{len(events)} spike(s) in {len(values)} values of {args.column!r} ({detector!r})")
        for e in events:
            print(f"  step {e.step}: {e.message}")
    return 0
