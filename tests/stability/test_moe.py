"""Auxiliary-loss-free MoE balancing: the sign rule, bias used for selection only, and a tiny MoE that balances."""

from __future__ import annotations

import pytest
import torch

from losslab import ConfigError, DataError
from losslab.stability import AuxLossFreeRouter, aux_free_bias_update, max_violation


def test_sign_update_hand_computed():
    bias = torch.tensor([0.5, 0.0, -0.2, 0.1])
    load = torch.tensor([10.0, 2.0, 4.0, 4.0])  # mean 5
    new = aux_free_bias_update(bias, load, 0.01)
    torch.testing.assert_close(new, torch.tensor([0.49, 0.01, -0.19, 0.11]))
    assert not new.requires_grad
    torch.testing.assert_close(aux_free_bias_update(bias, torch.full((4,), 3.0), 0.01), bias)  # balanced: no change


def test_bias_selects_but_does_not_weight():
    torch.manual_seed(0)
    router = AuxLossFreeRouter(dim=4, n_experts=6, top_k=2)
    x = torch.randn(32, 4)
    router.expert_bias.copy_(torch.tensor([5.0, 5.0, 0.0, 0.0, 0.0, 0.0]))  # forces experts 0 and 1
    w, idx = router(x)
    assert torch.equal(idx.sort(-1).values, torch.tensor([[0, 1]]).expand(32, 2))
    scores = torch.sigmoid(x @ router.gate.weight.T)
    raw = scores.gather(-1, idx)
    torch.testing.assert_close(w, raw / raw.sum(-1, keepdim=True))  # raw scores, no bias in the weights
    w.sum().backward()
    assert router.gate.weight.grad is not None
    assert not router.expert_bias.requires_grad and "expert_bias" not in dict(router.named_parameters())
    assert router.load.tolist() == [32.0, 32.0, 0.0, 0.0, 0.0, 0.0]
    used = router.update_bias()
    assert used.sum() == 64 and router.load.sum() == 0
    router.eval()
    router(x)
    assert router.load.sum() == 0  # no load accounting in eval mode


def test_softmax_scores_option():
    torch.manual_seed(0)
    router = AuxLossFreeRouter(dim=4, n_experts=5, top_k=1, score_fn="softmax", normalize=False)
    x = torch.randn(8, 4)
    w, idx = router(x)
    probs = torch.softmax(x @ router.gate.weight.T, -1)
    torch.testing.assert_close(w, probs.gather(-1, idx))
    torch.testing.assert_close(idx.squeeze(-1), probs.argmax(-1))


class TinyMoE(torch.nn.Module):
    """Top-k MoE of linear experts (dense compute: every expert runs, the router picks and weights)."""

    def __init__(self, dim=8, n_experts=8, top_k=2, update_rate=1e-2):
        super().__init__()
        self.router = AuxLossFreeRouter(dim, n_experts, top_k, update_rate=update_rate)
        self.weight = torch.nn.Parameter(torch.randn(n_experts, dim, dim) / dim**0.5)

    def forward(self, x):
        w, idx = self.router(x)
        all_out = torch.einsum("td,edf->tef", x, self.weight)  # (tokens, experts, dim)
        picked = all_out.gather(1, idx[..., None].expand(-1, -1, x.shape[-1]))  # (tokens, k, dim)
        return (w[..., None] * picked).sum(1)


def _train_tiny_moe(update_bias: bool, steps=200):
    torch.manual_seed(0)
    dim = 8
    model = TinyMoE(dim)
    offset = torch.randn(dim)
    with torch.no_grad():  # a skewed router: experts 0 and 1 win for almost every token at init
        model.router.gate.weight[0] = 2 * offset
        model.router.gate.weight[1] = 1.5 * offset
    target = torch.randn(dim, dim) / dim**0.5
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(1)
    vios, total = [], torch.zeros(8)
    for step in range(steps):
        x = torch.randn(256, dim, generator=g) + offset
        loss = ((model(x) - x @ target) ** 2).mean()  # no auxiliary balance loss anywhere
        opt.zero_grad()
        loss.backward()
        opt.step()
        load = model.router.update_bias() if update_bias else model.router.load.clone()
        model.router.load.zero_()
        if step >= steps - 50:
            vios.append(max_violation(load))
            total += load
    return sum(vios) / len(vios), total


