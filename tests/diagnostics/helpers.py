"""Small models, batches and dense references shared by the diagnostics tests."""

from __future__ import annotations

import torch
from torch import nn


def tiny_mlp(seed: int = 0, dtype: torch.dtype = torch.float64, width: int = 5) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, width), nn.Tanh(), nn.Linear(width, 2)).to(dtype)


def bn_net(seed: int = 0, dtype: torch.dtype = torch.float64) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Dropout(0.0), nn.Linear(4, 2)).to(dtype)


def dropout_net(seed: int = 0, dtype: torch.dtype = torch.float64) -> nn.Module:
    """An MLP with an active Dropout(0.5): in train mode its forward pass draws from the RNG."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 2)).to(dtype)


def regression_batch(seed: int = 1, n: int = 16, dtype: torch.dtype = torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, generator=g, dtype=dtype), torch.randn(n, 2, generator=g, dtype=dtype)


def mse(model, batch):
    x, y = batch
    return ((model(x) - y) ** 2).mean()


def ce(model, batch):
    x, y = batch
    return nn.functional.cross_entropy(model(x), y)


def dense_hessian(model: nn.Module, loss_fn, batch, mode: str = "eval") -> torch.Tensor:
    """Dense Hessian by torch.func.hessian over the flat parameter vector (independent of HessianOperator)."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    flat0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    was = model.training
    model.train(mode == "train")

    def f(flat):
        params, i = {}, 0
        for n, s in zip(names, shapes):
            k = int(torch.Size(s).numel())
            params[n] = flat[i:i + k].view(s)
            i += k
        bufs = {n: b.clone() for n, b in buffers.items()}

        class Wrap(nn.Module):
            def __init__(self):
                super().__init__()
                self.m = model

            def forward(self, b):
                return loss_fn(self.m, b)

        w = Wrap()
        return torch.func.functional_call(w, {**{"m." + k: v for k, v in params.items()},
                                             **{"m." + k: v for k, v in bufs.items()}}, (batch,))

    if mode == "train":  # torch.func.hessian is wrong through train-mode BatchNorm (pytorch/pytorch#196699)
        H = torch.autograd.functional.hessian(f, flat0)
    else:
        H = torch.func.hessian(f)(flat0)
    model.train(was)
    return H.to(torch.float64)


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_state(model: nn.Module, snap: dict[str, torch.Tensor]) -> None:
    now = model.state_dict()
    assert set(now) == set(snap)
    for k, v in snap.items():
        assert torch.equal(now[k], v), f"{k} changed"


def rotated(eigs: list[float], seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(len(eigs), len(eigs), generator=g, dtype=torch.float64))
    return q @ torch.diag(torch.tensor(eigs, dtype=torch.float64)) @ q.T


def wishart(n: int = 40, m: int = 60, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, m, generator=g, dtype=torch.float64)
    return x @ x.T / m
