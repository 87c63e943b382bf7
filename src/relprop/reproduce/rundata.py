"""The runs of evaluation stores as the results document reads them, with their uncertainty.

:func:`load_runs` aggregates every run of the stores (:func:`relprop.evaluate.report.summarise_run`);
a value that a verdict compares is rebuilt from the per-image records as items
(:class:`relprop.metrics.aggregate.Sums` rows: image, feature, sum, count), which give 95% percentile
bootstrap intervals over the images (:func:`intervals`, paired across methods) and paired
permutation tests of two methods (:func:`pair_p_values`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Hashable, Optional, Sequence

import torch

from ..evaluate.report import _curve_of, summarise_run
from ..evaluate.store import Store
from ..metrics.aggregate import RESAMPLES, Interval, Sums, bootstrap_sums, permutation_test
from .protocols import TRANSFORMER_DATASETS, is_transformer_run, is_volume_run

__all__ = ["BOXES", "MULTI_LABEL", "Item", "RunData", "curve_items", "finite", "intervals", "load_runs",
           "pair_p_values", "scalar_items"]

#: the data set names of the box-based runs (:func:`relprop.reproduce.protocols.boxes_only`); the second
#: is its name in stores written by earlier versions of relprop
BOXES = ("relprop.reproduce.protocols:boxes_only", "relprop.evaluate.protocols:boxes_only")
#: data sets whose models are multi-label (sigmoid): a class is predicted when its logit is > 0
MULTI_LABEL = ("shapes", "voc2007", "voc2012", "coco2014")


@dataclass
class RunData:
    """The aggregates of one run: summary cells, mean curves and the raw per-pair values needed for
    subsets (Nam et al.'s [Nam-Hedge] "P") and baselines (uniform maps, occlusion by box size)."""

    dataset: str
    model: str
    targets: str
    boxes: bool
    cells: dict = field(default_factory=dict)    # (method, metric, statistic) -> summary row
    curves: dict = field(default_factory=dict)   # (method, metric, statistic) -> ([x], [mean])
    store: Optional[Path] = None
    run: int = 0
    n_samples: int = 0
    #: "papers" (the five papers' protocols), "transformers" or "volumes" (the sections beyond the papers)
    protocol: str = "papers"
    #: stored under the name of an earlier relprop version (:data:`BOXES`' second name): a store continued
    #: since holds the same run under the current name too, and the tables read that one
    legacy: bool = False

    def mean(self, method: str, metric: str, statistic: str = "mean") -> float:
        row = self.cells.get((method, metric, statistic))
        return math.nan if row is None else float(row["mean"])

    def count(self, method: str, metric: str, statistic: str = "mean") -> Optional[tuple[int, int]]:
        row = self.cells.get((method, metric, statistic))
        return None if row is None else (int(row["count"]), int(row["total"]))

    def curve(self, method: str, metric: str, statistic: str = "mean") -> Optional[tuple[list, list]]:
        return self.curves.get((method, metric, statistic))

    def has(self, method: str, metric: str) -> bool:
        return (method, metric, "mean") in self.cells

    def records(self, metric: str, method: Optional[str] = None) -> list[tuple]:
        with Store(self.store, readonly=True) as db:  # type: ignore[arg-type]
            return list(db.records(self.run, method=method, metric=metric))

    def targets_info(self) -> dict:
        with Store(self.store, readonly=True) as db:  # type: ignore[arg-type]
            return db.targets(self.run)


#: one per-image contribution to a statistic: (image, feature, sum, count); see :class:`Sums`
Item = tuple[str, Hashable, float, float]


def finite(v: Any) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v))


def scalar_items(run: Optional[RunData], method: str, metric: str) -> list[Item]:
    """The finite scalar records of ``method`` on ``metric``: their mean is ``run.mean``."""
    if run is None:
        return []
    return [(r[0], 0, float(r[4]), 1.0) for r in run.records(metric, method) if finite(r[4])]


