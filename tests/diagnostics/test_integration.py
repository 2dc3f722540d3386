"""End-to-end behaviour: gradient descent settles at the edge of stability; the CUDA path matches the CPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from losslab.diagnostics import HessianOperator, SharpnessTracker, lanczos, random_direction


@pytest.mark.slow
def test_full_batch_gd_sharpens_to_the_edge_of_stability():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(200, 5, generator=g)
    y = (x @ torch.randn(5, 1, generator=g)).tanh()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 1))

    def loss_fn(m, b):
        return ((m(b[0]) - b[1]) ** 2).mean()

    lr = 0.5
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    tracker = SharpnessTracker(loss_fn, (x, y), every=15, optimizer=opt, seed=0)
    for step in range(300):
        opt.zero_grad()
        loss_fn(model, (x, y)).backward()
        opt.step()
        tracker(model, step)
    ratios = np.array([r.ratio for r in tracker.records])
    assert ratios.min() < 0.9  # below the edge early on (progressive sharpening follows)
    late = ratios[-6:]
    assert np.all((late > 0.97) & (late < 1.1)), late  # then it hovers at 2 / lr (Cohen et al. 2021)
    assert tracker.edge_crossings() and tracker.records[-1].threshold == pytest.approx(2 / lr)


@settings(max_examples=15, deadline=None)
@given(out_ch=st.integers(1, 5), in_ch=st.integers(1, 4), k=st.integers(1, 3), seed=st.integers(0, 10_000))
def test_filter_normalisation_property(out_ch, in_ch, k, seed):
    conv = nn.Conv2d(in_ch, out_ch, k)
    d = random_direction(conv, seed=seed)
    w = conv.weight.detach()
    np.testing.assert_allclose(d["weight"].reshape(out_ch, -1).norm(dim=1), w.reshape(out_ch, -1).norm(dim=1),
                               rtol=1e-5)
    assert torch.equal(d["bias"], torch.zeros_like(conv.bias))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_operator_matches_cpu():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 3)).double()
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(32, 4, generator=g, dtype=torch.float64), torch.randint(0, 3, (32,), generator=g)

    def loss_fn(m, b):
        return nn.functional.cross_entropy(m(b[0]), b[1])

    cpu = lanczos(HessianOperator(model, loss_fn, (x, y)), 3, tol=1e-10, seed=0).eigenvalues
    model_gpu = model.cuda()
    gpu_op = HessianOperator(model_gpu, loss_fn, (x.cuda(), y.cuda()))
    gpu = lanczos(gpu_op, 3, tol=1e-10, seed=0).eigenvalues
    np.testing.assert_allclose(gpu.cpu().numpy(), cpu.numpy(), rtol=1e-8)
    d = random_direction(model_gpu, seed=0)
    assert all(t.is_cuda for t in d.values())
