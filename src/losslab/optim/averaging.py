"""Uniform weight averaging along training: the average of WAKD (weight-averaged knowledge distillation)."""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from losslab._distributed import unwrap_parallel
from losslab._errors import ConfigError, DataError, NotFittedError
from losslab.optim._atoms import check_bool, check_int

__all__ = ["WeightAverage"]

_OWNER = "WeightAverage"
_KEYS = ("begin", "every", "copy_buffers", "step", "count", "average", "buffers", "best")


def running_mean_(averages: Sequence[Tensor], values: Sequence[Tensor], n: int) -> None:
    """``avg ← avg + (value − avg) / n`` in place for each pair: the ``n``-th update of a uniform running mean.

    ``values`` are cast to each average's dtype and device first; the arithmetic (a difference, then a division
    by ``n``) is the authors' ``avg_fn``.
    """
    for avg, value in zip(averages, values):
        diff = value.detach().to(device=avg.device, dtype=avg.dtype) - avg
        avg.add_(diff.div_(n))


def _unwrap(model: Any) -> nn.Module:
    """The network inside DataParallel/DistributedDataParallel, ``torch.compile`` or a plain ``.module`` holder."""
    for _ in range(8):
        inner = unwrap_parallel(model)
        if inner is not model:
            model = inner
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):  # torch.compile's OptimizedModule
            model = model._orig_mod
        elif not isinstance(model, nn.Module) and isinstance(getattr(model, "module", None), nn.Module):
            model = model.module
        else:
            break
    if not isinstance(model, nn.Module):
        raise ConfigError(f"{_OWNER}: model must be a torch.nn.Module (or a DDP-style wrapper with .module), got "
                          f"{type(model).__name__}")
    return model


def _resolve_begin(start: Any, total_steps: int | None) -> int:
    if isinstance(start, bool) or not isinstance(start, (int, float)):
        raise ConfigError(f"{_OWNER}: start={start!r} is invalid: pass an int step (>= 1) or a float fraction of "
                          "total_steps in [0, 1] (the authors begin at 0.1)")
    if isinstance(start, int):
        if start < 1:
            raise ConfigError(f"{_OWNER}: start={start} is invalid: the step at which averaging begins counts "
                              "update() calls from 1; pass start >= 1")
        if total_steps is not None and start > total_steps:
            raise ConfigError(f"{_OWNER}: start={start} is after total_steps={total_steps}: the average would never "
                              "begin; lower start or pass a fraction")
        return start
    if not math.isfinite(start) or not 0.0 <= start <= 1.0:
        raise ConfigError(f"{_OWNER}: start={start!r} is invalid: a float start is a fraction of total_steps in "
                          "[0, 1]; for a step number pass an int")
    if total_steps is None:
        raise ConfigError(f"{_OWNER}: start={start!r} is a fraction, so total_steps (the number of update() calls "
                          "of the whole run) is needed; pass total_steps=... or an int start")
    return max(1, math.floor(start * total_steps + 0.5))


def _accumulator_dtype(name: str, p: Tensor, dtype: torch.dtype | None) -> torch.dtype:
    if not (p.is_floating_point() or p.is_complex()):
        raise ConfigError(f"{_OWNER}: parameter {name} has dtype {p.dtype}; only floating-point parameters can be "
                          "averaged")
    return torch.promote_types(p.dtype, torch.float32) if dtype is None else dtype


