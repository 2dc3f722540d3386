"""Overhead of losslab.monitor.TrainingMonitor on a small GPT trained on CPU (one thread).

Each configuration trains the same model for ``--steps`` steps per block; blocks of all configurations are
interleaved in a shuffled order and repeated ``--repeats`` times, and the figure reported is the median over
blocks of the median step time, as a ratio to the un-monitored loop measured in the same run.

Configurations:
  off            plain loop (forward, backward, clip_grad_norm_, AdamW step)
  default        TrainingMonitor defaults: every step loss + global/per-layer grad norms + detectors; every 10th
                 step update ratios, Adam health and logit statistics; CSV + JSONL sinks flushed every step
  default+clip   default, with monitor.clip_grad_norm_ replacing torch's clip_grad_norm_ (one pass over grads)
  loss only      monitor fed the loss alone (detectors + sinks)
  grad norms     + global and per-layer gradient norms (every step)
  update ratio   grad norms + parameter snapshot and per-layer update ratios EVERY step
  adam health    grad norms + Adam tiny-v fraction EVERY step
  logit stats    grad norms + max |logit|, log-partition and z-loss EVERY step
  attention      grad norms + max attention logit through forward hooks EVERY step
  everything     all of the above every step

Run: ``python bench/monitor_overhead.py`` (add ``--steps 40 --repeats 7`` for tighter figures).
"""

from __future__ import annotations

import argparse
import platform
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from losslab import __version__
from losslab.monitor import TrainingMonitor


