"""LegendreTron: a multiclass proper loss learned with the model, through a learned canonical link.

The inner model outputs v ∈ R^(C−1) per example; :class:`LegendreTronLink` maps v to log-probabilities over C classes
through gradients of strongly convex potentials (input-convex networks) followed by log-softmax⁺, the log-softmax
of [u, 0] (the last class is the reference, its logit fixed at 0); :func:`legendretron_loss` is the negative
log-likelihood of the target class. The link's parameters are trained together with the inner model.
"""

from __future__ import annotations

import numbers
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from losslab._errors import ConfigError, DataError
from losslab.losses._catalogue import register
from losslab.losses._reduce import class_weights, reduce_loss
from losslab.losses._validate import (
    check_class_target,
    check_class_weight,
    check_float,
    check_ignore_index,
    check_reduction,
    compute_dtype,
)

__all__ = ["LegendreTronLink", "legendretron_loss"]

_REF = ("Lam, Walder, Penev, Nock, LegendreTron: Uprising Proper Multiclass Loss Learning, arXiv:2301.11695, "
        "2023")
_SCALE_MIN = 1e-3  # ActNorm: scale = exp(log-scale) + 0.001 (the authors' ``_scaling_min``), always > 0
_INIT_EPS = 1e-6  # ActNorm data init: log-scale = −log(std + 1e-6)
_SOFTPLUS_THRESHOLD = 20.0  # F.softplus is linear above 20: its derivative there is exactly 1 (torch's rule)


def _dsoftplus(t: Tensor) -> Tensor:
    """The derivative of ``F.softplus`` as torch's autograd computes it: sigmoid(t), exactly 1 above 20."""
    return torch.where(t > _SOFTPLUS_THRESHOLD, torch.ones_like(t), torch.sigmoid(t))


