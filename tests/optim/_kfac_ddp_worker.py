"""Run by torchrun (2 processes, gloo): K-FAC under DDP. Exit 0 on success.

Each rank trains a DDP conv net on its own batch with SGD + KFAC; every rank also trains an unwrapped copy, in the
same process, on the concatenation of all ranks' batches. Averaging the factors across ranks must make the DDP run
that single-process run (float64, 1e-10), with bit-identical replicas and factors on every rank. A layer run on
rank 0 only must end with the factors of one process that saw rank 0's batches alone (the ranks that did not run it
take no part in its average), on every rank and without a hang. FSDP2 (DTensor) parameters must be refused with a
ConfigError.
"""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from losslab import ConfigError
from losslab.optim import KFAC
from tests._dist_worker import exit_cleanly

STEPS = 6
KW = dict(lr=0.1, damping=0.01, kl_clip=0.01, factor_update_steps=1, inv_update_steps=2)


def fail(message: str) -> None:
    print(message, file=sys.stderr)
    sys.exit(1)


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(2 * 5 * 5, 3)).double()


def batch(step: int, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 * step + rank)
    return torch.randn(4, 1, 5, 5, generator=g, dtype=torch.float64), torch.randn(4, 3, generator=g,
                                                                                    dtype=torch.float64)


def train(net: nn.Module, batches_of) -> KFAC:
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    kfac = KFAC(net, **KW)
    for step in range(STEPS):
        x, y = (torch.cat(t) for t in zip(*batches_of(step)))
        opt.zero_grad()
        nn.functional.mse_loss(net(x), y).backward()
        kfac.step()
        opt.step()
    return kfac


def same_on_every_rank(tensors: list[torch.Tensor], label: str) -> None:
    flat = torch.cat([t.detach().reshape(-1) for t in tensors])
    gathered = [torch.empty_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, flat)
    if not all(torch.equal(gathered[0], g) for g in gathered[1:]):
        fail(f"{label} differ between ranks")


