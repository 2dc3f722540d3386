"""``make demo``: the main job on bundled data, writing plots and a text summary to ``demo-out/``.

Each part is a function in this file; run ``python examples/demo.py --out DIR``.
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from losslab.schedules import parse_schedule


def schedules_part(out: Path) -> str:
    specs = ["cosine:peak=3e-4,steps=24000,final=0.1,warmup=2160",
             "wsd:peak=3e-4,steps=24000,decay=0.2,cooldown=sqrt,warmup=2160",
             "step:peak=3e-4,steps=24000,at=0.8/0.9,factor=0.316",
             "cyclic:peak=3e-4,steps=24000,cycles=4,mult=2,shape=linear"]
    fig, ax = plt.subplots(figsize=(7, 4))
    steps = np.arange(1, 24001)
    for spec in specs:
        ax.plot(steps, parse_schedule(spec)(steps), label=spec.split(":")[0])
    ax.set(xlabel="step", ylabel="learning rate", title="losslab.schedules")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "schedules.png", dpi=110)
    plt.close(fig)
    return f"schedules: {len(specs)} schedules plotted to schedules.png"


PARTS = ("demo_forecast", "demo_monitor")  # examples/<part>.py, each defining run(out, quiet) -> str


def run_part(name: str, out: Path, quiet: bool) -> str:
    path = Path(__file__).with_name(f"{name}.py")
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return str(module.run(out, quiet=quiet))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("demo-out"))
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    lines = [schedules_part(args.out)]
    for name in PARTS:
        if Path(__file__).with_name(f"{name}.py").exists():
            lines.append(run_part(name, args.out, args.quiet))
    lines.append(f"done in {time.perf_counter() - start:.1f} s; outputs in {args.out}/")
    summary = "\n".join(lines)
    (args.out / "summary.txt").write_text(summary + "\n")
    print(summary)


if __name__ == "__main__":
    main()
