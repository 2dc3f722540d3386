"""Top Hessian eigenvalue of a ~1M-parameter MLP: Lanczos vs power iteration vs SciPy eigsh, and HVP back-ends.

Part 1: Hessian-vector products needed (and time) to reach 1e-3 relative accuracy on lambda_max:
  - losslab.diagnostics.lanczos (full reorthogonalisation),
  - losslab.diagnostics.power_iteration (the PyHessian algorithm, seeded),
  - scipy.sparse.linalg.eigsh (ARPACK implicitly restarted Lanczos) on op.to_scipy(), which="LA", loosest tol that
    reaches the accuracy.
  The reference value is a Lanczos run to a 1e-10 residual. Counts for Lanczos and power iteration are the first
  iteration whose estimate is within 1e-3 of it; timed runs then take exactly that many products.
Part 2: seconds per Hessian-vector product for three implementations:
  - losslab HessianOperator.matvec (one create_graph gradient reused; double backward per product),
  - naive double backward (fresh forward + gradient for every product, as in a textbook loop),
  - torch.func forward-over-reverse (jvp of grad).

Usage: python bench/hessian.py [--threads 1] [--repeats 3] [--batch 512] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from losslab.diagnostics import HessianOperator, lanczos, power_iteration

REL = 1e-3


def build(batch: int, device: str) -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(784, 1024), nn.ReLU(), nn.Linear(1024, 256), nn.ReLU(), nn.Linear(256, 10))
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 784, generator=g)
    y = (x @ torch.randn(784, 10, generator=g)).argmax(1)
    model, x, y = model.to(device), x.to(device), y.to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(30):  # move away from initialisation so the spectrum is not that of a random net
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model, (x, y)


def loss_fn(model: nn.Module, b: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    return nn.functional.cross_entropy(model(b[0]), b[1])


def first_within(history: list[float], ref: float) -> int:
    for i, v in enumerate(history):
        if abs(v - ref) <= REL * abs(ref):
            return i + 1
    return -1


def timed(fn):  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, batch = build(args.batch, args.device)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: MLP 784-1024-256-10, {n_params:,} parameters, batch {args.batch}, device {args.device}, "
          f"threads {args.threads}, torch {torch.__version__}")

    op = HessianOperator(model, loss_fn, batch)
    t_ref, ref_res = timed(lambda: lanczos(op, 1, tol=1e-10, max_iter=150, seed=0))
    ref = float(ref_res.eigenvalues[0])
    print(f"reference lambda_max = {ref:.8g} ({ref_res.n_matvec} products, converged={ref_res.converged}, "
          f"{t_ref:.1f} s)")

    n_lz = first_within(lanczos(op, 1, tol=1e-300, max_iter=60, seed=1).history, ref)
    n_pw = first_within(power_iteration(op, 1, which="LM", tol=1e-300, max_iter=400, seed=1).history, ref)
    print(f"products to {REL:g} relative accuracy: lanczos {n_lz}, power iteration {n_pw}")

    from scipy.sparse.linalg import eigsh

    class Counting:
        def __init__(self) -> None:
            self.calls = 0
            self.lin = op.to_scipy()

        def matvec(self, x: np.ndarray) -> np.ndarray:
            self.calls += 1
            return self.lin.matvec(x)

    from scipy.sparse.linalg import LinearOperator

    eig_tol, eig_calls = None, None
    for tol in (1e-2, 1e-3, 1e-4, 1e-5, 1e-6):
        c = Counting()
        v0 = np.random.default_rng(1).standard_normal(op.n)
        val = eigsh(LinearOperator((op.n, op.n), matvec=c.matvec, dtype=np.float64), k=1, which="LA", tol=tol,
                    v0=v0, return_eigenvectors=False)[0]
        if abs(val - ref) <= REL * abs(ref):
            eig_tol, eig_calls = tol, c.calls
            break
    print(f"scipy eigsh(which='LA'): loosest tol reaching {REL:g} is {eig_tol:g} with {eig_calls} products")

    times: dict[str, list[float]] = {"lanczos": [], "power": [], "eigsh": []}
    for _ in range(args.repeats):  # interleaved repeats; each builds its own operator (one forward + gradient)
        times["lanczos"].append(timed(lambda: lanczos(HessianOperator(model, loss_fn, batch), 1, tol=1e-300,
                                                      max_iter=n_lz, seed=1))[0])
        times["power"].append(timed(lambda: power_iteration(HessianOperator(model, loss_fn, batch), 1, which="LM",
                                                            tol=1e-300, max_iter=n_pw, seed=1))[0])
        times["eigsh"].append(timed(lambda: eigsh(HessianOperator(model, loss_fn, batch).to_scipy(), k=1,
                                                  which="LA", tol=eig_tol,
                                                  v0=np.random.default_rng(1).standard_normal(op.n),
                                                  return_eigenvectors=False))[0])
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"time to {REL:g} (median of {args.repeats}): " + ", ".join(f"{k} {v:.2f} s" for k, v in med.items()))
    print(f"ratios vs lanczos: power iteration {med['power'] / med['lanczos']:.2f}x, "
          f"eigsh {med['eigsh'] / med['lanczos']:.2f}x")

    # Part 2: cost of one product
    names = [n for n, _ in model.named_parameters()]
    params = {n: p.detach() for n, p in model.named_parameters()}
    v = torch.randn(op.n, generator=torch.Generator().manual_seed(2), dtype=torch.float64).to(args.device)
    vs = op.unflatten(v.float())

    def naive() -> torch.Tensor:
        ps = [p for p in model.parameters()]
        g = torch.autograd.grad(loss_fn(model, batch), ps, create_graph=True)
        hv = torch.autograd.grad(g, ps, grad_outputs=[vs[n] for n in names])
        return torch.cat([h.reshape(-1) for h in hv])

    def f(p: dict[str, torch.Tensor]) -> torch.Tensor:
        return loss_fn_func(p)

    def loss_fn_func(p: dict[str, torch.Tensor]) -> torch.Tensor:
        return nn.functional.cross_entropy(torch.func.functional_call(model, p, (batch[0],)), batch[1])

    def fwd_rev() -> torch.Tensor:
        _, hv = torch.func.jvp(torch.func.grad(f), (params,), ({n: vs[n] for n in names},))
        return torch.cat([hv[n].reshape(-1) for n in names])

    reuse_op = HessianOperator(model, loss_fn, batch)
    ref_hv = reuse_op.matvec(v)
    for name, fn in (("naive", naive), ("torch.func", fwd_rev)):
        err = float((fn().double() - ref_hv).norm() / ref_hv.norm())
        print(f"  {name} HVP agrees with losslab to {err:.1e} relative")
    per: dict[str, list[float]] = {"losslab (graph reused)": [], "naive double backward": [],
                                   "torch.func fwd-over-rev": []}
    reps = 5
    for _ in range(args.repeats):
        per["losslab (graph reused)"].append(timed(lambda: [reuse_op.matvec(v) for _ in range(reps)])[0] / reps)
        per["naive double backward"].append(timed(lambda: [naive() for _ in range(reps)])[0] / reps)
        per["torch.func fwd-over-rev"].append(timed(lambda: [fwd_rev() for _ in range(reps)])[0] / reps)
    pm = {k: statistics.median(x) for k, x in per.items()}
    base = pm["losslab (graph reused)"]
    print("seconds per HVP (median): " + ", ".join(f"{k} {x * 1e3:.1f} ms ({x / base:.2f}x)" for k, x in pm.items()))


if __name__ == "__main__":
    main()
