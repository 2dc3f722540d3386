"""LCRON and LegendreTron: losslab against their authors' code, forward + backward.

LCRON (``lcron_loss``, two stages, float32): the authors' two-stage code (kwai/LCRON
``deep_components/loss/two_stage/lcron.py``: ``compute_lcron_metrics``, ``LsingleLoss``, ``JointUltraLoss``,
``LcronLossModel``; ``loss/sorting.py::neuralsort``), transcribed below because the repository is not a package. Both
get B queries of n candidates with no padding, random stage scores, integer-rank labels, top_k = 10, τ = 50 and
learnable stage weights (ones); on unpadded inputs the two compute the same value (losslab's docstring: with padding
the authors average over the padded width).

LegendreTron (``legendretron_loss`` with ``LegendreTronLink``): the authors' link (khflam/legendretron
``lib/models.py`` ``DeepConvexFlow``/``LegendreLink``, ``lib/icnn.py`` ``ICNN3``/``ActNorm``/``PosLinear``,
``lib/functional.py`` ``log_softmax_plus``), transcribed below, computes each ∇F by
``torch.autograd.grad(create_graph=True)``; losslab writes ∇F out in closed form. Both have 2 blocks, depth 4,
width 2 (the authors' LIBSVM setting), the same parameters (copied from losslab's link after its data
initialisation), and NLL on the target class; the inner outputs v (B, C − 1) are a leaf that gets a gradient.

Each timing is one forward + backward; medians of ``--repeats`` interleaved runs of an automatically chosen number
of calls; ratio = authors / losslab (> 1: losslab faster). The relative difference of the loss values (LCRON) and
the largest absolute difference of the log-probabilities (LegendreTron) confirm the two compute the same thing.

Usage: python bench/losses_cascade_legendretron.py [--repeats 5] [--threads 1] [--only lcron,legendretron]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch
import torch.nn.functional as F
from torch import nn

import losslab.losses as L


# ------------------------------------------------------------------ LCRON, the authors' two-stage code
def authors_neuralsort(s: torch.Tensor, tau: float) -> torch.Tensor:
    """``sorting.py::neuralsort``: (M, n) scores -> (M, n rank rows, n item columns)."""
    s = s.unsqueeze(-1)
    a_s = torch.abs(s - s.transpose(1, 2))
    n = s.size(1)
    one = torch.ones((n, 1), dtype=s.dtype, device=s.device)
    b = torch.einsum("mij,jk->mik", a_s, one @ one.T)
    k = torch.arange(n, device=s.device) + 1
    c = torch.einsum("mij,jk->mik", s, (n + 1 - 2 * k).to(s.dtype).unsqueeze(0))
    p = (c - b).transpose(1, 2)
    return F.softmax(p / tau, dim=-1)


def authors_lsingle(p: torch.Tensor, info: dict[str, torch.Tensor], top_k: int, support_m: int) -> torch.Tensor:
    """``LsingleLoss.loss_graph``."""
    mask = info["label_mask"]
    s2 = mask.unsqueeze(1) * mask.unsqueeze(2)
    p = p * s2
    lab = info["label_permutation_matrix"] * s2
    raw = torch.sum(p.detach(), dim=-2)
    up = torch.sum(p[:, :support_m, :], dim=-2) / (raw + 1e-6)
    up_loss = torch.mean(-torch.log(up + 1e-6) * torch.sum(lab[:, :top_k, :], dim=-2) * mask, dim=-1)
    down = torch.sum(p[:, support_m:, :], dim=-2) / (raw + 1e-6)
    down_loss = torch.mean(-torch.log(down + 1e-6) * torch.sum(lab[:, top_k:, :], dim=-2) * mask, dim=-1)
    return torch.mean((up_loss + down_loss) * (info["count"] > support_m).float())


def authors_joint(p_pre: torch.Tensor, p_rec: torch.Tensor, info: dict[str, torch.Tensor], k: int) -> torch.Tensor:
    """``JointUltraLoss.loss_graph`` (joint_recall_k = joint_prerank_k = gt_num = k, as ``LCRON`` sets them)."""
    mask = info["label_mask"]
    s2 = mask.unsqueeze(1) * mask.unsqueeze(2)
    pre, rec = p_pre * s2, p_rec * s2
    rec_all, pre_all = torch.sum(rec.detach(), dim=-2), torch.sum(pre.detach(), dim=-2)
    up = (torch.sum(rec[:, :k, :], dim=-2) / (rec_all + 1e-6)) * (torch.sum(pre[:, :k, :], dim=-2) / (pre_all + 1e-6))
    up_lab = torch.sum((info["label_permutation_matrix"] * s2)[:, :k, :], dim=-2)
    up_loss = torch.mean(-torch.log(up + 1e-6) * up_lab, dim=-1)
    down_rec = 1 - torch.sum(rec[:, k:, :], dim=-2) / (rec_all + 1e-6)
    down_pre = 1 - torch.sum(pre[:, k:, :], dim=-2) / (pre_all + 1e-6)
    down_lab = torch.clamp(1 - up_lab, min=0, max=1)
    down_loss = torch.mean(-torch.log((1 - down_rec * down_pre) + 1e-6) * down_lab, dim=-1)
    return torch.mean(up_loss + down_loss)


def authors_lcron(prerank: torch.Tensor, recall: torch.Tensor, rank_index: torch.Tensor, k: int, tau: float,
                  w_pre: torch.Tensor, w_rec: torch.Tensor) -> torch.Tensor:
    """``compute_lcron_metrics`` + ``LCRON.loss_graph`` + ``LcronLossModel.forward`` (no padding; debug prints
    left out). The ``> 0.001`` threshold of the label matrix is computed after it was stored: not applied."""
    b, n = prerank.shape
    count = torch.full((b,), float(n))
    mask = (count.unsqueeze(-1) > torch.arange(n).unsqueeze(0).expand(b, n)).float()  # sequence_mask
    info = {"label_permutation_matrix": authors_neuralsort(rank_index.float(), 0.0001), "label_mask": mask,
            "count": count}
    p_pre, p_rec = authors_neuralsort(prerank, tau), authors_neuralsort(recall, tau)
    l_pre, l_rec = authors_lsingle(p_pre, info, k, k), authors_lsingle(p_rec, info, k, k)
    l_joint = authors_joint(p_pre, p_rec, info, k)
    return ((0.5 / torch.square(w_pre)) * l_pre + (0.5 / torch.square(w_rec)) * l_rec + l_joint
            + torch.log(w_pre * w_rec)).squeeze()


# ------------------------------------------------------------------ LegendreTron, the authors' link
class AuthorsPosLinear(nn.Linear):
    """``icnn.py::PosLinear``: softplus(W) z + b, times 1/in_features."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, F.softplus(self.weight), self.bias) * (1 / x.size(1))


