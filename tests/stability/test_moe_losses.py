"""MoE router auxiliary losses against the papers' formulas written out in float64, and a 2-rank global-batch run."""

from __future__ import annotations

import math

import pytest
import torch

from losslab import ConfigError, DataError
from losslab.stability import load_balancing_loss, max_violation, router_z_loss
from tests.conftest import run_torchrun


def switch_reference(probs, indices, mask=None):
    """Switch Transformer eq. 4-6 with top-k counts normalised by k*T, one token at a time in float64."""
    probs, indices = probs.double().reshape(-1, probs.shape[-1]), indices.reshape(-1, indices.shape[-1])
    mask = torch.ones(probs.shape[0], dtype=torch.bool) if mask is None else mask.reshape(-1)
    n_experts, k = probs.shape[1], indices.shape[1]
    tokens = [t for t in range(probs.shape[0]) if mask[t]]
    total = 0.0
    for i in range(n_experts):
        f_i = sum(int(i in indices[t].tolist()) for t in tokens) / (k * len(tokens))
        p_i = sum(float(probs[t, i]) for t in tokens) / len(tokens)
        total += f_i * p_i
    return n_experts * total


def test_hand_computed_top1_and_its_gradient():
    probs = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]], requires_grad=True)
    loss = load_balancing_loss(probs, probs.topk(1).indices, coefficient=1.0)
    assert loss.item() == pytest.approx(2 * (0.75 * 0.65 + 0.25 * 0.35))  # f = (3/4, 1/4), P = (0.65, 0.35)
    loss.backward()
    # dL/dp_ti = alpha * E * f_i / T
    torch.testing.assert_close(probs.grad, torch.tensor([[0.375, 0.125]]).expand(4, 2))


@pytest.mark.parametrize("k", [1, 2, 3])
def test_matches_reference_with_mask(k):
    gen = torch.Generator().manual_seed(k)
    probs = torch.softmax(torch.randn(3, 7, 6, generator=gen, dtype=torch.float64), -1)
    indices = probs.topk(k).indices
    mask = torch.rand(3, 7, generator=gen) > 0.3
    got = load_balancing_loss(probs, indices, coefficient=0.5, token_mask=mask)
    assert got.dtype == torch.float64
    assert got.item() == pytest.approx(0.5 * switch_reference(probs, indices, mask), rel=1e-12)


def test_megatron_and_mixtral_conventions():
    gen = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(40, 8, generator=gen, dtype=torch.float64), -1)
    k, n_tokens, n_experts = 2, 40, 8
    indices = probs.topk(k).indices
    tokens_per_expert = torch.bincount(indices.reshape(-1), minlength=n_experts).double()
    # Megatron-LM switch_load_balancing_loss_func: sum(probs.sum(0) * counts) * E * alpha / (k * T * T)
    megatron = torch.sum(probs.sum(0) * tokens_per_expert) * n_experts * 1e-2 / (k * n_tokens * n_tokens)
    ours = load_balancing_loss(probs, indices)
    torch.testing.assert_close(ours, megatron)
    # Hugging Face Mixtral load_balancing_loss_func: E * sum(mean(one_hot(topk), 0) * mean(probs, 0)) = k * ours
    one_hot = torch.nn.functional.one_hot(indices, n_experts).double()
    mixtral = n_experts * torch.sum(one_hot.mean(0) * probs.mean(0).unsqueeze(0))
    torch.testing.assert_close(load_balancing_loss(probs, indices, coefficient=1.0) * k, mixtral)


def test_balanced_is_alpha_and_collapsed_is_alpha_e_over_k():
    n_experts, k = 8, 2
    uniform = torch.full((16, n_experts), 1 / n_experts)
    spread = torch.arange(16 * k).reshape(16, k) % n_experts  # every expert chosen equally often
    assert load_balancing_loss(uniform, spread, coefficient=0.01).item() == pytest.approx(0.01)
    collapsed = torch.zeros(16, n_experts)
    collapsed[:, :k] = 1 / k
    same = torch.tensor([[0, 1]]).expand(16, k)
    assert load_balancing_loss(collapsed, same, coefficient=0.01).item() == pytest.approx(0.01 * n_experts / k)


