"""Time of catalogue losses against the formulas as their authors' code computes them (values checked equal first).

Forward + backward on CPU, one thread, median of ``--repeats`` interleaved runs; ratio = peer / losslab (> 1:
losslab is faster). The peers are written out here in plain torch, as their code computes them (none of them is
a dependency):

- NeuralNDCG (allRank ``neuralNDCG``): NeuralSort, Sinkhorn scaling with one stop for the whole batch, DCG/IDCG;
  full slates (no padding), tau = 1, gains 2^y - 1. losslab also validates the input and stops Sinkhorn per slate.
- ListMLE (allRank ``listMLE``): sort by label, reverse cumulative logsumexp of the scores.
- KD (mdistiller ``kd_loss``): ``kl_div(log_softmax(s/T), softmax(t/T)).sum(1).mean() * T^2``.
- DKD (mdistiller ``dkd_loss``): target/non-target binary KL plus the non-target KL with the -1000 logit mask.
- LDAM (LDAM-DRW ``LDAMLoss``): margins m_j = C / n_j^(1/4), ``cross_entropy(s * (x - m_y e_y))``.
- cross_entropy (``torch.nn.functional.cross_entropy``), the catalogue's plain path.

Usage: python bench/losses_catalogue.py [--repeats 15] [--threads 1]
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
import torch.nn.functional as F

import losslab.losses as L


def neural_ndcg_peer(scores: torch.Tensor, labels: torch.Tensor, tau: float = 1.0, iters: int = 50,
                     tol: float = 1e-6) -> torch.Tensor:
    n = scores.shape[1]
    pairwise = (scores.unsqueeze(2) - scores.unsqueeze(1)).abs().sum(2)  # Σ_k |s_j - s_k|
    c = (n + 1 - 2 * torch.arange(1, n + 1, dtype=scores.dtype)).unsqueeze(0).unsqueeze(2)
    p = torch.softmax((c * scores.unsqueeze(1) - pairwise.unsqueeze(1)) / tau, dim=2)
    for _ in range(iters):
        p = p / p.sum(1, keepdim=True).clamp_min(1e-10)
        p = p / p.sum(2, keepdim=True).clamp_min(1e-10)
        if max((p.sum(2) - 1).abs().max(), (p.sum(1) - 1).abs().max()) < tol:
            break
    gains = 2.0**labels - 1
    discounts = 1.0 / torch.log2(torch.arange(n, dtype=scores.dtype) + 2.0)
    dcg = ((p @ gains.unsqueeze(2)).squeeze(2) * discounts).sum(1)
    idcg = (gains.sort(1, descending=True).values * discounts).sum(1)
    return -(dcg / idcg).mean()


def listmle_peer(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    order = labels.argsort(dim=1, descending=True, stable=True)
    s = scores.gather(1, order)
    tail = torch.logcumsumexp(s.flip(1), 1).flip(1)
    return (tail - s).sum(1).mean()


def kd_peer(s: torch.Tensor, t: torch.Tensor, temp: float = 4.0) -> torch.Tensor:
    kl = F.kl_div(F.log_softmax(s / temp, 1), F.softmax(t / temp, 1), reduction="none").sum(1)
    return kl.mean() * temp**2


def dkd_peer(s: torch.Tensor, t: torch.Tensor, y: torch.Tensor, alpha: float = 1.0, beta: float = 8.0,
             temp: float = 4.0) -> torch.Tensor:
    gt = F.one_hot(y, s.shape[1]).bool()
    ps, pt = F.softmax(s / temp, 1), F.softmax(t / temp, 1)
    bs = torch.stack([(ps * gt).sum(1), (ps * ~gt).sum(1)], 1)
    bt = torch.stack([(pt * gt).sum(1), (pt * ~gt).sum(1)], 1)
    tckd = F.kl_div(torch.log(bs), bt, reduction="sum") * temp**2 / s.shape[0]
    log_ps2 = F.log_softmax(s / temp - 1000.0 * gt, 1)
    pt2 = F.softmax(t / temp - 1000.0 * gt, 1)
    nckd = F.kl_div(log_ps2, pt2, reduction="sum") * temp**2 / s.shape[0]
    return alpha * tckd + beta * nckd


def ldam_peer(x: torch.Tensor, y: torch.Tensor, counts: torch.Tensor, max_m: float = 0.5,
              s: float = 30.0) -> torch.Tensor:
    m = 1.0 / counts.double().pow(0.25)
    m = (m * (max_m / m.max())).to(x.dtype)
    margin = F.one_hot(y, x.shape[1]).to(x.dtype) * m
    return F.cross_entropy(s * (x - margin), y)


def medians(variants: dict[str, Callable[[], torch.Tensor]], leaves: list[torch.Tensor], repeats: int) -> dict:
    with torch.no_grad():
        values = {name: float(fn()) for name, fn in variants.items()}
    ref = values["losslab"]
    if any(abs(v - ref) > 1e-4 * max(1.0, abs(ref)) for v in values.values()):
        raise SystemExit(f"values disagree: {values}")
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            for leaf in leaves:
                leaf.grad = None
            start = time.perf_counter()
            fn().backward()
            times[name].append(time.perf_counter() - start)
    return {name: 1e3 * statistics.median(t) for name, t in times.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    print(f"torch {torch.__version__}, {args.threads} thread(s); median of {args.repeats} forward+backward runs")
    print(f"{'loss':14s} {'shape':>12s} {'losslab ms':>11s} {'peer ms':>9s} {'ratio':>6s}")
    rows = []
    for b, n in [(256, 16), (64, 64)]:
        scores = torch.randn(b, n, generator=g).requires_grad_(True)
        labels = torch.randint(0, 4, (b, n), generator=g).float()
        labels[:, 0] = 3.0  # every slate has a relevant item
        rows.append(("neural_ndcg", f"{b}x{n}", [scores],
                     {"losslab": lambda s=scores, y=labels: L.neural_ndcg(s, y),
                      "peer": lambda s=scores, y=labels: neural_ndcg_peer(s, y)}))
        rows.append(("listmle", f"{b}x{n}", [scores],
                     {"losslab": lambda s=scores, y=labels: L.listmle(s, y),
                      "peer": lambda s=scores, y=labels: listmle_peer(s, y)}))
    for n, c in [(512, 100), (4096, 1000)]:
        s = torch.randn(n, c, generator=g).requires_grad_(True)
        t = torch.randn(n, c, generator=g)
        y = torch.randint(0, c, (n,), generator=g)
        counts = torch.randint(1, 5000, (c,), generator=g)
        rows.append(("kd", f"{n}x{c}", [s], {"losslab": lambda s=s, t=t: L.kd(s, t),
                                              "peer": lambda s=s, t=t: kd_peer(s, t)}))
        rows.append(("dkd", f"{n}x{c}", [s], {"losslab": lambda s=s, t=t, y=y: L.dkd(s, t, y),
                                               "peer": lambda s=s, t=t, y=y: dkd_peer(s, t, y)}))
        rows.append(("cross_entropy", f"{n}x{c}", [s], {"losslab": lambda s=s, y=y: L.cross_entropy(s, y),
                                                         "peer": lambda s=s, y=y: F.cross_entropy(s, y)}))
        rows.append(("ldam", f"{n}x{c}", [s],
                     {"losslab": lambda s=s, y=y, k=counts: L.ldam(s, y, class_counts=k),
                      "peer": lambda s=s, y=y, k=counts: ldam_peer(s, y, k)}))
    for name, shape, leaves, variants in rows:
        med = medians(variants, leaves, args.repeats)
        print(f"{name:14s} {shape:>12s} {med['losslab']:11.3f} {med['peer']:9.3f} {med['peer'] / med['losslab']:6.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
