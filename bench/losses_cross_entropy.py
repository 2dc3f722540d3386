"""Memory and time of ``losslab.losses.linear_cross_entropy`` against the naive path, on CPU.

Naive path: ``logits = F.linear(hidden, weight)``; ``F.cross_entropy(logits, target) + z * logsumexp(logits)².mean()``;
forward + backward. Fused path: ``linear_cross_entropy(hidden, weight, target, z_loss=z, chunk_size=c)``.

Each variant runs in its own child process so that its peak resident memory (``ru_maxrss``) is its own. The child
reports: RSS after allocating the inputs (baseline), peak RSS, and the analytic size of the inputs and of the
gradients every variant must return (hidden.grad, weight.grad); "extra" = peak - baseline - gradient bytes is the
memory the loss computation itself needs. Times are the median of ``--repeats`` forward+backward passes.

Usage:
    python bench/losses_cross_entropy.py --tokens 2048 --vocab 32768 --chunks 64,128,256,512,1024     # sweep
    python bench/losses_cross_entropy.py --tokens 8192 --vocab 131072 --chunks 64 --repeats 3          # full size
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def child(args: argparse.Namespace) -> None:
    import torch
    import torch.nn.functional as F

    import losslab.losses as L

    try:  # on a shared machine, if memory runs out, this child is the first the OOM killer picks
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write("1000")
    except OSError:
        pass
    if args.mem_limit_gib > 0:  # fail cleanly (MemoryError) instead of waking the OOM killer on a shared machine
        lim = int(args.mem_limit_gib * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (lim, lim))
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    n, h, v = args.tokens, args.hidden, args.vocab
    hidden = (torch.randn(n, h, generator=g) * 0.5).requires_grad_(True)
    weight = (torch.randn(v, h, generator=g) / h**0.5).requires_grad_(True)
    target = torch.randint(0, v, (n,), generator=g)
    target[::17] = -100
    input_bytes = hidden.nbytes + weight.nbytes + target.nbytes
    grad_bytes = hidden.nbytes + weight.nbytes
    baseline = _rss_bytes()
    times, losses = [], []
    for _ in range(args.repeats):
        hidden.grad = weight.grad = None
        t0 = time.perf_counter()
        if args.variant == "naive":
            logits = F.linear(hidden, weight)
            loss = F.cross_entropy(logits, target) + args.z_loss * (
                torch.logsumexp(logits, dim=1)[target != -100].square().mean())
            del logits
        else:
            loss = L.linear_cross_entropy(hidden, weight, target, z_loss=args.z_loss, chunk_size=args.chunk)
        loss.backward()
        times.append(time.perf_counter() - t0)
        losses.append(float(loss.detach()))
        del loss
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({
        "variant": args.variant, "chunk": args.chunk, "time_s": statistics.median(times), "times": times,
        "loss": losses[-1], "baseline_rss": baseline, "peak_rss": peak, "input_bytes": input_bytes,
        "grad_bytes": grad_bytes, "extra": peak - baseline - grad_bytes,
        "gnorm_w": float(weight.grad.norm()), "gnorm_h": float(hidden.grad.norm()),
    }))


def run_child(args: argparse.Namespace, variant: str, chunk: int) -> dict:
    cmd = [sys.executable, __file__, "--child", "--variant", variant, "--chunk", str(chunk),
           "--tokens", str(args.tokens), "--hidden", str(args.hidden), "--vocab", str(args.vocab),
           "--repeats", str(args.repeats), "--threads", str(args.threads), "--z-loss", str(args.z_loss),
           "--mem-limit-gib", str(args.mem_limit_gib)]
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        tail = (out.stderr or out.stdout).strip().splitlines()[-1:] or ["?"]
        print(f"# child {variant} c={chunk} FAILED (exit {out.returncode}): {tail[0][:300]}", flush=True)
        return {}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=2048)
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--vocab", type=int, default=32768)
    p.add_argument("--chunks", default="64,128,256,512", help="comma-separated chunk sizes (rows) for the fused path")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--z-loss", type=float, default=1e-4)
    p.add_argument("--skip-naive", action="store_true", help="only the fused path (e.g. to re-sweep chunk sizes)")
    p.add_argument("--bracket", action="store_true",
                   help="run the fused children before AND after the naive one (controls for load drift); the fused "
                        "time is then the median over both children's repeats, the peak the larger of the two")
    p.add_argument("--mem-limit-gib", type=float, default=0.0,
                   help="address-space limit per child (0 = none); a child over it fails instead of swapping/OOM")
    p.add_argument("--naive-not-before", default="", help="UTC HH:MM; wait until then before the naive child")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--variant", default="fused", help=argparse.SUPPRESS)
    p.add_argument("--chunk", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args)
        return
    import torch

    print(f"# tokens={args.tokens} hidden={args.hidden} vocab={args.vocab} fp32 z_loss={args.z_loss} "
          f"threads={args.threads} repeats={args.repeats} torch={torch.__version__} cpus={os.cpu_count()}")
    chunks = [int(c) for c in args.chunks.split(",") if c]
    gib = 2.0**30
    print(f"{'variant':<14}{'time s':>9}{'peak GiB':>10}{'extra GiB':>11}{'time ratio':>12}{'peak ratio':>12}"
          f"{'extra ratio':>13}{'loss':>12}", flush=True)
    naive = None
    rows = []
    fused = [("fused", c) for c in chunks]
    order = ([] if args.skip_naive else [("naive", 0)]) + fused
    if args.bracket and not args.skip_naive:
        order = [*fused, ("naive", 0), *fused]
    results: dict[tuple[str, int], list[dict]] = {}
    for variant, c in order:
        if variant == "naive" and args.naive_not_before:
            hh, mm = (int(v) for v in args.naive_not_before.split(":"))
            while time.gmtime().tm_hour * 60 + time.gmtime().tm_min < hh * 60 + mm:
                time.sleep(20)
        r = run_child(args, variant, c)
        if not r:
            continue
        print(f"# child {variant} c={c}: times {[round(t, 2) for t in r['times']]} peak {r['peak_rss'] / gib:.3f} GiB",
              flush=True)
        results.setdefault((variant, c), []).append(r)
    for (variant, _c), rs in sorted(results.items(), key=lambda kv: (kv[0][0] != "naive", kv[0][1])):
        r = dict(rs[0])
        r["time_s"] = statistics.median([t for x in rs for t in x["times"]])
        r["peak_rss"] = max(x["peak_rss"] for x in rs)
        r["extra"] = max(x["extra"] for x in rs)
        rows.append(r)
        if variant == "naive":
            naive = r
    for r in rows:
        name = "naive" if r["variant"] == "naive" else f"fused c={r['chunk']}"
        tr = r["time_s"] / naive["time_s"] if naive else float("nan")
        pr = r["peak_rss"] / naive["peak_rss"] if naive else float("nan")
        er = r["extra"] / naive["extra"] if naive else float("nan")
        print(f"{name:<14}{r['time_s']:>9.2f}{r['peak_rss'] / gib:>10.3f}{r['extra'] / gib:>11.3f}{tr:>12.3f}"
              f"{pr:>12.3f}{er:>13.3f}{r['loss']:>12.6f}", flush=True)
    if not rows:
        return
    print(f"# input bytes {rows[0]['input_bytes'] / gib:.3f} GiB, gradient bytes {rows[0]['grad_bytes'] / gib:.3f} GiB,"
          f" baseline RSS {rows[0]['baseline_rss'] / gib:.3f} GiB")


if __name__ == "__main__":
    main()