@pytest.mark.slow
def test_tiny_moe_balances_without_auxiliary_loss(one_thread):
    """Same data, seed and model, no auxiliary loss: only the bias update differs. Loads over the last 50 steps."""
    vio_plain, load_plain = _train_tiny_moe(update_bias=False)
    vio_bias, load_bias = _train_tiny_moe(update_bias=True)
    ratio = lambda load: float(load.max() / load.min().clamp(min=1))  # noqa: E731
    assert vio_plain > 1.5 and ratio(load_plain) > 10  # without the bias: a few experts take everything
    # with it: per-batch MaxVio near the sampling-noise floor, and near-uniform load over the window
    # (per batch, the fixed-size sign step makes the bias oscillate around the balance point)
    assert vio_bias < vio_plain / 4 and max_violation(load_bias) < 0.15 and ratio(load_bias) < 1.3


def test_max_violation_and_bad_input():
    assert max_violation(torch.tensor([4.0, 4.0, 4.0])) == 0.0
    with pytest.raises(DataError, match="all zero"):
        max_violation(torch.zeros(3))
    with pytest.raises(ConfigError, match="update_rate"):
        aux_free_bias_update(torch.zeros(2), torch.ones(2), 0.0)
    with pytest.raises(DataError, match="shape"):
        aux_free_bias_update(torch.zeros(2), torch.ones(3))
    for kwargs, name in [({"top_k": 9}, "top_k"), ({"n_experts": 0}, "n_experts"),
                         ({"score_fn": "relu"}, "score_fn"), ({"update_rate": -1.0}, "update_rate")]:
        with pytest.raises(ConfigError, match=name):
            AuxLossFreeRouter(**{"dim": 4, "n_experts": 8, **kwargs})


@pytest.mark.parametrize("cast", [lambda r: r.half(), lambda r: r.to(torch.bfloat16), lambda r: r.double()])
def test_bias_and_load_stay_float32_and_int64_whatever_the_model_dtype(cast):
    torch.manual_seed(0)
    router = cast(AuxLossFreeRouter(16, 4, 2, update_rate=1e-3))
    dtype = router.gate.weight.dtype
    assert router.expert_bias.dtype == torch.float32 and router.load.dtype == torch.int64
    with torch.no_grad():
        router.expert_bias.fill_(0.5)
    for _ in range(40):  # 40 * 4096 * 2 = 327680 routed slots, far beyond float16's 65504
        router(torch.randn(4096, 16, dtype=dtype))
    assert int(router.load.sum()) == 40 * 4096 * 2
    load = router.load.clone()
    used = router.update_bias()
    assert torch.equal(used, load)
    expected = torch.full((4,), 0.5) + 1e-3 * torch.sign(load.double().mean() - load.double()).float()
    assert torch.equal(router.expert_bias, expected)  # the +-u step is exact in float32, not rounded to 0 or 2^-9
    w, idx = router(torch.randn(8, 16, dtype=dtype))
    assert w.dtype == dtype and idx.dtype == torch.int64


def test_nan_load_raises_instead_of_skipping_the_update():
    router = AuxLossFreeRouter(4, 3, 1)
    router.load = torch.tensor([1.0, float("nan"), 2.0])
    with pytest.raises(DataError, match="NaN/Inf"):
        router.update_bias()
    assert torch.equal(router.expert_bias, torch.zeros(3))
    with pytest.raises(DataError, match="NaN/Inf"):
        aux_free_bias_update(torch.zeros(2), torch.tensor([1.0, float("nan")]))
    with pytest.raises(DataError, match="NaN/Inf"):
        max_violation(torch.tensor([1.0, float("nan")]))
