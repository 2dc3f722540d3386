"""Metric kernels against independent float64 references computed by hand."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from losslab.monitor import adam_tiny_v_count, grouped_sq_norms, logit_stats, mha_attention_logits
from losslab.monitor._metrics import layer_name


def test_grouped_sq_norms_by_hand():
    a = torch.tensor([3.0, 4.0])          # |a|^2 = 25
    b = torch.tensor([[1.0, 2.0], [2.0, 0.0]])  # 9
    c = torch.tensor([0.5])                # 0.25
    per_group, per_tensor = grouped_sq_norms([a, b, c], torch.tensor([1, 0, 1]), 3)
    assert per_tensor.tolist() == pytest.approx([25.0, 9.0, 0.25])
    assert per_group.tolist() == pytest.approx([9.0, 25.25, 0.0])


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(1, 5), min_size=1, max_size=6), st.integers(0, 2**31 - 1))
def test_grouped_sq_norms_matches_float64_loop(sizes, seed):
    g = torch.Generator().manual_seed(seed)
    tensors = [torch.randn(s, 3, generator=g, dtype=torch.float64) * 10 for s in sizes]
    index = torch.tensor([i % 2 for i in range(len(sizes))])
    per_group, _ = grouped_sq_norms(tensors, index, 2)
    expected = [sum(float((t ** 2).sum()) for i, t in enumerate(tensors) if i % 2 == k) for k in range(2)]
    assert per_group.dtype == torch.float64
    assert per_group.tolist() == pytest.approx(expected, rel=1e-12)


def test_layer_name():
    assert layer_name("blocks.0.attn.qkv.weight", "module") == "blocks.0.attn.qkv"
    assert layer_name("blocks.0.attn.qkv.weight", "param") == "blocks.0.attn.qkv.weight"
    assert layer_name("scale", "module") == "scale"


def test_logit_stats_by_hand():
    logits = torch.tensor([[[1.0, 2.0, -3.0], [0.0, 0.0, 0.0]]], dtype=torch.bfloat16)
    s = logit_stats(logits)
    rows = [[1.0, 2.0, -3.0], [0.0, 0.0, 0.0]]
    lse = [math.log(sum(math.exp(v) for v in r)) for r in rows]
    assert float(s["logits/max_abs"]) == 3.0
    assert float(s["logits/lse_mean"]) == pytest.approx(sum(lse) / 2, rel=1e-6)
    assert float(s["logits/z_loss"]) == pytest.approx(sum(v * v for v in lse) / 2, rel=1e-6)
    assert all(v.dtype == torch.float32 for v in s.values())


def test_logit_stats_stable_for_huge_logits():
    s = logit_stats(torch.tensor([[1e4, 0.0]]))
    assert float(s["logits/lse_mean"]) == pytest.approx(1e4)
    assert math.isfinite(float(s["logits/z_loss"]))


def test_adam_tiny_v_count_by_hand():
    p = torch.nn.Parameter(torch.zeros(4))
    opt = torch.optim.AdamW([p], lr=1e-3, betas=(0.9, 0.99), eps=1e-6)
    for _ in range(3):
        p.grad = torch.tensor([1.0, 1e-7, 0.0, 1e-5])
        opt.step()
    v = opt.state[p]["exp_avg_sq"].double()
    correction = 1 - 0.99 ** 3
    expected = int(((v / correction).sqrt() <= 1e-6).sum())   # sqrt(v_hat) <= eps, written out
    count, total = adam_tiny_v_count(opt)
    assert total == 4 and int(count) == expected == 2


def test_adam_tiny_v_count_skips_non_adam():
    p = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.SGD([p], lr=0.1, momentum=0.9)
    p.grad = torch.ones(2)
    opt.step()
    assert adam_tiny_v_count(opt) is None


@pytest.mark.parametrize("batch_first", [True, False])
def test_mha_logits_reproduce_the_attention_weights(batch_first):
    torch.manual_seed(0)
    mha = torch.nn.MultiheadAttention(8, 2, batch_first=batch_first, kdim=8, vdim=8)
    x = torch.randn(2, 5, 8) if batch_first else torch.randn(5, 2, 8)
    causal = torch.ones(5, 5, dtype=torch.bool).triu(1)
    pad = torch.tensor([[False] * 5, [False, False, False, False, True]])
    _, weights = mha(x, x, x, attn_mask=causal, key_padding_mask=pad, need_weights=True, average_attn_weights=False)
    logits = mha_attention_logits(mha, (x, x, x), {"attn_mask": causal, "key_padding_mask": pad}, None)
    assert logits.shape == (2, 2, 5, 5)
    torch.testing.assert_close(torch.softmax(logits, -1), weights, atol=1e-6, rtol=1e-5)
    # and the raw logit by hand for one entry: head 1, batch 0, query 3, key 1
    xb = (x[0] if batch_first else x[:, 0]).detach()
    w, b = mha.in_proj_weight.detach(), mha.in_proj_bias.detach()
    q = (xb[3] @ w[:8].T + b[:8])[4:]
    k = (xb[1] @ w[8:16].T + b[8:16])[4:]
    assert float(logits[0, 1, 3, 1]) == pytest.approx(float(q @ k) / 2.0, rel=1e-5)
