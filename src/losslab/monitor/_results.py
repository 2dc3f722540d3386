"""The results half of TrainingMonitor: history, text report, sinks' flush and close, checkpoint state.

:class:`MonitorResults` is a base class of :class:`~losslab.monitor.TrainingMonitor`, which sets the attributes
declared here; it holds no state of its own.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from losslab._errors import ConfigError, OptionalDependencyError
from losslab.monitor._attention import AttentionHooks
from losslab.monitor._dist import dist_info
from losslab.monitor._logfile import format_summary, summary_stats
from losslab.monitor._sinks import MonitorSink
from losslab.stability.spikes import SpikeDetector, SpikeEvent

__all__ = ["MonitorResults"]

_STATE_VERSION = 1


class MonitorResults:
    """History, report, flush/close and ``state_dict`` of :class:`~losslab.monitor.TrainingMonitor`."""

    _history: dict[str, list[float | None]]
    _layers: list[str]
    _attn: AttentionHooks
    _closed: bool
    events: list[SpikeEvent]
    n_events: int
    step_count: int
    every_n_steps: int
    detectors: dict[str, list[SpikeDetector]]
    sinks: list[MonitorSink]
    process_group: Any
    _sink_down: dict[int, int]
    _errors: list[str]

    if TYPE_CHECKING:
        def is_sampled(self, step: int) -> bool: ...

        def _problem(self, where: str, exc: BaseException | str) -> None: ...

        def _drain_errors(self, step: int) -> list[SpikeEvent]: ...

        def _keep_events(self, events: list[SpikeEvent]) -> None: ...

    @property
    def history(self) -> dict[str, list[float | None]]:
        """In-memory table: ``{"step": [...], "<column>": [...]}``, one entry per recorded step (``None`` =
        not measured). Empty when ``keep_history=False``."""
        return self._history

    def to_pandas(self) -> Any:
        """:attr:`history` as a ``pandas.DataFrame`` indexed by step (needs pandas)."""
        try:
            import pandas as pd
        except ImportError as exc:
            raise OptionalDependencyError("TrainingMonitor.to_pandas needs pandas; install it with: pip install "
                                          "pandas (or use monitor.history, a dict of lists)") from exc
        return pd.DataFrame(self._history).set_index("step")

    def report(self, max_events: int = 10) -> str:
        """A few lines of text: steps, loss, gradient norm and the events so far."""
        events = [e.to_dict() for e in self.events]
        head = (f"TrainingMonitor: {self.step_count} steps, every_n_steps={self.every_n_steps}, "
                f"{len(self._layers)} layers, detectors on {', '.join(self.detectors) or 'nothing'}")
        return head + "\n" + format_summary(summary_stats(self._history, events), events, max_events=max_events)

    def flush(self) -> None:
        """Flush every sink now (errors become warnings)."""
        if dist_info(self.process_group)[0] != 0:
            return
        self._on_sinks(lambda sink: sink.flush())
        self._keep_errors()

    def _on_sinks(self, call: Callable[[MonitorSink], object], closing: bool = False) -> None:
        """``call(sink)`` for every sink; a failure goes to :meth:`_problem` and the other sinks still run.

        A sink that keeps failing is reported once per outage (when it starts failing) and once when it works
        again (with the rows it dropped meanwhile), not on every step; ``closing`` reports every failure. A sink
        is failing from a call that raised until a call that neither raised nor left its ``failing`` flag set.
        """
        for i, sink in enumerate(self.sinks):
            where = f"sink {i} ({type(sink).__name__})"
            try:
                call(sink)
            except Exception as exc:
                if closing or i not in self._sink_down:
                    self._problem(where, exc)
                self._sink_down[i] = self._sink_down.get(i, 0) + 1
                continue
            if i in self._sink_down and not getattr(sink, "failing", False):
                failed = self._sink_down.pop(i)
                dropped = int(getattr(sink, "last_outage_dropped", 0) or 0)
                self._errors.append(f"{where} works again after {failed} failed call(s); {dropped} row(s) "
                                    f"were dropped meanwhile")

    def _keep_errors(self) -> None:
        self._keep_events(self._drain_errors(self.step_count))

    def close(self) -> None:
        """Flush and close the sinks and remove the attention hooks. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self._attn.remove()
        self._on_sinks(lambda sink: sink.close(), closing=True)
        self._keep_errors()

    def state_dict(self) -> dict[str, Any]:
        """Step counter, event count and every detector's state (the history lives in the sinks)."""
        return {"version": _STATE_VERSION, "step": self.step_count, "n_events": self.n_events,
                "every_n_steps": self.every_n_steps,
                "detectors": {m: [d.state_dict() for d in dets] for m, dets in self.detectors.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` so a resumed run continues: same step numbers, same detector windows.

        Raises:
            ConfigError: the state is not a monitor state or its detectors do not match this monitor's.
        """
        if not isinstance(state, Mapping) or state.get("version") != _STATE_VERSION or "detectors" not in state:
            raise ConfigError("not a TrainingMonitor state_dict (missing 'version'/'detectors'); pass what "
                              "TrainingMonitor.state_dict() returned")
        saved = state["detectors"]
        if set(saved) != set(self.detectors) or any(len(saved[m]) != len(d) for m, d in self.detectors.items()):
            raise ConfigError(f"the saved monitor watched {sorted(saved)} with "
                              f"{[len(v) for v in saved.values()]} detectors, this one {sorted(self.detectors)}; "
                              f"build the monitor with the same detectors before loading")
        for m, dets in self.detectors.items():
            for det, s in zip(dets, saved[m]):
                det.load_state_dict(s)
        self.step_count = int(state["step"])
        self.n_events = int(state["n_events"])
        self._attn.active = self.is_sampled(self.step_count + 1)
