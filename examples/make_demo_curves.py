"""Regenerate the bundled demo loss curves in ``src/losslab/data/demo/`` (CPU, one thread, about 1 minute).

The task is a small stand-in for single-epoch pretraining: a student MLP learns the noisy labels of a fixed random
teacher network, seeing fresh samples at every step (so it never overfits) and being evaluated on one fixed held-out
set. The loss falls roughly as a power law towards the teacher's label entropy, and lowering the learning rate
removes part of the optimizer's noise, which is the "annealing" drop that the forecast laws model.

Every schedule starts from the same initial weights and sees the same stream of batches (common random numbers), so
the curves differ only through the learning rate. Each CSV has columns ``step,lr,loss``: the lr of every step and
the held-out loss every ``--eval-every`` steps (blank elsewhere).

Run: ``python examples/make_demo_curves.py [--out src/losslab/data/demo] [--steps 4000]``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from losslab.schedules import parse_schedule

DIM, HIDDEN, CLASSES = 32, 128, 16
BATCH, EVAL_SIZE = 128, 8192
PEAK, WARMUP = 1e-3, 100


def schedules(steps: int) -> dict[str, str]:
    """Spec of every bundled curve (losslab.schedules syntax)."""
    common = f"peak={PEAK},steps={steps},warmup={WARMUP}"
    return {
        "constant": f"constant:{common}",
        "cosine": f"cosine:{common},final=0.1",
        "wsd_linear": f"wsd:{common},decay=0.2,cooldown=linear,final=0.1",
        "wsd_sqrt": f"wsd:{common},decay=0.2,cooldown=sqrt,final=0.1",
        "step": f"step:{common},at=0.5/0.75,factor=0.316",
    }


def teacher(generator: torch.Generator) -> nn.Module:
    """A fixed random 2-layer tanh network; its softmax gives each input's true label distribution."""
    net = nn.Sequential(nn.Linear(DIM, 128), nn.Tanh(), nn.Linear(128, CLASSES))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * (2.0 / p.shape[-1] ** 0.5 if p.ndim == 2 else 0.5))
    return net.requires_grad_(False)


def sample(net: nn.Module, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(n, DIM, generator=generator)
    y = torch.multinomial(torch.softmax(net(x), dim=-1), 1, generator=generator).squeeze(1)
    return x, y


def train(spec: str, steps: int, eval_every: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train one student under ``spec``; return per-step lr and the held-out loss (NaN where not evaluated)."""
    schedule = parse_schedule(spec)
    gen = torch.Generator().manual_seed(seed)
    net_t = teacher(gen)
    x_eval, y_eval = sample(net_t, EVAL_SIZE, gen)
    torch.manual_seed(seed + 1)  # student initialisation, identical for every schedule
    student = nn.Sequential(nn.Linear(DIM, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, HIDDEN), nn.ReLU(),
                            nn.Linear(HIDDEN, CLASSES))
    opt = torch.optim.Adam(student.parameters(), lr=schedule.peak)
    data_gen = torch.Generator().manual_seed(seed + 2)  # the batch stream, identical for every schedule
    lr = schedule.lr(steps)
    loss = np.full(steps, np.nan)
    lossf = nn.CrossEntropyLoss()
    for step in range(1, steps + 1):
        for group in opt.param_groups:
            group["lr"] = float(lr[step - 1])
        x, y = sample(net_t, BATCH, data_gen)
        opt.zero_grad(set_to_none=True)
        lossf(student(x), y).backward()
        opt.step()
        if step % eval_every == 0 or step == steps:
            with torch.no_grad():
                loss[step - 1] = float(lossf(student(x_eval), y_eval))
    return lr, loss


def write_csv(path: Path, lr: np.ndarray, loss: np.ndarray) -> None:
    lines = ["step,lr,loss"]
    for i, (a, b) in enumerate(zip(lr, loss), start=1):
        lines.append(f"{i},{a:.6g}," + ("" if np.isnan(b) else f"{b:.5f}"))
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "src/losslab/data/demo")
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--eval-every", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, spec in schedules(args.steps).items():
        start = time.perf_counter()
        lr, loss = train(spec, args.steps, args.eval_every, args.seed)
        write_csv(args.out / f"{name}.csv", lr, loss)
        print(f"{name:<11} final loss {loss[-1]:.4f}  ({time.perf_counter() - start:.1f} s)  {spec}")


if __name__ == "__main__":
    main()