def _int_option(name: str, value: object, low: int, why: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < low:
        raise ConfigError(f"LegendreTronLink: {name} must be an integer ≥ {low} ({why}), got {value!r}")
    return int(value)


def _w(layers: nn.ModuleList, i: int, dt: torch.dtype) -> Tensor:
    """The weight of the i-th ``nn.Linear`` of ``layers``, cast (differentiably) to the compute dtype."""
    return cast(nn.Linear, layers[i]).weight.to(dt)


def _b(layers: nn.ModuleList, i: int, dt: torch.dtype) -> Tensor:
    """The bias of the i-th ``nn.Linear`` of ``layers`` (every layer that has one), in the compute dtype."""
    return cast(Tensor, cast(nn.Linear, layers[i]).bias).to(dt)


class _ConvexPotentialGradient(nn.Module):
    """One block x ↦ ∇F(x), F(x) = softplus(w1)·ICNN(x) + softplus(w0)·‖x‖²/2 (the authors' ``DeepConvexFlow``).

    The parameters are created in the order of the authors' ``ICNN3`` then ``DeepConvexFlow`` constructors, with
    ``nn.Linear``'s initialisation, so the same seed and dtype give the same initial values.
    """

    out_shift: Tensor

    def __init__(self, dim: int, hidden: int, depth: int, *, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        kw: dict[str, Any] = {"device": device, "dtype": dtype}
        m = hidden // 2
        self.dim, self.hidden, self.depth = dim, hidden, depth
        # z-path: an unconstrained first layer, then layers whose weights pass through softplus (≥ 0)
        self.wz = nn.ModuleList([nn.Linear(dim, hidden, **kw),
                                 *(nn.Linear(hidden, m, **kw) for _ in range(depth - 1)),
                                 nn.Linear(hidden, 1, bias=False, **kw)])
        self.wx = nn.ModuleList([*(nn.Linear(dim, m, **kw) for _ in range(depth - 1)),
                                 nn.Linear(dim, 1, bias=False, **kw)])  # skip connections from the input
        self.wx2 = nn.ModuleList([nn.Linear(dim, m, **kw) for _ in range(depth - 1)])  # softplus(x) features
        self.norm_shift = nn.ParameterList([nn.Parameter(torch.zeros(m, **kw)) for _ in range(depth - 1)])
        self.norm_logscale = nn.ParameterList([nn.Parameter(torch.zeros(m, **kw)) for _ in range(depth - 1)])
        self.out_logscale = nn.Parameter(torch.zeros(1, **kw))
        self.register_buffer("out_shift", torch.zeros(1, **kw))  # frozen in the authors' code; no effect on ∇F
        self.w1 = nn.Parameter(torch.randn(1, **kw))
        self.w0 = nn.Parameter(torch.randn(1, **kw))

    @staticmethod
    def _init_norm(pre: Tensor, shift: Tensor, logscale: Tensor) -> None:
        """ActNorm data init from a batch: shift = −mean, log-scale = −log(std + 1e-6) (population std)."""
        with torch.no_grad():
            mean = pre.detach().mean(0)
            std = (pre.detach() - mean).square().mean(0).sqrt()
            shift.copy_(-mean)
            logscale.copy_(-torch.log(std + _INIT_EPS))

    def _layers(self, x: Tensor, init: bool) -> tuple[Tensor, list[tuple[Tensor, ...]]]:
        """Forward through the ICNN: its output (before the last scale) and what the closed-form gradient needs."""
        dt, h = x.dtype, float(self.hidden)
        a0 = F.linear(x, _w(self.wz, 0, dt), _b(self.wz, 0, dt))
        z = F.softplus(a0)
        cache: list[tuple[Tensor, ...]] = [(a0,)]
        for i in range(self.depth - 1):
            pos = F.softplus(_w(self.wz, i + 1, dt))
            pre = F.linear(z, pos, _b(self.wz, i + 1, dt)) / h + F.linear(x, _w(self.wx, i, dt), _b(self.wx, i, dt))
            if init:
                self._init_norm(pre, self.norm_shift[i], self.norm_logscale[i])
            scale = torch.exp(self.norm_logscale[i].to(dt)) + _SCALE_MIN
            act = (pre + self.norm_shift[i].to(dt)) * scale
            aug = F.linear(x, _w(self.wx2, i, dt), _b(self.wx2, i, dt))
            cache.append((pos, scale, act, aug))
            z = torch.cat([F.softplus(act), F.softplus(aug)], 1)
        pos_out = F.softplus(_w(self.wz, self.depth, dt))
        pre_out = F.linear(z, pos_out) / h + F.linear(x, _w(self.wx, self.depth - 1, dt))
        if init:
            self._init_norm(pre_out, self.out_shift, self.out_logscale)
        cache.append((pos_out,))
        return pre_out, cache

    def icnn(self, x: Tensor) -> Tensor:
        """ICNN(x), shape (B,): convex in x (non-negative weights on convex, non-decreasing activations)."""
        pre_out, _ = self._layers(x, False)
        scale = torch.exp(self.out_logscale.to(x.dtype)) + _SCALE_MIN
        return ((pre_out + self.out_shift.to(x.dtype)) * scale).squeeze(1)

    def potential(self, x: Tensor) -> Tensor:
        """F(x) = softplus(w1)·ICNN(x) + softplus(w0)·‖x‖²/2, shape (B,); strongly convex (modulus softplus(w0))."""
        dt = x.dtype
        return F.softplus(self.w1.to(dt)) * self.icnn(x) + F.softplus(self.w0.to(dt)) * x.square().sum(1) / 2

    def forward(self, x: Tensor, init: bool = False) -> Tensor:
        """∇F(x) (B, dim) in closed form (backpropagation through the ICNN written out; differentiable)."""
        dt, h, m = x.dtype, float(self.hidden), self.hidden // 2
        _, cache = self._layers(x, init)
        out_scale = torch.exp(self.out_logscale.to(dt)) + _SCALE_MIN
        (pos_out,) = cache[-1]
        dz = (out_scale * pos_out / h).expand(x.shape[0], -1)  # ∂ICNN/∂z_{L−1}, (B, hidden)
        dx = (out_scale * _w(self.wx, self.depth - 1, dt)).expand(x.shape[0], -1)
        for i in range(self.depth - 2, -1, -1):
            pos, scale, act, aug = cache[i + 1]
            d_act, d_aug = dz[:, :m], dz[:, m:]
            dx = dx + (d_aug * _dsoftplus(aug)) @ _w(self.wx2, i, dt)
            d_pre = d_act * _dsoftplus(act) * scale
            dx = dx + d_pre @ _w(self.wx, i, dt)
            dz = (d_pre @ pos) / h
        (a0,) = cache[0]
        dx = dx + (dz * _dsoftplus(a0)) @ _w(self.wz, 0, dt)
        return F.softplus(self.w1.to(dt)) * dx + F.softplus(self.w0.to(dt)) * x


class LegendreTronLink(nn.Module):
    r"""The learned link of LegendreTron: inner-model outputs (B, C−1) → log-probabilities (B, C).

    .. math::
        u = \nabla F_{B} \circ \dots \circ \nabla F_1(v),\qquad
        F_b(x) = \mathrm{softplus}(w_{1,b})\,\mathrm{ICNN}_b(x) + \mathrm{softplus}(w_{0,b})\,\tfrac12\lVert x\rVert^2,
        \qquad \log p = \log\mathrm{softmax}([u, 0])

    Each ICNN (the authors' ``ICNN3``, hidden width h even, m = h/2, depth L, σ = softplus, s = e^{ρ} + 0.001 > 0):
    :math:`z_0 = σ(A_0 x + a_0)`; for l = 1..L−1,
    :math:`z_l = [σ(s_l ⊙ ((σ(P_l) z_{l-1} + c_l)/h + A_l x + a_l + β_l)),\ σ(G_l x + g_l)]`; and
    :math:`\mathrm{ICNN}(x) = s_L((σ(P_L) z_{L-1})/h + A_L x + β_L)`: convex in x. Each ∇F_b is a bijection of
    R^(C−1) with a symmetric positive definite Jacobian (≥ softplus(w0)·I).

    Args:
        num_classes: C ≥ 2. The inner model outputs C − 1 values; class C − 1 (the last) is the reference class
            whose logit is fixed at 0, so targets are 0..C−1 (the authors' labels 0..K with K = C − 1 outputs).
        blocks: number of composed gradient maps (2: the authors' LIBSVM runs; 1: their MNIST runs).
        depth: ICNN depth L ≥ 1 (4 in both).
        hidden: ICNN hidden width h, even ≥ 2 (2: LIBSVM, 4: MNIST; odd widths break the authors' layer shapes).
        data_init: initialise every normalisation layer from the first batch the link sees (the authors' ActNorm:
            shift = −mean, log-scale = −log(std + 1e-6) per unit; that batch needs ≥ 2 rows). False: shift 0 and
            log-scale 0 (scale 1.001). The flag ``initialized`` is a buffer, so ``state_dict()`` carries it.
        device, dtype: of the parameters (the authors use float64). The computation follows the input's dtype
            (half precision in float32); the parameters are cast to it, differentiably.

    Example:
        >>> import torch, losslab.losses as L
        >>> _ = torch.manual_seed(0)
        >>> link = L.LegendreTronLink(num_classes=3)
        >>> logp = link(torch.randn(4, 2))          # (B, C − 1) -> (B, C), first call initialises the link
        >>> tuple(logp.shape), torch.allclose(logp.logsumexp(1), torch.zeros(4), atol=1e-6)
        ((4, 3), True)

    References:
        Kevin H. Lam, Christian Walder, Spiridon Penev, Richard Nock, "LegendreTron: Uprising Proper Multiclass Loss
        Learning", ICML 2023, arXiv:2301.11695, 2023. Convex potential flows: Huang, Chen, Tsirigotis, Courville,
        arXiv:2012.05942, 2020.

    Notes:
        Follows the authors' code (khflam/legendretron ``lib/models.py``, ``lib/icnn.py``, ``lib/functional.py``).
        ∇F is written out (backpropagation through the ICNN by hand) instead of ``autograd.grad(create_graph=True)``;
        the values agree to 1e-12 in float64, including torch's softplus derivative of exactly 1 above 20. With
        ``blocks ≥ 2`` and C ≥ 3 the composed map is a bijection whose Jacobian is a product of symmetric positive
        definite matrices (real positive eigenvalues) but is in general not symmetric: it is then not itself the
        gradient of a convex function; ``blocks=1`` (or C = 2) gives one exactly. Log-softmax⁺ is computed as
        ``log_softmax([u, 0])``; the authors subtract max(u) only, which overflows when every u < −709.
        The last ActNorm shift is a buffer (a frozen parameter in the authors' code; it does not change ∇F).
    """

    initialized: Tensor

    def __init__(self, num_classes: int, *, blocks: int = 2, depth: int = 4, hidden: int = 2,
                 data_init: bool = True, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        c = _int_option("num_classes", num_classes, 2, "the inner model outputs num_classes − 1 values")
        self.num_classes = c
        self.blocks_count = _int_option("blocks", blocks, 1, "composed gradient maps; the authors use 1 or 2")
        self.depth = _int_option("depth", depth, 1, "layers of each input-convex network; the authors use 4")
        h = _int_option("hidden", hidden, 2, "width of each input-convex network; the authors use 2 or 4")
        if h % 2:
            raise ConfigError(f"LegendreTronLink: hidden must be even (each layer concatenates two halves of width "
                              f"hidden/2), got {hidden}; the authors use 2 or 4")
        self.hidden = h
        if not isinstance(data_init, bool):
            raise ConfigError(f"LegendreTronLink: data_init must be True or False, got {data_init!r}")
        self.blocks = nn.ModuleList([_ConvexPotentialGradient(c - 1, h, self.depth, device=device, dtype=dtype)
                                     for _ in range(self.blocks_count)])
        self.register_buffer("initialized", torch.tensor(not data_init, device=device))

    def _check(self, input: object, name: str = "LegendreTronLink", init: bool = True) -> Tensor:
        v = check_float("input", input, name)
        k = self.num_classes - 1
        if v.dim() != 2 or v.shape[1] != k:
            raise DataError(f"{name}: input must have shape (batch, num_classes − 1) = (batch, {k}): the inner model "
                            f"outputs C − 1 values and the last class is the reference with logit 0; got "
                            f"{tuple(v.shape)}. Give the inner model num_classes − 1 outputs")
        dev = self.initialized.device
        if v.device != dev:
            raise DataError(f"{name}: input is on {v.device} but the link is on {dev}; move the link with "
                            f".to(input.device)")
        if init and not bool(self.initialized) and v.shape[0] < 2:
            raise DataError(f"{name}: the first batch initialises the link's normalisation layers from its mean and "
                            f"standard deviation (as in the authors' code) and needs at least 2 rows, got "
                            f"{v.shape[0]}; call it first on a training batch, or build it with data_init=False")
        return v

    def transform(self, input: Tensor) -> Tensor:
        """u = ∇F_B ∘ … ∘ ∇F_1(v), the (B, C − 1) logits of the non-reference classes (no initialisation)."""
        v = self._check(input, init=False)
        u = v.to(compute_dtype(v))
        for block in self.blocks:
            u = block(u)
        return u

    def _run(self, v: Tensor) -> Tensor:
        init = not bool(self.initialized)
        u = v.to(compute_dtype(v))
        for block in self.blocks:
            u = block(u, init)
        if init:
            self.initialized.fill_(True)
        return torch.log_softmax(torch.cat([u, u.new_zeros(u.shape[0], 1)], 1), dim=1)

    def forward(self, input: Tensor) -> Tensor:
        """log softmax([u(v), 0]), shape (B, C); the first call initialises the link when ``data_init``."""
        return self._run(self._check(input))

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, blocks={self.blocks_count}, depth={self.depth}, "
                f"hidden={self.hidden}, initialized={bool(self.initialized)}")


@register("legendretron", summary="LegendreTron: log loss through a learned canonical link (gradients of strongly "
                                  "convex input-convex potentials, then log-softmax with a fixed 0 logit), a proper "
                                  "multiclass loss learned with the model",
          reference=_REF, module="LegendreTronLoss", family="classification", input_kind="logits",
          target_kind="class index in [0, C − 1] with C − 1 inputs", aliases=("legendretron_loss",))
def legendretron_loss(input: Tensor, target: Tensor, *, link: LegendreTronLink, weight: Tensor | None = None,
                      ignore_index: int = -100, reduction: str = "mean") -> Tensor:
    r"""LegendreTron: the log loss of the probabilities given by a learned link of the inner model's outputs.

    .. math::
        \ell(v, y) = -\log\mathrm{softmax}\big([\,\nabla F_B\circ\dots\circ\nabla F_1(v),\ 0\,]\big)_y

    with :class:`LegendreTronLink` holding the F_b (strongly convex input-convex potentials). The map from v to the
    probabilities is a bijection onto the open simplex, so for every class distribution p the expected loss
    E_{y∼p} ℓ(v, y) is minimised exactly where the predicted probabilities equal p (properness). Train the link's
    parameters with the inner model (or use :class:`LegendreTronLoss`, which owns the link).

    Args:
        input: inner-model outputs (N, C − 1) for C classes (the last class is the reference, logit 0).
        target: class indices (N,) in [0, C − 1] (C − 1 is the reference class; C is out of range).
        link: the :class:`LegendreTronLink` of C classes; its parameters get gradients. Its first call initialises
            it from that batch (``data_init``).
        weight: class weights (C,) (weighted mean, as ``F.nll_loss``).
        ignore_index: target value to skip.
        reduction: "mean" | "sum" | "none".

    Returns:
        The loss (scalar unless ``reduction="none"``), in float64 for float64 input, else float32.

    Example:
        >>> import torch, losslab.losses as L
        >>> _ = torch.manual_seed(0)
        >>> link = L.LegendreTronLink(num_classes=3)
        >>> inner = torch.nn.Linear(5, 2)                       # C − 1 = 2 outputs
        >>> x, y = torch.randn(8, 5), torch.tensor([0, 1, 2, 2, 1, 0, 0, 2])
        >>> loss = L.legendretron_loss(inner(x), y, link=link)
        >>> loss.backward()                                     # gradients for the inner model and the link
        >>> all(p.grad is not None for p in link.parameters())
        True

    References:
        Kevin H. Lam, Christian Walder, Spiridon Penev, Richard Nock, "LegendreTron: Uprising Proper Multiclass Loss
        Learning", ICML 2023, arXiv:2301.11695, 2023.

    Notes:
        The authors' training loop (khflam/legendretron ``experiments/lt_libsvm.py``): a linear inner model with
        C − 1 outputs, the link with 2 blocks, depth 4, width 2, ``NLLLoss(reduction="mean")`` and an explicit
        0.5·wd·Σθ² over the inner model's and the link's parameters (wd = 0.01), with Adam (lr 0.01, ×0.95 every
        4 epochs), in float64. That penalty is not part of this loss: its gradient is what
        ``torch.optim.Adam(params, weight_decay=wd)`` adds. See :class:`LegendreTronLink` for the differences.
    """
    name = "legendretron"
    red = check_reduction(reduction, name)
    if not isinstance(link, LegendreTronLink):
        raise ConfigError(f"{name}: link must be a LegendreTronLink (the learned link, trained with the model), got "
                          f"{type(link).__name__}; build one with LegendreTronLink(num_classes)")
    v = link._check(input, name)
    c = link.num_classes
    ign = check_ignore_index(ignore_index, name)
    tgt = check_class_target(target, int(v.shape[0]), c, ign, name)
    w = check_class_weight(weight, c, name)
    logp = link._run(v)
    mask = None if ign is None else tgt != ign
    safe = tgt if mask is None else torch.where(mask, tgt, torch.zeros_like(tgt))
    nll = -logp.gather(1, safe.unsqueeze(1)).squeeze(1)
    cw = None if w is None else w.to(logp.dtype)
    return reduce_loss(nll, red, weight=class_weights(safe, cw, mask, logp.dtype), mask=mask)

