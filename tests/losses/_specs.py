"""Spec table: how to build valid inputs for every registered loss and which common checks apply.

``make(dtype, gen)`` returns (args, kwargs); ``grad_args`` are the positions of differentiable inputs; ``logit_arg``
is the position scaled to ±1e4 in the extreme-logit check (None: not applicable). Every registry entry must have a
spec (tests/losses/test_common.py fails otherwise), so adding a loss without tests is impossible.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

Args = tuple[list[Any], dict[str, Any]]


@dataclass
class Spec:
    make: Callable[[torch.dtype, torch.Generator], Args]
    grad_args: tuple[int, ...] = (0,)
    logit_arg: int | None = 0
    class_target_arg: int | None = 1  # position of an integer class target (for out-of-range / dtype checks)
    n_classes: int = 5
    plain_mean: bool = True  # reduction="mean" == reduction="none".mean()
    half_tol: float = 2e-2
    stochastic: bool = False  # needs a fresh generator per call (ensloss)
    extra_bad: list[tuple[str, Callable[[list[Any], dict[str, Any]], None], type, str]] = field(default_factory=list)


N, C = 6, 5


def _logits(dtype, gen, n=N, c=C):
    return (torch.randn(n, c, generator=gen, dtype=torch.float64) * 2).to(dtype)


def _cls(gen, n=N, c=C):
    return torch.randint(0, c, (n,), generator=gen)


def _cls_spec(**kw: Any) -> Spec:
    def make(dtype, gen):
        return [_logits(dtype, gen), _cls(gen)], dict(kw)

    return Spec(make=make)


def _binary(dtype, gen):
    x = _logits(dtype, gen)
    t = (torch.rand(N, C, generator=gen) > 0.5).to(dtype)
    return [x, t], {}


def _adv(dtype, gen):
    x = _logits(dtype, gen)
    xa = x + 0.3 * _logits(dtype, gen)
    return [x, xa, _cls(gen)], {"tau": 1.5, "nu": 0.7}


def _linear(dtype, gen):
    h = torch.randn(N, 4, generator=gen, dtype=torch.float64).to(dtype)
    w = torch.randn(C, 4, generator=gen, dtype=torch.float64).to(dtype)
    t = _cls(gen)
    t[2] = -100
    return [h, w, t], {"z_loss": 1e-2, "label_smoothing": 0.1, "chunk_size": 4}


NUM_TOKENS = torch.tensor([1, 2, 4])
NUM_VALUES = torch.tensor([0.0, 1.0, 3.0])


def _ntl(dtype, gen):
    x = _logits(dtype, gen)
    t = torch.tensor([1, 2, 0, 4, -100, 2])
    return [x, t], {"number_tokens": NUM_TOKENS, "number_values": NUM_VALUES.to(dtype)}


def _oko(dtype, gen):
    x = (torch.randn(4, 4, C, generator=gen, dtype=torch.float64)).to(dtype)
    t = torch.tensor([0, 1, 2, 3])
    odd = torch.tensor([[1, 2], [0, 3], [4, 4], [1, 0]])
    return [x, t], {"odd_target": odd}


def _sface(dtype, gen):
    x = torch.randn(N, 3, generator=gen, dtype=torch.float64).to(dtype)
    w = torch.randn(C, 3, generator=gen, dtype=torch.float64).to(dtype)
    return [x, w, _cls(gen)], {"s": 8.0, "k": 5.0}


def _dec(dtype, gen):
    x = _logits(dtype, gen)
    t = (torch.rand(N, C, generator=gen) > 0.6).long()
    t[0] = torch.tensor([1, 0, 0, 0, 0])
    t[1] = 0
    return [x, t], {"temperature": 0.5}


def _ens(dtype, gen):
    x = (torch.randn(8, generator=gen, dtype=torch.float64) * 2).to(dtype)
    y = torch.tensor([1, 0, 1, 1, 0, 0, 1, 0])
    return [x, y], {}


def _distill(dtype, gen, target=False, **kw):
    s = torch.randn(N, C, generator=gen, dtype=torch.float64) * 2
    t = 0.5 * s + torch.randn(N, C, generator=gen, dtype=torch.float64)  # a teacher that roughly agrees
    args = [s.to(dtype), t.to(dtype)] + ([_cls(gen)] if target else [])
    return args, dict(kw)


def _distill_spec(target=False, **kw: Any) -> Spec:
    return Spec(make=lambda dtype, gen: _distill(dtype, gen, target, **kw), class_target_arg=2 if target else None)
def _slates(**kw: Any) -> Callable[[torch.dtype, torch.Generator], Args]:
    """Ranking losses: scores (B, n), graded labels (B, n) and a padding mask; every slate has a relevant pair."""

    def make(dtype, gen):
        x = (torch.randn(4, 6, generator=gen, dtype=torch.float64) * 2).to(dtype)
        y = torch.randint(0, 4, (4, 6), generator=gen).to(torch.float64)
        y[:, 1], y[:, 2] = 3.0, 0.0
        mask = torch.rand(4, 6, generator=gen) > 0.3
        mask[:, 1:3] = True
        mask[2, 0] = False  # padding at the front of a slate too
        return [x, y, mask], dict(kw)

    return make


def _binary_pairs(dtype, gen):
    """MW loss: a score matrix (queries × candidates), binary relevance with a positive and a negative per row."""
    x = (torch.randn(4, 6, generator=gen, dtype=torch.float64) * 2).to(dtype)
    y = (torch.rand(4, 6, generator=gen) < 0.3).to(torch.float64)
    y[:, 0], y[:, 1] = 1.0, 0.0
    mask = torch.rand(4, 6, generator=gen) > 0.2
    mask[:, :2] = True
    return [x, y, mask], {}


# regression family: predictions and real targets of the same shape (series along the last dimension)
def _reg(dtype, gen, positive=False, away_from_zero=False):
    x = torch.randn(N, C, generator=gen, dtype=torch.float64)
    y = torch.randn(N, C, generator=gen, dtype=torch.float64)
    if positive:
        x, y = x.abs() + 0.1, y.abs() + 0.1
    if away_from_zero:
        y = torch.sign(y) * (1 + y.abs())
    return [x.to(dtype), y.to(dtype)]


def _reg_spec(positive=False, away_from_zero=False, **kw: Any) -> Spec:
    def make(dtype, gen):
        return _reg(dtype, gen, positive, away_from_zero), dict(kw)

    return Spec(make=make, class_target_arg=None)


def _quantile(dtype, gen):
    x = torch.randn(N, C, 3, generator=gen, dtype=torch.float64).to(dtype)
    return [x, torch.randn(N, C, generator=gen, dtype=torch.float64).to(dtype)], {"quantiles": (0.1, 0.5, 0.9)}


def _hl_gauss(dtype, gen):
    x = (torch.randn(N, 8, generator=gen, dtype=torch.float64) * 2).to(dtype)
    y = (torch.rand(N, generator=gen, dtype=torch.float64) * 5 - 2.5).to(dtype)  # a few outside [-2, 2]: clamped
    return [x, y], {"min_value": -2.0, "max_value": 2.0}


REGRESSION_SPECS: dict[str, Spec] = {
    "mae": _reg_spec(), "mse": _reg_spec(), "huber": _reg_spec(delta=0.5), "log_cosh": _reg_spec(),
    "msle": _reg_spec(positive=True), "rmsle": _reg_spec(positive=True), "mape": _reg_spec(away_from_zero=True),
    "mean_bias_error": _reg_spec(), "quantile": Spec(make=_quantile, class_target_arg=None),
    "relative_absolute_error": _reg_spec(), "relative_squared_error": _reg_spec(), "nrmse": _reg_spec(),
    "rrmse": _reg_spec(), "madl": _reg_spec(), "gmadl": _reg_spec(a=2.0, b=1.5),
    "hl_gauss": Spec(make=_hl_gauss, class_target_arg=None),
}


SPECS: dict[str, Spec] = {
    "cross_entropy": _cls_spec(z_loss=1e-3, label_smoothing=0.1, logit_softcap=30.0),
    "focal": _cls_spec(gamma=2.0),
    "sigmoid_focal": Spec(make=_binary, class_target_arg=None),
    "squentropy": _cls_spec(),
    "poly1_cross_entropy": _cls_spec(epsilon=2.0),
    "poly_cross_entropy": _cls_spec(epsilons=(1.0, 0.5, -0.2)),
    "poly1_focal": Spec(make=_binary, class_target_arg=None),
    "spherical_z_loss": _cls_spec(a=2.0, b=0.5),
    "stablemax_cross_entropy": _cls_spec(),
    "comp_sum": _cls_spec(tau=1.5),
    "generalized_cross_entropy": _cls_spec(q=0.7),
    "softmax_mae": _cls_spec(),
    "adversarial_comp_sum": Spec(make=_adv, grad_args=(0, 1), class_target_arg=2),
    "ldr_kl": _cls_spec(lam=0.7, margin=1.0),
    "aldr_kl": _cls_spec(alpha=2.0),
    "linear_cross_entropy": Spec(make=_linear, grad_args=(0, 1), logit_arg=None, class_target_arg=2, half_tol=5e-2,
                                 plain_mean=False),
    "ntl_mse": Spec(make=_ntl, plain_mean=False),
    "ntl_wasserstein": Spec(make=_ntl, plain_mean=False),
    "oko": Spec(make=_oko),
    "sface": Spec(make=_sface, grad_args=(0, 1), logit_arg=None, class_target_arg=2, half_tol=0.5),
    "decoupled_softmax": Spec(make=_dec, class_target_arg=None, plain_mean=False),
    "ensloss": Spec(make=_ens, class_target_arg=None, stochastic=True, half_tol=0.1),
    # imbalance: long-tailed class counts for the C = 5 classes (an integer tensor, so dtype casts leave it alone)
    "ldam": _cls_spec(class_counts=torch.tensor([500, 120, 40, 9, 2]), max_m=0.5, s=4.0),
    "logit_adjusted_cross_entropy": _cls_spec(class_counts=torch.tensor([500, 120, 40, 9, 2]), tau=1.5),
    "balanced_softmax": _cls_spec(class_counts=[500, 120, 40, 9, 2]),
    "kd": _distill_spec(temperature=2.0),
    "dkd": _distill_spec(target=True, alpha=1.0, beta=2.0, temperature=2.0),
    "nkd": _distill_spec(target=True, gamma=1.5, temperature=2.0),
    "binary_kl_norm": _distill_spec(temperature=2.0),
    # iw_clip large enough that no importance weight is clipped: the surrogate gradient is then the divergence's
    "alpha_divergence": _distill_spec(iw_clip=1e6),
    # ranking (sinkhorn_tol=0: a fixed number of Sinkhorn rounds, so gradcheck's finite differences are smooth)
    "neural_ndcg": Spec(make=_slates(temperature=0.7, k=4, sinkhorn_tol=0.0), class_target_arg=None),
    "approx_ndcg": Spec(make=_slates(alpha=2.0), class_target_arg=None),
    "listnet": Spec(make=_slates(), class_target_arg=None),
    "listmle": Spec(make=_slates(), class_target_arg=None),
    "ranknet": Spec(make=_slates(), class_target_arg=None, plain_mean=False),
    "mw_loss": Spec(make=_binary_pairs, class_target_arg=None, plain_mean=False),
    **REGRESSION_SPECS,
}


def call(name: str, fn: Callable[..., Any], args: list[Any], kwargs: dict[str, Any], **extra: Any) -> Any:
    """Call ``fn``; stochastic losses get a fresh generator with a fixed seed on every call."""
    kw = dict(kwargs, **extra)
    if SPECS[name].stochastic:
        kw["generator"] = torch.Generator().manual_seed(1234)
    return fn(*args, **kw)

# losses whose gradient deliberately differs from the derivative of their value (stop-gradient terms by design);
# their gradients are checked against the authors' rule in tests/losses/test_reference.py instead of gradcheck
DETACHED_BY_DESIGN = {"aldr_kl", "ensloss", "sface"}


# overlap (dice, anyloss), adversarial (score), self / feature distillation (uskd, nd)
def _dice(dtype, gen):
    x = (torch.randn(4, 3, 5, generator=gen, dtype=torch.float64) * 2).to(dtype)
    return [x, torch.randint(0, 3, (4, 5), generator=gen)], {}


def _anyloss(dtype, gen):
    p = (0.05 + 0.9 * torch.rand(8, 2, generator=gen, dtype=torch.float64)).to(dtype)
    y = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]] * 2, dtype=dtype)
    return [p, y], {"amplifier": 10.0}


def _score(dtype, gen):
    x = _logits(dtype, gen)
    return [x, x + 0.3 * _logits(dtype, gen), _cls(gen)], {"beta": 3.0, "label_smoothing": 0.1}


def _uskd(dtype, gen):
    return [_logits(dtype, gen), _logits(dtype, gen), _cls(gen)], {"alpha": 1.0, "beta": 0.5, "mu": 0.2}


def _nd(dtype, gen):
    s, t, mu = (torch.randn(*shape, generator=gen, dtype=torch.float64) for shape in ((N, 4), (N, 4), (C, 4)))
    return [s.to(dtype), (2 * t).to(dtype), _cls(gen)], {"class_means": mu.to(dtype)}


SPECS.update({
    "dice": Spec(make=_dice, n_classes=3),
    "anyloss": Spec(make=_anyloss, logit_arg=None, class_target_arg=None),
    "score": Spec(make=_score, grad_args=(0, 1), class_target_arg=2),
    "uskd": Spec(make=_uskd, grad_args=(0, 1), class_target_arg=2),
    "nd": Spec(make=_nd, logit_arg=None, class_target_arg=2),
})
DETACHED_BY_DESIGN.add("uskd")  # p̃_y = sg[s_y² + 1 - mean s_y²]: its gradient skips the soft label, by design


# regression as classification (r2ccp, reg_cls) and imbalanced regression (srl)
def _r2ccp(dtype, gen):
    x = (torch.randn(N, 8, generator=gen, dtype=torch.float64) * 2).to(dtype)
    y = (torch.rand(N, generator=gen, dtype=torch.float64) * 5 - 2.5).to(dtype)  # a few outside the grid [-2, 2]
    return [x, y], {"min_value": -2.0, "max_value": 2.0, "q": 0.5, "entropy_weight": 0.7, "distance_weight": 2.0}


def _reg_cls(dtype, gen):
    pred, y = (torch.randn(N, generator=gen, dtype=torch.float64).to(dtype) for _ in range(2))
    label = _cls(gen)
    label[1] = -100  # a label dropped by the class-balanced subsampling
    return [pred, _logits(dtype, gen), y, label], {"lam": 3.0}


def _srl(dtype, gen):
    f = torch.randn(8, 3, generator=gen, dtype=torch.float64)
    y = torch.tensor([0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 4.0, 5.0]) + 0.1 * torch.rand(8, generator=gen)  # bin 3 empty
    u = torch.randn(20, 3, generator=gen, dtype=torch.float64)
    sur = torch.randn(6, 3, generator=gen, dtype=torch.float64)
    return [f.to(dtype), y.to(dtype)], {"label_grid": torch.arange(6.0), "points": u.to(dtype),
                                        "surrogates": sur.to(dtype), "contrastive_weight": 1.0,
                                        "enveloping_weight": 0.5, "homogeneity_weight": 0.3}


SPECS.update({
    "r2ccp": Spec(make=_r2ccp, class_target_arg=None),
    "reg_cls": Spec(make=_reg_cls, grad_args=(0, 1), logit_arg=1, class_target_arg=3, plain_mean=False),
    "srl": Spec(make=_srl, class_target_arg=None),
})
DETACHED_BY_DESIGN.add("srl")  # the contrastive term compares features with sg[centroids], by design


# multi-token prediction (multi_token.py), censored regression and aggregate responses (censored_aggregate.py)
def _mtp(dtype, gen):
    x = (torch.randn(2, 3, 6, C, generator=gen, dtype=torch.float64) * 2).to(dtype)  # D = 2 depths, B = 3, T = 6
    tokens = torch.randint(0, C, (3, 6), generator=gen)
    tokens[1, 4] = -100
    return [x, tokens], {"weight": 0.3}


def _ipcw(dtype, gen):
    x = torch.randn(8, generator=gen, dtype=torch.float64).to(dtype)
    y = torch.tensor([0.3, 1.2, 0.7, 2.5, 1.9, 0.1, 3.1, 1.2], dtype=torch.float64).to(dtype)
    return [x, y, torch.tensor([1, 0, 1, 1, 0, 1, 0, 1])], {}


def _aggregate(dtype, gen):
    x = torch.randn(7, generator=gen, dtype=torch.float64).to(dtype)
    ybar = torch.randn(3, generator=gen, dtype=torch.float64).to(dtype)
    return [x, ybar, torch.tensor([0, 1, 0, 2, 1, 0, 2])], {"rho": 0.4}


SPECS.update({
    "mtp_loss": Spec(make=_mtp, plain_mean=False),
    "ipcw_loss": Spec(make=_ipcw, class_target_arg=None, logit_arg=None, plain_mean=False),
    "aggregate_loss": Spec(make=_aggregate, class_target_arg=None, logit_arg=None),
})


# cascade ranking (cascade_ranking.py): stage scores (S, B, n), ground-truth order (B, n), padding mask
def _cascade(dtype, gen):
    x = (torch.randn(2, 4, 8, generator=gen, dtype=torch.float64) * 2).to(dtype)
    y = torch.randint(0, 5, (4, 8), generator=gen).to(torch.float64)  # ties included
    mask = torch.rand(4, 8, generator=gen) > 0.25
    mask[:, 2:6] = True  # ≥ 4 real items per query: the single-stage terms (m > top_k) are active
    mask[1, 0] = False  # padding at the front of a query too
    return [x, y, mask], {"top_k": 3, "tau": 2.0}


SPECS["lcron"] = Spec(make=_cascade, class_target_arg=None)
DETACHED_BY_DESIGN.add("lcron")  # h = P_top / (sg[column sum of P] + 1e-6): the authors' detached normaliser


# LegendreTron (legendretron.py): inner-model outputs (N, C − 1), class index in [0, C − 1] and the learned link
# (a keyword option holding parameters); the link is built from the spec's generator without touching the global
# RNG and initialised on a batch of its own, so every call of the common suites sees the same fixed link
def _legendretron(dtype, gen):
    from losslab.losses import LegendreTronLink

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
        link = LegendreTronLink(C, hidden=4, dtype=torch.float64)
    link(torch.randn(16, C - 1, generator=gen, dtype=torch.float64) * 2)  # the authors' data init, first batch
    x = (torch.randn(N, C - 1, generator=gen, dtype=torch.float64) * 2).to(dtype)
    t = _cls(gen)
    t[0] = C - 1  # the reference class (logit fixed at 0) is a valid target
    return [x, t], {"link": link}


SPECS["legendretron"] = Spec(make=_legendretron)
