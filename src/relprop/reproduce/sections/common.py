"""Lookups shared by the papers' sections: a model's runs, record counts and means."""

from __future__ import annotations

import math
from typing import Optional, Sequence

from ..rundata import RunData

__all__ = ["count_text", "nanmean", "runs_of"]


def runs_of(runs: list[RunData], model: str) -> dict[str, Optional[RunData]]:
    """The runs of ``model``: ``boxes`` (box-based), ``predicted``, ``labels`` and ``second``; a run under
    the current data set name before one under an earlier version's name (``legacy``), which a continued
    store may hold beside it without the methods added since."""
    mine = sorted((r for r in runs if r.model == model), key=lambda r: r.legacy)
    pick = lambda cond: next((r for r in mine if cond(r)), None)  # noqa: E731
    return {"boxes": pick(lambda r: r.boxes),
            "predicted": pick(lambda r: not r.boxes and r.targets == "predicted"),
            "labels": pick(lambda r: not r.boxes and r.targets == "labels")
            or pick(lambda r: not r.boxes and r.targets == "predicted"),
            "second": pick(lambda r: not r.boxes and r.targets == "second")}


def count_text(run: Optional[RunData], method: str, metric: str) -> str:
    c = run.count(method, metric) if run is not None else None
    return "" if c is None else f"{c[0]}/{c[1]}"


def nanmean(values: Sequence[float]) -> float:
    v = [x for x in values if x is not None and not math.isnan(x)]
    return sum(v) / len(v) if v else math.nan
