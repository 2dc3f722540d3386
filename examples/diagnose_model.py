"""A model file for ``losslab diagnose``: how to build the model, the batch and the loss.

The CLI imports this file and calls three functions:

- ``build_model()`` returns the architecture (its initial weights are replaced by the checkpoint);
- ``batch()`` returns what the loss is evaluated on (here a fixed, seeded synthetic classification set);
- ``loss_fn(model, batch)`` returns a scalar loss (pick another function with ``--loss-fn FILE:NAME``).

Run this file to train the model briefly and write ``mlp.pt``, then for example:

    python examples/diagnose_model.py
    losslab diagnose hessian   --checkpoint mlp.pt --loss-fn examples/diagnose_model.py --out diag
    losslab diagnose landscape --checkpoint mlp.pt --loss-fn examples/diagnose_model.py --out diag --steps 31
"""

import torch
from torch import nn


def build_model() -> nn.Module:
    """A small MLP with BatchNorm (its running statistics are never changed by the diagnostics)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(10, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 3))


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    """512 seeded samples of a 3-class problem with a linear decision rule."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(512, 10, generator=g)
    w = torch.randn(10, 3, generator=g)
    return x, (x @ w).argmax(dim=1)


def loss_fn(model: nn.Module, b: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Mean cross-entropy of the batch."""
    x, y = b
    return nn.functional.cross_entropy(model(x), y)


if __name__ == "__main__":
    model, data = build_model(), batch()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(200):
        opt.zero_grad()
        loss = loss_fn(model, data)
        loss.backward()
        opt.step()
    torch.save(model.state_dict(), "mlp.pt")
    print(f"final loss {loss.item():.4f}; wrote mlp.pt")
