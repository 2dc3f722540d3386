"""TrainingMonitor: the framework-free core of losslab.monitor (see the class docstring)."""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from losslab._distributed import is_dtensor, local_part, unwrap_parallel
from losslab._errors import ConfigError
from losslab.monitor._attention import AttentionHooks, AttentionLogitsFn, mha_attention_logits
from losslab.monitor._dist import dist_info
from losslab.monitor._measure import MonitorMeasure, local_sq_norms
from losslab.monitor._results import MonitorResults
from losslab.monitor._sinks import CSVSink, JSONLSink, MonitorSink
from losslab.stability.spikes import NonFiniteDetector, SpikeDetector, SpikeEvent, ZScoreDetector

__all__ = ["MonitorWarning", "TrainingMonitor"]

_PER_LAYER = ("module", "param", "none")


class MonitorWarning(RuntimeWarning):
    """Warning issued when the monitor hits an internal problem; training goes on and an event is recorded."""


def _default_detectors() -> dict[str, list[SpikeDetector]]:
    return {m: [ZScoreDetector(window=128, threshold=6.0, min_history=64), NonFiniteDetector()]
            for m in ("loss", "grad_norm")}


def _as_sink(s: Any) -> MonitorSink:
    if isinstance(s, (str, os.PathLike)):
        suffix = Path(s).suffix.lower()
        if suffix == ".csv":
            return CSVSink(s)
        if suffix in (".jsonl", ".ndjson"):
            return JSONLSink(s)
        raise ConfigError(f"cannot pick a sink for {str(s)!r}: use a .csv or .jsonl path, or pass a sink object "
                          f"(CSVSink, JSONLSink, TensorBoardSink)")
    if not all(callable(getattr(s, m, None)) for m in ("write", "flush", "close")):
        raise ConfigError(f"sink {s!r} must have write(step, metrics, events), flush() and close() methods")
    return s  # type: ignore[no-any-return]


def _is_optimizer_like(obj: Any) -> bool:
    """A torch optimizer, or a wrapper (SkipStepOnSpike, SAM-style) that exposes its param_groups and state."""
    return isinstance(obj, torch.optim.Optimizer) or (hasattr(obj, "param_groups") and hasattr(obj, "state"))


