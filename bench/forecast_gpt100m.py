"""Cross-source check: fit on a raw, noisy per-step cosine log of a 100M GPT; predict its WSD and 8-1-1 runs.

Data: ../shared/data/gpt100m-3schedules (33,908 steps each; columns step,lr,loss). The logged lr has no warmup
although the loss starts at 10.4: about 2000 warmup steps were dropped from the lr log. Handling: the lr of step s
is rebuilt as ``lr_log(s) * min(1, s / 2000)`` (a linear warmup multiplying the logged schedule); fit_curves then
ignores the losses inside the warmup (its default ``skip_warmup``) and bins the remaining ~32k noisy per-step
losses into at most 400 points (medians). Targets for the errors: a centred 201-step moving average of the raw
loss, every 100 steps from step 2000 to 33,800 (the research note's protocol, so its Tissue figures compare).

Usage: python bench/forecast_gpt100m.py [--data ../shared/data] [--warmup 2000]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from losslab.forecast import Curve, fit_curves

# label -> (law, options); "mpl-authors" is the authors' own fitting procedure (MultiPowerLaw(method="authors"))
VARIANTS = {"power": ("power", {}), "tissue": ("tissue", {}), "mpl": ("mpl", {}),
            "mpl-authors": ("mpl", {"method": "authors"}), "auto": ("auto", {})}
RUNS = {"cosine": "gpt100M_20B_cosine.csv", "wsd": "gpt100M_20B_wsd.csv", "811": "gpt100M_20B_811.csv"}
# research note §3b, Tissue law fitted by the note's author: (mean, worst, final) in % on the held-out runs
NOTE = {("cosine",): {"wsd": (0.96, 2.12, 0.22), "811": (0.74, 2.81, -0.28)},
        ("cosine", "811"): {"wsd": (0.24, 1.05, -0.05)}}


def load(folder: Path, name: str, warmup: int) -> tuple[Curve, np.ndarray, np.ndarray]:
    data = np.genfromtxt(folder / RUNS[name], delimiter=",", skip_header=1)
    lr_log, loss = data[:, 1], data[:, 2]
    steps = np.arange(1, lr_log.size + 1)
    lr = lr_log * np.minimum(1.0, steps / warmup)
    kernel = np.ones(201) / 201
    smooth = np.convolve(loss, kernel, mode="same")
    at = np.arange(2000, min(33801, lr.size - 100), 100)
    meta = {"source": f"gpt100m-3schedules/{RUNS[name]}", "warmup_rebuilt": warmup}
    return Curve(lr, loss, name, meta), at, smooth[at - 1]


def errors(fit, curve: Curve, at: np.ndarray, target: np.ndarray) -> tuple[float, float, float, float]:
    pred, lo, hi = fit.predict_interval(curve.lr, 0.9, steps=at)
    rel = (pred - target) / target
    cover = float(np.mean((target >= lo) & (target <= hi)))
    return float(np.mean(np.abs(rel))), float(np.max(np.abs(rel))), float(rel[-1]), cover


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared" / "data")
    ap.add_argument("--warmup", type=int, default=2000)
    args = ap.parse_args()
    folder = args.data / "gpt100m-3schedules"
    if not folder.is_dir():
        print(f"data folder {folder} is absent; pass --data", file=sys.stderr)
        return 2
    runs = {n: load(folder, n, args.warmup) for n in RUNS}
    print(f"python {sys.version.split()[0]}, numpy {np.__version__}; 2-core shared machine; warmup rebuilt over "
          f"{args.warmup} steps")
    for train in (("cosine",), ("cosine", "811")):
        print(f"\n=== fit on {' + '.join(train)} (raw per-step loss), predict the others")
        print(f"{'law':16s} {'fit s':>6s} " + " ".join(f"{n + ' mean/worst/final/cover90':>34s}" for n in RUNS))
        for law, (name, opts) in VARIANTS.items():
            t0 = time.perf_counter()
            fit = fit_curves([runs[n][0] for n in train], name, quiet=True, **opts)
            dt = time.perf_counter() - t0
            cells = []
            for n, (curve, at, target) in runs.items():
                m, w, f, c = errors(fit, curve, at, target)
                tag = "*" if n in train else " "
                cells.append(f"{tag}{100 * m:6.2f}% {100 * w:6.2f}% {100 * f:+6.2f}% {100 * c:5.0f}%")
            label = law if law != "auto" else f"auto->{fit.law}"
            print(f"{label:16s} {dt:6.2f} " + " ".join(f"{c:>34s}" for c in cells))
        for n, (m, w, f) in NOTE[train].items():
            print(f"  research note, Tissue: {n}: mean {m:.2f} %, worst {w:.2f} %, final {f:+.2f} %")
    print("(* = a fitted curve; errors against a 201-step moving average of the raw loss)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
