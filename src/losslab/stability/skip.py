"""Skip the optimizer update on a loss or gradient-norm spike (OLMo-core ``SkipStepOptimizer`` idea, any optimizer)."""

from __future__ import annotations

import warnings
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


def _shared(name: str, doc: str) -> Any:
    """A property that reads and writes the inner optimizer's ``name`` (shared, never copied).

    Before the inner optimizer is attached (inside ``torch.optim.Optimizer.__init__``) the value lives in the
    instance ``__dict__``. An object that borrows the methods without the attributes (Lightning's
    ``LightningOptimizer`` subclasses the class of the optimizer it wraps) gets an ``AttributeError``, so its own
    ``__getattr__`` forwards the lookup to the wrapped optimizer.
    """
    def get(self: Any) -> Any:
        inner = self.__dict__.get("optimizer")
        if inner is not None:
            return getattr(inner, name)
        try:
            return self.__dict__[name]
        except KeyError:
            raise AttributeError(name) from None

    def put(self: Any, value: Any) -> None:
        inner = self.__dict__.get("optimizer")
        if inner is not None:
            setattr(inner, name, value)
        else:
            self.__dict__[name] = value
    return property(get, put, doc=doc)


class SkipStepOnSpike(torch.optim.Optimizer):
    r"""Wrap any ``torch.optim`` optimizer and skip its update when the loss or the gradient norm spikes.

    On each :meth:`step` the loss and the global gradient norm are fed to their detectors (default: the
    OLMo-core rule, a rolling z-score with window 128, 6 sigma, at least 64 values, plus a non-finite check).
    If any detector reports an event the inner ``optimizer.step()`` is **not called**: parameters, moments and
    the per-parameter ``step`` counter stay bit-identical, so Adam's bias correction is not biased by skipped
    steps. Otherwise the inner optimizer steps as usual.

    .. math:: \theta_{t+1} = \begin{cases} \theta_t & \text{if spike}(\ell_t) \lor \text{spike}(\|g_t\|) \\
              \text{opt.step}(\theta_t, g_t) & \text{otherwise} \end{cases}

    It is a ``torch.optim.Optimizer`` whose ``param_groups``, ``state`` and ``defaults`` *are* the inner
    optimizer's (the same objects), so it can be returned from Lightning's ``configure_optimizers``, handed to a
    Hugging Face ``Trainer`` or to any ``torch.optim.lr_scheduler`` (which then drives the inner optimizer's
    rates); ``zero_grad`` and ``add_param_group`` go to the inner optimizer.

    Where the loss comes from, in :meth:`step`:

    * ``step(loss=loss)``: the loss given (the recommended call in a hand-written loop);
    * ``step(closure)``: the closure is evaluated once and its loss is checked (Lightning passes one);
    * ``step()`` with neither (what a Hugging Face ``Trainer`` calls): the decision is taken from the gradient
      norm alone when a gradient-norm detector is configured (loss detectors are not fed on such steps), and a
      warning is issued once if loss detectors are configured; with no gradient-norm detector at all nothing
      can be checked, so the inner optimizer steps and a warning is issued once. It never raises for a missing loss.

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
        skipped; :attr:`events` keeps the last 1000 events; :attr:`n_skipped` counts the skips.

    Example:
        >>> model = torch.nn.Linear(2, 1)
        >>> opt = SkipStepOnSpike(torch.optim.AdamW(model.parameters(), lr=1e-3))
        >>> sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.5 ** t)   # drives the inner AdamW
        >>> loss = model(torch.ones(1, 2)).pow(2).sum(); loss.backward()
        >>> _ = opt.step(loss=loss); opt.zero_grad(); sched.step()
        >>> opt.n_skipped, opt.optimizer.param_groups[0]["lr"]
        (0, 0.0005)

    References:
        OLMo-core (Allen Institute for AI), ``olmo_core.optim.SkipStepOptimizer`` / ``SkipStepAdamW``;
        Team OLMo, "2 OLMo 2 Furious", arXiv:2501.00656, 2024. Skipping updates around spikes also in
        Chowdhery et al., "PaLM: Scaling Language Modeling with Pathways", arXiv:2204.02311, 2022.

    Notes:
        OLMo-core avoids a host sync by multiplying the whole update by a 0/1 factor inside a fused AdamW (and
        had a bug where the step counter did not advance); here the decision is taken on the host (one
        ``.item()`` per step) and the wrapped optimizer is simply not called, which works for any optimizer and
        leaves its state exactly untouched. OLMo-core adds skipped values to the rolling history; our detectors
        do not (see :mod:`losslab.stability.spikes`). An LR scheduler advances on skipped steps too (the step
        still counts as a training step). ``state_dict()`` has its own format (the inner optimizer's under
        ``"optimizer"``, the detectors and the counters), the same since the first version.
    """

    param_groups = _shared("param_groups", "The inner optimizer's parameter groups (the same list).")
    state = _shared("state", "The inner optimizer's per-parameter state (the same mapping).")
    defaults = _shared("defaults", "The inner optimizer's defaults (the same dict).")

    def __init__(self, optimizer: torch.optim.Optimizer, *,
                 loss_detector: SpikeDetector | Literal["default"] | None = "default",
                 grad_norm_detector: SpikeDetector | Literal["default"] | None = "default",
                 skip_non_finite: bool = True, max_consecutive_skips: int | None = 32) -> None:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise ConfigError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}; "
                              f"build it first, e.g. SkipStepOnSpike(torch.optim.AdamW(model.parameters()))")
        if max_consecutive_skips is not None and (isinstance(max_consecutive_skips, bool)
                                                  or not isinstance(max_consecutive_skips, int)
                                                  or max_consecutive_skips < 1):
            raise ConfigError(f"max_consecutive_skips must be a positive integer or None, got {max_consecutive_skips!r}")
        detectors: dict[str, SpikeDetector] = {}
        for key, det in (("loss", loss_detector), ("grad_norm", grad_norm_detector)):
            if isinstance(det, str):
                if det != "default":
                    raise ConfigError(f"{key}_detector must be a SpikeDetector, 'default' or None, got {det!r}")
                det = ZScoreDetector()
            if det is not None:
                if not all(hasattr(det, a) for a in ("update", "reset", "state_dict", "load_state_dict")):
                    raise ConfigError(f"{key}_detector must follow the SpikeDetector protocol, "
                                      f"got {type(det).__name__}")
                detectors[key] = det
        if skip_non_finite:
            detectors["loss_nonfinite"] = NonFiniteDetector()
            detectors["grad_norm_nonfinite"] = NonFiniteDetector()
        # torch's __init__ sets up the hook registries; its placeholder group is dropped once the inner optimizer
        # is attached, from then on param_groups/state/defaults are the inner optimizer's
        super().__init__([torch.zeros(0, requires_grad=True)], {})
        for name in ("param_groups", "state", "defaults"):
            self.__dict__.pop(name, None)
        self.optimizer = optimizer
        self.detectors = detectors
        self.max_consecutive_skips = max_consecutive_skips
        self.n_steps = 0
        self.n_skipped = 0
        self.consecutive_skips = 0
        self.last_events: list[SpikeEvent] = []
        self.events: deque[SpikeEvent] = deque(maxlen=1000)
        self._warned_no_loss = False

    # -- torch.optim.Optimizer plumbing -----------------------------------------------------------------------
    def zero_grad(self, set_to_none: bool = True) -> None:
        """Zero the gradients through the inner optimizer."""
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a parameter group to the inner optimizer (torch's own bookkeeping before it is attached)."""
        inner = self.__dict__.get("optimizer")
        if inner is None:
            super().add_param_group(param_group)
        else:
            inner.add_param_group(param_group)

    def __getstate__(self) -> dict[str, Any]:  # torch keeps only defaults/state/param_groups; we need it all
        state = self.__dict__.copy()
        state.pop("step", None)  # an LR scheduler's per-instance wrapper of step (torch drops it as well)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)

    def _params(self) -> list[torch.Tensor]:
        return [p for g in self.optimizer.param_groups for p in g["params"]]

    def _warn_once(self, message: str) -> None:
        if not self._warned_no_loss:
            self._warned_no_loss = True
            warnings.warn(f"SkipStepOnSpike.step() {message} (warned once per optimizer)", UserWarning,
                          stacklevel=4)

    def step(self, closure: Callable[[], Any] | None = None, *, loss: Any = None,  # type: ignore[override]
             grad_norm: Any = None) -> Any:
        """Check the loss and gradient norm; call the inner ``step`` unless one of them is a spike.

        Args:
            closure: optional closure re-evaluating the loss, as in torch.optim. It is called once for the check;
                that evaluation is handed to the inner optimizer as its first closure call (LBFGS calls it again).
            loss: this step's loss (tensor or float). Without it (and without a closure, or with a closure that
                returns None) only the gradient norm is checked; see the class docstring.
            grad_norm: this step's global gradient norm, e.g. the value ``clip_grad_norm_`` returned (before
                clipping); computed from the parameters' ``.grad`` when omitted.

        Returns:
            The closure's loss, or ``loss``.
        """
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        loss_keys = [k for k in self.detectors if not k.startswith("grad_norm")]
        grad_keys = [k for k in self.detectors if k.startswith("grad_norm")]
        if loss is None and loss_keys:
            if grad_keys:
                self._warn_once("got no loss (no loss= and no closure, or a closure returning None): only the "
                                "gradient norm is checked for spikes; pass step(loss=loss) or a closure to check "
                                "the loss too")
            else:
                self._warn_once("got no loss and no gradient-norm detector is configured: the step was taken "
                                "unchecked; pass step(loss=loss) or a closure, or configure grad_norm_detector")
            loss_keys = []
        self.n_steps += 1
        values: dict[str, float] = {}
        if loss_keys:
            values["loss"] = float(loss.detach()) if isinstance(loss, torch.Tensor) else float(loss)
        if grad_keys:
            gn = total_grad_norm(self._params()) if grad_norm is None else grad_norm
            values["grad_norm"] = float(gn.detach()) if isinstance(gn, torch.Tensor) else float(gn)
        events = []
        for key in loss_keys + grad_keys:
            metric = "grad_norm" if key.startswith("grad_norm") else "loss"
            event = self.detectors[key].update(values[metric], step=self.n_steps, metric=metric)
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
        """The inner optimizer's state dict plus the detectors' states and the counters.

        Format: ``{"optimizer", "detectors", "n_steps", "n_skipped", "consecutive_skips"}`` (unchanged since
        the first version). State-dict hooks registered on this wrapper run as in torch.
        """
        for pre_hook in self._optimizer_state_dict_pre_hooks.values():
            pre_hook(self)
        out: dict[str, Any] = {"optimizer": self.optimizer.state_dict(),
                               "detectors": {k: d.state_dict() for k, d in self.detectors.items()},
                               "n_steps": self.n_steps, "n_skipped": self.n_skipped,
                               "consecutive_skips": self.consecutive_skips}
        for post_hook in self._optimizer_state_dict_post_hooks.values():
            hook_result = post_hook(self, out)
            if hook_result is not None:
                out = hook_result
        return out

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict` (the detectors configured must match the saved ones)."""
        if isinstance(state_dict, dict):
            state_dict = state_dict.copy()
            for pre_hook in self._optimizer_load_state_dict_pre_hooks.values():
                hook_result = pre_hook(self, state_dict)
                if hook_result is not None:
                    state_dict = hook_result
        if not isinstance(state_dict, dict) or "optimizer" not in state_dict or "detectors" not in state_dict:
            hint = ""
            if isinstance(state_dict, dict) and "param_groups" in state_dict:
                hint = ("; this looks like a plain optimizer's state dict: load it into the inner optimizer with "
                        "opt.optimizer.load_state_dict(...)")
            raise ConfigError("not a SkipStepOnSpike state_dict (keys 'optimizer' and 'detectors' expected, as "
                              f"SkipStepOnSpike.state_dict() returns){hint}")
        if set(state_dict["detectors"]) != set(self.detectors):
            raise ConfigError(f"saved detectors {sorted(state_dict['detectors'])} differ from the configured ones "
                              f"{sorted(self.detectors)}; build SkipStepOnSpike with the same detectors")
        self.optimizer.load_state_dict(state_dict["optimizer"])
        for key, det in self.detectors.items():
            det.load_state_dict(state_dict["detectors"][key])
        self.n_steps = int(state_dict["n_steps"])
        self.n_skipped = int(state_dict["n_skipped"])
        self.consecutive_skips = int(state_dict["consecutive_skips"])
        for post_hook in self._optimizer_load_state_dict_post_hooks.values():
            post_hook(self)

    def __repr__(self) -> str:
        return f"SkipStepOnSpike({type(self.optimizer).__name__}, detectors={list(self.detectors)})"
