"""Time of the MoE auxiliary losses against the formulas as Megatron-LM and Hugging Face Mixtral write them.

Forward + backward (the gradient reaches the router probabilities or logits) on random top-k routing, CPU, one
thread by default. Peers, written out here as their code computes them (neither is a dependency):

- Megatron-LM ``switch_load_balancing_loss_func``: a boolean routing map ``(T, E)`` from the top-k indices, its
  column sums as the counts, ``sum(probs.sum(0) * counts) * E * alpha / (k * T^2)``;
- Hugging Face Mixtral ``load_balancing_loss_func``: ``one_hot(indices, E)`` of shape ``(T, k, E)``, its mean over
  tokens times the mean probabilities, ``* E`` (k times losslab's value, rescaled here so the values agree);
- the router z-loss as ``logsumexp(logits).square().mean() * alpha`` (Megatron-LM ``z_loss_func``).

Each row checks that the values agree, then reports the median time of ``--repeats`` interleaved runs and the
ratio peer / losslab (> 1: losslab is faster).

Usage: python bench/moe_losses.py [--repeats 21] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch

from losslab.stability import load_balancing_loss, router_z_loss


def megatron_balance(probs: torch.Tensor, indices: torch.Tensor, alpha: float) -> torch.Tensor:
    n_tokens, n_experts = probs.shape
    k = indices.shape[-1]
    routing_map = torch.zeros(n_tokens, n_experts, dtype=torch.bool).scatter(1, indices, True)
    counts = routing_map.sum(dim=0)
    return torch.sum(probs.sum(dim=0) * counts) * (n_experts * alpha / (k * n_tokens * n_tokens))


def mixtral_balance(probs: torch.Tensor, indices: torch.Tensor, alpha: float) -> torch.Tensor:
    n_experts, k = probs.shape[-1], indices.shape[-1]
    expert_mask = torch.nn.functional.one_hot(indices, n_experts)
    tokens_per_expert = expert_mask.float().mean(dim=0)
    return alpha * n_experts * torch.sum(tokens_per_expert * probs.mean(dim=0).unsqueeze(0)) / k


def naive_z(logits: torch.Tensor, alpha: float) -> torch.Tensor:
    return torch.logsumexp(logits, dim=-1).square().mean() * alpha


def timed(fn, leaf: torch.Tensor) -> float:
    leaf.grad = None
    start = time.perf_counter()
    fn().backward()
    return time.perf_counter() - start


def medians(variants: dict, leaf: torch.Tensor, repeats: int) -> dict[str, float] | None:
    """Median milliseconds of each variant (interleaved), or None if their values disagree."""
    with torch.no_grad():
        values = {name: float(fn()) for name, fn in variants.items()}
    if max(values.values()) - min(values.values()) > 1e-6 * abs(values["losslab"]):
        print(f"values disagree: {values}", file=sys.stderr)
        return None
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            times[name].append(timed(fn, leaf))
    return {name: 1e3 * statistics.median(t) for name, t in times.items()}


def bench_size(n_tokens: int, n_experts: int, k: int, repeats: int, gen: torch.Generator) -> bool:
    logits = torch.randn(n_tokens, n_experts, generator=gen)
    indices = logits.topk(k).indices
    leaf = logits.clone().requires_grad_(True)
    med = medians({"losslab": lambda: load_balancing_loss(torch.softmax(leaf, -1), indices),
                   "megatron": lambda: megatron_balance(torch.softmax(leaf, -1), indices, 1e-2),
                   "mixtral": lambda: mixtral_balance(torch.softmax(leaf, -1), indices, 1e-2)}, leaf, repeats)
    zm = medians({"losslab": lambda: router_z_loss(leaf), "megatron": lambda: naive_z(leaf, 1e-3)}, leaf, repeats)
    if med is None or zm is None:
        return False
    print(f"{'balance':8s} {n_tokens:7d} {n_experts:4d} {k:3d} {med['losslab']:11.3f} {med['megatron']:12.3f} "
          f"{med['megatron'] / med['losslab']:6.2f} {med['mixtral']:11.3f} {med['mixtral'] / med['losslab']:6.2f}")
    print(f"{'z-loss':8s} {n_tokens:7d} {n_experts:4d} {'':>3s} {zm['losslab']:11.3f} {zm['megatron']:12.3f} "
          f"{zm['megatron'] / zm['losslab']:6.2f}")
    return True


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=21)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s); median of {args.repeats} forward+backward runs")
    print(f"{'loss':8s} {'tokens':>7s} {'E':>4s} {'k':>3s} {'losslab ms':>11s} {'megatron ms':>12s} {'ratio':>6s} "
          f"{'mixtral ms':>11s} {'ratio':>6s}")
    gen = torch.Generator().manual_seed(0)
    for n_tokens, n_experts, k in [(4096, 8, 2), (16384, 64, 8), (65536, 64, 8), (65536, 256, 8)]:
        if not bench_size(n_tokens, n_experts, k, args.repeats, gen):
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
