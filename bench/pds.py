"""PDS data-quality scores: losslab's co-state method against autograd through the unrolled SGD run.

A tanh MLP 32-h-h-10 (cross-entropy) takes ``T`` full-batch SGD steps (lr 0.05) on ``N`` training examples; the
target set is 64 held-out examples and the objective is the area under the target loss (the authors').
Three ways to get the ``N`` scores, all float32:

- losslab: ``pds_scores(..., batch_size=N)``: T gradient steps kept in memory, then the co-state backwards with one
  forward-over-reverse Hessian-vector product per step and one forward-mode pass scoring all examples per step.
- unrolled: the textbook reference. Per-example weights w (N,) = 1/N are leaves; every step is
  θ ← θ − η ∇(Σ_n w_n ℓ_n) with ``create_graph=True``; the scores are −∂(Σ_{t=1..T} J(θ_t))/∂w, one reverse pass
  through the whole run. Its memory holds the graph of every step (activations included).
- loop: the same co-state recursion written naively (Hessian-vector products by double backward) with the score
  step as a loop of one backward pass per example and step (N·T backward passes).

Time: medians of ``--repeats`` interleaved runs; ratio = peer / losslab (> 1: losslab faster). One score step
alone (⟨λ, ∇ℓ_n(θ_0)⟩ for all N, random λ) is timed as ``pds_scores`` computes it (one forward-mode pass of the
per-example losses, ``torch.func.jvp`` through ``call_model``) and as the loop does (N backward passes). Memory: the peak resident set size above the one before the call, each method run
once in a fresh process (``--no-memory`` skips it). Agreement: max |scores − losslab| / max |losslab|.

Usage: python bench/pds.py [--repeats 5] [--threads 1] [--no-memory]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch
import torch.nn.functional as F
from torch import nn

from losslab.diagnostics import pds_scores
from losslab.diagnostics._common import call_model

LR = 0.05
N_TARGET = 64
Params = dict[str, torch.Tensor]
Problem = tuple[nn.Module, tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
# (N training examples, T steps, hidden width h)
CONFIGS = ((64, 10, 32), (128, 20, 64), (256, 30, 128), (512, 50, 256))


def per_example_ce(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    return F.cross_entropy(model(batch[0]), batch[1], reduction="none")


def problem(n: int, hidden: int) -> Problem:
    """A tanh MLP and data from a random linear teacher with 20 % of the training labels flipped."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
                          nn.Linear(hidden, 10))
    g = torch.Generator().manual_seed(1)
    teacher = torch.randn(32, 10, generator=g)
    x, xt = torch.randn(n, 32, generator=g), torch.randn(N_TARGET, 32, generator=g)
    y, yt = (x @ teacher).argmax(1), (xt @ teacher).argmax(1)
    flip = torch.rand(n, generator=g) < 0.2
    y = torch.where(flip, torch.randint(0, 10, (n,), generator=g), y)
    return model, (x, y), (xt, yt)


