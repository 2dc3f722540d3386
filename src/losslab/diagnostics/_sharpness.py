"""Sharpness (largest Hessian eigenvalue) tracked during training and compared with the edge of stability."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from losslab._errors import ConfigError, DataError
from losslab.diagnostics._common import (
    LossFn,
    check_batch,
    check_float,
    check_int,
    check_loss_fn,
    check_model,
    make_generator,
)
from losslab.diagnostics._eigen import lanczos
from losslab.diagnostics._hessian import DatasetHessianOperator, HessianOperator

__all__ = ["SharpnessRecord", "SharpnessTracker", "adam_preconditioned_sharpness", "stability_threshold"]


def stability_threshold(lr: float, momentum: float = 0.0, *, nesterov: bool = False) -> float:
    r"""Largest curvature for which (momentum) gradient descent is stable on a quadratic.

    - gradient descent: :math:`2/\eta`;
    - heavy-ball momentum :math:`\beta` (``torch.optim.SGD`` with ``dampening=0``): :math:`(2+2\beta)/\eta`;
    - Nesterov momentum (``nesterov=True``): :math:`(2+2\beta)/((1+2\beta)\eta)`.

    Each follows from the characteristic polynomial of the update on :math:`\tfrac12\lambda x^2` having a root
    at :math:`-1`; the tests check the divergence boundary numerically with ``torch.optim.SGD``.

    Args:
        lr: learning rate :math:`\eta > 0`.
        momentum: :math:`\beta \in [0, 1)`.
        nesterov: Nesterov momentum as in ``torch.optim.SGD``.

    Returns:
        The threshold on :math:`\lambda_{\max}`.

    Example:
        >>> stability_threshold(0.1), round(stability_threshold(0.1, 0.9), 6)
        (20.0, 38.0)

    References:
        Cohen, Kaur, Li, Kolter & Talwalkar, "Gradient Descent on Neural Networks Typically Occurs at the Edge of
        Stability", arXiv:2103.00065, 2021.
    """
    eta = check_float(lr, "lr", low=0.0, low_open=True)
    beta = check_float(momentum, "momentum", low=0.0, high=1.0, high_open=True)
    if nesterov:
        return (2 + 2 * beta) / ((1 + 2 * beta) * eta)
    return (2 + 2 * beta) / eta


class _Preconditioned:
    """The symmetric operator :math:`D^{1/2} H D^{1/2}`, similar to :math:`D H` (same eigenvalues)."""

    def __init__(self, op: Any, d: torch.Tensor) -> None:
        self.op, self.s = op, d.sqrt().to(torch.float64)
        self.n, self.device, self.n_matvec = op.n, op.device, 0

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        self.n_matvec += 1
        return self.s * self.op.matvec(self.s * v)


def _adam_settings(optimizer: torch.optim.Optimizer, names: list[str], model: nn.Module,
                   ) -> tuple[torch.Tensor, float, float] | None:
    """``(P^{-1} diagonal, beta1, lr)`` for a torch Adam/AdamW, or ``None`` before the first step."""
    named = dict(model.named_parameters())
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    pieces = []
    beta1 = lr = None
    for n in names:
        p = named[n]
        g = group_of.get(id(p))
        if g is None:
            raise ConfigError(f"parameter {n!r} is not handled by the optimizer; pass the optimizer of this model")
        state = optimizer.state.get(p, {})
        key = "max_exp_avg_sq" if g.get("amsgrad", False) else "exp_avg_sq"
        if key not in state:
            return None
        b1, b2 = g["betas"]
        step = float(state["step"])
        vhat = state[key].detach().to(torch.float64) / (1 - b2 ** step)
        pieces.append((g["lr"] / (vhat.sqrt() + g["eps"])).reshape(-1))
        beta1, lr = float(b1), float(g["lr"])
    assert beta1 is not None and lr is not None
    return torch.cat(pieces), beta1, lr


def adam_preconditioned_sharpness(model: nn.Module, loss_fn: LossFn, batch: Any,
                                  optimizer: torch.optim.Optimizer, *, tol: float = 1e-6, max_iter: int = 50,
                                  mode: str = "eval", seed: int | torch.Generator = 0) -> tuple[float, float]:
    r"""Preconditioned sharpness :math:`\lambda_{\max}(P^{-1}H)` of Adam and its stability threshold.

    :math:`P = \mathrm{diag}(\sqrt{\hat v} + \epsilon)/\eta` with :math:`\hat v = v/(1-\beta_2^t)` read from the
    optimizer's state (``exp_avg_sq``, ``step``, ``eps``, ``lr``), so that Adam's step is
    :math:`P^{-1}\hat m`. The eigenvalue is computed on the symmetric :math:`P^{-1/2} H P^{-1/2}` (same
    spectrum). The threshold is :math:`(2+2\beta_1)/(1-\beta_1)` (38 for :math:`\beta_1 = 0.9`): that of
    heavy-ball momentum with EMA-weighted gradients. AdamW's decoupled decay is ignored.

    Args:
        model, loss_fn, batch, mode: as in :class:`HessianOperator`.
        optimizer: a ``torch.optim.Adam``/``AdamW`` (or any optimizer with the same state keys) that has stepped.
        tol, max_iter, seed: Lanczos settings (see :func:`lanczos`).

    Returns:
        ``(preconditioned sharpness, threshold)``.

    Example:
        >>> import torch
        >>> model = torch.nn.Linear(2, 1, bias=False)
        >>> opt = torch.optim.Adam(model.parameters(), lr=0.1)
        >>> loss_fn = lambda m, b: (m(b) ** 2).mean()
        >>> loss_fn(model, torch.eye(2)).backward(); opt.step()
        >>> value, threshold = adam_preconditioned_sharpness(model, loss_fn, torch.eye(2), opt)
        >>> round(threshold, 6)
        38.0

    References:
        Cohen, Ghorbani, Krishnan, Agarwal, Medapati, Badura, Suo, Cardoze, Nado, Dahl & Gilmer, "Adaptive
        Gradient Methods at the Edge of Stability", arXiv:2207.14484, 2022 (definition as stated in the issue
        tracker of this library; the paper text was not available to check the bias-correction convention).
    """
    op = HessianOperator(model, loss_fn, batch, mode=mode)
    settings = _adam_settings(optimizer, op.names, model)
    if settings is None:
        raise ConfigError("the optimizer has no Adam state yet (exp_avg_sq); call it after the first optimizer.step()")
    d, beta1, _lr = settings
    res = lanczos(_Preconditioned(op, d.to(op.device)), 1, which="LA", tol=tol,
                  max_iter=min(max_iter, op.n), seed=seed)
    return float(res.eigenvalues[0]), (2 + 2 * beta1) / (1 - beta1)


@dataclass
class SharpnessRecord:
    """One measurement: the step, :math:`\\lambda_{\\max}(H)`, the relevant threshold and their ratio.

    ``ratio = value / threshold`` where ``value`` is the sharpness (GD, momentum) or the preconditioned sharpness
    (Adam); ``ratio >= 1`` means at or beyond the edge of stability.
    """

    step: int
    loss: float
    sharpness: float
    preconditioned: float | None
    threshold: float | None
    ratio: float | None
    rule: str
    lr: float | None
    n_matvec: int

    def to_dict(self) -> dict[str, Any]:
        """A flat dict (for a monitor sink or JSON)."""
        return asdict(self)


class SharpnessTracker:
    r"""Measure the sharpness every ``every`` steps from a plain training loop (a callback object).

    Call ``tracker(model, step)`` (or ``tracker.step(model, step)``) after each optimizer step; on steps that are
    multiples of ``every`` it computes :math:`\lambda_{\max}` of the loss Hessian on the *fixed* ``batch`` by
    Lanczos (``which="LA"``) and returns a :class:`SharpnessRecord`, else ``None``. With an optimizer it also
    reports the stability threshold: :math:`2/\eta` for SGD, :math:`(2+2\beta)/\eta` with heavy-ball momentum,
    :math:`(2+2\beta)/((1+2\beta)\eta)` with Nesterov, and for Adam/AdamW the preconditioned sharpness against
    :math:`(2+2\beta_1)/(1-\beta_1)`. Consecutive Lanczos runs are seeded from one generator (reproducible).

    Args:
        loss_fn: ``loss_fn(model, batch) -> scalar``.
        batch: the fixed batch (Cohen et al. use the first 5000 training examples; a mini-batch sharpness differs
            from the full-batch one).
        batches: instead of ``batch``, several batches whose size-weighted Hessians are summed in turn
            (:class:`DatasetHessianOperator`), for a full-batch sharpness that does not fit in one pass.
        every: measurement period in steps.
        optimizer: optional ``torch.optim.SGD`` (``dampening=0``), ``Adam`` or ``AdamW`` (``amsgrad`` uses
            ``max_exp_avg_sq``) whose hyperparameters set the threshold; for any other optimizer the sharpness is
            recorded with ``rule="unsupported"`` and no threshold.
        tol, max_iter: Lanczos settings.
        mode: model mode during the measurement (see :class:`HessianOperator`).
        seed: int or :class:`torch.Generator`.

    Example:
        >>> import torch
        >>> model = torch.nn.Linear(2, 1)
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> batch = (torch.randn(8, 2, generator=torch.Generator().manual_seed(0)), torch.zeros(8, 1))
        >>> loss_fn = lambda m, b: ((m(b[0]) - b[1]) ** 2).mean()
        >>> tracker = SharpnessTracker(loss_fn, batch, every=5, optimizer=opt)
        >>> rec = tracker(model, step=0)
        >>> rec.threshold
        20.0

    References:
        Cohen et al., "Gradient Descent on Neural Networks Typically Occurs at the Edge of Stability",
        arXiv:2103.00065, 2021; Cohen et al., "Adaptive Gradient Methods at the Edge of Stability",
        arXiv:2207.14484, 2022; Gilmer et al., "A Loss Curvature Perspective on Training Instability in Deep
        Learning", arXiv:2110.04369, 2021.

    Notes:
        Cohen et al.'s code calls SciPy ``eigsh`` with its default ``which="LM"``; here the largest algebraic
        eigenvalue is used so that negative curvature never masquerades as sharpness.
    """

    def __init__(self, loss_fn: LossFn, batch: Any = None, *, batches: Sequence[Any] | None = None, every: int = 10,
                 optimizer: torch.optim.Optimizer | None = None, tol: float = 1e-5, max_iter: int = 50,
                 mode: str = "eval", seed: int | torch.Generator = 0) -> None:
        self.loss_fn = check_loss_fn(loss_fn)
        if (batch is None) == (batches is None):
            raise ConfigError("pass exactly one of batch=... (one fixed batch) or batches=[...] (summed in turn)")
        if batches is not None:
            if not isinstance(batches, (list, tuple)) or not batches:
                raise DataError("batches must be a non-empty list or tuple of batches")
            for b in batches:
                check_batch(b)
        else:
            check_batch(batch)
        self.batch, self.batches = batch, None if batches is None else list(batches)
        self.every = check_int(every, "every", low=1)
        if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
            raise ConfigError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        self.optimizer = optimizer
        self._family = "none"
        if isinstance(optimizer, torch.optim.SGD):
            if any(float(g.get("dampening", 0.0)) != 0.0 for g in optimizer.param_groups):
                raise ConfigError("the SGD thresholds assume dampening=0; use torch.optim.SGD(..., dampening=0)")
            self._family = "sgd"
        elif isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):
            self._family = "adam"
        elif optimizer is not None:
            self._family = "unsupported"  # the sharpness is still recorded, with threshold None
        self.tol = check_float(tol, "tol", low=0.0, low_open=True)
        self.max_iter = check_int(max_iter, "max_iter", low=1)
        self.mode = mode
        self._gen = make_generator(seed)
        self.records: list[SharpnessRecord] = []

    def __call__(self, model: nn.Module, step: int) -> SharpnessRecord | None:
        """Measure at ``step`` if it is a multiple of ``every``; append and return the record."""
        check_model(model)
        check_int(step, "step", low=0)
        if step % self.every:
            return None
        op: Any
        if self.batches is not None:
            op = DatasetHessianOperator(model, self.loss_fn, self.batches, mode=self.mode)
        else:
            op = HessianOperator(model, self.loss_fn, self.batch, mode=self.mode)
        res = lanczos(op, 1, which="LA", tol=self.tol, max_iter=min(self.max_iter, op.n), seed=self._gen)
        sharp = float(res.eigenvalues[0])
        cost = res.n_matvec
        pre = threshold = lr = None
        rule = "none"
        opt = self.optimizer
        if opt is not None:
            group = opt.param_groups[0]
            lr = float(group["lr"])
            if self._family == "adam":
                rule = "adam"
                settings = _adam_settings(opt, op.names, model)
                if settings is not None:
                    d, beta1, _ = settings
                    pres = lanczos(_Preconditioned(op, d.to(op.device)), 1, which="LA", tol=self.tol,
                                   max_iter=min(self.max_iter, op.n), seed=self._gen)
                    pre, threshold = float(pres.eigenvalues[0]), (2 + 2 * beta1) / (1 - beta1)
                    cost += pres.n_matvec
            elif self._family == "sgd":
                beta = float(group.get("momentum", 0.0))
                nesterov = bool(group.get("nesterov", False))
                rule = "nesterov" if nesterov else ("heavy-ball" if beta > 0 else "gd")
                threshold = stability_threshold(lr, beta, nesterov=nesterov)
            else:
                rule = "unsupported"
        value = pre if rule == "adam" else sharp
        ratio = None if threshold is None or value is None else value / threshold
        rec = SharpnessRecord(step, op.loss, sharp, pre, threshold, ratio, rule, lr, cost)
        self.records.append(rec)
        return rec

    step = __call__

    def state_dict(self) -> dict[str, Any]:
        """Records and generator state, for checkpointing."""
        return {"records": [asdict(r) for r in self.records], "generator": self._gen.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.records = [SharpnessRecord(**r) for r in state["records"]]
        self._gen.set_state(state["generator"])

    def edge_crossings(self) -> list[int]:
        """Steps at which ``ratio`` first reached 1 after being below it (entering the edge of stability)."""
        out, below = [], True
        for r in self.records:
            if r.ratio is None or math.isnan(r.ratio):
                continue
            if r.ratio >= 1 and below:
                out.append(r.step)
            below = r.ratio < 1
        return out
