"""``losslab list CATALOGUE``: print the entries of a registry (name, summary, reference)."""

from __future__ import annotations

import argparse
import importlib
import json

from losslab._errors import UnknownNameError

# catalogue name -> module whose attribute ``registry`` is a losslab._registry.Registry
CATALOGUES = {
    "losses": "losslab.losses",
    "optimizers": "losslab.optim",
    "laws": "losslab.forecast.laws",
    "scaling-laws": "losslab.forecast.scaling",
    "detectors": "losslab.stability",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("list", help="list the entries of a catalogue", description=(__doc__ or "").replace("``", ""))
    p.add_argument("catalogue", nargs="?", default=None, help=f"one of: {', '.join(CATALOGUES)} or 'schedules'")
    p.add_argument("--json", action="store_true", help="print a JSON array instead of a table")
    p.set_defaults(func=run)


def _rows(catalogue: str) -> list[dict[str, str]]:
    if catalogue == "schedules":
        from losslab.schedules import SCHEDULE_KINDS

        return [{"name": k, "summary": (f.__doc__ or "").strip().splitlines()[0], "reference": ""}
                for k, f in SCHEDULE_KINDS.items()]
    if catalogue not in CATALOGUES:
        raise UnknownNameError(f"unknown catalogue {catalogue!r}; choose one of: {', '.join([*CATALOGUES, 'schedules'])}")
    try:
        module = importlib.import_module(CATALOGUES[catalogue])
    except ModuleNotFoundError:
        return []
    registry = getattr(module, "registry", None)
    if registry is None:
        return []
    return [{"name": i.name, "summary": i.summary, "reference": i.reference} for i in registry]


def run(args: argparse.Namespace) -> int:
    catalogues = [args.catalogue] if args.catalogue else [*CATALOGUES, "schedules"]
    out = {c: _rows(c) for c in catalogues}
    if args.json:
        print(json.dumps(out if len(catalogues) > 1 else out[catalogues[0]], indent=2))
        return 0
    for catalogue, rows in out.items():
        print(f"{catalogue} ({len(rows)})")
        width = max((len(r["name"]) for r in rows), default=0)
        for r in rows:
            print(f"  {r['name']:<{width}}  {r['summary']}")
    return 0