def losses(model: nn.Module, p: Params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(torch.func.functional_call(model, p, (x,)), y, reduction="none")


def run_losslab(prob: Problem, steps: int) -> torch.Tensor:
    model, (x, y), target = prob
    return pds_scores(model, per_example_ce, (x, y), [target], steps=steps, lr=LR, batch_size=x.shape[0],
                      score_batch_size=max(256, x.shape[0]), quiet=True).scores


def run_unrolled(prob: Problem, steps: int) -> torch.Tensor:
    """−∂(Σ_{t=1..T} J(θ_t))/∂w at w = 1/N, by autograd through the T unrolled steps."""
    model, (x, y), (xt, yt) = prob
    names = [k for k, _ in model.named_parameters()]
    theta = {k: v.detach().clone().requires_grad_(True) for k, v in model.named_parameters()}
    w = torch.full((x.shape[0],), 1.0 / x.shape[0], requires_grad=True)
    area = torch.zeros(())
    for _ in range(steps):
        g = torch.autograd.grad((w * losses(model, theta, x, y)).sum(), [theta[k] for k in names], create_graph=True)
        theta = {k: theta[k] - LR * gk for k, gk in zip(names, g)}
        area = area + losses(model, theta, xt, yt).mean()
    (dw,) = torch.autograd.grad(area, w)
    return -dw.double()


def run_loop(prob: Problem, steps: int) -> torch.Tensor:
    """The co-state recursion with double-backward Hessian-vector products, scores by one backward per example."""
    model, (x, y), (xt, yt) = prob
    names = [k for k, _ in model.named_parameters()]
    thetas = [{k: v.detach().clone() for k, v in model.named_parameters()}]
    for _ in range(steps):
        p = {k: v.requires_grad_(True) for k, v in thetas[-1].items()}
        g = torch.autograd.grad(losses(model, p, x, y).mean(), [p[k] for k in names])
        thetas.append({k: p[k].detach() - LR * gk for k, gk in zip(names, g)})

    def target_grad(p: Params) -> list[torch.Tensor]:
        q = {k: v.detach().requires_grad_(True) for k, v in p.items()}
        return list(torch.autograd.grad(losses(model, q, xt, yt).mean(), [q[k] for k in names]))

    scores = torch.zeros(x.shape[0], dtype=torch.float64)
    lam = target_grad(thetas[steps])
    for t in range(steps - 1, -1, -1):
        q = {k: v.detach().requires_grad_(True) for k, v in thetas[t].items()}
        for i in range(x.shape[0]):  # the score step: one backward pass per example
            gi = torch.autograd.grad(losses(model, q, x[i:i + 1], y[i:i + 1]).sum(), [q[k] for k in names])
            scores[i] += LR * float(sum((a * b).sum() for a, b in zip(lam, gi)))
        if t == 0:
            break
        g = torch.autograd.grad(losses(model, q, x, y).mean(), [q[k] for k in names], create_graph=True)
        hv = torch.autograd.grad(torch.stack([(a * b).sum() for a, b in zip(g, lam)]).sum(), [q[k] for k in names])
        lam = [lk - LR * hk + jk for lk, hk, jk in zip(lam, hv, target_grad(thetas[t]))]
    return scores


def score_step_jvp(prob: Problem, theta: Params, lam: Params) -> torch.Tensor:
    """One score step as ``pds_scores`` runs it (its ``directional``): ⟨λ, ∇ℓ_n(θ)⟩ for all n by one forward-mode
    pass of the per-example losses through ``call_model``."""
    model, (x, y), _ = prob
    return torch.func.jvp(lambda u: call_model(model, per_example_ce, (x, y), u, "eval"), (theta,), (lam,))[1]


def score_step_loop(prob: Problem, theta: Params, lam: Params) -> torch.Tensor:
    """One score step naively: one backward pass per example, then the dot product with λ."""
    model, (x, y), _ = prob
    q = {k: v.detach().requires_grad_(True) for k, v in theta.items()}
    out = torch.empty(x.shape[0])
    for i in range(x.shape[0]):
        gi = torch.autograd.grad(losses(model, q, x[i:i + 1], y[i:i + 1]).sum(), list(q.values()))
        out[i] = torch.stack([(lam[k] * g).sum() for k, g in zip(q, gi)]).sum()
    return out


def timed(fn: Callable[[], torch.Tensor]) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def child(method: str, n: int, steps: int, hidden: int) -> None:
    """One method once in this fresh process; prints its peak resident memory above the baseline, in MiB."""
    prob = problem(n, hidden)
    fns = {"losslab": lambda: run_losslab(prob, steps), "unrolled": lambda: run_unrolled(prob, steps),
           "loop": lambda: run_loop(prob, steps)}
    small = problem(8, 4)  # warm-up: imports and first-call initialisation of torch.func and autograd
    {"losslab": lambda: run_losslab(small, 2), "unrolled": lambda: run_unrolled(small, 2),
     "loop": lambda: run_loop(small, 2)}[method]()
    with contextlib.suppress(OSError):  # reset the high-water mark (Linux ≥ 4.0), else it may hold the imports' peak
        Path("/proc/self/clear_refs").write_text("5")
    base = rss_kib("VmRSS")
    fns[method]()
    print(json.dumps({"peak_mib": (rss_kib("VmHWM") - base) / 1024}))


def peak_mib(method: str, n: int, steps: int, hidden: int, threads: int) -> float:
    out = subprocess.run([sys.executable, __file__, "--threads", str(threads), "--child", method, str(n), str(steps),
                          str(hidden)], capture_output=True, text=True, check=True).stdout
    return float(json.loads(out.strip().splitlines()[-1])["peak_mib"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs (one process each)")
    ap.add_argument("--child", nargs=4, metavar=("METHOD", "N", "T", "H"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        child(args.child[0], *(int(v) for v in args.child[1:]))
        return 0
    print(f"torch {torch.__version__}, {args.threads} thread(s), float32, median of {args.repeats} interleaved runs; "
          f"ratio = peer / losslab (> 1: losslab faster)")
    print(f"{'N':>4s} {'T':>3s} {'h':>4s} {'params':>7s} {'losslab s':>9s} {'unrolled s':>10s} {'ratio':>6s} "
          f"{'loop s':>8s} {'ratio':>6s} {'step: jvp':>8s} {'loop':>8s} {'ratio':>6s} {'diff':>8s} "
          f"{'unrolled':>9s} {'loop':>8s}")
    print(f"{'':65s} {'one score step, ms':>24s} {'max rel diff (scores)':>27s}")
    warm = problem(8, 4)
    run_losslab(warm, 2), run_unrolled(warm, 2), run_loop(warm, 2)  # first torch.func / double-backward calls
    memory = []
    for n, steps, hidden in CONFIGS:
        prob = problem(n, hidden)
        params = sum(p.numel() for p in prob[0].parameters())
        theta = {k: v.detach().clone() for k, v in prob[0].named_parameters()}
        lam = {k: torch.randn(v.shape, generator=torch.Generator().manual_seed(2)) for k, v in theta.items()}
        times: dict[str, list[float]] = {"losslab": [], "unrolled": [], "loop": [], "jvp step": [], "loop step": []}
        for _ in range(args.repeats):  # interleaved, so that load from other jobs hits every method alike
            t, ours = timed(partial(run_losslab, prob, steps))
            times["losslab"].append(t)
            t, unrolled = timed(partial(run_unrolled, prob, steps))
            times["unrolled"].append(t)
            t, loop = timed(partial(run_loop, prob, steps))
            times["loop"].append(t)
            t, step_jvp = timed(partial(score_step_jvp, prob, theta, lam))
            times["jvp step"].append(t)
            t, step_loop = timed(partial(score_step_loop, prob, theta, lam))
            times["loop step"].append(t)
        med = {k: statistics.median(v) for k, v in times.items()}
        step_diff = float((step_jvp - step_loop).abs().max() / step_loop.abs().max())
        scale = float(ours.abs().max())
        d_unrolled = float((unrolled - ours).abs().max()) / scale
        d_loop = float((loop - ours).abs().max()) / scale
        print(f"{n:4d} {steps:3d} {hidden:4d} {params:7d} {med['losslab']:9.3f} {med['unrolled']:10.3f} "
              f"{med['unrolled'] / med['losslab']:6.2f} {med['loop']:8.3f} {med['loop'] / med['losslab']:6.2f} "
              f"{med['jvp step'] * 1e3:8.2f} {med['loop step'] * 1e3:8.2f} {med['loop step'] / med['jvp step']:6.1f} "
              f"{step_diff:8.1e} {d_unrolled:9.1e} {d_loop:8.1e}", flush=True)
        if not args.no_memory:
            memory.append((n, steps, hidden, params, {m: peak_mib(m, n, steps, hidden, args.threads)
                                                      for m in ("losslab", "unrolled", "loop")}))
    if memory:
        print("peak resident memory above the baseline, MiB (one run each, fresh process); (T + 1) x params x 4 B "
              "is what losslab must keep")
        print(f"{'N':>4s} {'T':>3s} {'h':>4s} {'params':>7s} {'losslab':>8s} {'unrolled':>9s} {'ratio':>6s} "
              f"{'loop':>7s} {'(T+1)P·4B':>10s}")
        for n, steps, hidden, params, mib in memory:
            ratio = f"{mib['unrolled'] / mib['losslab']:6.1f}" if mib["losslab"] >= 1 else f"{'-':>6s}"  # < 1 MiB: noise
            print(f"{n:4d} {steps:3d} {hidden:4d} {params:7d} {mib['losslab']:8.1f} {mib['unrolled']:9.1f} {ratio} "
                  f"{mib['loop']:7.1f} "
                  f"{(steps + 1) * params * 4 / 2**20:10.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
