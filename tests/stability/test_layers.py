"""Stabilising layers against hand-computed references: gradient shrink, QK-norm, LayerNorm scaling, soft-cap, z-loss."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from losslab import ConfigError, DataError
from losslab.stability import (
    LayerNormScaling,
    QKNorm,
    ShrinkEmbeddingGradient,
    SoftCap,
    apply_layernorm_scaling,
    shrink_embedding_gradient,
    softcap,
    z_loss,
)


# -- GLM-130B embedding gradient shrink -------------------------------------------------------------------
@pytest.mark.parametrize("alpha", [0.1, 0.5, 1.0])
def test_shrink_gradient_value_unchanged_gradient_scaled(alpha):
    torch.manual_seed(0)
    emb = torch.nn.Embedding(10, 4)
    ids = torch.tensor([[1, 2, 3], [3, 4, 1]])
    w = torch.randn(4)
    ref = emb(ids)
    (ref @ w).sum().backward()
    g_ref = emb.weight.grad.clone()
    emb.zero_grad()
    out = ShrinkEmbeddingGradient(emb, alpha)(ids)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)
    (out @ w).sum().backward()
    torch.testing.assert_close(emb.weight.grad, alpha * g_ref, rtol=1e-6, atol=1e-7)


def test_shrink_bad_alpha():
    for bad in (0.0, -0.1, 1.5, float("nan")):
        with pytest.raises(ConfigError, match="alpha"):
            shrink_embedding_gradient(torch.ones(2), bad)


# -- QK-norm ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
def test_qknorm_bounds_attention_logits(norm):
    torch.manual_seed(0)
    d = 16
    qk = QKNorm(d, norm=norm, elementwise_affine=False)
    q = torch.randn(2, 3, 7, d, dtype=torch.float64) * 1e4
    k = torch.randn(2, 3, 7, d, dtype=torch.float64) * 1e4
    qn, kn = qk.double()(q, k)
    logits = qn @ kn.transpose(-1, -2) / math.sqrt(d)
    # ||LN(x)|| <= sqrt(d) so |<q,k>|/sqrt(d) <= sqrt(d); the raw logits are ~1e8
    assert logits.abs().max() <= math.sqrt(d) + 1e-9
    assert (q @ k.transpose(-1, -2) / math.sqrt(d)).abs().max() > 1e6
    # written-out reference
    if norm == "layernorm":
        ref = (q - q.mean(-1, keepdim=True)) / torch.sqrt(q.var(-1, unbiased=False, keepdim=True) + 1e-5)
    else:
        ref = q / torch.sqrt(q.pow(2).mean(-1, keepdim=True) + 1e-5)
    torch.testing.assert_close(qn, ref)


def test_qknorm_separate_learnable_gains_and_bad_input():
    qk = QKNorm(8)
    assert qk.q_norm.weight is not qk.k_norm.weight
    assert sum(p.numel() for p in qk.parameters()) == 4 * 8
    with pytest.raises(DataError, match="head_dim"):
        qk(torch.randn(2, 4), torch.randn(2, 4))
    with pytest.raises(ConfigError, match="norm"):
        QKNorm(8, norm="batchnorm")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="head_dim"):
        QKNorm(0)


@pytest.mark.parametrize("eps", [-1.0, 0.0, float("nan"), float("inf"), "1e-5", True])
@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
def test_qknorm_rejects_eps_that_is_not_finite_and_positive(norm, eps):
    with pytest.raises(ConfigError, match="eps must be a finite number > 0"):
        QKNorm(8, norm=norm, eps=eps)


@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
def test_qknorm_normalises_q_and_k_each_with_its_own_gains(norm):
    torch.manual_seed(0)
    qk = QKNorm(8, norm=norm)
    with torch.no_grad():
        for p in qk.q_norm.parameters():
            p.copy_(torch.randn_like(p))
        for p in qk.k_norm.parameters():
            p.copy_(torch.randn_like(p))
    q, k = torch.randn(2, 3, 8), torch.randn(2, 3, 8) * 50
    nq, nk = qk(q, k)

    def ref(x, mod):
        if norm == "layernorm":
            x = (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + 1e-5)
            return x * mod.weight + mod.bias
        return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * mod.weight
    torch.testing.assert_close(nq, ref(q, qk.q_norm))
    torch.testing.assert_close(nk, ref(k, qk.k_norm))


# -- LayerNorm scaling (curse of depth) -------------------------------------------------------------------
def test_layernorm_scaling_one_over_sqrt_layer_index():
    torch.manual_seed(0)
    x = torch.randn(5, 6, dtype=torch.float64)
    for ell in (1, 2, 9):
        ln = torch.nn.LayerNorm(6).double()
        out = LayerNormScaling(ln, ell)(x)
        torch.testing.assert_close(out, ln(x) / math.sqrt(ell))


def test_apply_layernorm_scaling_llama_like_blocks():
    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.input_layernorm = torch.nn.LayerNorm(4)
            self.post_attention_layernorm = torch.nn.LayerNorm(4)
            self.mlp = torch.nn.Linear(4, 4)

    blocks = torch.nn.ModuleList([Block() for _ in range(4)])
    assert apply_layernorm_scaling(blocks, ("input_layernorm", "post_attention_layernorm")) == 8
    # the authors' code: the same factor 1/sqrt(layer_index + 1) for both norms of a block
    for i, b in enumerate(blocks):
        assert b.input_layernorm.scale == b.post_attention_layernorm.scale == pytest.approx(1 / math.sqrt(i + 1))
    with pytest.raises(ConfigError, match="already wrapped"):
        apply_layernorm_scaling(blocks, ["input_layernorm"])
    with pytest.raises(ConfigError, match="no norm module 'ln_f'"):
        apply_layernorm_scaling(blocks, ["ln_f"])
    with pytest.raises(ConfigError, match="layer_index"):
        LayerNormScaling(torch.nn.LayerNorm(4), 0)


# -- soft-cap -----------------------------------------------------------------------------------------------
@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=20), st.floats(0.5, 100.0))
def test_softcap_matches_formula_and_is_bounded(xs, cap):
    x = torch.tensor(xs, dtype=torch.float64)
    y = softcap(x, cap)
    torch.testing.assert_close(y, torch.tensor([cap * math.tanh(v / cap) for v in xs], dtype=torch.float64))
    assert (y.abs() <= cap).all()
    assert torch.all(torch.diff(y[torch.argsort(x)]) >= 0)  # monotone


def test_softcap_near_identity_for_small_logits_and_bad_cap():
    x = torch.tensor([0.01, -0.02])
    torch.testing.assert_close(SoftCap(30.0)(x), x, rtol=1e-6, atol=1e-9)
    for bad in (0, -1.0, float("inf")):
        with pytest.raises(ConfigError, match="cap"):
            softcap(x, bad)


# -- z-loss -------------------------------------------------------------------------------------------------
def test_z_loss_hand_computed():
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0], [5.0, 1.0]])
    targets = torch.tensor([0, 1, -100])
    lse = [math.log(2.0), math.log(4.0)]  # log(1+1), log(3+1); the third row is ignored
    want = 1e-4 * (lse[0] ** 2 + lse[1] ** 2) / 2
    assert float(z_loss(logits, targets)) == pytest.approx(want, rel=1e-6)
    assert float(z_loss(logits, targets, reduction="sum")) == pytest.approx(2 * want, rel=1e-6)
    none = z_loss(logits, targets, coefficient=1.0, reduction="none")
    torch.testing.assert_close(none, torch.tensor([lse[0] ** 2, lse[1] ** 2, 0.0]))


def test_z_loss_ignored_rows_change_nothing_and_gradient():
    # OLMo-core's anchor: appending rows with label -100 changes neither CE nor z-loss
    torch.manual_seed(0)
    logits = torch.randn(32, 50, dtype=torch.float64) * 3
    targets = torch.randint(0, 50, (32,))
    base = z_loss(logits, targets, coefficient=1e-4)
    more = z_loss(torch.cat([logits, torch.randn(3, 50, dtype=torch.float64) * 100]),
                  torch.cat([targets, torch.full((3,), -100)]), coefficient=1e-4)
    torch.testing.assert_close(base, more)
    # d/dx [c * lse^2] = 2 c lse softmax(x) (TransformerEngine's formula), per row, / n for the mean
    x = logits.clone().requires_grad_(True)
    z_loss(x, targets, coefficient=1e-4).backward()
    lse = torch.logsumexp(logits, -1, keepdim=True)
    torch.testing.assert_close(x.grad, 2e-4 * lse * F.softmax(logits, -1) / 32)


def test_z_loss_upcasts_low_precision_and_all_ignored():
    logits = (torch.randn(4, 1000) * 20).to(torch.bfloat16)
    out = z_loss(logits)
    assert out.dtype == torch.float32
    ref = 1e-4 * torch.logsumexp(logits.double(), -1).pow(2).mean()
    assert float(out) == pytest.approx(float(ref), rel=1e-5)
    assert float(z_loss(logits, torch.full((4,), -100))) == 0.0


def test_z_loss_bad_input():
    with pytest.raises(ConfigError, match="coefficient"):
        z_loss(torch.zeros(2, 3), coefficient=-1.0)
    with pytest.raises(ConfigError, match="reduction"):
        z_loss(torch.zeros(2, 3), reduction="max")  # type: ignore[arg-type]
    with pytest.raises(DataError, match="targets shape"):
        z_loss(torch.zeros(2, 3), torch.zeros(3, dtype=torch.long))
    with pytest.raises(DataError, match="vocabulary"):
        z_loss(torch.zeros(2, 0))
