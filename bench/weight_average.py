"""WeightAverage.update against torch.optim.swa_utils.AveragedModel.update_parameters (equal-weight averaging).

Both keep a uniform running mean of a model's parameters; the time of one update after the average has begun,
for a deep MLP (many small tensors) and a wide one (few large tensors), with and without losslab's NaN/Inf check
(one host sync per update). Medians of ``--repeats`` interleaved runs of ``--updates`` updates each;
ratio = losslab / torch (< 1: losslab faster). The largest difference between the two averages confirms they
agree.

Usage: python bench/weight_average.py [--repeats 5] [--updates 50] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from losslab.optim import WeightAverage


def timed(fn: Callable[[], object], updates: int) -> float:
    start = time.perf_counter()
    for _ in range(updates):
        fn()
    return (time.perf_counter() - start) / updates


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--updates", type=int, default=50)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    models = {"deep MLP 100 x Linear(64, 64) (200 tensors, 0.42M)": nn.Sequential(*[nn.Linear(64, 64)
                                                                                    for _ in range(100)]),
              "wide MLP 2 x Linear(2048, 2048) (4 tensors, 8.4M)": nn.Sequential(nn.Linear(2048, 2048),
                                                                                   nn.Linear(2048, 2048))}
    print(f"torch {torch.__version__}, {args.threads} thread(s); ms per update, medians of {args.repeats}")
    print(f"{'model':52s} {'losslab':>8s} {'+check':>8s} {'torch':>8s} {'ratio':>6s} {'+check':>7s} {'max diff':>9s}")
    for label, net in models.items():
        plain = WeightAverage(net, start=1, check_finite=False)
        checked = WeightAverage(net, start=1)
        peer = AveragedModel(net)
        times: dict[str, list[float]] = {"plain": [], "checked": [], "peer": []}
        for _ in range(args.repeats):
            for p in net.parameters():  # a new iterate each round, so the means move
                p.data.add_(torch.randn_like(p), alpha=1e-2)
            times["plain"].append(timed(lambda a=plain, m=net: a.update(m), args.updates))
            times["checked"].append(timed(lambda a=checked, m=net: a.update(m), args.updates))
            times["peer"].append(timed(lambda a=peer, m=net: a.update_parameters(m), args.updates))
        ours = dict(zip([n for n, _ in net.named_parameters()], plain.averaged_model().parameters()))
        diff = max(float((a.detach() - ours[n].detach()).abs().max())
                   for n, a in zip(ours, peer.module.parameters()))
        t = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        print(f"{label:52s} {t['plain']:8.2f} {t['checked']:8.2f} {t['peer']:8.2f} {t['plain'] / t['peer']:6.2f} "
              f"{t['checked'] / t['peer']:7.2f} {diff:9.1e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