class Block(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.ln1(x)
        x = x + self.attn(h, h, h, attn_mask=mask, need_weights=False)[0]
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    def __init__(self, vocab: int, width: int, heads: int, layers: int, context: int) -> None:
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, width), nn.Embedding(context, width)
        self.blocks = nn.ModuleList(Block(width, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab, bias=False)
        self.register_buffer("mask", torch.ones(context, context, dtype=torch.bool).triu(1), persistent=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        t = idx.shape[1]
        x = self.wte(idx) + self.wpe(torch.arange(t))
        for block in self.blocks:
            x = block(x, self.mask[:t, :t])
        return self.head(self.ln_f(x))


def make_monitor(name: str, model: nn.Module, opt: torch.optim.Optimizer, tmp: Path) -> TrainingMonitor | None:
    if name == "off":
        return None
    sinks = [tmp / f"{name}.csv", tmp / f"{name}.jsonl"]
    for s in sinks:
        s.unlink(missing_ok=True)
    if name in ("default", "default+clip"):
        return TrainingMonitor(model, opt, sinks=sinks)
    if name == "loss only":
        return TrainingMonitor(sinks=sinks)
    every = dict(sinks=sinks, every_n_steps=1)
    if name == "grad norms":
        return TrainingMonitor(model, track_update_ratio=False, **every)  # type: ignore[arg-type]
    if name == "update ratio":
        return TrainingMonitor(model, **every)  # type: ignore[arg-type]
    if name == "adam health":
        return TrainingMonitor(model, opt, track_update_ratio=False, **every)  # type: ignore[arg-type]
    if name in ("logit stats", "attention"):
        mon = TrainingMonitor(model, track_update_ratio=False, **every)  # type: ignore[arg-type]
        if name == "attention":
            mon.watch_attention(model)
        return mon
    if name == "everything":
        mon = TrainingMonitor(model, opt, **every)  # type: ignore[arg-type]
        mon.watch_attention(model)
        return mon
    raise ValueError(name)


CLIP_OFF: list[float] = []
FWD_OFF: list[float] = []


def block(name: str, model: nn.Module, opt: torch.optim.Optimizer, batches: list, tmp: Path
          ) -> tuple[float, float, float]:
    """Median (wall, CPU) seconds per step of one block, and mean CPU seconds the monitor adds to a step.

    The added time is the CPU time inside the monitor calls plus the time of torch's clip_grad_norm_ minus the
    clip time of the same step without monitor (measured in the "off" blocks, kept in ``CLIP_OFF``); with
    attention hooks, which run inside the forward pass, the forward's extra time over ``FWD_OFF`` too.
    """
    monitor = make_monitor(name, model, opt, tmp)
    wants_logits = name in ("default", "default+clip", "logit stats", "everything")
    fused = name == "default+clip"
    hooks = name in ("attention", "everything")
    walls, cpus, inside = [], [], []
    for x, y in batches:
        t0, c0 = time.perf_counter(), time.process_time()
        logits = model(x)
        fwd = time.process_time() - c0
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
        loss.backward()
        m0 = time.process_time()
        if fused:
            assert monitor is not None
            monitor.clip_grad_norm_(1.0)
            m1 = m1c = time.process_time()
        else:
            if monitor is not None and monitor.model is not None:
                monitor.before_step()
            m1 = time.process_time()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            m1c = time.process_time()
        clip = m1c - m1
        opt.step()
        m2 = time.process_time()
        if monitor is not None:
            monitor.step(loss=loss, logits=logits if wants_logits else None)
        if name == "off":
            CLIP_OFF.append(clip)
            FWD_OFF.append(fwd)
        added = m1 - m0 + time.process_time() - m2 + clip - statistics.fmean(CLIP_OFF)
        if hooks:  # attention hooks run inside the forward pass: count the forward's extra time
            added += fwd - statistics.median(FWD_OFF)
        inside.append(added)
        opt.zero_grad(set_to_none=True)
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    if monitor is not None:
        monitor.close()
    return statistics.median(walls), statistics.median(cpus), statistics.fmean(inside)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30, help="steps per block (default 30)")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved repeats (default 5)")
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--context", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    model = GPT(args.vocab, args.width, 4, args.layers, args.context)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4)
    n_params = sum(p.numel() for p in model.parameters())
    gen = torch.Generator().manual_seed(args.seed)
    batches = [(torch.randint(0, args.vocab, (args.batch, args.context), generator=gen),
                torch.randint(0, args.vocab, (args.batch, args.context), generator=gen)) for _ in range(args.steps)]
    names = ["off", "default", "default+clip", "loss only", "grad norms", "update ratio", "adam health", "logit stats", "attention",
             "everything"]
    results: dict[str, list[tuple[float, float, float]]] = {n: [] for n in names}
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        block("off", model, opt, batches[:5], tmp)  # warm-up (also seeds CLIP_OFF and FWD_OFF)
        for _ in range(args.repeats):
            order = names[:]
            rng.shuffle(order)
            for name in order:
                results[name].append(block(name, model, opt, batches, tmp))
    base_wall = statistics.median(r[0] for r in results["off"])
    base_cpu = statistics.median(r[1] for r in results["off"])
    print(f"losslab {__version__}, torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"1 thread; GPT {n_params / 1e6:.2f} M params ({args.layers} layers, width {args.width}, context "
          f"{args.context}, batch {args.batch}); {args.steps} steps x {args.repeats} interleaved repeats")
    print("step = median per step of a block, median over blocks; CPU = process CPU time (robust on a loaded "
          "machine); added = mean CPU time the monitor adds to a step (time inside its calls, clip difference included), as % of "
          "the un-monitored step")
    print(f"{'configuration':<14} {'CPU ms':>8} {'CPU ratio':>10} {'wall ms':>9} {'wall ratio':>11} "
          f"{'added ms':>9} {'added %':>8}")
    for name in names:
        wall = statistics.median(r[0] for r in results[name])
        cpu = statistics.median(r[1] for r in results[name])
        mon = statistics.median(r[2] for r in results[name])
        print(f"{name:<14} {1e3 * cpu:>8.2f} {cpu / base_cpu:>10.3f} {1e3 * wall:>9.2f} {wall / base_wall:>11.3f} "
              f"{1e3 * mon:>9.3f} {100 * mon / base_cpu:>7.2f}%")

if __name__ == "__main__":
    main()