class Branchy(nn.Module):
    """``body`` runs on every rank; ``head`` (an extra loss term) only where ``branch`` is true."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.body, self.head = nn.Linear(3, 2).double(), nn.Linear(3, 2).double()

    def forward(self, x: torch.Tensor, branch: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.body(x), self.head(x) if branch else None


def small_batch(step: int, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 * step + rank)
    return torch.randn(6, 3, generator=g, dtype=torch.float64), torch.randn(6, 2, generator=g, dtype=torch.float64)


def layer_on_some_ranks(rank: int, world: int) -> None:
    """Steps 0-1: ``head`` on rank 0 only; step 2: on no rank (its factors stay as they are)."""
    ddp = DDP(Branchy(), find_unused_parameters=True)
    reference = Branchy()
    kfac, ref_kfac = KFAC(ddp, factor_decay=0.5, kl_clip=None), KFAC(reference, factor_decay=0.5, kl_clip=None)
    for step in range(3):
        branch = step < 2
        x, y = small_batch(step, rank)
        body, head = ddp(x, branch and rank == 0)
        loss = nn.functional.mse_loss(body, y) + (0.0 if head is None else nn.functional.mse_loss(head, y))
        loss.backward()
        kfac.step()
        ddp.zero_grad()
        xs, ys = zip(*(small_batch(step, r) for r in range(world)))
        loss = nn.functional.mse_loss(reference.body(torch.cat(xs)), torch.cat(ys))  # one process, every batch
        if branch:  # ... and the head on rank 0's batch only
            loss = loss + nn.functional.mse_loss(reference.head(xs[0]), ys[0])
        loss.backward()
        ref_kfac.step()
        reference.zero_grad()
    got, want = kfac.factors(), ref_kfac.factors()
    diff = max(float((got[n][k] - want[n][k]).abs().max()) for n in ("body", "head") for k in ("A", "G"))
    if not diff < 1e-12:
        fail(f"layer run on rank 0 only: factors differ from one process on its batches by {diff:.3g}")
    same_on_every_rank([t for f in got.values() for t in (f["A"], f["G"])], "factors of a layer run on one rank")


def unequal_batches(rank: int, world: int) -> None:
    """Step 0: rank 0 sees 7 examples of 3 tokens, rank 1 sees 2 of 5; step 1: the other way round. Each step's
    factors must be those of one process on the concatenated examples, rows weighted by this step's count (not each
    rank's mean weighted equally, nor by the counts summed over steps)."""
    ddp, reference = DDP(Branchy(), find_unused_parameters=True), Branchy()
    kfac = KFAC(ddp, factor_decay=0.5, kl_clip=None)

    def data(r: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(50 + r + 10 * step)
        n, t = (7, 3) if (r + step) % 2 == 0 else (2, 5)
        return torch.randn(n, t, 3, generator=g, dtype=torch.float64), torch.randn(n, t, 2, generator=g,
                                                                                   dtype=torch.float64)

    want_a, want_g = torch.eye(4, dtype=torch.float64), torch.eye(2, dtype=torch.float64)
    for step in range(2):
        x, y = data(rank, step)
        nn.functional.mse_loss(ddp(x, False)[0], y, reduction="none").sum((1, 2)).mean().backward()
        kfac.step()  # no optimizer step: the parameters, and so the reference below, stay those of the start
        ddp.zero_grad()
        # by hand: the rows of every rank pooled; each example's own loss has gradient 2 (out - y) per token
        xs, ys = zip(*(data(r, step) for r in range(world)))
        rows_x = torch.cat([t.reshape(-1, 3) for t in xs])
        rows_x = torch.cat([rows_x, rows_x.new_ones(rows_x.shape[0], 1)], dim=1)
        want_a = 0.5 * want_a + 0.5 * rows_x.t() @ rows_x / rows_x.shape[0]
        grads = [2 * (reference.body(xr) - yr).detach() for xr, yr in zip(xs, ys)]  # per-example d loss_i / d out
        rows_g = torch.cat([g.reshape(-1, 2) for g in grads])
        want_g = 0.5 * want_g + 0.5 * rows_g.t() @ rows_g / sum(g.shape[0] for g in grads)
        got = kfac.factors()["body"]
        diff = max(float((got["A"] - want_a).abs().max()), float((got["G"] - want_g).abs().max()))
        if not diff < 1e-12:
            fail(f"unequal batches, step {step}: factors differ from the pooled examples by {diff:.3g}")


def main() -> None:
    dist.init_process_group("gloo")
    torch.set_num_threads(1)
    rank, world = dist.get_rank(), dist.get_world_size()
    ddp = DDP(model())
    kfac = train(ddp, lambda s: [batch(s, rank)])
    reference = model()
    ref_kfac = train(reference, lambda s: [batch(s, r) for r in range(world)])
    if kfac.layers != ref_kfac.layers or kfac.layers != ["0", "3"]:
        fail(f"layers {kfac.layers} vs {ref_kfac.layers}")
    diff = max(float((a - b).abs().max()) for a, b in zip(ddp.module.parameters(), reference.parameters()))
    moved = max(float((a - b).abs().max()) for a, b in zip(reference.parameters(), model().parameters()))
    if not diff < 1e-10 or not moved > 1e-3:
        fail(f"DDP vs whole-batch run: max difference {diff:.3g} (moved {moved:.3g})")
    factors = [t for f in kfac.factors().values() for t in (f["A"], f["G"])]
    fdiff = max(float((a - b).abs().max()) for a, b in
                zip(factors, [t for f in ref_kfac.factors().values() for t in (f["A"], f["G"])]))
    if not fdiff < 1e-12:
        fail(f"averaged factors differ from the whole batch's by {fdiff:.3g}")
    same_on_every_rank(list(ddp.parameters()), "parameters")
    same_on_every_rank(factors, "factors")
    layer_on_some_ranks(rank, world)
    unequal_batches(rank, world)

    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    sharded = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 2))
    fully_shard(sharded, mesh=init_device_mesh("cpu", (world,)))
    try:
        KFAC(sharded)
    except ConfigError as exc:
        if "DTensor" not in str(exc):
            fail(f"FSDP2: unclear error {exc}")
    else:
        fail("FSDP2 DTensor parameters were accepted")
    exit_cleanly()


if __name__ == "__main__":
    main()