class WeightAverage:
    r"""A uniform running average of a model's parameters from a begin step to the end of training.

    With :math:`\theta_t` the parameters after optimizer step :math:`t` (``t = 1, 2, ...``, one :meth:`update` per
    step), begin step :math:`b` and period :math:`k` (``every``):

    .. math::

        \bar\theta_1 = \theta_b,\qquad \bar\theta_n = \bar\theta_{n-1} + \frac{\theta_{b+(n-1)k} - \bar\theta_{n-1}}{n}

    i.e. :math:`\bar\theta` is the plain mean of the iterates :math:`\theta_b, \theta_{b+k}, \dots`. Before step
    :math:`b`, :meth:`update` only counts. No validation data is needed: the final model is the average.

    **WAKD** (weight-averaged knowledge distillation) is the student trained on the distillation loss alone,
    :func:`losslab.losses.kd` (``T² · KL(softmax(t/T) ‖ softmax(s/T))``, the authors use T = 5 and no label
    cross-entropy), with this average over the last 90 % of training (``start=0.1``) as the deployed student.

    Args:
        model: the network (a DDP/DataParallel wrapper, a ``torch.compile`` module or any object holding the
            network in ``.module`` is looked through). All its parameters are averaged, trainable or not.
        start: the begin step :math:`b`: an ``int >= 1`` (the number of :meth:`update` calls at which the model is
            copied; the authors' 5000 of 50000) or a ``float`` fraction of ``total_steps`` in [0, 1], rounded to
            the nearest step (at least 1).
        every: average every ``every``-th step after the begin step (the authors: 1).
        total_steps: the number of :meth:`update` calls of the whole run; required for a fractional ``start``.
        copy_buffers: ``False`` (the authors): the average's buffers (BatchNorm running statistics, ...) are those of
            the model at the begin step and never change. ``True``: they are copied from the model at every
            averaging step (as ``torch.optim.swa_utils.AveragedModel(use_buffers=False)``). Buffers are never
            averaged; with BatchNorm in train mode, recompute the statistics of the averaged model afterwards
            (``torch.optim.swa_utils.update_bn``).
        dtype: the dtype of the running mean; ``None`` (default): float32 for float16/bfloat16/float32 parameters
            and float64 for float64 ones; ``torch.float64`` for more precision.
        device: where the average lives (``"cpu"`` to keep it off the accelerator, as the authors do); ``None``:
            on each parameter's device.
        check_finite: on averaging steps, refuse (``DataError``, nothing changed) parameters holding NaN/Inf,
            which would poison the mean for good (one host sync per averaging step).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> import losslab.losses as L
        >>> from losslab.optim import WeightAverage
        >>> w = nn.Linear(1, 1, bias=False)
        >>> avg = WeightAverage(w, start=2)
        >>> for value in [5.0, 1.0, 2.0, 6.0]:              # the weight after steps 1..4
        ...     _ = w.weight.data.fill_(value)
        ...     _ = avg.update(w)
        >>> avg.averaged_model().weight.item()             # (1 + 2 + 6) / 3; step 1 precedes the begin step
        3.0
        >>> # WAKD: distil with the KD loss, deploy the average of the last 90 % of the iterates
        >>> g = torch.Generator().manual_seed(0)
        >>> teacher, student = nn.Linear(4, 3), nn.Linear(4, 3)
        >>> opt = torch.optim.SGD(student.parameters(), lr=0.5)
        >>> avg = WeightAverage(student, start=0.1, total_steps=50)
        >>> for step in range(50):
        ...     x = torch.randn(16, 4, generator=g)
        ...     loss = L.kd(student(x), teacher(x).detach(), temperature=5.0)
        ...     opt.zero_grad(); loss.backward(); opt.step()
        ...     _ = avg.update(student)
        >>> avg.begin, avg.count
        (5, 46)
        >>> final_student = avg.averaged_model().eval()

    References:
        Berezovskiy, Morozov, "Weight Averaging Improves Knowledge Distillation under Domain Shift", ICCV 2023
        Workshops, arXiv:2309.11446, 2023. Code: vorobeevich/distillation-in-dg (``Trainer.swad_train_one_domain``,
        ``our_swad_begin``; ``src/swad/swa_utils.py``), followed here.

    Notes:
        In the authors' code the average is a copy of the whole model made at the begin step (so its buffers stay
        those of that step) and only ``model.parameters()`` are averaged afterwards, every step, in the parameters'
        dtype on the CPU; all BatchNorm2d layers are kept in eval mode during training, so their statistics do
        not move anyway. Their "eoa" model, the snapshot of the running average with the best validation accuracy
        checked every 100 steps (strict improvement), is :meth:`record_validation` here; in their code (commit
        e32e109) ``calc_accuracy`` evaluates the live model rather than the model passed to it, so that selection
        is keyed on the live iterate's accuracy; here the caller passes the score, meant to be the average's.
        ``torch.optim.swa_utils.AveragedModel`` with its default averaging gives the same mean (it uses
        ``lerp``, so float32 results may differ in the last bit) and copies the live buffers at each update
        (``copy_buffers=True``). FSDP2 (DTensor) parameters are averaged elementwise, shard by shard; that path
        is not tested.
    """

    def __init__(self, model: Any, start: int | float, every: int = 1, *, total_steps: int | None = None,
                 copy_buffers: bool = False, dtype: torch.dtype | None = None,
                 device: torch.device | str | None = None, check_finite: bool = True) -> None:
        if total_steps is not None:
            total_steps = check_int(_OWNER, "total_steps", total_steps, low=1)
        self.begin = _resolve_begin(start, total_steps)
        self.every = check_int(_OWNER, "every", every, low=1, hint="the authors average every step (every=1)")
        self.total_steps = total_steps
        self.copy_buffers = check_bool(_OWNER, "copy_buffers", copy_buffers)
        self.check_finite = check_bool(_OWNER, "check_finite", check_finite)
        if dtype is not None and dtype not in (torch.float32, torch.float64):
            raise ConfigError(f"{_OWNER}: dtype={dtype!r} is invalid: pass None (float32, or float64 for float64 "
                              "parameters), torch.float32 or torch.float64")
        try:
            self.device = None if device is None else torch.device(device)
        except (RuntimeError, TypeError) as exc:
            raise ConfigError(f"{_OWNER}: device={device!r} is not a torch device, e.g. 'cpu' or 'cuda:0'") from exc
        self.dtype = dtype
        self._model = _unwrap(model)
        named = list(self._model.named_parameters())
        if not named:
            raise ConfigError(f"{_OWNER}: the model has no parameters to average")
        self._dtypes = [_accumulator_dtype(n, p, dtype) for n, p in named]
        self._layout = [(n, tuple(p.shape)) for n, p in named]
        self._buffer_layout = [(n, tuple(b.shape)) for n, b in self._model.named_buffers()]
        self.step = 0   # update() calls so far
        self.count = 0  # iterates in the average
        self._average: list[Tensor] | None = None
        self._buffers: list[Tensor] | None = None
        self._best: dict[str, Any] | None = None

    # ---------------------------------------------------------------- properties
    @property
    def started(self) -> bool:
        """Whether the average exists (the begin step has passed)."""
        return self._average is not None

    @property
    def best_score(self) -> float | None:
        """The best score passed to :meth:`record_validation` (``None`` before the first)."""
        return None if self._best is None else float(self._best["score"])

    @property
    def best_step(self) -> int | None:
        """The step of the best snapshot (``None`` before the first :meth:`record_validation`)."""
        return None if self._best is None else int(self._best["step"])

    # ---------------------------------------------------------------- checks
    def _matching(self, model: Any, what: str) -> nn.Module:
        net = self._model if model is None else _unwrap(model)
        layout = [(n, tuple(p.shape)) for n, p in net.named_parameters()]
        if layout != self._layout:
            theirs, ours = dict(layout), dict(self._layout)
            diff = sorted(set(theirs.items()) ^ set(ours.items()))[:4]
            raise DataError(f"{_OWNER}.{what}: the model's parameters differ from those being averaged (name, "
                            f"shape) e.g. {diff}; pass the same network (wrappers are looked through); nothing "
                            "was changed")
        if [(n, tuple(b.shape)) for n, b in net.named_buffers()] != self._buffer_layout:
            raise DataError(f"{_OWNER}.{what}: the model's buffers differ (names or shapes) from those of the "
                            "averaged network; nothing was changed")
        return net

    def _need_average(self, what: str) -> None:
        if self._average is None:
            raise NotFittedError(f"{_OWNER}.{what}: no average yet: it begins at step {self.begin} and "
                                 f"{self.step} update() calls were made; check .started first")

    # ---------------------------------------------------------------- averaging
    @torch.no_grad()
    def update(self, model: Any = None) -> bool:
        """Count one optimizer step; copy the model at the begin step, average it in on every ``every``-th after.

        Args:
            model: the trained network (default: the one given at construction); wrappers are looked through.

        Returns:
            Whether the average changed at this call.

        Raises:
            DataError: the model's parameter names or shapes differ from the averaged ones, or (``check_finite``)
                a parameter holds NaN/Inf on an averaging step. Nothing is changed, not even the step count.
        """
        net = self._matching(model, "update")
        step = self.step + 1
        if step < self.begin or (step - self.begin) % self.every != 0:
            self.step = step
            return False
        params = [p for _, p in net.named_parameters()]
        if self.check_finite:
            # a NaN/Inf entry makes its tensor's sum non-finite (one pass, no boolean copy); a sum that overflows
            # although every entry is finite (16-bit tensors are summed in float32) is checked entry by entry
            sums = torch.stack([p.detach().sum(dtype=torch.promote_types(p.dtype, torch.float32))
                                .to(device=params[0].device, dtype=torch.float64) for p in params])
            finite = torch.isfinite(sums)
            if not bool(finite.all()):  # one host sync
                finite = torch.stack([torch.isfinite(p.detach()).all().to(params[0].device) for p in params])
            if not bool(finite.all()):
                bad = [n for (n, _), ok in zip(self._layout, finite.tolist()) if not ok]
                raise DataError(f"{_OWNER}.update: parameters {bad[:4]} hold NaN/Inf at step {step}; the average "
                                "was not changed (skip this step or fix the divergence)")
        if self._average is None:
            self._average = [p.detach().to(device=self.device or p.device, dtype=d, copy=True)
                             for p, d in zip(params, self._dtypes)]
            self._buffers = [b.detach().to(device=self.device or b.device, copy=True) for b in net.buffers()]
        else:
            running_mean_(self._average, params, self.count + 1)
            if self.copy_buffers:
                assert self._buffers is not None
                for mine, b in zip(self._buffers, net.buffers()):
                    mine.copy_(b.detach())
        self.count += 1
        self.step = step
        return True

    def record_validation(self, score: float, *, higher_is_better: bool = True) -> bool:
        """Keep a snapshot of the running average if ``score`` (of the average, now) beats the best so far.

        The authors' "eoa" model: call it every so often (they check every 100 steps, accuracy, higher is
        better) and evaluate with ``best=True``. Ties keep the earlier snapshot.

        Returns:
            Whether this score is the new best (and the snapshot was taken).

        Raises:
            NotFittedError: before the begin step. DataError: a NaN/Inf or non-numeric score.
            ConfigError: ``higher_is_better`` differs from the previous calls'.
        """
        self._need_average("record_validation")
        assert self._average is not None and self._buffers is not None
        if isinstance(score, (bool, torch.Tensor)) or not isinstance(score, (int, float)) \
                or not math.isfinite(score):
            raise DataError(f"{_OWNER}.record_validation: score={score!r} is invalid: pass a finite number "
                            "(e.g. the average's validation accuracy as a float)")
        higher = check_bool(_OWNER, "higher_is_better", higher_is_better)
        best = self._best
        if best is not None and best["higher_is_better"] != higher:
            raise ConfigError(f"{_OWNER}.record_validation: higher_is_better={higher} but earlier scores were "
                              f"recorded with {best['higher_is_better']}; keep one direction per run")
        if best is not None and not (score > best["score"] if higher else score < best["score"]):
            return False
        self._best = {"score": float(score), "step": self.step, "count": self.count, "higher_is_better": higher,
                      "average": [a.clone() for a in self._average], "buffers": [b.clone() for b in self._buffers]}
        return True

    # ---------------------------------------------------------------- evaluation
    def _source(self, best: bool, what: str) -> tuple[list[Tensor], list[Tensor]]:
        self._need_average(what)
        if check_bool(_OWNER, "best", best):
            if self._best is None:
                raise NotFittedError(f"{_OWNER}.{what}: best=True but record_validation() was never called")
            return self._best["average"], self._best["buffers"]
        assert self._average is not None and self._buffers is not None
        return self._average, self._buffers

    @torch.no_grad()
    def copy_to(self, model: Any = None, *, best: bool = False) -> None:
        """Write the average (or the best snapshot) into ``model``'s parameters and buffers, in their dtypes."""
        average, buffers = self._source(best, "copy_to")
        net = self._matching(model, "copy_to")
        for p, a in zip(net.parameters(), average):
            p.copy_(a)
        for b, s in zip(net.buffers(), buffers):
            b.copy_(s)

    @contextlib.contextmanager
    def apply_to(self, model: Any = None, *, best: bool = False) -> Iterator[nn.Module]:
        """Context manager: evaluate ``model`` with the averaged weights, restored exactly on exit.

        ``with avg.apply_to(student) as net: val = evaluate(net.eval())`` (set the train mode back yourself).
        """
        self._source(best, "apply_to")
        net = self._matching(model, "apply_to")
        with torch.no_grad():
            saved = [t.detach().clone() for t in [*net.parameters(), *net.buffers()]]
        try:
            self.copy_to(net, best=best)
            yield net
        finally:
            with torch.no_grad():
                for t, s in zip([*net.parameters(), *net.buffers()], saved):
                    t.copy_(s)

    def averaged_model(self, *, best: bool = False) -> nn.Module:
        """A new copy of the network holding the average (or the best snapshot); the live model is untouched."""
        self._source(best, "averaged_model")
        net = copy.deepcopy(self._model)
        for p in net.parameters():
            p.grad = None
        self.copy_to(net, best=best)
        return net

    # ---------------------------------------------------------------- checkpointing
    def state_dict(self) -> dict[str, Any]:
        """Counters, settings, the average, the stored buffers and the best snapshot (tensors cloned)."""
        names = [n for n, _ in self._layout]
        buffer_names = [n for n, _ in self._buffer_layout]

        def pack(average: list[Tensor] | None, buffers: list[Tensor] | None) -> tuple[Any, Any]:
            if average is None or buffers is None:
                return None, None
            return ({n: t.clone() for n, t in zip(names, average)}, {n: t.clone() for n, t in zip(buffer_names, buffers)})

        average, buffers = pack(self._average, self._buffers)
        best = None
        if self._best is not None:
            best = {k: self._best[k] for k in ("score", "step", "count", "higher_is_better")}
            best["average"], best["buffers"] = pack(self._best["average"], self._best["buffers"])
        return {"begin": self.begin, "every": self.every, "copy_buffers": self.copy_buffers, "step": self.step,
                "count": self.count, "average": average, "buffers": buffers, "best": best}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` (everything is checked before anything changes; the checkpoint's ``begin``,
        ``every`` and ``copy_buffers`` replace this object's, as a torch optimizer's param groups do)."""
        where = f"{_OWNER}.load_state_dict"
        if not isinstance(state, Mapping) or any(k not in state for k in _KEYS):
            raise DataError(f"{where}: expected the dict of WeightAverage.state_dict() (keys {', '.join(_KEYS)})")
        try:
            begin = check_int(where, "begin", state["begin"], low=1)
            every = check_int(where, "every", state["every"], low=1)
            step = check_int(where, "step", state["step"], low=0)
            count = check_int(where, "count", state["count"], low=0)
            copy_buffers = check_bool(where, "copy_buffers", state["copy_buffers"])
        except ConfigError as exc:
            raise DataError(str(exc)) from exc
        expected = 0 if step < begin else 1 + (step - begin) // every
        if count != expected or (state["average"] is None) != (count == 0):
            raise DataError(f"{where}: inconsistent counters (step {step}, count {count}, begin {begin}, every "
                            f"{every}) or average; the checkpoint is corrupt")
        average, buffers = self._unpack(state["average"], state["buffers"], where)
        best = state["best"]
        best_state = None
        if best is not None:
            if not isinstance(best, Mapping) or not {"score", "step", "count", "higher_is_better"} <= set(best):
                raise DataError(f"{where}: the 'best' entry is malformed")
            b_avg, b_buf = self._unpack(best.get("average"), best.get("buffers"), where)
            if b_avg is None:
                raise DataError(f"{where}: the 'best' entry has no average")
            best_state = {"score": float(best["score"]), "step": int(best["step"]), "count": int(best["count"]),
                          "higher_is_better": bool(best["higher_is_better"]), "average": b_avg, "buffers": b_buf}
        self.begin, self.every, self.copy_buffers, self.step, self.count = begin, every, copy_buffers, step, count
        self._average, self._buffers, self._best = average, buffers, best_state

    def _unpack(self, average: Any, buffers: Any, where: str) -> tuple[list[Tensor] | None, list[Tensor] | None]:
        if average is None:
            return None, None
        params = dict(self._model.named_parameters())
        model_buffers = dict(self._model.named_buffers())
        out: list[list[Tensor]] = []
        for kind, given, layout, live in (("average", average, self._layout, params),
                                          ("buffers", buffers, self._buffer_layout, model_buffers)):
            if not isinstance(given, Mapping) or list(given) != [n for n, _ in layout]:
                raise DataError(f"{where}: the checkpoint's {kind} does not name this model's tensors in order; "
                                "was it saved from another network?")
            tensors = []
            for name, shape in layout:
                t = given[name]
                if not isinstance(t, Tensor) or tuple(t.shape) != shape:
                    raise DataError(f"{where}: {kind} entry {name} is not a tensor of shape {shape}")
                if kind == "average" and not (t.is_floating_point() or t.is_complex()):
                    raise DataError(f"{where}: average entry {name} has dtype {t.dtype}, not floating point")
                tensors.append(t.detach().to(device=self.device or live[name].device, copy=True))
            out.append(tensors)
        return out[0], out[1]