class AuthorsActNorm(nn.Module):
    """``icnn.py::ActNorm`` / ``ActNormNoLogdet`` after its data-dependent first call (parameters copied in)."""

    def __init__(self, n: int, dtype: torch.dtype) -> None:
        super().__init__()
        self.b = nn.Parameter(torch.zeros(1, n, 1, dtype=dtype))
        self.logs = nn.Parameter(torch.zeros(1, n, 1, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.size()
        x = x.view(shape[0], shape[1], -1)
        scale = torch.exp(self.logs * 1.0) + 0.001  # logscale_factor 1, _scaling_min 0.001
        out = (x + self.b) * scale
        _ = torch.sum(torch.log(scale)) * x.size(-1)  # the log-determinant, which ActNormNoLogdet drops
        return out.view(shape)


class AuthorsICNN3(nn.Module):
    """``icnn.py::ICNN3`` with softplus activations (the defaults)."""

    def __init__(self, dim: int, dimh: int, depth: int, dtype: torch.dtype) -> None:
        super().__init__()
        self.Wzs = nn.ModuleList([nn.Linear(dim, dimh, dtype=dtype),
                                  *(AuthorsPosLinear(dimh, dimh // 2, dtype=dtype) for _ in range(depth - 1)),
                                  AuthorsPosLinear(dimh, 1, bias=False, dtype=dtype)])
        self.Wxs = nn.ModuleList([*(nn.Linear(dim, dimh // 2, dtype=dtype) for _ in range(depth - 1)),
                                  nn.Linear(dim, 1, bias=False, dtype=dtype)])
        self.Wx2s = nn.ModuleList([nn.Linear(dim, dimh // 2, dtype=dtype) for _ in range(depth - 1)])
        self.actnorms = nn.ModuleList([*(AuthorsActNorm(dimh // 2, dtype) for _ in range(depth - 1)),
                                       AuthorsActNorm(1, dtype)])
        self.actnorms[-1].b.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = F.softplus(self.Wzs[0](x))
        for wz, wx, wx2, an in zip(self.Wzs[1:-1], self.Wxs[:-1], self.Wx2s, self.actnorms[:-1]):
            z = F.softplus(an(wz(z) + wx(x)))
            z = torch.cat([z, F.softplus(wx2(x))], 1)
        return self.actnorms[-1](self.Wzs[-1](z) + self.Wxs[-1](x))


class AuthorsFlow(nn.Module):
    """``models.py::DeepConvexFlow`` (identity_diag): x ↦ ∇F(x) by autograd with create_graph."""

    def __init__(self, icnn: AuthorsICNN3, dtype: torch.dtype) -> None:
        super().__init__()
        self.icnn = icnn
        self.w1 = nn.Parameter(torch.randn(1, dtype=dtype))
        self.w0 = nn.Parameter(torch.randn(1, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            x = x.clone().requires_grad_(True)
            n = x.size(0)
            pot = F.softplus(self.w1) * self.icnn(x) + F.softplus(self.w0) * (x.view(n, -1) ** 2).sum(1, keepdim=True) / 2
            return torch.autograd.grad(pot.sum(), x, create_graph=True)[0]


def authors_log_softmax_plus(a: torch.Tensor) -> torch.Tensor:
    """``functional.py::log_softmax_plus`` (the zero column in a's dtype; the authors' default dtype is float64)."""
    a_max = a.max(-1)[0].view(-1, 1)
    b = torch.cat((a, a.new_zeros(a.shape[0], 1)), -1)
    return b - a_max - torch.log(torch.sum(torch.exp(b - a_max), -1).view(-1, 1))


class AuthorsLink(nn.Module):
    """``models.py::LegendreLink``."""

    def __init__(self, blocks: int, k: int, hidden: int, depth: int, dtype: torch.dtype) -> None:
        super().__init__()
        self.cpflows = nn.ModuleList([AuthorsFlow(AuthorsICNN3(k, hidden, depth, dtype), dtype) for _ in range(blocks)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for flow in self.cpflows:
            x = flow(x)
        return authors_log_softmax_plus(x)


def copy_link(link: L.LegendreTronLink, ref: AuthorsLink) -> None:
    """losslab's parameters into the authors' module (ActNorm tensors are (1, m, 1) there)."""
    pairs: list[tuple[Any, Any]] = []
    blocks: list[Any] = list(link.blocks)
    flows: list[Any] = list(ref.cpflows)
    for blk, flow in zip(blocks, flows):
        ic = flow.icnn
        for mine, theirs in [*zip(blk.wz, ic.Wzs), *zip(blk.wx, ic.Wxs), *zip(blk.wx2, ic.Wx2s)]:
            pairs.append((mine.weight, theirs.weight))
            if mine.bias is not None:
                pairs.append((mine.bias, theirs.bias))
        for i in range(len(blk.norm_shift)):
            pairs += [(blk.norm_shift[i], ic.actnorms[i].b), (blk.norm_logscale[i], ic.actnorms[i].logs)]
        pairs += [(blk.out_shift, ic.actnorms[-1].b), (blk.out_logscale, ic.actnorms[-1].logs), (blk.w1, flow.w1),
                  (blk.w0, flow.w0)]
    with torch.no_grad():
        for mine, theirs in pairs:
            theirs.copy_(mine.reshape(theirs.shape))


# ------------------------------------------------------------------ timing
def per_call(fn: Callable[[], object], number: int) -> float:
    start = time.perf_counter()
    for _ in range(number):
        fn()
    return (time.perf_counter() - start) / number


def calls_for(fn: Callable[[], object], budget: float = 0.1) -> int:
    """Calls per timing so that one timing lasts about ``budget`` seconds (after two warm-up calls)."""
    fn()
    return max(1, min(200, round(budget / max(per_call(fn, 1), 1e-6))))


def compare(label: str, ours: Callable[[], object], peer: Callable[[], object], repeats: int, diff: float) -> None:
    number = calls_for(peer)
    calls_for(ours)
    t_ours, t_peer = [], []
    for _ in range(repeats):  # interleaved, so that load from other jobs hits both alike
        t_peer.append(per_call(peer, number))
        t_ours.append(per_call(ours, number))
    a, b = statistics.median(t_ours) * 1e3, statistics.median(t_peer) * 1e3
    print(f"{label:34s} {a:10.3f} {b:10.3f} {b / a:6.2f} {diff:10.1e}", flush=True)


def _lcron_ours(pre: torch.Tensor, rec: torch.Tensor, labels: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    loss = L.lcron_loss([pre, rec], labels, top_k=10, tau=50.0, stage_weights=w)
    loss.backward()
    return loss


def _lcron_peer(pre: torch.Tensor, rec: torch.Tensor, labels: torch.Tensor, w_pre: torch.Tensor,
                w_rec: torch.Tensor) -> torch.Tensor:
    loss = authors_lcron(pre, rec, labels, 10, 50.0, w_pre, w_rec)
    loss.backward()
    return loss


def bench_lcron(repeats: int) -> None:
    print("LCRON, two stages, top_k 10, tau 50, float32, no padding; ms per forward + backward")
    print(f"{'B x n, loss value':34s} {'losslab':>10s} {'authors':>10s} {'ratio':>6s} {'rel diff':>10s}")
    for b, n in ((256, 40), (1024, 40), (256, 100), (1024, 100)):
        g = torch.Generator().manual_seed(b + n)
        pre = torch.randn(b, n, generator=g).requires_grad_(True)
        rec = torch.randn(b, n, generator=g).requires_grad_(True)
        labels = torch.stack([torch.randperm(n, generator=g) for _ in range(b)]).float()  # distinct ranks
        w_ours = torch.ones(2, requires_grad=True)
        w_pre, w_rec = torch.ones(1, requires_grad=True), torch.ones(1, requires_grad=True)

        ours = partial(_lcron_ours, pre, rec, labels, w_ours)
        peer = partial(_lcron_peer, pre, rec, labels, w_pre, w_rec)
        with torch.no_grad():
            a = float(L.lcron_loss([pre, rec], labels, top_k=10, tau=50.0, stage_weights=w_ours))
            r = float(authors_lcron(pre, rec, labels, 10, 50.0, w_pre, w_rec))
        compare(f"{b} x {n}, loss {r:.4f}", ours, peer, repeats, abs(a - r) / abs(r))


def bench_legendretron(repeats: int) -> None:
    print("LegendreTron link, 2 blocks, depth 4, width 2; ms per forward + backward (NLL, mean)")
    print(f"{'dtype, B x C':34s} {'losslab':>10s} {'authors':>10s} {'ratio':>6s} {'max |dlogp|':>10s}")
    for dtype in (torch.float64, torch.float32):
        for b in (256, 4096):
            for c in (4, 10, 100):
                torch.manual_seed(c)
                link = L.LegendreTronLink(c, dtype=dtype)
                ref = AuthorsLink(2, c - 1, 2, 4, dtype)
                g = torch.Generator().manual_seed(b + c)
                v = (2 * torch.randn(b, c - 1, generator=g, dtype=dtype)).requires_grad_(True)
                y = torch.randint(0, c, (b,), generator=g)
                link(v.detach())  # the data initialisation (the authors' ActNorm first call), then copy
                copy_link(link, ref)
                with torch.no_grad():
                    diff = float((link(v) - ref(v)).abs().max())

                def ours(link: L.LegendreTronLink = link, v: torch.Tensor = v, y: torch.Tensor = y) -> torch.Tensor:
                    loss = L.legendretron_loss(v, y, link=link)
                    loss.backward()
                    return loss

                def peer(ref: AuthorsLink = ref, v: torch.Tensor = v, y: torch.Tensor = y) -> torch.Tensor:
                    loss = F.nll_loss(ref(v), y)
                    loss.backward()
                    return loss

                name = "float64" if dtype == torch.float64 else "float32"
                compare(f"{name}, {b} x {c}", ours, peer, repeats, diff)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--only", default="lcron,legendretron", help="comma-separated: lcron, legendretron")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    only = set(args.only.split(","))
    print(f"torch {torch.__version__}, {args.threads} thread(s), median of {args.repeats} interleaved runs; "
          f"ratio = authors / losslab (> 1: losslab faster)")
    if "lcron" in only:
        bench_lcron(args.repeats)
    if "legendretron" in only:
        bench_legendretron(args.repeats)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
