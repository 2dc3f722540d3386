"""Skip the optimizer update on a loss or gradient-norm spike (OLMo-core ``SkipStepOptimizer`` idea, any optimizer)."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, Literal

import torch

from losslab._errors import ConfigError, LosslabError
from losslab.stability.spikes import NonFiniteDetector, SpikeDetector, SpikeEvent, ZScoreDetector

__all__ = ["SkipStepOnSpike", "TrainingDivergedError", "total_grad_norm"]


class TrainingDivergedError(LosslabError, RuntimeError):
    """Training kept producing spikes or non-finite values and a stabiliser gave up (too many skips/rollbacks)."""


def total_grad_norm(params: Iterable[torch.Tensor]) -> torch.Tensor:
    r"""Global L2 norm :math:`\sqrt{\sum_p \|g_p\|_2^2}` of the gradients of ``params`` (params without grad skipped).

    The value ``torch.nn.utils.clip_grad_norm_`` returns, without clipping. Computed in float32 (or the
    gradients' dtype if wider). Returns ``tensor(0.)`` when no parameter has a gradient.

    Example:
        >>> p = torch.zeros(2, requires_grad=True); p.grad = torch.tensor([3.0, 4.0])
        >>> float(total_grad_norm([p]))
        5.0

    References:
        Pascanu, Mikolov and Bengio, "On the difficulty of training Recurrent Neural Networks",
        arXiv:1211.5063, 2013 (the global norm used for clipping).
    """
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.tensor(0.0)
    norms = [torch.linalg.vector_norm(g.detach(), dtype=torch.promote_types(g.dtype, torch.float32)) for g in grads]
    device = norms[0].device
    return torch.linalg.vector_norm(torch.stack([n.to(device) for n in norms]))


class SkipStepOnSpike:
    r"""Wrap any ``torch.optim`` optimizer and skip its update when the loss or the gradient norm spikes.

    On each :meth:`step` the loss and the global gradient norm are fed to their detectors (default: the
    OLMo-core rule, a rolling z-score with window 128, 6 sigma, at least 64 values, plus a non-finite check).
    If any detector reports an event the inner ``optimizer.step()`` is **not called**: parameters, moments and
    the per-parameter ``step`` counter stay bit-identical, so Adam's bias correction is not biased by skipped
    steps. Otherwise the inner optimizer steps as usual.

    .. math:: \theta_{t+1} = \begin{cases} \theta_t & \text{if spike}(\ell_t) \lor \text{spike}(\|g_t\|) \\
              \text{opt.step}(\theta_t, g_t) & \text{otherwise} \end{cases}

    Args:
        optimizer: any ``torch.optim.Optimizer``.
        loss_detector: detector for the loss; ``"default"`` is ``ZScoreDetector()`` (128 / 6 sigma / 64),
            ``None`` does not check the loss for spikes.
        grad_norm_detector: detector for the global gradient norm, same conventions.
        skip_non_finite: also skip when the loss or gradient norm is NaN/Inf (default True).
        max_consecutive_skips: raise :class:`TrainingDivergedError` after this many skipped steps in a row.
            Because spikes do not enter the detectors' history, a lasting level shift would otherwise be skipped
            forever; ``None`` disables the limit.

    Returns:
        :meth:`step` returns the closure's loss (like ``torch.optim``); :attr:`last_events` says why a step was
        skipped; :attr:`n_skipped` counts the skips.

    Example:
        >>> model = torch.nn.Linear(2, 1)
        >>> opt = SkipStepOnSpike(torch.optim.AdamW(model.parameters(), lr=1e-3))
        >>> loss = model(torch.ones(1, 2)).pow(2).sum(); loss.backward()
        >>> _ = opt.step(loss=loss); opt.zero_grad()
        >>> opt.n_skipped
        0

    References:
        OLMo-core (Allen Institute for AI), ``olmo_core.optim.SkipStepOptimizer`` / ``SkipStepAdamW``;
        Team OLMo, "2 OLMo 2 Furious", arXiv:2501.00656, 2024. Skipping updates around spikes also in
        Chowdhery et al., "PaLM: Scaling Language Modeling with Pathways", arXiv:2204.02311, 2022.

    Notes:
        OLMo-core avoids a host sync by multiplying the whole update by a 0/1 factor inside a fused AdamW (and
        had a bug where the step counter did not advance); here the decision is taken on the host (one
        ``.item()`` per step) and the wrapped optimizer is simply not called, which works for any optimizer and
        leaves its state exactly untouched. OLMo-core adds skipped values to the rolling history; our detectors
        do not (see :mod:`losslab.stability.spikes`). Attach LR schedulers to :attr:`optimizer` (the inner one).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, *,
                 loss_detector: SpikeDetector | Literal["default"] | None = "default",
                 grad_norm_detector: SpikeDetector | Literal["default"] | None = "default",
                 skip_non_finite: bool = True, max_consecutive_skips: int | None = 32) -> None:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise ConfigError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        if max_consecutive_skips is not None and (not isinstance(max_consecutive_skips, int)
                                                  or max_consecutive_skips < 1):
            raise ConfigError(f"max_consecutive_skips must be a positive integer or None, got {max_consecutive_skips!r}")
        self.optimizer = optimizer
        self.detectors: dict[str, SpikeDetector] = {}
        for key, det in (("loss", loss_detector), ("grad_norm", grad_norm_detector)):
            if isinstance(det, str):
                if det != "default":
                    raise ConfigError(f"{key}_detector must be a SpikeDetector, 'default' or None, got {det!r}")
                det = ZScoreDetector()
            if det is not None:
                if not all(hasattr(det, a) for a in ("update", "reset", "state_dict", "load_state_dict")):
                    raise ConfigError(f"{key}_detector must follow the SpikeDetector protocol, "
                                      f"got {type(det).__name__}")
                self.detectors[key] = det
        if skip_non_finite:
            self.detectors["loss_nonfinite"] = NonFiniteDetector()
            self.detectors["grad_norm_nonfinite"] = NonFiniteDetector()
        self.max_consecutive_skips = max_consecutive_skips
        self.n_steps = 0
        self.n_skipped = 0
        self.consecutive_skips = 0
        self.last_events: list[SpikeEvent] = []
        self.events: deque[SpikeEvent] = deque(maxlen=1000)

    # -- torch.optim.Optimizer look-alike -------------------------------------------------------------------
    @property
    def param_groups(self) -> list[dict[str, Any]]:
        """The inner optimizer's parameter groups."""
        return self.optimizer.param_groups

    @property
    def state(self) -> Any:
        """The inner optimizer's per-parameter state."""
        return self.optimizer.state

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Zero the gradients through the inner optimizer."""
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a parameter group to the inner optimizer."""
        self.optimizer.add_param_group(param_group)

    def _params(self) -> list[torch.Tensor]:
        return [p for g in self.optimizer.param_groups for p in g["params"]]

    def step(self, closure: Callable[[], Any] | None = None, *, loss: Any = None,
             grad_norm: Any = None) -> Any:
        """Check the loss and gradient norm; call the inner ``step`` unless one of them is a spike.

        Args:
            closure: optional closure re-evaluating the loss, as in torch.optim. It is called once for the check;
                that evaluation is handed to the inner optimizer as its first closure call (LBFGS calls it again).
            loss: this step's loss (tensor or float); required unless a closure is given or the loss is unchecked.
            grad_norm: this step's global gradient norm, e.g. the value ``clip_grad_norm_`` returned (before
                clipping); computed from the parameters' ``.grad`` when omitted.

        Returns:
            The closure's loss, or ``loss``.
        """
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        checks_loss = "loss" in self.detectors or "loss_nonfinite" in self.detectors
        if loss is None and checks_loss:
            raise ConfigError("SkipStepOnSpike.step needs the loss: call step(loss=loss) or pass a closure")
        self.n_steps += 1
        values: dict[str, float] = {}
        if checks_loss:
            values["loss"] = float(loss.detach()) if isinstance(loss, torch.Tensor) else float(loss)
        if "grad_norm" in self.detectors or "grad_norm_nonfinite" in self.detectors:
            gn = total_grad_norm(self._params()) if grad_norm is None else grad_norm
            values["grad_norm"] = float(gn.detach()) if isinstance(gn, torch.Tensor) else float(gn)
        events = []
        for key, det in self.detectors.items():
            metric = "grad_norm" if key.startswith("grad_norm") else "loss"
            event = det.update(values[metric], step=self.n_steps, metric=metric)
            if event is not None:
                events.append(event)
        self.last_events = events
        if events:
            self.events.extend(events)
            self.n_skipped += 1
            self.consecutive_skips += 1
            if self.max_consecutive_skips is not None and self.consecutive_skips >= self.max_consecutive_skips:
                raise TrainingDivergedError(
                    f"{self.consecutive_skips} consecutive optimizer steps were skipped (last: {events[0].message}); "
                    f"the run has diverged or shifted level: roll back (losslab.stability.Rollback), lower the LR, "
                    f"or raise max_consecutive_skips"
                )
            return loss
        self.consecutive_skips = 0
        if closure is None:
            self.optimizer.step()
            return loss
        first = [loss]

        def cached_closure() -> Any:  # the first evaluation (with its gradients) is reused, later ones re-run
            if first:
                return first.pop()
            with torch.enable_grad():
                return closure()
        return self.optimizer.step(cached_closure)

    @property
    def last_skipped(self) -> bool:
        """Whether the most recent :meth:`step` was skipped."""
        return bool(self.last_events)

    def state_dict(self) -> dict[str, Any]:
        """The inner optimizer's state dict plus the detectors' states and the counters."""
        return {"optimizer": self.optimizer.state_dict(),
                "detectors": {k: d.state_dict() for k, d in self.detectors.items()},
                "n_steps": self.n_steps, "n_skipped": self.n_skipped, "consecutive_skips": self.consecutive_skips}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict` (the detectors configured must match the saved ones)."""
        if not isinstance(state, dict) or "optimizer" not in state or "detectors" not in state:
            raise ConfigError("not a SkipStepOnSpike state_dict (keys 'optimizer' and 'detectors' expected)")
        if set(state["detectors"]) != set(self.detectors):
            raise ConfigError(f"saved detectors {sorted(state['detectors'])} differ from the configured ones "
                              f"{sorted(self.detectors)}; build SkipStepOnSpike with the same detectors")
        self.optimizer.load_state_dict(state["optimizer"])
        for key, det in self.detectors.items():
            det.load_state_dict(state["detectors"][key])
        self.n_steps = int(state["n_steps"])
        self.n_skipped = int(state["n_skipped"])
        self.consecutive_skips = int(state["consecutive_skips"])

    def __repr__(self) -> str:
        return f"SkipStepOnSpike({type(self.optimizer).__name__}, detectors={list(self.detectors)})"
