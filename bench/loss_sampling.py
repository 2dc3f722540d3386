"""Sensitivity sampling: accuracy of the mean-loss estimate against uniform sampling, and k-means against SciPy.

Synthetic clustered embeddings (``--clusters`` Gaussian blobs in 64 dimensions, ``--rows`` rows) and a loss that is
1-Lipschitz in the embedding plus a per-cluster offset. For budgets of k + m evaluated rows, the root-mean-square
error of the estimate over ``--seeds`` seeds, for losslab's ``sensitivity_sample`` and for the plain mean of
k + m rows drawn uniformly (same budget); ratio = uniform / losslab (> 1: losslab more accurate). Then the time and
k-means cost of losslab's ``kmeans`` (one seeding, and the default best of four) against
``scipy.cluster.vq.kmeans2(minit="++")`` (one seeding).

Usage: python bench/loss_sampling.py [--rows 50000] [--clusters 50] [--seeds 10]
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import numpy as np
from scipy.cluster.vq import kmeans2

from losslab.diagnostics import kmeans, sensitivity_sample


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=50_000)
    ap.add_argument("--clusters", type=int, default=50)
    ap.add_argument("--seeds", type=int, default=10)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    per = args.rows // args.clusters
    means = rng.normal(0, 5, (args.clusters, 64))
    emb = np.concatenate([m + rng.normal(0, 1, (per, 64)) for m in means])
    offsets = np.repeat(rng.uniform(0, 20, args.clusters), per)
    loss = offsets + np.linalg.norm(emb - emb.mean(axis=0), axis=1)
    print(f"{emb.shape[0]} rows x 64, {args.clusters} blobs; true mean loss {loss.mean():.4f}; {args.seeds} seeds")
    print(f"{'k':>4s} {'m':>5s} {'losslab rms err':>16s} {'uniform rms err':>16s} {'ratio':>6s} {'sample s':>9s}")
    for k, m in [(args.clusters, 100), (args.clusters, 400), (2 * args.clusters, 400)]:
        ours, uniform, secs = [], [], []
        for seed in range(args.seeds):
            start = time.perf_counter()
            s = sensitivity_sample(emb, k=k, m=m, seed=seed)
            secs.append(time.perf_counter() - start)
            ours.append(s.estimate(loss[s.indices]) - loss.mean())
            uniform.append(loss[np.random.default_rng(seed).choice(emb.shape[0], size=k + m)].mean() - loss.mean())
        r_ours, r_unif = np.sqrt(np.mean(np.square(ours))), np.sqrt(np.mean(np.square(uniform)))
        print(f"{k:4d} {m:5d} {r_ours:16.5f} {r_unif:16.5f} {r_unif / r_ours:6.1f} {np.median(secs):9.2f}")
    print(f"\n{'k-means (k = ' + str(args.clusters) + ')':28s} {'seconds':>8s} {'cost':>14s}")
    for label, fn in [("losslab, 1 seeding", lambda: kmeans(emb, args.clusters, n_init=1)),
                      ("losslab, best of 4 (default)", lambda: kmeans(emb, args.clusters)),
                      ("scipy kmeans2, ++, 1 seeding", lambda: kmeans2(emb, args.clusters, minit="++", seed=0))]:
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # scipy warns when a cluster ends up empty
            centers, labels = fn()
        elapsed = time.perf_counter() - start
        print(f"{label:28s} {elapsed:8.2f} {float(np.sum((emb - centers[labels]) ** 2)):14.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
