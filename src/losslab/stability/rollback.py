"""Roll back to the last good state on divergence and skip the following batches (PaLM's recipe)."""

from __future__ import annotations

import copy
import os
import random
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from losslab._errors import ConfigError
from losslab.stability.skip import TrainingDivergedError
from losslab.stability.spikes import NonFiniteDetector, SpikeDetector, SpikeEvent, ZScoreDetector

__all__ = ["Rollback", "RollbackEvent"]


@dataclass(frozen=True)
class RollbackEvent:
    """What a rollback did.

    Attributes:
        batch: the batch index at which divergence was detected.
        step: the good-step count at detection.
        restored_step: the good-step count of the snapshot that was restored.
        skip_until: batches with index ``<= skip_until`` are skipped (see :meth:`Rollback.should_skip`).
        reason: the spike event that triggered the rollback.
    """

    batch: int
    step: int
    restored_step: int
    skip_until: int
    reason: SpikeEvent

    def to_dict(self) -> dict[str, Any]:
        """The event as a plain dict."""
        return asdict(self)


def _to_cpu(obj: Any) -> Any:
    """Deep copy of a (nested) state dict with every tensor cloned to CPU."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return copy.deepcopy(obj)


def _has_get_set_state(obj: Any) -> bool:
    return callable(getattr(obj, "get_state", None)) and callable(getattr(obj, "set_state", None))


def _get_state(obj: Any) -> Any:
    return obj.state_dict() if hasattr(obj, "state_dict") else obj.get_state()


def _set_state(obj: Any, state: Any) -> None:
    if hasattr(obj, "load_state_dict"):
        obj.load_state_dict(state)
    else:
        obj.set_state(state)


def _rng_state() -> dict[str, Any]:
    """The global random states: torch's CPU generator, the current CUDA device's (if CUDA is in use), random, numpy."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "random": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = (torch.cuda.current_device(), torch.cuda.get_rng_state())
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy is a dependency
        pass
    else:
        state["numpy"] = np.random.get_state()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["random"])
    if "cuda" in state and torch.cuda.is_available():
        device, cuda_state = state["cuda"]
        torch.cuda.set_rng_state(cuda_state, device)
    if "numpy" in state:
        import numpy as np

        np.random.set_state(state["numpy"])


