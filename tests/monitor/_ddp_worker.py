"""torchrun worker for the distributed monitor test (gloo, CPU). Writes what each rank saw to OUT/rank<r>.json."""

from __future__ import annotations

import json
import math
import sys
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from losslab.monitor import TrainingMonitor
from tests._dist_worker import exit_cleanly


def main(out: Path) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(1)
    result: dict = {"rank": rank, "world": world}

    # 1. DDP: gradients are averaged by DDP, so the local norm is the global one; losses differ per rank.
    torch.manual_seed(0)
    model = DDP(nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1)))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = TrainingMonitor(model, opt, sinks=[out / "ddp.csv"], every_n_steps=2)
    g = torch.Generator().manual_seed(100 + rank)
    losses, norms, logit_max = [], [], []
    for _ in range(4):
        x = torch.randn(16, 4, generator=g) * (1 + rank)
        logits = model(x)
        loss = logits.pow(2).mean()
        loss.backward()
        monitor.before_step()
        norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf"))))
        opt.step()
        monitor.step(loss=loss, logits=logits)
        opt.zero_grad()
        everyone = [torch.zeros(2) for _ in range(world)]
        dist.all_gather(everyone, torch.stack([loss.detach(), logits.detach().abs().max()]))
        losses.append(sum(float(t[0]) for t in everyone) / world)
        logit_max.append(max(float(t[1]) for t in everyone))
    monitor.close()
    result["ddp"] = {"expected_loss": losses, "expected_grad_norm": norms, "expected_logit_max": logit_max,
                     "loss": monitor.history["loss"], "grad_norm": monitor.history["grad_norm"],
                     "logit_max": monitor.history["logits/max_abs"]}

    # 2. Sharded gradients: each rank keeps only its share of the parameters' gradients; squares add up.
    torch.manual_seed(1)
    plain = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    sharded = TrainingMonitor(plain, grads_synchronized=False, per_layer="param")
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(7))
    plain(x).pow(2).sum().backward()
    full = math.sqrt(sum(float(p.grad.double().pow(2).sum()) for p in plain.parameters()))
    per_param = {n: float(p.grad.double().norm()) for n, p in plain.named_parameters()}
    for i, p in enumerate(plain.parameters()):
        if i % world != rank:
            p.grad.zero_()
    sharded.step(loss=float(rank))
    result["sharded"] = {"expected": full, "got": sharded.history["grad_norm"][-1],
                         "expected_per_param": per_param,
                         "got_per_param": {n: sharded.history[f"grad_norm/{n}"][-1] for n in per_param},
                         "loss": sharded.history["loss"][-1]}
    # 2a. Non-finite gradients in shards of the same parameter on both ranks count once (ZeRO / FSDP-1 flat
    # shards); NaN in a different parameter on each rank counts twice; the same parameter counts once also when
    # rank 1 holds no gradient for an earlier parameter (flags are indexed by parameter, not by gradient present)
    counts = []
    for where, no_grad_on_rank1 in (((0, 0), False), ((0, 2), False), ((2, 2), True)):
        torch.manual_seed(1)
        net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
        watcher = TrainingMonitor(net, grads_synchronized=False, detectors={})
        net(x).pow(2).sum().backward()
        if no_grad_on_rank1 and rank == 1:
            next(iter(net.parameters())).grad = None
        list(net.parameters())[where[rank]].grad[0].fill_(float("nan"))
        watcher.step(loss=1.0)
        counts.append(watcher.history["nonfinite_grads"][-1])
    result["sharded_nonfinite"] = counts
    # 2b. Sharded clipping where rank 1 holds no gradient at all: it still joins the sum (no hang), and both
    # ranks return the global norm
    torch.manual_seed(1)
    lonely = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    clipper = TrainingMonitor(lonely, grads_synchronized=False, detectors={})
    lonely(x).pow(2).sum().backward()
    whole = math.sqrt(sum(float(p.grad.double().pow(2).sum()) for p in lonely.parameters()))
    if rank == 1:
        lonely.zero_grad(set_to_none=True)
    result["clip_without_grads"] = {"expected": whole, "got": float(clipper.clip_grad_norm_(0.1))}
    # 3. Ranks passing different inputs (logits on rank 1 only, then the loss omitted on rank 1): no abort, no
    # hang, a warning on every rank, local values for that step, and the next matching step is reduced again.
    torch.manual_seed(2)
    mixed = DDP(nn.Linear(4, 3))
    monitor = TrainingMonitor(mixed, every_n_steps=1, detectors={})
    warned = []
    for step in range(3):
        logits = mixed(torch.randn(2, 4) + rank)
        loss = logits.pow(2).mean()
        loss.backward()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            monitor.step(loss=None if (step == 1 and rank == 1) else float(rank + 1),
                         logits=logits if (step == 0 and rank == 1) else None)
        warned.append([str(w.message) for w in caught])
        mixed.zero_grad()
    result["mismatch"] = {"loss": monitor.history["loss"], "warned": warned,
                          "events": [e.message for e in monitor.events]}
    (out / f"rank{rank}.json").write_text(json.dumps(result))
    exit_cleanly()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
