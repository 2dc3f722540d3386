"""``losslab monitor show LOG``: summarise a monitor log (CSV or JSONL), optionally plot it or print JSON."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("monitor", help="inspect training-monitor logs",
                              description=(__doc__ or "").replace("``", ""))
    sub = p.add_subparsers(dest="monitor_command", metavar="ACTION")
    show = sub.add_parser("show", help="summarise a monitor log (loss, grad norm, events)",
                          description="Summarise a log written by losslab.monitor's CSVSink or JSONLSink.")
    show.add_argument("log", type=Path, help="the .csv or .jsonl file a TrainingMonitor wrote")
    show.add_argument("--plot", type=Path, metavar="OUT.png", help="also save a plot of loss, grad norm and events")
    show.add_argument("--json", action="store_true", help="print the summary and events as JSON")
    show.add_argument("--max-events", type=int, default=10, help="event lines to print (default 10)")
    show.set_defaults(func=run)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def run(args: argparse.Namespace) -> int:
    from losslab._errors import ConfigError
    from losslab._files import prepare_plot, save_figure
    from losslab.monitor._logfile import format_summary, read_log, summary_stats

    if args.max_events < 0:
        raise ConfigError(f"--max-events must be >= 0, got {args.max_events}")
    prepare_plot(args.plot)
    log = read_log(args.log)
    stats = summary_stats(log.columns, log.events)
    if args.plot is not None:
        import matplotlib

        matplotlib.use("Agg")
        from losslab.report.monitor_plots import plot_monitor

        fig = plot_monitor(log.columns, log.events, title=f"{args.log.name}: {len(log)} steps, "
                                                          f"{len(log.events)} events")
        save_figure(fig, args.plot, dpi=110)
        stats["plot"] = str(args.plot)
    if args.json:
        def clean(x: object) -> object:
            if isinstance(x, float) and x != x:
                return None
            if isinstance(x, float) and abs(x) == float("inf"):
                return "Infinity" if x > 0 else "-Infinity"
            return x

        events = [{k: clean(v) for k, v in e.items()} for e in log.events]
        print(json.dumps({"log": str(args.log), "summary": stats, "events": events}, indent=2, allow_nan=False))
        return 0
    print(f"{args.log}")
    print(format_summary(stats, log.events, max_events=args.max_events))
    if args.plot is not None:
        print(f"plot: {args.plot}")
    return 0
