"""PDS data-quality scores (Gu et al.): the co-state of a short proxy SGD run, projected on each example's
gradient; exact, with Hessian-vector products and per-example directional derivatives from :mod:`torch.func`."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from losslab._errors import ConfigError, DataError
from losslab._progress import progress
from losslab._provenance import provenance
from losslab.diagnostics._common import (
    call_model,
    check_batch,
    check_choice,
    check_float,
    check_int,
    check_loss_fn,
    check_model,
    iter_tensors,
    make_generator,
    trainable_names,
)

__all__ = ["PDSResult", "pds_scores", "pds_select"]

Params = dict[str, torch.Tensor]
Rows = torch.Tensor | Sequence[torch.Tensor]
PerExampleLoss = Callable[[nn.Module, Any], torch.Tensor]


@dataclass(frozen=True)
class PDSResult:
    """Scores and trajectory of :func:`pds_scores`.

    Attributes:
        scores: ``(N,)`` float64 PDS score of every scored example (``score_data`` or ``train_data``), in row
            order; **higher = more useful** for lowering the target loss.
        target_losses: ``(T + 1,)`` float64 target loss :math:`J(\\theta_t)` of the proxy run, ``t = 0..T``.
        train_losses: ``(T,)`` float64 mean training-batch loss of step ``t`` (at :math:`\\theta_t`).
        batch_indices: ``(T, batch_size)`` int64 rows of ``train_data`` used at each step.
        provenance: versions, time and settings.
    """

    scores: torch.Tensor
    target_losses: torch.Tensor
    train_losses: torch.Tensor
    batch_indices: torch.Tensor
    provenance: dict[str, Any] = field(default_factory=dict)

    def select(self, ratio: float = 0.4, *, tau: float = 0.1, clip: float | None = 3.0,
               seed: Any = 0) -> torch.Tensor:
        """Indices kept by :func:`pds_select` applied to :attr:`scores`."""
        return pds_select(self.scores, ratio, tau=tau, clip=clip, seed=seed)


def _rows(data: Any, name: str) -> tuple[tuple[torch.Tensor, ...], bool, int]:
    """The tensors of ``data`` (one tensor or a tuple/list of them with a common first dimension), checked."""
    if isinstance(data, torch.Tensor):
        tensors, single = (data,), True
    elif isinstance(data, (tuple, list)) and data and all(isinstance(t, torch.Tensor) for t in data):
        tensors, single = tuple(data), False
    else:
        raise ConfigError(f"{name} must be a tensor or a tuple of tensors whose rows are examples (e.g. "
                          f"(inputs, targets)), got {type(data).__name__}")
    if any(t.dim() == 0 for t in tensors) or len({t.shape[0] for t in tensors}) != 1:
        raise DataError(f"the tensors of {name} must share their first (example) dimension, got shapes "
                        f"{[tuple(t.shape) for t in tensors]}")
    n = tensors[0].shape[0]
    if n == 0:
        raise DataError(f"{name} holds no examples; pass at least one row")
    for t in tensors:
        if (t.is_floating_point() or t.is_complex()) and not bool(torch.isfinite(t).all()):
            raise DataError(f"{name} holds NaN/Inf values; drop or repair those examples first")
    return tensors, single, n


def _take(tensors: tuple[torch.Tensor, ...], single: bool, idx: torch.Tensor, device: torch.device) -> Any:
    out = tuple(t[idx.to(t.device)].to(device) for t in tensors)
    return out[0] if single else out


def _batch_order(n: int, batch_size: int, steps: int, shuffle: bool, gen: torch.Generator) -> torch.Tensor:
    """``(steps, batch_size)`` rows: consecutive batches of each epoch (the last partial batch dropped)."""
    per_epoch = n // batch_size
    order, perm = [], torch.arange(n)
    for t in range(steps):
        k = t % per_epoch
        if k == 0 and shuffle:
            perm = torch.randperm(n, generator=gen)
        order.append(perm[k * batch_size:(k + 1) * batch_size])
    return torch.stack(order)


def _losses(model: nn.Module, loss_fn: PerExampleLoss, params: Params, batch: Any, rows: int) -> torch.Tensor:
    out = call_model(model, loss_fn, batch, params, "eval")
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (rows,):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise DataError(f"loss_fn(model, batch) must return one loss per example, shape ({rows},), got {shape}; "
                        "return the unreduced losses (e.g. reduction='none')")
    return out


def _finite(value: torch.Tensor | Params, what: str) -> None:
    tensors = list(value.values()) if isinstance(value, dict) else [value]
    if not bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all()):  # one host sync
        raise DataError(f"{what} is NaN/Inf; the proxy run diverged or the data are bad — lower lr or steps, or "
                        "check the losses of the examples involved")


def _count(batch: Any) -> int:
    """Rows of a target batch: the first dimension of its first tensor."""
    first = next((t for t in iter_tensors(batch) if t.dim() > 0), None)
    if first is None:
        raise DataError("every target batch must be a tensor or hold tensors whose first dimension is the example")
    return int(first.shape[0])


def pds_scores(model: nn.Module, loss_fn: PerExampleLoss, train_data: Rows, target_batches: Sequence[Any], *,
               steps: int, lr: float, batch_size: int, interval: int = 1, score_data: Rows | None = None,
               objective: str = "area", shuffle: bool = False, seed: Any = 0, score_batch_size: int = 256,
               quiet: bool | None = None) -> PDSResult:
    r"""PDS data-quality scores from a proxy SGD run and its co-state (Pontryagin's maximum principle).

    **Proxy run.** Starting from the model's parameters :math:`\theta_0` (a copy; the model is not changed),
    ``steps`` = :math:`T` steps of SGD with constant learning rate :math:`\eta`:
    :math:`\theta_{t+1} = \theta_t - \eta\nabla L_t(\theta_t)`, :math:`L_t` the mean of ``loss_fn`` over the
    ``batch_size`` rows of ``train_data`` of step ``t`` (consecutive batches, the last partial batch of an epoch
    dropped, epochs repeated as needed; ``shuffle=True`` permutes each epoch from ``seed``). Every
    :math:`\theta_t` is kept (memory: :math:`T + 1` copies of the trainable parameters).

    **Co-state.** With :math:`J` the mean per-example ``loss_fn`` over all ``target_batches`` and
    :math:`H_t = \nabla^2 L_t(\theta_t)`,

    .. math:: \lambda_T = \nabla J(\theta_T), \qquad
              \lambda_t = \nabla J(\theta_t) + \lambda_{t+1} - \eta H_t\lambda_{t+1}

    (``objective="final"`` drops the :math:`\nabla J(\theta_t)` terms for :math:`t < T`).

    **Scores.** For every scored example :math:`n` (``score_data``, default ``train_data``: the authors' proxy
    set) and every step :math:`t \in \{0, k, 2k, \dots\} < T` (``interval`` = :math:`k`),

    .. math:: \gamma_n = \sum_t \eta\,\langle\lambda_{t+1}, \nabla\ell(x_n, \theta_t)\rangle .

    This is exactly :math:`-\partial\mathcal{J}/\partial\epsilon_n` at :math:`\epsilon = 0` when the loss of
    every scored step becomes :math:`L_t + \sum_n \epsilon_n\ell(x_n, \cdot)`, with
    :math:`\mathcal{J} = \sum_{t=1}^T J(\theta_t)` (``"area"``, the authors') or :math:`J(\theta_T)`
    (``"final"``). With full-batch steps (``batch_size = N``, scored set = training set, ``interval=1``) it is
    :math:`-\partial\mathcal{J}/\partial\gamma_n` for the paper's weighted loss :math:`\sum_n\gamma_n\ell_n` at
    :math:`\gamma_n = 1/N`: **higher = more useful** (tested against autograd through the unrolled run).

    Args:
        model: the proxy model at :math:`\theta_0` (all parameters with ``requires_grad`` are trained); it runs
            in eval mode (dropout off, BatchNorm on running statistics), so examples are independent.
        loss_fn: ``loss_fn(model, batch) -> (B,)`` per-example losses; ``batch`` has the structure of
            ``train_data`` (a tensor, or a tuple of tensors) restricted to ``B`` rows.
        train_data: a tensor or a tuple ``(inputs, targets, ...)`` of tensors; rows are examples.
        target_batches: a non-empty list of batches for ``loss_fn`` (the target set, e.g. ``[(x_dev, y_dev)]``).
        steps: :math:`T \ge 1` SGD steps (the authors: 100).
        lr: constant learning rate :math:`\eta > 0` (the authors: 0.008).
        batch_size: rows per step, ``<= N`` (the authors: 8 per GPU x 2 accumulation steps, 1024 tokens each).
        interval: score every ``interval``-th step (the authors' ``compute_ct_interval``: 10).
        score_data: the examples to score (same structure as ``train_data``); None: the rows of ``train_data``.
        objective: ``"area"`` (sum of the target losses over the run, the authors') or ``"final"``.
        shuffle, seed: the batch order (``seed``: an int or a :class:`torch.Generator`; the global RNG is
            never used).
        score_batch_size: rows per forward-mode pass when scoring.
        quiet: progress bar control (see :func:`losslab._progress.progress`).

    Returns:
        :class:`PDSResult` (``scores`` float64 on the CPU).

    Raises:
        ConfigError: bad ``steps``, ``lr``, ``batch_size`` (``> N``), ``interval``, ``objective``, ``seed``.
        DataError: empty or misshapen data, NaN/Inf inputs, a ``loss_fn`` that does not return ``(B,)``, and a
            loss, gradient or co-state that becomes NaN/Inf (the message names the step).

    Example:
        >>> import torch
        >>> net = torch.nn.Linear(1, 1, bias=False)
        >>> _ = torch.nn.init.zeros_(net.weight)
        >>> x = torch.tensor([[1.0], [1.0], [1.0]]); y = torch.tensor([[1.0], [1.0], [-1.0]])
        >>> mse = lambda m, b: 0.5 * ((m(b[0]) - b[1]) ** 2).sum(1)
        >>> r = pds_scores(net, mse, (x, y), [(x[:1], y[:1])], steps=3, lr=0.1, batch_size=3, quiet=True)
        >>> [round(s, 4) for s in r.scores.tolist()]   # the example that contradicts the target scores lowest
        [0.5095, 0.5095, -0.5328]

    References:
        Gu, Dong, Wang, Hao, Dong, Wei, Huang, "Data Selection via Optimal Control for Language Models",
        arXiv:2410.07064, ICLR 2025.

    Notes:
        Follows the authors' code (``microsoft/LMOps``, ``data_selection/pmp_solver/trainer.py`` ``GammaTrainer``,
        ``grad_utils.py``): plain SGD, constant lr, no shuffling, ``drop_last``; the backward loop at
        :math:`\theta_t` uses :math:`\lambda_{t+1}` and the training batch of step ``t`` for the
        Hessian-vector product (forward-over-reverse ``jvp`` of ``grad``), adds :math:`\nabla J(\theta_t)`
        every step, and scores *all* proxy examples (not only the batch of step ``t``) at steps with
        ``t % compute_ct_interval == 0``, including ``t = 0``. Differences: :math:`J` is the mean over all target
        examples (the authors average batch means, the same for equal batches); all :math:`\theta_t` are kept
        in memory (the authors store :math:`\sqrt T` checkpoints and recompute); no distributed training. The
        model and ``loss_fn`` must support forward-mode AD (:func:`torch.func.jvp`), as the authors' code does.
    """
    check_model(model)
    check_loss_fn(loss_fn)
    t_steps = check_int(steps, "steps", hint="; the number of proxy SGD steps, e.g. 100")
    eta = check_float(lr, "lr", low=0.0, low_open=True)
    every = check_int(interval, "interval")
    check_choice(objective, "objective", ("area", "final"))
    chunk = check_int(score_batch_size, "score_batch_size")
    if not isinstance(shuffle, bool):
        raise ConfigError(f"shuffle must be a bool, got {shuffle!r}")
    gen = make_generator(seed)
    train, train_single, n_train = _rows(train_data, "train_data")
    bs = check_int(batch_size, "batch_size", high=n_train, hint=f"; train_data has {n_train} rows")
    scored, scored_single, n_score = (train, train_single, n_train) if score_data is None else \
        _rows(score_data, "score_data")
    if isinstance(target_batches, torch.Tensor) or (isinstance(target_batches, tuple) and target_batches
                                                    and all(isinstance(b, torch.Tensor) for b in target_batches)):
        raise ConfigError("target_batches must be a list of batches; wrap one batch in a list: [(x_dev, y_dev)]")
    if not isinstance(target_batches, (list, tuple)) or not target_batches:
        raise DataError("target_batches must be a non-empty list of batches for loss_fn (the target set)")
    for b in target_batches:
        check_batch(b)
    names = trainable_names(model)
    named = dict(model.named_parameters())
    theta: Params = {n: named[n].detach().clone() for n in names}
    device = theta[names[0]].device
    order = _batch_order(n_train, bs, t_steps, shuffle, gen)

    def per_example(q: Params, batch: Any, rows: int) -> torch.Tensor:
        return _losses(model, loss_fn, q, batch, rows)

    def summed(q: Params, batch: Any, rows: int) -> torch.Tensor:
        return per_example(q, batch, rows).sum()

    def batch_loss(q: Params, batch: Any) -> torch.Tensor:
        return per_example(q, batch, bs).mean()

    def directional(q: Params, lam: Params, batch: Any, rows: int) -> torch.Tensor:
        """The derivatives of the per-example losses along ``lam``: one forward-mode pass for the whole batch."""
        return torch.func.jvp(lambda u: per_example(u, batch, rows), (q,), (lam,))[1]

    def hvp(q: Params, lam: Params, batch: Any) -> Params:
        """Hessian of the batch loss times ``lam``: forward-over-reverse, as the authors' ``hvp_fwdrev``."""
        return torch.func.jvp(lambda u: torch.func.grad(batch_loss)(u, batch), (q,), (lam,))[1]

    def target(q: Params, with_grad: bool) -> tuple[Params | None, torch.Tensor]:
        """``J`` (mean per-example target loss) and, if asked, its gradient."""
        count, total, grads = 0, torch.zeros((), dtype=torch.float64), None
        for b in target_batches:
            rows = _count(b)
            count += rows
            if with_grad:
                g, v = torch.func.grad_and_value(summed)(q, b, rows)
                grads = g if grads is None else {k: grads[k] + g[k] for k in g}
            else:
                with torch.no_grad():
                    v = summed(q, b, rows)
            total = total + v.detach().to(torch.float64).cpu()
        return (None if grads is None else {k: g / count for k, g in grads.items()}), total / count

    thetas: list[Params | None] = [theta]
    train_losses = torch.zeros(t_steps, dtype=torch.float64)
    for t in progress(range(t_steps), total=t_steps, desc="pds: proxy run", quiet=quiet):
        batch = _take(train, train_single, order[t], device)
        g, v = torch.func.grad_and_value(batch_loss)(theta, batch)
        _finite(v.detach(), f"the training loss at proxy step {t} (of {t_steps})")
        _finite(g, f"the training gradient at proxy step {t} (of {t_steps})")
        train_losses[t] = float(v)
        theta = {k: theta[k] - eta * g[k] for k in names}
        thetas.append(theta)

    scores = torch.zeros(n_score, dtype=torch.float64)
    target_losses = torch.zeros(t_steps + 1, dtype=torch.float64)
    lam: Params = {}
    for t in progress(range(t_steps, -1, -1), total=t_steps + 1, desc="pds: co-state", quiet=quiet):
        p = thetas[t]
        assert p is not None
        thetas[t + 1:] = []  # free the parameters no longer needed
        g_j, j = target(p, with_grad=(objective == "area" and t > 0) or t == t_steps)  # unused at t = 0
        _finite(j, f"the target loss at proxy step {t} (of {t_steps})")
        target_losses[t] = j
        if t == t_steps:
            assert g_j is not None
            lam = g_j
            _finite(lam, f"the target gradient at proxy step {t}")
            continue
        if t % every == 0:  # lam is lambda_{t+1} here
            for idx in torch.arange(n_score).split(chunk):
                d = directional(p, lam, _take(scored, scored_single, idx, device), len(idx))
                _finite(d, f"a per-example directional derivative at proxy step {t}")
                scores[idx] += eta * d.detach().to(torch.float64).cpu()
        if t == 0:
            break  # lambda_0 is not needed
        batch = _take(train, train_single, order[t], device)
        hv = hvp(p, lam, batch)
        lam = {k: lam[k] - eta * hv[k] + (g_j[k] if g_j is not None else 0.0) for k in names}
        _finite(lam, f"the co-state at proxy step {t}")
    prov = provenance(method="pds", steps=t_steps, lr=eta, batch_size=bs, interval=every, objective=objective,
                      shuffle=shuffle, seed=seed if isinstance(seed, numbers.Integral) else "generator",
                      n_train=n_train, n_score=n_score, parameters=sum(t.numel() for t in theta.values()))
    return PDSResult(scores=scores, target_losses=target_losses, train_losses=train_losses,
                     batch_indices=order, provenance=prov)


def pds_select(scores: Any, ratio: float = 0.4, *, tau: float = 0.1, clip: float | None = 3.0,
               seed: Any = 0) -> torch.Tensor:
    r"""Indices kept by PDS selection: Gumbel top-k on z-normalised scores.

    :math:`z = (s - \bar s)/\sigma` (population standard deviation; all equal: :math:`z = 0`), clipped to
    ``[-clip, clip]``; then the ``floor(ratio * n)`` (at least one) largest :math:`z/\tau + G`,
    :math:`G = -\log(-\log U)`, :math:`U \sim \mathcal U(0, 1)` drawn in float64 from ``seed``. Small
    :math:`\tau` keeps the top scores; large :math:`\tau` samples nearly uniformly.

    Args:
        scores: ``(n,)`` scores, higher = better (e.g. :attr:`PDSResult.scores`).
        ratio: fraction kept, in ``(0, 1]`` (the authors' ``ds-ratio``: 0.4).
        tau: Gumbel temperature ``> 0`` (the authors: 0.1), dividing the scores before the noise is added.
        clip: clip the z-scores at ``±clip`` (the authors' scorer targets: 3); None: no clipping.
        seed: an int or a :class:`torch.Generator` (the global RNG is never used).

    Returns:
        Sorted int64 indices of the kept examples.

    Raises:
        DataError: scores that are not a non-empty 1-D array of finite numbers.
        ConfigError: ``ratio`` outside ``(0, 1]``, ``tau <= 0``, ``clip <= 0``, a bad seed.

    Example:
        >>> pds_select([0.0, 3.0, 1.0, 2.0, -1.0], 0.4, tau=1e-3).tolist()   # tiny tau: the top 2
        [1, 3]

    References:
        Gu, Dong, Wang, Hao, Dong, Wei, Huang, "Data Selection via Optimal Control for Language Models",
        arXiv:2410.07064, ICLR 2025.

    Notes:
        The authors (``microsoft/LMOps``, ``data_selection/tools/prepare_classifier_train_data.py``) z-normalise
        the proxy scores with ``np.std`` and clip them to ``[-3, 3]`` as targets for a data scorer, whose
        predictions on the corpus ``tools/select_pretrain_data.py`` divides by the temperature, perturbs with
        Gumbel noise and cuts at ``int(ds_ratio * n)``. Here the normalised scores stand in for the scorer's
        predictions. :func:`prune` is not reused: it keeps ``round`` rather than ``floor`` of the fraction and adds
        no noise.
    """
    s = scores.detach().cpu() if isinstance(scores, torch.Tensor) else torch.as_tensor(np.asarray(scores))
    if s.dim() != 1 or s.numel() == 0 or s.is_complex() or s.dtype == torch.bool:
        raise DataError(f"scores must be a non-empty 1-D array of real numbers, got shape {tuple(s.shape)}")
    s = s.to(torch.float64)
    if not bool(torch.isfinite(s).all()):
        raise DataError("scores hold NaN/Inf; score those examples again or drop them before selecting")
    r = check_float(ratio, "ratio", low=0.0, high=1.0, low_open=True)
    temp = check_float(tau, "tau", low=0.0, low_open=True)
    bound = None if clip is None else check_float(clip, "clip", low=0.0, low_open=True)
    gen = make_generator(seed)
    sd = s.std(correction=0)
    z = (s - s.mean()) / sd if sd > 0 else torch.zeros_like(s)
    if bound is not None:
        z = z.clamp(-bound, bound)
    u = torch.rand(s.numel(), generator=gen, dtype=torch.float64).clamp_min(torch.finfo(torch.float64).tiny)
    noisy = z / temp - torch.log(-torch.log(u))
    k = max(1, math.floor(r * s.numel()))
    return torch.sort(torch.sort(noisy, descending=True, stable=True).indices[:k]).values
