"""losslab.monitor: watch a training run (loss, gradient/update norms, logits, Adam health, spikes).

:class:`TrainingMonitor` is a framework-free core fed once per optimizer step; sinks write CSV/JSONL (crash-safe)
and TensorBoard files; adapters plug it into Lightning (:class:`LightningMonitorCallback`) and the Hugging Face
Trainer (:class:`HFMonitorCallback`). The adapters import lightning / transformers only when first used, so
``import losslab.monitor`` stays light. See docs/monitor.md.
"""

from __future__ import annotations

from typing import Any

from losslab.monitor._attention import mha_attention_logits
from losslab.monitor._core import MonitorWarning, TrainingMonitor
from losslab.monitor._logfile import MonitorLog, format_summary, read_log, summary_stats
from losslab.monitor._metrics import adam_tiny_v_count, grouped_sq_norms, logit_stats
from losslab.monitor._sinks import CSVSink, JSONLSink, MonitorSink, TensorBoardSink

__all__ = [
    "CSVSink",
    "HFMonitorCallback",
    "JSONLSink",
    "LightningMonitorCallback",
    "MonitorLog",
    "MonitorSink",
    "MonitorWarning",
    "TensorBoardSink",
    "TrainingMonitor",
    "adam_tiny_v_count",
    "format_summary",
    "grouped_sq_norms",
    "logit_stats",
    "mha_attention_logits",
    "read_log",
    "summary_stats",
]

_LAZY = {"LightningMonitorCallback": "losslab.monitor._lightning", "HFMonitorCallback": "losslab.monitor._hf"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        obj = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = obj
        return obj
    raise AttributeError(f"module 'losslab.monitor' has no attribute {name!r}")
