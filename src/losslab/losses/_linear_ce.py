"""Chunked fused linear + cross-entropy (+ z-loss, smoothing, soft-cap) that never materialises the full logits.

Design (documented choice): for ``reduction="mean"`` and ``"sum"`` the gradients of ``hidden``, ``weight`` and
``bias`` are computed chunk by chunk during the forward pass (as Liger-Kernel's fused linear cross-entropy does), so
the total work equals the naive path's three matrix products (logits, dL/dhidden, dL/dweight) and backward only
scales the stored gradients by the incoming scalar. For ``reduction="none"`` the incoming gradient is a vector known
only in backward, so backward recomputes each chunk's logits (as Apple's Cut Cross-Entropy does): one extra matrix
product, same memory bound. Peak extra memory is O(chunk_rows x vocab) instead of O(tokens x vocab).

Per row i with logits z (after soft-capping), log-partition L = logsumexp(z), target y, class weights w (1 if none),
smoothing ε over V classes:
    ce_i = (1-ε) w_y (L - z_y) + ε/V Σ_c w_c (L - z_c)        z-term_i = λ L²
    dce_i/dz_c = S_i p_c - q_ic  with q_ic = (1-ε) w_y [c = y] + ε w_c / V,  S_i = Σ_c q_ic,  p = softmax(z)
    d(λ L²)/dz_c = 2 λ L p_c
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class LCEConfig:
    label_smoothing: float
    z_loss: float
    softcap: float | None
    reduction: str
    chunk_rows: int
    need_hidden: bool
    need_weight: bool
    need_bias: bool


def _chunk(hidden: Tensor, weight: Tensor, bias: Tensor | None, target: Tensor, mask: Tensor,
           cw: Tensor | None, cfg: LCEConfig, ce_scale: Tensor, z_scale: Tensor, want_grads: bool,
           grad_w: Tensor | None, grad_b: Tensor | None) -> tuple[Tensor, Tensor, Tensor | None]:
    """One chunk of rows: returns (ce_rows, lse_rows, grad_hidden_rows) and accumulates grad_w / grad_b in place.

    ``ce_scale`` and ``z_scale`` (per row) are d(output)/d(ce_i) and d(output)/d(λ L_i²): the incoming gradient
    divided by the reduction's denominator, already 0 on ignored rows.
    """
    acc = torch.float64 if hidden.dtype == torch.float64 else torch.float32
    logits = hidden @ weight.t()
    if bias is not None:
        logits = logits + bias
    logits = logits.to(acc)
    v = logits.shape[1]
    eps, cap = cfg.label_smoothing, cfg.softcap
    if cap is not None:
        t = logits.div_(cap).tanh_()  # keep tanh for the chain rule
        z = t * cap
    else:
        t = None
        z = logits
    # statistics that need z itself, before z's buffer is overwritten by exp(z - max)
    z_y = z.gather(1, target.unsqueeze(1)).squeeze(1)
    z_smooth = None if eps == 0 else (z.mean(1) if cw is None else z @ cw)
    zmax = z.amax(1, keepdim=True)
    e = z.sub_(zmax).exp_()  # one exp pass, in place: e = exp(z - max)
    total = e.sum(1)
    lse = zmax.squeeze(1) + total.log()
    wy = cw[target] if cw is not None else None
    nll = lse - z_y
    ce = nll if wy is None else nll * wy
    if z_smooth is not None:
        if cw is None:
            smooth = lse - z_smooth
            s_total = torch.ones_like(lse)
        else:
            smooth = (lse * cw.sum() - z_smooth) / v
            s_total = (1 - eps) * wy + eps * cw.sum() / v  # type: ignore[operator]
        ce = (1 - eps) * ce + eps * smooth
    else:
        s_total = torch.ones_like(lse) if wy is None else wy
    ce = torch.where(mask, ce, torch.zeros_like(ce))
    if not want_grads:
        return ce, lse, None
    row = ce_scale * s_total
    if cfg.z_loss > 0:
        row = row + z_scale * 2.0 * cfg.z_loss * lse
    dz = e.mul_((row / total).unsqueeze(1))  # p = e / total, times the row factor, in place
    hot = ce_scale * (1 - eps) * (1.0 if wy is None else wy)
    dz.scatter_add_(1, target.unsqueeze(1), -hot.unsqueeze(1).to(dz.dtype))
    if eps > 0:
        if cw is None:
            dz.sub_((ce_scale * eps / v).unsqueeze(1))
        else:
            dz.sub_((ce_scale * eps / v).unsqueeze(1) * cw.unsqueeze(0))
    if t is not None:
        dz.mul_(t.square_().neg_().add_(1.0))
    dlog = dz.to(hidden.dtype)
    grad_h = dlog @ weight if cfg.need_hidden else None
    if grad_w is not None:
        if grad_w.dtype == hidden.dtype:
            grad_w.addmm_(dlog.t(), hidden)
        else:  # half precision: products in the input dtype, accumulation across chunks in float32
            grad_w.add_(dlog.t() @ hidden)
    if grad_b is not None:
        grad_b.add_(dz.sum(0).to(grad_b.dtype))
    return ce, lse, grad_h


def _pass(hidden: Tensor, weight: Tensor, bias: Tensor | None, target: Tensor, mask: Tensor, cw: Tensor | None,
          cfg: LCEConfig, ce_scale: Tensor, z_scale: Tensor, want_grads: bool
          ) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None, Tensor | None]:
    n = hidden.shape[0]
    acc = torch.float64 if hidden.dtype == torch.float64 else torch.float32
    ce_rows = torch.empty(n, dtype=acc, device=hidden.device)
    lse_rows = torch.empty(n, dtype=acc, device=hidden.device)
    grad_h = torch.empty_like(hidden) if want_grads and cfg.need_hidden else None
    grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if want_grads and cfg.need_weight else None
    grad_b = (torch.zeros(weight.shape[0], dtype=acc, device=weight.device)
              if want_grads and cfg.need_bias and bias is not None else None)
    step = max(1, cfg.chunk_rows)
    for s in range(0, n, step):
        e = min(n, s + step)
        ce, lse, gh = _chunk(hidden[s:e], weight, bias, target[s:e], mask[s:e], cw, cfg, ce_scale[s:e],
                             z_scale[s:e], want_grads, grad_w, grad_b)
        ce_rows[s:e] = ce
        lse_rows[s:e] = lse
        if grad_h is not None and gh is not None:
            grad_h[s:e] = gh
    return ce_rows, lse_rows, grad_h, grad_w, grad_b


class LinearCrossEntropyFunction(torch.autograd.Function):
    """Autograd function: (hidden (N,H), weight (V,H), bias (V,)|None) -> (loss, z_loss value)."""

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, bias: Tensor | None, target: Tensor, mask: Tensor,  # type: ignore[override]
                cw: Tensor | None, cfg: LCEConfig) -> tuple[Tensor, Tensor]:
        acc = torch.float64 if hidden.dtype == torch.float64 else torch.float32
        maskf = mask.to(acc)
        n_valid = maskf.sum()
        if cfg.reduction == "mean":
            ce_den = (cw[target] * maskf).sum() if cw is not None else n_valid
            # all targets ignored: the loss is NaN (0/0) as in F.cross_entropy, the gradients are 0 as in torch
            zero = torch.zeros_like(maskf)
            ce_scale = torch.where(ce_den > 0, maskf / ce_den, zero)
            z_scale = torch.where(n_valid > 0, maskf / n_valid, zero)
        else:
            ce_scale = z_scale = maskf
        want = cfg.reduction != "none" and (cfg.need_hidden or cfg.need_weight or cfg.need_bias)
        ce_rows, lse_rows, gh, gw, gb = _pass(hidden, weight, bias, target, mask, cw, cfg, ce_scale, z_scale, want)
        z_rows = cfg.z_loss * lse_rows.square() * maskf
        # inputs are saved by reference (no copy): backward recomputes from them for reduction="none", or when it
        # runs a second time (retain_graph=True) after the precomputed gradients were handed out and released
        ctx.save_for_backward(hidden, weight, bias, target, mask, cw)
        ctx.scales = (ce_scale, z_scale)
        if cfg.reduction == "none":
            loss = ce_rows + z_rows
            zval = z_rows
            ctx.grads = None
        else:
            if cfg.reduction == "mean":
                zval = z_rows.sum() / n_valid
                loss = ce_rows.sum() / ce_den + zval
            else:
                zval = z_rows.sum()
                loss = ce_rows.sum() + zval
            ctx.grads = (gh, gw, gb)
        ctx.cfg = cfg
        ctx.dtypes = (hidden.dtype, weight.dtype, weight.dtype if bias is None else bias.dtype)
        ctx.mark_non_differentiable(zval)
        return loss, zval

    @staticmethod
    def backward(ctx, grad_loss: Tensor, _grad_z: Tensor):  # type: ignore[override]
        cfg: LCEConfig = ctx.cfg
        if cfg.reduction == "none":
            hidden, weight, bias, target, mask, cw = ctx.saved_tensors
            g = grad_loss.to(torch.float64 if hidden.dtype == torch.float64 else torch.float32) * mask
            _, _, gh, gw, gb = _pass(hidden, weight, bias, target, mask, cw, cfg, g, g, True)
        else:
            if ctx.grads is None:  # second backward through the same graph: recompute
                hidden, weight, bias, target, mask, cw = ctx.saved_tensors
                ce_scale, z_scale = ctx.scales
                _, _, gh, gw, gb = _pass(hidden, weight, bias, target, mask, cw, cfg, ce_scale, z_scale, True)
            else:
                gh, gw, gb = ctx.grads
                ctx.grads = None  # release the stored gradients as soon as they are handed out
            # scale in place: these buffers belong to this function (no second V x H copy)
            s = grad_loss
            gh = None if gh is None else gh.mul_(s.to(gh.dtype))
            gw = None if gw is None else gw.mul_(s.to(gw.dtype))
            gb = None if gb is None else gb.mul_(s.to(gb.dtype))
        return (
            gh if cfg.need_hidden else None,
            None if gw is None else gw.to(ctx_dtype(ctx, 1)),
            None if gb is None else gb.to(ctx_dtype(ctx, 2)),
            None, None, None, None,
        )


def ctx_dtype(ctx, i: int) -> torch.dtype:  # type: ignore[no-untyped-def]
    return ctx.dtypes[i]