def test_per_sequence_is_deepseek_v3_sequence_wise_loss():
    gen = torch.Generator().manual_seed(3)
    scores = torch.sigmoid(torch.randn(4, 9, 6, generator=gen, dtype=torch.float64))  # sigmoid affinities
    indices = scores.topk(2).indices
    normalised = scores / scores.sum(-1, keepdim=True)  # s' of DeepSeek-V3 eq. 19
    mask = torch.ones(4, 9, dtype=torch.bool)
    mask[1, 5:] = False
    mask[2] = False  # a sequence of padding only is left out of the average
    per_seq = [switch_reference(normalised[b], indices[b], mask[b]) for b in (0, 1, 3)]
    got = load_balancing_loss(normalised, indices, coefficient=1e-4, token_mask=mask, per_sequence=True)
    assert got.item() == pytest.approx(1e-4 * sum(per_seq) / 3, rel=1e-12)
    batch = load_balancing_loss(normalised, indices, coefficient=1e-4, token_mask=mask)
    assert batch.item() != pytest.approx(got.item(), rel=1e-6)  # a different loss, not a rename


def test_nan_padding_reaches_neither_loss_nor_gradient():
    logits = torch.randn(2, 5, 4)
    logits[1, 3:] = float("nan")
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[1, 3:] = False
    probs = torch.softmax(logits, -1).requires_grad_(True)
    logits.requires_grad_(True)
    indices = torch.nan_to_num(probs.detach()).topk(1).indices
    balance = load_balancing_loss(probs, indices, token_mask=mask)
    z = router_z_loss(logits, token_mask=mask)
    (balance + z).backward()
    for value, grad in ((balance, probs.grad), (z, logits.grad)):
        assert torch.isfinite(value) and torch.isfinite(grad).all()
        assert torch.count_nonzero(grad[1, 3:]) == 0


def test_no_token_counts_gives_zero_with_a_graph():
    probs = torch.full((3, 4), 0.25, requires_grad=True)
    out = load_balancing_loss(probs, probs.topk(1).indices, token_mask=torch.zeros(3, dtype=torch.bool))
    assert out.item() == 0.0 and out.requires_grad
    assert router_z_loss(torch.zeros(3, 4), token_mask=torch.zeros(3, dtype=torch.bool)).item() == 0.0


def test_minimising_it_balances_a_collapsed_router():
    torch.manual_seed(0)
    n_experts = 4
    gate = torch.nn.Linear(8, n_experts)
    with torch.no_grad():
        gate.bias.copy_(torch.tensor([3.0, 0.0, 0.0, 0.0]))  # nearly every token prefers expert 0
    x = torch.randn(256, 8)
    opt = torch.optim.SGD(gate.parameters(), lr=1.0)

    def load() -> torch.Tensor:
        return torch.bincount(gate(x).argmax(-1), minlength=n_experts).float()

    before = max_violation(load())
    for _ in range(300):
        probs = torch.softmax(gate(x), -1)
        opt.zero_grad()
        load_balancing_loss(probs, probs.topk(1).indices, coefficient=1.0).backward()
        opt.step()
    after = max_violation(load())
    assert before > 2.5 and after < 0.5


def test_router_z_loss_formula_gradient_and_precision():
    gen = torch.Generator().manual_seed(1)
    logits = (5 * torch.randn(6, 5, generator=gen, dtype=torch.float64)).requires_grad_(True)
    lse = torch.logsumexp(logits.detach(), -1)
    loss = router_z_loss(logits)
    assert loss.item() == pytest.approx(1e-3 * float((lse**2).mean()), rel=1e-12)
    loss.backward()
    # d/dx [alpha * mean lse^2] = 2 * alpha * lse * softmax(x) / T
    torch.testing.assert_close(logits.grad, 2e-3 * lse[:, None] * torch.softmax(logits.detach(), -1) / 6)
    low = router_z_loss(logits.detach().to(torch.bfloat16), coefficient=1.0)
    assert low.dtype == torch.float32
    ref = float((torch.logsumexp(logits.detach().to(torch.bfloat16).double(), -1) ** 2).mean())
    assert low.item() == pytest.approx(ref, rel=1e-6)
    assert router_z_loss(torch.zeros(3, 4), coefficient=1.0).item() == pytest.approx(math.log(4) ** 2)


