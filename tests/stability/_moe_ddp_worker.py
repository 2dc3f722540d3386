"""Run by torchrun (2 processes, gloo): the global-batch load-balancing loss. Exit 0 on success.

Each rank routes different tokens. With ``group`` the counts are summed over ranks, so the mean of the ranks' losses
must equal the loss of the whole global batch computed on one process, and so must its gradient under DDP.
"""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from losslab.stability import load_balancing_loss
from tests._dist_worker import exit_cleanly


def fail(message: str) -> None:
    print(f"rank {dist.get_rank()}: {message}", file=sys.stderr)
    sys.exit(1)


def main() -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    gate = torch.nn.Linear(6, 5, bias=False).double()
    reference_gate = torch.nn.Linear(6, 5, bias=False).double()
    reference_gate.load_state_dict(gate.state_dict())
    model = DDP(gate)
    inputs = [torch.randn(12, 6, generator=torch.Generator().manual_seed(10 + r), dtype=torch.float64)
              for r in range(world)]
    probs = torch.softmax(model(inputs[rank]), -1)
    local = load_balancing_loss(probs, probs.topk(2).indices, group=dist.group.WORLD)
    local.backward()  # DDP averages the gradient over ranks
    mean_loss = local.detach().clone()
    dist.all_reduce(mean_loss)
    mean_loss /= world

    all_probs = torch.softmax(reference_gate(torch.cat(inputs)), -1)
    whole = load_balancing_loss(all_probs, all_probs.topk(2).indices)
    whole.backward()
    if not torch.allclose(mean_loss, whole.detach(), rtol=1e-12, atol=0):
        fail(f"mean of ranks' losses {mean_loss.item()!r} != global-batch loss {whole.item()!r}")
    if not torch.allclose(gate.weight.grad, reference_gate.weight.grad, rtol=1e-10, atol=1e-14):
        fail("DDP gradient differs from the global-batch gradient")
    plain = load_balancing_loss(probs.detach(), probs.detach().topk(2).indices)
    others = torch.softmax(reference_gate(inputs[1 - rank]), -1).detach()
    if torch.allclose(plain, load_balancing_loss(others, others.topk(2).indices)):
        fail("the two ranks' micro-batch losses coincide; the data does not test anything")
    exit_cleanly()


if __name__ == "__main__":
    main()