def _curve_values(value: Any, stat: str) -> Optional[list]:
    if stat == "accuracy":
        return value.get("correct") if isinstance(value, dict) else None
    return _curve_of(value)


def curve_items(run: Optional[RunData], method: str, metric: str, stat: str = "mean",
                step: Optional[int] = None, records: Optional[list] = None) -> list[Item]:
    """Per-pair values of a curve (``stat``: ``accuracy`` = the ``correct`` flags, otherwise the
    stored curve): at index ``step`` (the mean curve's value there), or every step as a feature
    (the mean over the steps of the mean curve). ``records``: the records, if already read."""
    if run is None and records is None:
        return []
    out: list[Item] = []
    for r in records if records is not None else run.records(metric, method):  # type: ignore[union-attr]
        c = _curve_values(r[5], stat)
        if c is None:
            continue
        steps = range(len(c)) if step is None else ([step] if step < len(c) else [])
        out += [(r[0], i, float(c[i]), 1.0) for i in steps if finite(c[i])]
    return out


def _sums(items: dict[str, list[Item]]) -> dict[str, Sums]:
    """:class:`Sums` of every label on the same images and features (rows paired across labels)."""
    images = {x: i for i, x in enumerate(sorted({it[0] for v in items.values() for it in v}))}
    feats = {f: i for i, f in enumerate(dict.fromkeys(it[1] for v in items.values() for it in v))}
    out = {}
    for label, v in items.items():
        sums = torch.zeros(len(images), max(len(feats), 1), dtype=torch.float64)
        counts = torch.zeros_like(sums)
        for img, f, total, count in v:
            sums[images[img], feats[f]] += total
            counts[images[img], feats[f]] += count
        out[label] = Sums(sums, counts)
    return out


def intervals(items: dict[str, list[Item]], resamples: int = RESAMPLES) -> dict[str, Interval]:
    """95% percentile bootstrap intervals over the images of each label's statistic, paired."""
    items = {k: v for k, v in items.items() if v}
    if not items:
        return {}
    sums = _sums(items)
    res = bootstrap_sums(list(sums.values()), resamples=resamples, seed=0)
    return dict(zip(sums, res.intervals))


def pair_p_values(items: dict[str, list[Item]], pairs_: Sequence[tuple[str, str]],
                  resamples: int = RESAMPLES) -> dict[tuple[str, str], float]:
    """The paired permutation test's p-value of each pair with items for both labels."""
    sums = _sums({k: v for k, v in items.items() if v})
    return {(a, b): permutation_test(sums[a], sums[b], resamples=resamples, seed=0).p_value
            for a, b in pairs_ if a in sums and b in sums}


def load_runs(stores: Sequence[str | Path]) -> list[RunData]:
    """Every run of every store, aggregated."""
    out = []
    for path in stores:
        with Store(path, readonly=True) as db:
            for run in db.runs():
                res = summarise_run(db, run["id"], uncertainty=False)  # intervals: from the items
                opts = run["config"].get("dataset_options", {})
                transformers = is_transformer_run(run["dataset"])
                volumes = is_volume_run(run["dataset"])
                boxes = run["dataset"] in BOXES or run["dataset"] == TRANSFORMER_DATASETS[1]
                named = boxes or transformers
                name = "nodules3d" if volumes else str(opts.get("dataset", run["dataset"])) if named else run["dataset"]
                data = RunData(dataset=name,
                               model=run["model"], targets=run["targets"], boxes=boxes, store=Path(path),
                               run=run["id"], n_samples=db.sample_count(run["id"]).get("ok", 0),
                               protocol="transformers" if transformers else "volumes" if volumes else "papers",
                               legacy=run["dataset"] in BOXES[1:])
                for r in res["summary"]:
                    data.cells[(r["method"], r["metric"], r["statistic"])] = r
                for r in res["curves"]:
                    xs, ys = data.curves.setdefault((r["method"], r["metric"], r["statistic"]), ([], []))
                    xs.append(r["x"])
                    ys.append(r["mean"])
                out.append(data)
    return out