@pytest.mark.parametrize("call, match", [
    (lambda: load_balancing_loss(torch.rand(4, 3), torch.zeros(4, 1), coefficient=1.0), "integer tensor"),
    (lambda: load_balancing_loss(torch.rand(4, 3), torch.zeros(5, 1, dtype=torch.long)), "k in place"),
    (lambda: load_balancing_loss(torch.rand(4, 3), torch.zeros(4, 4, dtype=torch.long)), "1 <= k <= n_experts"),
    (lambda: load_balancing_loss(torch.rand(4, 3), torch.full((4, 1), 3)), r"\[0, 3\)"),
    (lambda: load_balancing_loss(torch.rand(4, 3), torch.full((4, 1), -1)), r"\[0, 3\)"),
    (lambda: load_balancing_loss(torch.rand(4, 3), torch.zeros(4, 1, dtype=torch.long),
                                 token_mask=torch.ones(3, dtype=torch.bool)), "token_mask shape"),
    (lambda: load_balancing_loss(torch.rand(4, 3), torch.zeros(4, 1, dtype=torch.long), per_sequence=True),
     "seq, n_experts"),
    (lambda: load_balancing_loss(torch.ones(4, 3, dtype=torch.long), torch.zeros(4, 1, dtype=torch.long)),
     "floating-point"),
    (lambda: load_balancing_loss(torch.rand(4, 3), torch.zeros(4, 1, dtype=torch.long, device="meta")),
     "move both to one device"),
    (lambda: router_z_loss(torch.zeros(4, 0)), "n_experts >= 1"),
    (lambda: router_z_loss(torch.zeros(4, 3), token_mask=torch.ones(3, dtype=torch.bool)), "token_mask shape"),
])
def test_bad_inputs_are_data_errors(call, match):
    with pytest.raises(DataError, match=match):
        call()


@pytest.mark.parametrize("call", [
    lambda: load_balancing_loss(torch.rand(4, 3), torch.zeros(4, 1, dtype=torch.long), coefficient=-1.0),
    lambda: load_balancing_loss(torch.rand(4, 3), torch.zeros(4, 1, dtype=torch.long), coefficient=float("nan")),
    lambda: load_balancing_loss(torch.rand(4, 3), torch.zeros(4, 1, dtype=torch.long), group=object()),
    lambda: router_z_loss(torch.zeros(4, 3), coefficient=True),
])
def test_bad_settings_are_config_errors(call):
    with pytest.raises(ConfigError):
        call()


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.xdist_group("torchrun")
def test_global_batch_counts_over_two_ranks():
    out = run_torchrun("-m", "tests.stability._moe_ddp_worker", timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu_in_bfloat16_inputs():
    gen = torch.Generator().manual_seed(5)
    logits = torch.randn(2, 64, 16, generator=gen).to(torch.bfloat16)
    mask = torch.rand(2, 64, generator=gen) > 0.2
    probs = torch.softmax(logits.float(), -1).to(torch.bfloat16)
    indices = probs.float().topk(2).indices
    for per_sequence in (False, True):
        cpu = load_balancing_loss(probs, indices, token_mask=mask, per_sequence=per_sequence)
        gpu = load_balancing_loss(probs.cuda(), indices.cuda(), token_mask=mask.cuda(), per_sequence=per_sequence)
        assert gpu.dtype == torch.float32 and gpu.is_cuda
        torch.testing.assert_close(gpu.cpu(), cpu)
    torch.testing.assert_close(router_z_loss(logits.cuda(), token_mask=mask.cuda()).cpu(),
                               router_z_loss(logits, token_mask=mask))


def test_masked_router_z_loss_is_the_mean_over_the_real_tokens():
    logits = torch.tensor([[[0.0, 0, 0, 0], [2, 0, 0, 0], [9, 9, 9, 9]]])
    mask = torch.tensor([[True, True, False]])
    expected = (math.log(4) ** 2 + math.log(math.exp(2) + 3) ** 2) / 2
    assert router_z_loss(logits, coefficient=1.0, token_mask=mask).item() == pytest.approx(expected, rel=1e-6)
    torch.testing.assert_close(router_z_loss(logits, coefficient=1.0, token_mask=mask),
                               router_z_loss(logits[mask], coefficient=1.0))