class TrainingMonitor(MonitorMeasure, MonitorResults):
    r"""Watch a training run step by step: loss, gradient and update norms, logits, Adam health, spikes.

    Call it once per optimizer step. In a plain loop::

        monitor = TrainingMonitor(model, optimizer, sinks=["run/log.csv", "run/log.jsonl"])
        for batch in loader:
            loss = loss_fn(model(batch.x), batch.y)
            loss.backward()
            monitor.before_step()                 # grads before clipping; snapshot params on sampled steps
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            monitor.step(loss=loss)               # update ratios, detectors, sinks (before zero_grad!)
            optimizer.zero_grad()
        monitor.close()

    or ``with monitor.stepping(loss=loss): clip(); optimizer.step()``, which calls both around the block.
    ``before_step`` is optional: without it, gradient norms are measured in ``step`` (after clipping, if you
    clip) and the update ratio is not measured.

    What is recorded (column names):

    - every step: ``loss``; ``grad_norm`` :math:`=\sqrt{\sum_p \lVert g_p\rVert^2}` (what
      ``torch.nn.utils.clip_grad_norm_`` returns) and ``grad_norm/<layer>`` per layer; ``nonfinite_grads``
      (number of gradient tensors holding NaN/Inf); ``lr`` of the first parameter group;
    - on sampled steps (``every_n_steps``): ``update_ratio`` and ``update_ratio/<layer>``
      :math:`=\lVert \theta_{t+1}-\theta_t\rVert / \lVert\theta_t\rVert` (parameters snapshotted by
      ``before_step``); ``adam/tiny_v_frac`` (see :func:`adam_tiny_v_count`); with ``logits=`` given,
      ``logits/max_abs``, ``logits/lse_mean`` and ``logits/z_loss`` (see :func:`logit_stats`); with
      :meth:`watch_attention`, ``attn/max_logit`` and ``attn/max_logit/<module>``.

    A layer is a module path (``per_layer="module"``: weight and bias of a Linear together) or a single
    parameter (``"param"``); ``"none"`` records the global norms only. The layer list is fixed at the first step
    and covers every parameter of the model, frozen ones included: a parameter without ``.grad`` counts as
    absent, so layers unfrozen later (gradual unfreezing) are measured - and clipped by :meth:`clip_grad_norm_` -
    from the step they get gradients. Per-layer columns appear for the layers trainable at the first step and
    for any layer once it has had a gradient (in a CSV whose header is already written, such a late layer goes
    to the ``extra`` cell). The update ratio covers the parameters with ``requires_grad`` at ``before_step``.

    Cost: all of a step's values stay on the device, are stacked into one tensor and reach the host in ONE
    transfer (one synchronisation) per step; under ``torch.distributed`` a small header (number and checksum of
    the metric names) is all-gathered and read first, then the vector is reduced with one ``all_gather``.

    Spikes: each metric in ``detectors`` (default: ``loss`` and ``grad_norm``, each with a
    :class:`~losslab.stability.ZScoreDetector` (window 128, 6 sigma, 64 values of history) and a
    :class:`~losslab.stability.NonFiniteDetector`) is fed every step; events (step, metric, value, score,
    detector, message) go to ``monitor.events`` (the newest ``max_events``; :attr:`n_events` counts them all),
    to the sinks and are returned by :meth:`step`. Spikes do not enter a detector's history, so after an upward
    level shift every later step would be flagged: when one detector flags ``level_shift_after`` steps of a
    metric in a row, the monitor records ONE ``level_shift`` event instead, resets that detector (it learns the
    new level from the next values) and stays silent for that detector until a step is not flagged.

    Distributed: under ``torch.distributed`` every rank calls the monitor the same way (if the ranks measured
    different metrics in a step, every rank warns and keeps its own values for it instead of hanging). Losses are averaged over
    ranks, maxima (logits, attention) are maxed, and sums of squares over gradients/parameters are averaged when
    ``grads_synchronized=True`` (DDP: after backward every rank holds the same averaged gradient, so the local
    norm already is the global one) or summed when ``False`` (each rank holds a disjoint shard, e.g. ZeRO/FSDP-1
    flat shards with the same layer layout on every rank). DTensor parameters (FSDP2 ``fully_shard``, HSDP) are
    reduced by their placements whatever the flag says. Only rank 0 writes to sinks.

    Robustness: the monitor never raises inside a training loop. An internal failure (a sink that cannot write,
    a metric that cannot be computed, a loss that is not a number) becomes a :class:`MonitorWarning` (once per
    kind) and an event with ``metric="monitor"``; the loop goes on. Bad *configuration* raises
    :class:`~losslab.ConfigError` at construction.

    Args:
        model: the model (DDP/DataParallel wrappers are unwrapped). May be given later to ``before_step``/``step``.
        optimizer: the optimizer (for ``lr`` and Adam health). May be given later.
        sinks: sink objects or paths (``.csv`` -> :class:`CSVSink`, ``.jsonl`` -> :class:`JSONLSink`).
        every_n_steps: sampling period of the expensive metrics (update ratio, Adam, logits, attention);
            sampled steps are 1, 1 + n, 1 + 2n, ... Default 10.
        per_layer: ``"module"``, ``"param"`` or ``"none"``.
        detectors: ``{metric: detector or list of detectors}``; ``None`` for the default above, ``{}`` for none.
        flush_every: flush the sinks every this many steps (1: a killed run loses nothing).
        keep_history: keep every row in memory (:attr:`history`); Python lists cost about 8-30 bytes per
            cell, so for millions of steps with many layers pass ``False`` and read the sinks instead.
        track_update_ratio: snapshot parameters in ``before_step`` on sampled steps (one extra copy of the
            parameters, kept between sampled steps so that no memory is allocated per step; set ``False`` when
            memory is tight).
        max_events: how many of the newest events :attr:`events` keeps (the sinks get them all). Default 10000.
        level_shift_after: consecutive flagged steps (one detector, one metric) taken as a level shift (see
            Spikes). Default 32.
        grads_synchronized: see Distributed.
        process_group: process group for the reduction (default: world).

    Example:
        >>> model = torch.nn.Linear(3, 1); opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> monitor = TrainingMonitor(model, opt, every_n_steps=1)
        >>> loss = model(torch.ones(2, 3)).pow(2).mean(); loss.backward()
        >>> with monitor.stepping(loss=loss):
        ...     opt.step()
        >>> list(monitor.events)
        []
        >>> sorted(k for k in monitor.history if not k.startswith(("grad_norm/", "update_ratio/")))[:4]
        ['adam/tiny_v_frac', 'grad_norm', 'loss', 'lr']

    References:
        OLMo-core ``StabilityMonitorCallback`` (rolling 6-sigma spikes on loss and grad norm); Wortsman et al.,
        "Small-scale proxies for large-scale Transformer training instabilities", arXiv:2309.14322, 2023
        (logit growth, update/parameter ratios, AdamW epsilon); Chowdhery et al., "PaLM", arXiv:2204.02311, 2022.

    Notes:
        Unlike ``wandb.watch`` (histograms through backward hooks), nothing runs during backward: norms are
        read from ``.grad`` with ``torch._foreach_norm``. Unlike Hugging Face's ``logging_nan_inf_filter``,
        non-finite losses are logged and become events instead of being filtered out.
    """

    def __init__(
        self,
        model: nn.Module | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        *,
        sinks: Iterable[MonitorSink | str | os.PathLike[str]] = (),
        every_n_steps: int = 10,
        per_layer: str = "module",
        detectors: Mapping[str, SpikeDetector | Sequence[SpikeDetector]] | None = None,
        flush_every: int = 1,
        keep_history: bool = True,
        track_update_ratio: bool = True,
        grads_synchronized: bool = True,
        process_group: Any = None,
        max_events: int = 10_000,
        level_shift_after: int = 32,
    ) -> None:
        for name, value in (("every_n_steps", every_n_steps), ("flush_every", flush_every),
                            ("max_events", max_events), ("level_shift_after", level_shift_after)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be an integer >= 1, got {value!r}; e.g. {name}=10")
        if per_layer not in _PER_LAYER:
            raise ConfigError(f"per_layer must be one of {', '.join(_PER_LAYER)}, got {per_layer!r}")
        if model is not None and not isinstance(model, nn.Module):
            raise ConfigError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if optimizer is not None and not _is_optimizer_like(optimizer):
            raise ConfigError(f"optimizer must be a torch.optim.Optimizer or a wrapper exposing param_groups and "
                              f"state (like losslab.stability.SkipStepOnSpike), got {type(optimizer).__name__}")
        dets = _default_detectors() if detectors is None else detectors
        if not isinstance(dets, Mapping):
            raise ConfigError("detectors must be a mapping {metric: detector or list of detectors}, "
                              f"got {type(dets).__name__}")
        self.detectors: dict[str, list[SpikeDetector]] = {}
        for metric, d in dets.items():
            items = list(d) if isinstance(d, (list, tuple)) else [d]
            for det in items:
                if not all(callable(getattr(det, m, None)) for m in ("update", "state_dict", "load_state_dict")):
                    raise ConfigError(f"detector {det!r} for {metric!r} does not follow the SpikeDetector protocol "
                                      f"(update, reset, state_dict, load_state_dict)")
            self.detectors[str(metric)] = items  # type: ignore[assignment]
        self.sinks: list[MonitorSink] = [_as_sink(s) for s in sinks]
        self.model = model
        self.optimizer = optimizer
        self.every_n_steps = every_n_steps
        self.per_layer = per_layer
        self.flush_every = flush_every
        self.keep_history = bool(keep_history)
        self.track_update_ratio = bool(track_update_ratio)
        self.grads_synchronized = bool(grads_synchronized)
        self.process_group = process_group

        self.step_count = 0
        self.events: list[SpikeEvent] = []
        self.n_events = 0
        self.max_events = max_events
        self.level_shift_after = level_shift_after
        self._flag_runs: dict[tuple[str, int], int] = {}  # (metric, detector index) -> consecutive flagged steps
        self._columns: list[str] = []
        self._history: dict[str, list[float | None]] = {"step": []}
        self._params: list[nn.Parameter] | None = None
        self._layers: list[str] = []
        self._group_of: list[int] = []
        self._shown: list[bool] = []
        self._index_cache: dict[tuple[Any, ...], Tensor] = {}
        self._pre: dict[str, Any] | None = None
        self._snap_buf: list[Tensor] | None = None
        self._attn = AttentionHooks()
        self._warned: set[str] = set()
        self._errors: list[str] = []
        self._sink_down: dict[int, int] = {}  # failing sinks -> failed calls in the current outage
        self._closed = False

    # ------------------------------------------------------------------ layout and helpers
    def is_sampled(self, step: int) -> bool:
        """Whether ``step`` gets the expensive metrics: steps 1, 1 + n, 1 + 2n, ... (n = ``every_n_steps``)."""
        return (step - 1) % self.every_n_steps == 0

    def _problem(self, where: str, exc: BaseException | str) -> None:
        text = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
        message = f"monitor problem in {where}: {text}; training continues"
        self._errors.append(message)
        kind = f"{where}:{text if isinstance(exc, str) else type(exc).__name__}"
        if kind not in self._warned:
            self._warned.add(kind)
            warnings.warn(f"losslab {message} (further warnings of this kind are silenced)", MonitorWarning,
                          stacklevel=3)

    # ------------------------------------------------------------------ public hooks of the loop
    def watch_attention(self, model: nn.Module, modules: Iterable[str] | type | tuple[type, ...] | None = None,
                        logits_fn: AttentionLogitsFn | None = None) -> list[str]:
        """Hook attention modules to record their maximum pre-softmax logit on sampled steps (opt-in).

        Args:
            model: the model whose submodules to hook.
            modules: which submodules: ``None`` (every ``nn.MultiheadAttention``), a module class or tuple of
                classes, or an iterable of submodule names (as in ``model.named_modules()``).
            logits_fn: ``fn(module, args, kwargs, output) -> logits`` returning the pre-softmax logits with
                masked positions at ``-inf``; default :func:`mha_attention_logits` (``nn.MultiheadAttention``).

        Returns:
            The names of the hooked modules (columns ``attn/max_logit/<name>``).

        Raises:
            ConfigError: no module matched, or a named module does not exist.
        """
        fn = logits_fn or mha_attention_logits
        named = dict(unwrap_parallel(model).named_modules())
        if modules is None or isinstance(modules, (type, tuple)):
            types = nn.MultiheadAttention if modules is None else modules
            chosen = [n for n, m in named.items() if isinstance(m, types)]  # type: ignore[arg-type]
        else:
            chosen = list(modules)
            missing = [n for n in chosen if n not in named]
            if missing:
                raise ConfigError(f"no submodule named {missing[0]!r}; names look like "
                                  f"{[n for n in named if n][:5]}")
        if not chosen:
            raise ConfigError("watch_attention found no attention module to hook; pass modules=<class or names> "
                              "and a logits_fn for custom attention layers")
        if logits_fn is None and not all(isinstance(named[n], nn.MultiheadAttention) for n in chosen):
            raise ConfigError("the default logits_fn only understands nn.MultiheadAttention; pass logits_fn= for "
                              "custom attention modules")
        for n in chosen:
            self._attn.add(n, named[n], fn)
        self._attn.active = self.is_sampled(self.step_count + 1)
        return chosen

    def before_step(self, model: nn.Module | None = None, optimizer: torch.optim.Optimizer | None = None,
                    step: int | None = None) -> None:
        """Call after ``backward`` and before clipping / ``optimizer.step()``: measure gradients, snapshot params.

        Args:
            model, optimizer: override those given to the constructor.
            step: the step about to be taken (default: one more than the last step recorded).
        """
        try:
            model, _ = self._resolve(model, optimizer)
            if model is None:
                raise ConfigError("no model given: pass model= to TrainingMonitor or to before_step")
            self._layout(model)
            upcoming = self.step_count + 1 if step is None else int(step)
            pre: dict[str, Any] = {"step": upcoming, "grads": self._grad_piece(), "snapshot": None}
            if self.track_update_ratio and self.is_sampled(upcoming):
                assert self._params is not None
                pre["snapshot"] = self._snapshot()
            self._pre = pre
        except Exception as exc:
            self._pre = None
            self._problem("before_step", exc)

    def clip_grad_norm_(self, max_norm: float, model: nn.Module | None = None,
                        optimizer: torch.optim.Optimizer | None = None, step: int | None = None) -> Tensor:
        r""":meth:`before_step` and gradient clipping with ONE pass over the gradients.

        Same rule as ``torch.nn.utils.clip_grad_norm_`` (L2 norm over all gradients of the model):
        every gradient is multiplied by :math:`\min(1, \text{max\_norm} / (\lVert g\rVert + 10^{-6}))`.
        Use it instead of torch's function to avoid reading the gradients twice (once to clip, once to monitor).

        Args:
            max_norm: the largest allowed total norm (finite, > 0).
            model, optimizer, step: as in :meth:`before_step`.

        Returns:
            The total norm before clipping (0-d tensor on the gradients' device), like torch's function.

        Raises:
            ConfigError: ``max_norm`` is not a finite positive number (nothing is measured or clipped).

        Notes:
            With ``grads_synchronized=False`` under ``torch.distributed``, the squared norm is summed over ranks
            (one ``all_reduce``) before clipping, so every shard is scaled by the same global factor.
        """
        try:
            limit = float(max_norm)
        except (TypeError, ValueError):
            limit = math.nan
        if not math.isfinite(limit) or limit <= 0:
            raise ConfigError(f"max_norm must be a finite number > 0, got {max_norm!r}; e.g. max_norm=1.0")
        self.before_step(model, optimizer, step)
        pre = self._pre
        _, world = dist_info(self.process_group)
        summed = world > 1 and not self.grads_synchronized
        params = self._params if self._params is not None else (
            list(self.model.parameters()) if self.model is not None else [])
        sharded = any(is_dtensor(p) for p in params)
        if pre is None or pre["grads"] is None or self._params is None:
            if not summed and not sharded:
                return torch.nn.utils.clip_grad_norm_(params, limit)
            # no gradient measured on this rank: it still takes part in the ranks' sum (the others wait for it)
            plain_sq, shard_sq = local_sq_norms(params)
        else:
            plain_sq = pre["grads"]["plain"].sum()
            shard_sq = pre["grads"]["sharded"].sum() if "sharded" in pre["grads"] else torch.zeros_like(plain_sq)
        if world > 1 and (summed or sharded):
            import torch.distributed as dist

            # one all_reduce: plain squares summed (shards) or averaged (identical on every rank), DTensor
            # pieces summed (already divided by their replicas)
            both = torch.stack([plain_sq if summed else plain_sq / world, shard_sq.to(plain_sq)])
            dist.all_reduce(both, group=self.process_group)
            total_sq = both.sum()
        else:
            total_sq = plain_sq + shard_sq.to(plain_sq)
        total = total_sq.sqrt()
        coef = torch.clamp(limit / (total + 1e-6), max=1.0)
        by_device: dict[tuple[torch.device, torch.dtype], list[Tensor]] = {}
        for p in params:  # every parameter of the model, frozen at the first step or not
            if p.grad is not None and not p.grad.is_sparse:
                local = local_part(p.grad)[0]  # a DTensor's piece shares its storage: scaling it scales the DTensor
                by_device.setdefault((local.device, local.dtype), []).append(local)
        for (device, _), grads in by_device.items():  # the factor stays in float32: no rounding to 16 bits
            torch._foreach_mul_(grads, coef.to(device=device))
        return total

    @contextmanager
    def stepping(self, loss: Any = None, logits: Tensor | None = None, *, model: nn.Module | None = None,
                 optimizer: torch.optim.Optimizer | None = None,
                 metrics: Mapping[str, float] | None = None) -> Iterator[TrainingMonitor]:
        """Context manager around ``optimizer.step()``: :meth:`before_step` on entry, :meth:`step` on exit.

        Put gradient clipping inside the block to record the norms before clipping. If the block raises, the
        step is not recorded and the exception propagates.
        """
        self.before_step(model, optimizer)
        yield self
        self.step(loss=loss, model=model, optimizer=optimizer, logits=logits, metrics=metrics)

    def step(self, loss: Any = None, model: nn.Module | None = None, optimizer: torch.optim.Optimizer | None = None,
             logits: Tensor | None = None, *, step: int | None = None,
             metrics: Mapping[str, float] | None = None) -> list[SpikeEvent]:
        """Record one optimizer step (call after ``optimizer.step()``, before ``zero_grad``).

        Args:
            loss: the step's loss (tensor of any shape - its mean is used - or a number; ``None`` to skip).
            model, optimizer: override those given to the constructor.
            logits: output logits ``(..., V)`` for the logit statistics (used on sampled steps only).
            step: the step number (default: last step + 1). Adapters pass the trainer's global step.
            metrics: extra host scalars to log as columns (e.g. ``{"tokens": 4096}``).

        Returns:
            The events of this step (also appended to :attr:`events`).
        """
        try:
            return self._step(loss, model, optimizer, logits, step, metrics)
        except Exception as exc:  # last line of defence: the loop must go on
            self._problem("step", exc)
            events = self._drain_errors(self.step_count)
            self._keep_events(events)
            return events

    def _expected_columns(self) -> list[str]:
        cols = ["loss"]
        if self.model is not None:
            cols += ["grad_norm", "nonfinite_grads"]
            if self.track_update_ratio:
                cols.append("update_ratio")
        if self.optimizer is not None:
            cols += ["lr", "adam/tiny_v_frac"]
        if self._attn.names:
            cols.append("attn/max_logit")
        if self.per_layer != "none" and self._params is not None:
            shown = [n for n, ok in zip(self._layers, self._shown) if ok]
            cols += [f"grad_norm/{n}" for n in shown]
            if self.track_update_ratio:
                cols += [f"update_ratio/{n}" for n in shown]
        cols += [f"attn/max_logit/{n}" for n in self._attn.names]
        return cols

    def _drain_errors(self, step: int) -> list[SpikeEvent]:
        events = [SpikeEvent(step, "monitor", math.nan, math.nan, "monitor", m) for m in self._errors]
        self._errors.clear()
        return events

    def _record(self, step: int, row: dict[str, float | None]) -> list[SpikeEvent]:
        events: list[SpikeEvent] = []
        for metric, dets in self.detectors.items():
            value = row.get(metric)
            if value is None:
                continue
            for i, det in enumerate(dets):
                try:
                    ev = det.update(value, step, metric)
                except Exception as exc:
                    self._problem(f"detector {getattr(det, 'name', det)!r}", exc)
                    continue
                ev = self._level_shift(metric, i, det, ev, step, value)
                if ev is not None:
                    events.append(ev)
        bad = [k[len("grad_norm/"):] for k, v in row.items()
               if k.startswith("grad_norm/") and v is not None and not math.isfinite(v)]
        if bad:
            shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
            events.append(SpikeEvent(step, "nonfinite_grads", float(len(bad)), math.inf, "monitor",
                                     f"non-finite gradients at step {step} in {shown}"))
        # columns: expected ones first (fixed CSV header), then anything new in order of appearance
        for key in [*self._expected_columns(), *row]:
            if key not in self._history:
                self._columns.append(key)
                self._history[key] = [None] * len(self._history["step"])
        sinks_rank0 = dist_info(self.process_group)[0] == 0
        full = {c: row.get(c) for c in self._columns}
        events.extend(self._drain_errors(step))  # this step's monitor problems go to the sinks too
        if sinks_rank0:
            def write(sink: MonitorSink) -> None:
                sink.write(step, full, [e.to_dict() for e in events])
                if step % self.flush_every == 0:
                    sink.flush()

            self._on_sinks(write)
        events.extend(self._drain_errors(step))  # problems of the sinks themselves (reach the next rows' sinks)
        if self.keep_history:
            self._history["step"].append(step)
            for c in self._columns:
                self._history[c].append(row.get(c))
        self._keep_events(events)
        return events

    def _level_shift(self, metric: str, index: int, det: SpikeDetector, event: SpikeEvent | None, step: int,
                     value: float) -> SpikeEvent | None:
        """Turn ``level_shift_after`` consecutive events of one detector into one ``level_shift`` event."""
        key = (metric, index)
        if event is None:
            self._flag_runs.pop(key, None)
            return None
        run = self._flag_runs.get(key, 0) + 1
        self._flag_runs[key] = run
        if run < self.level_shift_after:
            return event
        if run > self.level_shift_after:
            return None  # the detector keeps flagging after its reset (e.g. a run of NaN): already reported
        try:
            det.reset()
        except Exception as exc:
            self._problem(f"detector {getattr(det, 'name', det)!r}", exc)
        return SpikeEvent(step, metric, value, event.score, "level_shift",
                          f"{metric} was flagged by {getattr(det, 'name', type(det).__name__)} on "
                          f"{run} steps in a row up to step {step}: taken as a level shift; the detector was "
                          f"reset to learn the new level (no further events from it until a step is not flagged)")

    def _keep_events(self, events: list[SpikeEvent]) -> None:
        """Append to :attr:`events`, keeping the newest ``max_events``; :attr:`n_events` counts every event."""
        self.events.extend(events)
        self.n_events += len(events)
        excess = len(self.events) - self.max_events
        if excess > 0:
            del self.events[:excess]

    def __enter__(self) -> TrainingMonitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
