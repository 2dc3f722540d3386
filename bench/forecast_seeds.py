"""Seed-to-seed check of forecast intervals on 38 runs of the same modded-nanogpt record (different seeds only).

Each run's validation loss (every 125 steps, WSD schedule: constant, then linear decay to 0 over the last 600 of
1530 steps) is fitted on its own, from step ``--loss-from`` on; the 90 % interval at the final step is then checked
against the final validation loss of the 37 other seeds. Same code, same schedule: the other seeds differ from the
fitted run only by seed noise (std 0.0041 of the final loss), so a fair interval for "this schedule's final loss"
covers most of them, and one far wider than the seed spread is uninformative. Printed per law: coverage of the
other seeds (mean and the worst fitted run), the mean relative half-width, the mean relative error against the
other seeds, and the fit time.

Usage: python bench/forecast_seeds.py [--data ../shared/data] [--loss-from 250] [--laws tissue mpl power]
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from losslab.forecast import fit_curves
from losslab.forecast.io import load_curve

FILE = "modded-nanogpt/valueembed_2024-12-04_38seeds.csv"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared" / "data")
    ap.add_argument("--loss-from", type=int, default=250, help="first step whose loss is fitted")
    ap.add_argument("--laws", nargs="+", default=["tissue", "mpl", "power"])
    args = ap.parse_args()
    path = args.data / FILE
    if not path.is_file():
        print(f"data file {path} is absent; pass --data", file=sys.stderr)
        return 2
    with path.open() as f:
        runs = sorted({row["run"] for row in csv.DictReader(f)})
    curves = [load_curve(path, run=r, lr_tag="lr_mult", loss_tag="val_loss", lr_fill="linear",
                         loss_from=args.loss_from) for r in runs]
    finals = np.array([c.loss[c.measured[-1] - 1] for c in curves])
    print(f"{len(curves)} runs, {curves[0].measured.size} validation points each (fitted from step "
          f"{args.loss_from}); final loss mean {finals.mean():.4f}, seed std {finals.std(ddof=1):.4f} "
          f"({100 * finals.std(ddof=1) / finals.mean():.3f} %)")
    print(f"{'law':8s} {'coverage':>9s} {'worst run':>10s} {'half-width':>11s} {'rel. error':>11s} {'fit s':>7s}")
    for law in args.laws:
        cover, half, err, times = [], [], [], []
        for i, c in enumerate(curves):
            t0 = time.perf_counter()
            fit = fit_curves([c], law, quiet=True)
            times.append(time.perf_counter() - t0)
            mid, lo, hi = fit.predict_interval(c.lr, 0.9, steps=np.array([c.measured[-1]]))
            others = np.delete(finals, i)
            cover.append(np.mean((others >= lo[0]) & (others <= hi[0])))
            half.append((hi[0] - lo[0]) / 2 / mid[0])
            err.append(np.mean(np.abs(others - mid[0]) / others))
        print(f"{law:8s} {100 * np.mean(cover):8.1f}% {100 * np.min(cover):9.0f}% {100 * np.mean(half):10.3f}% "
              f"{100 * np.mean(err):10.3f}% {np.median(times):7.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
