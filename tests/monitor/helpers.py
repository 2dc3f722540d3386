"""Tiny models shared by the monitor tests (importable by subprocess workers too)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class TinyAttention(nn.Module):
    """Causal self-attention with a fused qkv projection (the nanoGPT layout)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def qk(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, t, c = x.shape
        q, k, v = self.qkv(x).split(c, dim=-1)
        shape = (b, t, self.heads, c // self.heads)
        return (q.reshape(shape).transpose(1, 2), k.reshape(shape).transpose(1, 2), v.reshape(shape).transpose(1, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qk(x)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(x.shape))


def tiny_attention_logits(module: TinyAttention, args, kwargs, output) -> torch.Tensor:
    """logits_fn for TinyAttention: causal q.k/sqrt(d) with masked entries at -inf."""
    with torch.no_grad():
        q, k, _ = module.qk(args[0])
        logits = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
        t = logits.shape[-1]
        return logits.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), -math.inf)


class TinyGPT(nn.Module):
    """A small decoder-only transformer (pre-LN), enough to exercise every monitor metric."""

    def __init__(self, vocab: int = 64, width: int = 32, heads: int = 4, layers: int = 2, context: int = 32) -> None:
        super().__init__()
        self.wte = nn.Embedding(vocab, width)
        self.wpe = nn.Embedding(context, width)
        self.blocks = nn.ModuleList()
        for _ in range(layers):
            block = nn.Module()
            block.ln1 = nn.LayerNorm(width)
            block.attn = TinyAttention(width, heads)
            block.ln2 = nn.LayerNorm(width)
            block.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))
            self.blocks.append(block)
        self.ln_f = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab, bias=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        t = idx.shape[1]
        x = self.wte(idx) + self.wpe(torch.arange(t, device=idx.device))
        for block in self.blocks:
            x = x + block.attn(block.ln1(x))
            x = x + block.mlp(block.ln2(x))
        return self.head(self.ln_f(x))


def lm_batch(generator: torch.Generator, batch: int = 8, context: int = 32, vocab: int = 64
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of a learnable sequence task: next token = (token + 1) mod vocab, with noise tokens."""
    start = torch.randint(0, vocab, (batch, 1), generator=generator)
    seq = (start + torch.arange(context + 1)) % vocab
    return seq[:, :-1], seq[:, 1:]


def train_steps(model: nn.Module, opt: torch.optim.Optimizer, monitor, steps: int, seed: int = 0,
                spike_at: int | None = None, start: int = 1) -> None:
    """A plain monitored loop; ``spike_at`` multiplies that step's loss by 50 (an injected loss spike)."""
    g = torch.Generator().manual_seed(seed)
    for step in range(start, start + steps):
        x, y = lm_batch(g)
        logits = model(x)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        if spike_at == step:
            loss = loss * 50
        loss.backward()
        with monitor.stepping(loss=loss, logits=logits):
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
        opt.zero_grad(set_to_none=True)
