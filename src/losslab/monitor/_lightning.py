"""Lightning adapter: a ``lightning.pytorch.Callback`` that feeds a :class:`TrainingMonitor`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from losslab._errors import require
from losslab.monitor._core import TrainingMonitor

_pl: Any = require("lightning.pytorch", "lightning", "LightningMonitorCallback")

__all__ = ["LightningMonitorCallback"]


class LightningMonitorCallback(_pl.Callback):  # type: ignore[misc,name-defined]
    """Feed a :class:`TrainingMonitor` from a Lightning ``Trainer`` (automatic optimisation).

    Hooks used:

    - ``on_before_optimizer_step``: :meth:`TrainingMonitor.before_step` - Lightning calls it after the
      gradients are accumulated and *before* it clips them, so ``grad_norm`` is the unclipped norm;
    - ``on_train_batch_end``: :meth:`TrainingMonitor.step` with the step's loss (and ``outputs["logits"]``
      when ``training_step`` returns them), only on batches that ended with an optimizer step; the step number
      is ``trainer.global_step``. With ``accumulate_grad_batches=k`` Lightning hands ``outputs["loss"]``
      divided by ``k``; the callback multiplies it back and logs the mean over the step's micro-batches, so the
      logged loss is the one ``training_step`` returned (not ``loss / k`` of the last micro-batch);
    - ``on_train_end``: flush the sinks (call ``monitor.close()`` yourself when done);
    - ``state_dict``/``load_state_dict``: the monitor's state travels in Lightning checkpoints, so a resumed
      fit continues the detector windows.

    Under DDP every rank runs the callback (the reduction needs them all); only rank 0 writes.

    Args:
        monitor: the monitor to feed (its ``model``/``optimizer`` are taken from the trainer).

    Example:
        >>> cb = LightningMonitorCallback(TrainingMonitor(sinks=["logs/monitor.csv"]))  # doctest: +SKIP
        >>> trainer = lightning.pytorch.Trainer(callbacks=[cb])  # doctest: +SKIP

    References:
        Lightning ``Callback`` API (``on_before_optimizer_step``, ``on_train_batch_end``, ``state_dict``).
    """

    def __init__(self, monitor: TrainingMonitor) -> None:
        super().__init__()
        if not isinstance(monitor, TrainingMonitor):
            from losslab._errors import ConfigError

            raise ConfigError(f"LightningMonitorCallback needs a TrainingMonitor, got {type(monitor).__name__}")
        self.monitor = monitor
        self._last_recorded = -1
        self._losses: list[Any] = []  # this step's micro-batch losses (device tensors or floats), undivided

    @property
    def state_key(self) -> str:
        """Key of this callback's state in Lightning checkpoints."""
        return "LightningMonitorCallback"

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        """Measure gradients (before clipping) and snapshot parameters."""
        self.monitor.before_step(pl_module, getattr(optimizer, "optimizer", optimizer), step=trainer.global_step + 1)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        """Record the step once per optimizer step."""
        step = int(trainer.global_step)
        try:
            micro = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
            if micro is not None:  # Lightning divided it by accumulate_grad_batches: undo that
                k = int(getattr(trainer, "accumulate_grad_batches", 1) or 1)
                micro = micro.detach().float().mean() if isinstance(micro, Tensor) else float(micro)
                self._losses.append(micro * k)
        except Exception as exc:
            self.monitor._problem("Lightning loss", exc)
        if step <= self._last_recorded or step == 0:
            return  # gradient accumulation: no optimizer step on this batch
        self._last_recorded = step
        losses, self._losses = self._losses, []
        loss: Any = None
        if losses:
            try:
                device = next((v.device for v in losses if isinstance(v, Tensor)), None)
                loss = torch.stack([torch.as_tensor(v, dtype=torch.float32, device=device) for v in losses]).mean()
            except Exception as exc:
                self.monitor._problem("Lightning loss", exc)
        logits = outputs.get("logits") if isinstance(outputs, Mapping) else None
        optimizers = trainer.optimizers
        optimizer = getattr(optimizers[0], "optimizer", optimizers[0]) if optimizers else None
        self.monitor.step(loss=loss, model=pl_module, optimizer=optimizer, logits=logits, step=step)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        """Flush the sinks."""
        self.monitor.flush()

    def state_dict(self) -> dict[str, Any]:
        """The monitor's state (saved in Lightning checkpoints)."""
        return {"monitor": self.monitor.state_dict(), "last_recorded": self._last_recorded}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the monitor's state from a Lightning checkpoint."""
        self.monitor.load_state_dict(state_dict["monitor"])
        self._last_recorded = int(state_dict.get("last_recorded", -1))
