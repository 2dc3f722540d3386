"""Hugging Face adapter: a ``transformers.TrainerCallback`` that feeds a :class:`TrainingMonitor`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from losslab._errors import ConfigError, require
from losslab.monitor._core import TrainingMonitor

_tf: Any = require("transformers", "transformers", "HFMonitorCallback")

__all__ = ["HFMonitorCallback"]


def _loss_and_logits(output: Any) -> tuple[Tensor | None, Tensor | None]:
    if isinstance(output, Mapping) or hasattr(output, "keys"):
        loss, logits = output.get("loss"), output.get("logits")
    elif isinstance(output, (tuple, list)) and output:
        loss, logits = output[0], output[1] if len(output) > 1 else None
    else:
        return None, None
    return (loss if isinstance(loss, Tensor) else None), (logits if isinstance(logits, Tensor) else None)


class HFMonitorCallback(_tf.TrainerCallback):  # type: ignore[misc,name-defined]
    """Feed a :class:`TrainingMonitor` from a Hugging Face ``Trainer``.

    The Trainer does not hand the per-step loss to callbacks (only averages in ``on_log``), so the callback
    puts a forward hook on the model at ``on_train_begin`` that keeps the ``loss`` (and, on sampled steps, the
    ``logits``) of the model output - a ``ModelOutput``/dict with a ``loss`` key or a tuple whose first item is
    the loss, which is what a model returns when it computes its own loss. The loss of a step is the mean over
    its gradient-accumulation micro-batches - except when the Trainer passes ``num_items_in_batch`` to the
    model (models that accept loss kwargs, e.g. every causal LM of ``transformers``): then each micro-batch loss
    is already the micro-batch's share of the step's loss (summed tokens divided by the step's token count), so
    the micro-batch losses are summed, and multiplied by the world size when ``average_tokens_across_devices``
    divides by the token count of all ranks. Either way the logged loss is the Trainer's own ``loss``. Hooks
    used:

    - ``on_pre_optimizer_step``: :meth:`TrainingMonitor.before_step` (gradients are already clipped here when
      ``max_grad_norm > 0``: the Trainer clips before this hook, so ``grad_norm`` is the clipped norm - the
      Trainer's own ``grad_norm`` log is the unclipped one);
    - ``on_optimizer_step``: :meth:`TrainingMonitor.step` (gradients are zeroed before ``on_step_end``), step
      number ``state.global_step + 1``;
    - ``on_train_end``: flush the sinks and remove the hook.

    Save/restore the monitor with ``monitor.state_dict()`` next to your checkpoint (``TrainerCallback`` has no
    state hook).

    Args:
        monitor: the monitor to feed.

    Example:
        >>> cb = HFMonitorCallback(TrainingMonitor(sinks=["out/monitor.jsonl"]))  # doctest: +SKIP
        >>> trainer = transformers.Trainer(model=model, args=args, callbacks=[cb])  # doctest: +SKIP

    References:
        Hugging Face ``transformers.TrainerCallback`` (``on_pre_optimizer_step``, ``on_optimizer_step``).
    """

    def __init__(self, monitor: TrainingMonitor) -> None:
        if not isinstance(monitor, TrainingMonitor):
            raise ConfigError(f"HFMonitorCallback needs a TrainingMonitor, got {type(monitor).__name__}")
        self.monitor = monitor
        self._handle: Any = None
        self._losses: list[Tensor] = []
        self._shares = False  # the micro-batch losses were normalised by the step's num_items_in_batch
        self._logits: Tensor | None = None
        self._next_step = 1

    def _hook(self, module: Any, args: Any, kwargs: Any, output: Any) -> None:
        if not module.training:
            return
        loss, logits = _loss_and_logits(output)
        if loss is not None:
            self._losses.append(loss.detach().float().mean())
            if isinstance(kwargs, Mapping) and kwargs.get("num_items_in_batch") is not None:
                self._shares = True
        if logits is not None and self.monitor.is_sampled(self._next_step):
            self._logits = logits.detach()

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        """Hook the model's forward to capture the loss."""
        if model is not None and self._handle is None:
            self._handle = model.register_forward_hook(self._hook, with_kwargs=True)
        self._next_step = int(state.global_step) + 1

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Measure gradients and snapshot parameters."""
        self.monitor.before_step(kwargs.get("model"), kwargs.get("optimizer"), step=int(state.global_step) + 1)

    def on_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Record the step."""
        step = int(state.global_step) + 1
        loss: Any = None
        if self._losses:
            loss = sum(self._losses)
            if self._shares:  # shares of the step's loss: their sum is the loss (see the class docstring)
                world = int(getattr(args, "world_size", 1) or 1)
                if world > 1 and getattr(args, "average_tokens_across_devices", False):
                    loss = loss * world
            else:
                loss = loss / len(self._losses)
        self.monitor.step(loss=loss, model=kwargs.get("model"), optimizer=kwargs.get("optimizer"),
                          logits=self._logits, step=step)
        self._losses, self._logits, self._shares = [], None, False
        self._next_step = step + 1

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Flush the sinks and remove the forward hook."""
        self.monitor.flush()
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
