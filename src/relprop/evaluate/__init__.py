"""Evaluation runner: methods x metrics x data set -> per-sample records in SQLite, and reports.

``relprop evaluate`` (:func:`run_evaluation`) writes resumable, shardable per-sample records
(:mod:`.store`, :mod:`.runner`, :mod:`.distributed`); ``relprop report`` (:func:`write_report`) turns a
store into markdown and CSV tables and PNG plots (:mod:`.report`). Names are imported lazily so that
the command line starts without loading torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "DEFAULT_METRICS": "metricset", "metric_names": "metricset", "metric_spec": "metricset",
    "write_report": "report",
    "TARGET_MODES": "runner", "Evaluation": "runner", "EvaluationConfig": "runner",
    "EvaluationSummary": "runner", "run_evaluation": "runner",
    "Store": "store", "config_hash": "store",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'relprop.evaluate' has no attribute {name!r}")
