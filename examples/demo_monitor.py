"""Monitored training of a tiny GPT with an injected loss spike; writes monitor.csv and monitor.png.

Run ``python examples/demo_monitor.py --out demo-out``; ``examples/demo.py`` calls :func:`run`.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import torch
import torch.nn.functional as F
from torch import nn

from losslab.monitor import TrainingMonitor, format_summary, read_log, summary_stats
from losslab.report.monitor_plots import plot_monitor
from losslab.stability import NonFiniteDetector, ZScoreDetector

SPIKE_STEP = 150  # the step whose batch is corrupted (random tokens, logits scaled up: a loss and grad spike)


class Block(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, 4, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.shape[1]
        mask = torch.ones(t, t, dtype=torch.bool).triu(1)
        h = self.ln1(x)
        x = x + self.attn(h, h, h, attn_mask=mask, need_weights=False)[0]
        return x + self.mlp(self.ln2(x))


class TinyGPT(nn.Module):
    def __init__(self, vocab: int = 48, width: int = 32, layers: int = 2, context: int = 24) -> None:
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, width), nn.Embedding(context, width)
        self.blocks = nn.ModuleList(Block(width) for _ in range(layers))
        self.head = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, vocab, bias=False))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def run(out: Path, quiet: bool = False, steps: int = 200) -> str:
    """Train for ``steps`` steps with a monitor; return a short summary naming the detected spike step."""
    out.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is fastest and fair on a shared machine
    try:
        return _run(out, quiet, steps)
    finally:
        torch.set_num_threads(threads)


def _run(out: Path, quiet: bool, steps: int) -> str:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    vocab, context = 48, 24
    model = TinyGPT(vocab=vocab, context=context)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    log_path = out / "monitor.csv"
    log_path.unlink(missing_ok=True)
    # the default detectors need 64 steps of history; a short demo uses a 32-step window
    detectors = {m: [ZScoreDetector(window=64, threshold=6.0, min_history=32), NonFiniteDetector()]
                 for m in ("loss", "grad_norm")}
    monitor = TrainingMonitor(model, opt, sinks=[log_path], every_n_steps=10, detectors=detectors)
    monitor.watch_attention(model)
    start = time.perf_counter()
    with monitor:
        for step in range(1, steps + 1):
            first = torch.randint(0, vocab, (16, 1), generator=gen)
            seq = (first * 5 + torch.arange(context + 1)) % vocab  # learnable: next = current + 1
            x, y = seq[:, :-1], seq[:, 1:]
            if step == SPIKE_STEP:
                y = torch.randint(0, vocab, y.shape, generator=gen)  # corrupted labels
            logits = model(x)
            scale = 8.0 if step == SPIKE_STEP else 1.0
            loss = F.cross_entropy(scale * logits.reshape(-1, vocab), y.reshape(-1))
            loss.backward()
            with monitor.stepping(loss=loss, logits=logits):
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
            opt.zero_grad(set_to_none=True)
    seconds = time.perf_counter() - start
    log = read_log(log_path)
    fig = plot_monitor(log.columns, log.events, title=f"monitored tiny GPT: spike injected at step {SPIKE_STEP}")
    fig.savefig(out / "monitor.png", dpi=110)
    spikes = sorted({int(e["step"]) for e in log.events if e["metric"] in ("loss", "grad_norm")})
    text = (f"monitor: {steps} steps in {seconds:.1f} s, loss {log.columns['loss'][0]:.3f} -> "
            f"{log.columns['loss'][-1]:.3f}; spike injected at step {SPIKE_STEP}, detected at "
            f"step{'s' if len(spikes) != 1 else ''} {', '.join(map(str, spikes)) or 'none'}; "
            f"max attention logit {max(v for v in log.columns['attn/max_logit'] if math.isfinite(v)):.2f}; "
            f"log monitor.csv, plot monitor.png")
    if not quiet:
        print(format_summary(summary_stats(log.columns, log.events), log.events))
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("demo-out"))
    args = parser.parse_args()
    print(run(args.out))


if __name__ == "__main__":
    main()
