"""LR sensitivity of a tiny transformer, with and without qk-layernorm and z-loss (Wortsman et al. 2023 on a CPU).

A 2-layer pre-LN decoder (no biases) learns a synthetic low-entropy Markov language. For each setting the same
model is trained at every learning rate of a log grid with AdamW (beta2 0.95, warm-up then cosine decay); the
final losses give the LR sensitivity E_lr[min(loss, loss_at_init) - best loss]. The runs go to a local process
pool through `losslab.stability.lr_sweep`; pass another `concurrent.futures.Executor` to run them elsewhere.

    python examples/lr_sensitivity_tiny_transformer.py --out lr-sweep-out      # ~1-2 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from losslab.stability import QKNorm, lr_sweep, z_loss

VOCAB, SEQ, DIM, HEADS, LAYERS = 64, 24, 32, 2, 2
STEPS, BATCH, WARMUP = 120, 16, 12


class Block(nn.Module):
    def __init__(self, qk_norm: bool) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(DIM, bias=False), nn.LayerNorm(DIM, bias=False)
        self.qkv, self.proj = nn.Linear(DIM, 3 * DIM, bias=False), nn.Linear(DIM, DIM, bias=False)
        self.mlp = nn.Sequential(nn.Linear(DIM, 4 * DIM, bias=False), nn.GELU(), nn.Linear(4 * DIM, DIM, bias=False))
        self.qk_norm = QKNorm(DIM // HEADS) if qk_norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, HEADS, DIM // HEADS).permute(2, 0, 3, 1, 4)
        if self.qk_norm is not None:
            q, k = self.qk_norm(q, k)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, DIM))
        return x + self.mlp(self.ln2(x))


class TinyGPT(nn.Module):
    def __init__(self, qk_norm: bool) -> None:
        super().__init__()
        self.emb, self.pos = nn.Embedding(VOCAB, DIM), nn.Parameter(torch.zeros(SEQ, DIM))
        self.blocks = nn.ModuleList([Block(qk_norm) for _ in range(LAYERS)])
        self.ln_f, self.head = nn.LayerNorm(DIM, bias=False), nn.Linear(DIM, VOCAB, bias=False)
        for p in self.parameters():  # truncated normal, std 1/sqrt(fan_in) (embedding: 1/sqrt(d))
            if p.ndim == 2:
                nn.init.trunc_normal_(p, std=1 / math.sqrt(p.shape[-1] if p is not self.emb.weight else DIM))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.emb(idx) + self.pos[: idx.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


def markov_batches(seed: int) -> torch.Tensor:
    """STEPS batches of a fixed random sparse bigram language (each token has ~4 likely successors)."""
    g = torch.Generator().manual_seed(0)  # the language is the same for every run
    logits = torch.randn(VOCAB, VOCAB, generator=g) * 3.0
    probs = torch.softmax(logits, -1)
    g = torch.Generator().manual_seed(seed)
    seqs = torch.empty(STEPS * BATCH, SEQ + 1, dtype=torch.long)
    seqs[:, 0] = torch.randint(0, VOCAB, (STEPS * BATCH,), generator=g)
    for t in range(SEQ):
        seqs[:, t + 1] = torch.multinomial(probs[seqs[:, t]], 1, generator=g).squeeze(1)
    return seqs.view(STEPS, BATCH, SEQ + 1)


def warmup_cosine(step: int) -> float:
    """Linear warm-up for WARMUP steps, then cosine decay to 0 at STEPS (a multiplier of the peak LR)."""
    if step < WARMUP:
        return (step + 1) / WARMUP
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - WARMUP) / (STEPS - WARMUP))))


def train(lr: float, qk_norm: bool = False, z_loss_coef: float = 0.0, seed: int = 0) -> dict[str, float]:
    """Train TinyGPT at peak LR `lr`; return the final loss (mean of the last 10 steps) and the loss at init."""
    torch.manual_seed(seed)
    model = TinyGPT(qk_norm)
    data = markov_batches(seed)
    # weight decay independent of the LR (lambda = 1e-4 per step, times the schedule), as in the paper
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=1e-4 / lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine)
    with torch.no_grad():
        x, y = data[0, :, :-1], data[0, :, 1:]
        init_loss = float(F.cross_entropy(model(x).reshape(-1, VOCAB), y.reshape(-1)))
    losses = []
    for step in range(STEPS):
        x, y = data[step, :, :-1], data[step, :, 1:]
        logits = model(x).reshape(-1, VOCAB)
        ce = F.cross_entropy(logits, y.reshape(-1))
        loss = ce + z_loss(logits, coefficient=z_loss_coef) if z_loss_coef else ce
        if not torch.isfinite(loss):
            return {"final_loss": math.nan, "init_loss": init_loss}
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(ce.item())
    return {"final_loss": float(np.mean(losses[-10:])), "init_loss": init_loss}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("lr-sweep-out"))
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    lrs = [3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1]  # half-decade grid, as in the paper
    settings = {"baseline": {}, "qk-layernorm": {"qk_norm": True}, "z-loss 1e-4": {"z_loss_coef": 1e-4}}
    start = time.perf_counter()
    result = lr_sweep(train, lrs, settings=settings, max_workers=args.workers)
    print(result.summary())
    fig = result.plot(title=f"TinyGPT ({LAYERS} layers, d={DIM}), {STEPS} AdamW steps")
    fig.savefig(args.out / "lr_sensitivity.png", dpi=120)
    print(f"wrote {args.out / 'lr_sensitivity.png'} in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