class Rollback:
    r"""Keep the last ``keep`` good states and restore one when training diverges, then skip ``skip_batches``.

    Call :meth:`update` once per batch after ``optimizer.step()`` with the batch's loss. Every ``every`` good
    steps the state of the model, the optimizer and any ``extra`` stateful objects (LR scheduler, grad
    scaler) is snapshotted (in memory on the CPU, or in ``directory`` with ``torch.save``). When a detector
    flags the loss (default: NaN/Inf, or a 6-sigma z-score jump), the newest snapshot is restored and the next
    ``skip_batches`` batches are to be skipped (:meth:`should_skip`). If training diverges again before a new
    snapshot was taken, that snapshot is dropped and the one before it is used, so repeated failures walk
    back in time. After ``max_rollbacks`` rollbacks, or with no snapshot left, :class:`TrainingDivergedError`.

    PaLM's rule: restart from a checkpoint about 100 steps before the spike and skip about 200-500 batches, so
    ``every=100, skip_batches=200`` reproduce it when the data loader is re-positioned at the restored step.
    If your loader just continues (the usual ``for batch in loader``), the skipped batches are the ones
    following the spike; :attr:`RollbackEvent.restored_step` tells you where to re-seek a deterministic loader.

    Args:
        model: the module whose ``state_dict`` is snapshotted.
        optimizer: its optimizer (any object with ``state_dict``/``load_state_dict``, e.g. ``SkipStepOnSpike``).
        every: good steps between snapshots (PaLM: ~100).
        keep: snapshots kept (K), at least 1.
        skip_batches: batches skipped after a rollback (PaLM: 200-500).
        detectors: loss detectors deciding divergence (default: ``NonFiniteDetector()`` and
            ``ZScoreDetector()``); their state is snapshotted and restored with the model.
        directory: keep snapshots as files there instead of in memory.
        extra: other stateful objects to snapshot and restore, by name: anything with
            ``state_dict``/``load_state_dict`` (LR scheduler, grad scaler) or ``get_state``/``set_state``
            (a ``torch.Generator``, e.g. the one driving a sampler or dropout).
        max_rollbacks: give up after this many rollbacks.
        rng: also snapshot and restore the global random states (torch's CPU generator, the current CUDA
            device's generator when CUDA is initialised, ``random`` and numpy's global state), so the batches
            after a rollback draw the same dropout masks etc. as the original run drew after the snapshot.
            A few kilobytes per snapshot; pass ``False`` to draw fresh randomness after a rollback.

    Example:
        >>> model = torch.nn.Linear(1, 1); opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> rb = Rollback(model, opt, every=10, keep=2, skip_batches=5)
        >>> rb.update(float("nan"), batch=3).restored_step, rb.should_skip(4), rb.should_skip(9)
        (0, True, False)

    References:
        Chowdhery et al., "PaLM: Scaling Language Modeling with Pathways", arXiv:2204.02311, 2022, §5.1.

    Notes:
        Lightning Fabric's ``SpikeDetection`` raises and records two batches to skip on resume; OLMo restarts
        by hand with ``fast_forward_batches``. Here the restore happens in-process. Memory snapshots are not part
        of :meth:`state_dict` (a resumed run starts with its resumed state as the first snapshot); directory
        snapshots are (their file names).
    """

    def __init__(self, model: torch.nn.Module, optimizer: Any, *, every: int = 100, keep: int = 2,
                 skip_batches: int = 200, detectors: Sequence[SpikeDetector] | None = None,
                 directory: str | os.PathLike[str] | None = None, extra: Mapping[str, Any] | None = None,
                 max_rollbacks: int = 10, rng: bool = True) -> None:
        for name, value, low in (("every", every, 1), ("keep", keep, 1), ("skip_batches", skip_batches, 0),
                                 ("max_rollbacks", max_rollbacks, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")
        for name, obj in (("model", model), ("optimizer", optimizer), *(extra or {}).items()):
            if not (hasattr(obj, "state_dict") and hasattr(obj, "load_state_dict")) and not (
                    name not in ("model", "optimizer") and _has_get_set_state(obj)):
                raise ConfigError(f"{name} must have state_dict() and load_state_dict() (or, in extra, get_state() "
                                  f"and set_state() like torch.Generator), got {type(obj).__name__}")
        self.model, self.optimizer, self.extra = model, optimizer, dict(extra or {})
        self.every, self.keep, self.skip_batches, self.max_rollbacks = every, keep, skip_batches, max_rollbacks
        self.rng = bool(rng)
        self.detectors: list[SpikeDetector] = (
            list(detectors) if detectors is not None else [NonFiniteDetector(), ZScoreDetector()])
        self.directory = None if directory is None else Path(directory)
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
        self.step = 0
        self.n_rollbacks = 0
        self.skip_until = -1
        self.events: list[RollbackEvent] = []
        self._snapshots: list[tuple[int, Any]] = []  # (step, state or file path)
        self._restored_from: int | None = None  # step of the snapshot most recently restored
        self._snapshot()

    # -- snapshots ------------------------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "extra": {k: _get_state(v) for k, v in self.extra.items()},
                "detectors": [d.state_dict() for d in self.detectors],
                "rng": _rng_state() if self.rng else None}

    def _snapshot(self) -> None:
        state = _to_cpu(self._state())
        if self.directory is not None:
            fd, name = tempfile.mkstemp(prefix=f"rollback-step{self.step}-", suffix=".pt", dir=self.directory)
            os.close(fd)
            torch.save(state, name)
            self._snapshots.append((self.step, name))
        else:
            self._snapshots.append((self.step, state))
        while len(self._snapshots) > self.keep:
            self._drop(0)
        self._restored_from = None

    def _drop(self, index: int) -> None:
        _, stored = self._snapshots.pop(index)
        if isinstance(stored, str):
            Path(stored).unlink(missing_ok=True)

    def _restore(self, stored: Any) -> None:
        state = torch.load(stored, weights_only=False) if isinstance(stored, str) else stored
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(copy.deepcopy(state["optimizer"]))
        for k, v in self.extra.items():
            _set_state(v, copy.deepcopy(state["extra"][k]))
        for d, s in zip(self.detectors, state["detectors"]):
            d.load_state_dict(copy.deepcopy(s))
        if state.get("rng") is not None:
            _set_rng_state(state["rng"])

    @property
    def snapshot_steps(self) -> list[int]:
        """Good-step counts of the snapshots kept, oldest first."""
        return [s for s, _ in self._snapshots]

    # -- the loop -------------------------------------------------------------------------------------------
    def should_skip(self, batch: int) -> bool:
        """Whether the batch with this index falls in the skip window of the last rollback."""
        return batch <= self.skip_until

    def update(self, loss: Any, batch: int) -> RollbackEvent | None:
        """Feed the loss of batch ``batch`` (after the optimizer step); roll back if it signals divergence.

        Returns:
            A :class:`RollbackEvent` when the model, optimizer and extras were restored, else ``None``.
        """
        value = float(loss.detach()) if isinstance(loss, torch.Tensor) else float(loss)
        reason: SpikeEvent | None = None
        for d in self.detectors:
            flagged = d.update(value, step=batch, metric="loss")
            reason = reason or flagged
        if reason is None:
            self.step += 1
            if self.step % self.every == 0:
                self._snapshot()
            return None
        if self._restored_from is not None and len(self._snapshots) > 0:
            # diverged again before a new snapshot: the restored one is suspect, walk back
            self._drop(len(self._snapshots) - 1)
        if self.n_rollbacks >= self.max_rollbacks or not self._snapshots:
            why = "no good snapshot is left" if not self._snapshots else f"{self.n_rollbacks} rollbacks were made"
            raise TrainingDivergedError(
                f"training diverged at batch {batch} ({reason.message}) and {why}; lower the learning rate, "
                f"raise keep/max_rollbacks, or inspect the data around batch {batch}"
            )
        restored_step, stored = self._snapshots[-1]
        self._restore(stored)
        self._restored_from = restored_step
        event = RollbackEvent(batch=batch, step=self.step, restored_step=restored_step,
                              skip_until=batch + self.skip_batches, reason=reason)
        self.step = restored_step
        self.skip_until = event.skip_until
        self.n_rollbacks += 1
        self.events.append(event)
        return event

    def state_dict(self) -> dict[str, Any]:
        """Counters, skip window, detector states and (directory mode) the snapshot files."""
        return {"step": self.step, "n_rollbacks": self.n_rollbacks, "skip_until": self.skip_until,
                "restored_from": self._restored_from,
                "detectors": [d.state_dict() for d in self.detectors],
                "snapshots": [(s, p) for s, p in self._snapshots] if self.directory is not None else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`; in memory mode the current state becomes the only snapshot.

        In directory mode the saved snapshot files that still exist are used again (none is deleted); if none is
        left (they were rotated away after the checkpoint), the current state becomes the only snapshot. Files of
        this instance that the saved state does not list are deleted; other snapshot files in the folder that no
        saved entry refers to are reported with a :class:`RuntimeWarning`.
        """
        if not isinstance(state, dict) or "skip_until" not in state:
            raise ConfigError("not a Rollback state_dict (key 'skip_until' expected)")
        if len(state["detectors"]) != len(self.detectors):
            raise ConfigError(f"saved state has {len(state['detectors'])} detectors, this Rollback has "
                              f"{len(self.detectors)}; build it with the same detectors")
        for d, s in zip(self.detectors, state["detectors"]):
            d.load_state_dict(s)
        self.step, self.n_rollbacks = int(state["step"]), int(state["n_rollbacks"])
        self.skip_until = int(state["skip_until"])
        saved = [(int(s), str(p)) for s, p in state.get("snapshots") or []] if self.directory is not None else []
        keep_paths = {os.path.abspath(p) for _, p in saved}
        for i in range(len(self._snapshots) - 1, -1, -1):  # this instance's own files the saved state does not use
            if not (isinstance(self._snapshots[i][1], str) and os.path.abspath(self._snapshots[i][1]) in keep_paths):
                self._drop(i)
        self._snapshots = [(s, p) for s, p in saved if Path(p).is_file()]
        if self._snapshots:
            restored_from = state.get("restored_from")
            self._restored_from = restored_from if restored_from in self.snapshot_steps else None
        else:  # memory mode, or every saved file is gone (rotated away after the checkpoint): start afresh
            self._snapshots = []
            self._snapshot()
        if self.directory is not None:
            self._warn_orphans()

    def _warn_orphans(self) -> None:
        """Warn about snapshot files in :attr:`directory` that no kept snapshot refers to."""
        assert self.directory is not None
        used = {os.path.abspath(p) for _, p in self._snapshots}
        orphans = sorted(str(f) for f in self.directory.glob("rollback-step*.pt")
                         if os.path.abspath(f) not in used)
        if orphans:
            warnings.warn(f"{len(orphans)} snapshot file(s) in {str(self.directory)!r} belong to no snapshot of the "
                          f"loaded state (e.g. written after the checkpoint was taken) and will not be used: "
                          f"{', '.join(orphans[:5])}{' ...' if len(orphans) > 5 else ''}; delete them if no other "
                          f"run uses this folder", RuntimeWarning, stacklevel=3)
