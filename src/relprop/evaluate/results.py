"""``docs/results.md``: the five papers' tables and figures, generated from evaluation stores.

:func:`write_results` reads one or several SQLite stores written by the jobs of
:mod:`relprop.evaluate.protocols`, aggregates them with :func:`relprop.evaluate.report.summarise_run`
(NaN-aware means of :mod:`relprop.metrics.aggregate`), and writes a markdown document whose tables
and PNG figures follow the papers' layout. Next to every table it states whether the ordering of the
methods agrees with the paper's (:mod:`relprop.evaluate.paper_orders`). Qualitative figures (maps)
are written by :mod:`relprop.evaluate.figures` and linked when present.

Uncertainty: the values compared by a verdict are rebuilt from the per-image records as
:class:`relprop.metrics.aggregate.Sums` (``Item``: image, feature, sum, count), which gives each a
95% percentile bootstrap interval over the images (paired across methods, Efron & Tibshirani 1993)
and each of the paper's pairs a paired permutation test; a pair agrees or is reversed only when
significant after Holm's correction over the table's pairs, and is undecided otherwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Hashable, Optional, Sequence

import torch

from ..metrics.aggregate import (RESAMPLES, Interval, Sums, aggregate, binned_mean, bootstrap_sums, per_class_mean,
                                 permutation_test)
from . import protocols as P
from .metricset import NO_METHOD
from .paper_orders import ORDERS, Order, decide, pairs, verdict
from .report import _curve_of, summarise_run
from .store import Store

__all__ = ["RunData", "load_runs", "write_results"]

BOXES = "relprop.evaluate.protocols:boxes_only"
#: data sets whose models are multi-label (sigmoid): a class is predicted when its logit is > 0
MULTI_LABEL = ("shapes", "voc2007", "voc2012", "coco2014")


@dataclass
class RunData:
    """The aggregates of one run: summary cells, mean curves and the raw per-pair values needed for
    subsets (paper 002's "P") and baselines (uniform maps, occlusion by box size)."""

    dataset: str
    model: str
    targets: str
    boxes: bool
    cells: dict = field(default_factory=dict)    # (method, metric, statistic) -> summary row
    curves: dict = field(default_factory=dict)   # (method, metric, statistic) -> ([x], [mean])
    store: Optional[Path] = None
    run: int = 0
    n_samples: int = 0

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


def _finite(v: Any) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v))


def scalar_items(run: Optional[RunData], method: str, metric: str) -> list[Item]:
    """The finite scalar records of ``method`` on ``metric``: their mean is ``run.mean``."""
    if run is None:
        return []
    return [(r[0], 0, float(r[4]), 1.0) for r in run.records(metric, method) if _finite(r[4])]


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
        out += [(r[0], i, float(c[i]), 1.0) for i in steps if _finite(c[i])]
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
                boxes = run["dataset"] == BOXES
                data = RunData(dataset=str(opts.get("dataset", run["dataset"])) if boxes else run["dataset"],
                               model=run["model"], targets=run["targets"], boxes=boxes, store=Path(path),
                               run=run["id"], n_samples=db.sample_count(run["id"]).get("ok", 0))
                for r in res["summary"]:
                    data.cells[(r["method"], r["metric"], r["statistic"])] = r
                for r in res["curves"]:
                    xs, ys = data.curves.setdefault((r["method"], r["metric"], r["statistic"]), ([], []))
                    xs.append(r["x"])
                    ys.append(r["mean"])
                out.append(data)
    return out


# ------------------------------------------------------------------------------------------------
# formatting


def _fmt(v: float, digits: int = 3) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def _ci(v: float, iv: Optional[Interval], digits: int = 3, scale: float = 1.0) -> str:
    """``value [low, high]`` with the 95% interval when there is one (``scale``: e.g. 100 for %)."""
    text = _fmt(v, digits)
    if iv is None or text == "–" or math.isnan(iv.low) or math.isnan(iv.high):
        return text
    return f"{text} [{_fmt(iv.low * scale, digits)}, {_fmt(iv.high * scale, digits)}]"


def _table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + \
        ["| " + " | ".join(r) + " |" for r in rows] + [""]


def _label(method: str) -> str:
    """A readable label of a method key: ``lrp-cmp{"alpha":2,...}`` -> ``lrp-cmp alpha=2 ...``."""
    for label, opts in P.CMP_VARIANTS.items():
        if method == P.key("lrp-cmp", opts):
            return f"lrp-cmp ({label})"
    if "{" not in method:
        return method
    import json

    name, _, rest = method.partition("{")
    opts = json.loads("{" + rest)
    return name + " " + ",".join(f"{k}={v}" for k, v in opts.items())


class _Doc:
    """The markdown lines and the figures written so far."""

    def __init__(self, image_dir: Path, rel: str) -> None:
        self.lines: list[str] = []
        self.image_dir = image_dir
        self.rel = rel
        self.files: list[Path] = []
        self.context = ""
        self.dataset = ""
        self.verdicts: list[tuple[str, str, str, Optional[tuple[int, int, int]]]] = []

    def add(self, *lines: str) -> None:
        self.lines.extend(lines)

    def figure(self, name: str, caption: str, draw: Any) -> None:
        """Draw a matplotlib Figure with ``draw(fig)`` into ``name`` and link it."""
        from matplotlib.figure import Figure

        fig = Figure(figsize=(6.4, 4.2), dpi=110)
        draw(fig)
        fig.tight_layout()
        path = self.image_dir / name
        fig.savefig(path)
        self.files.append(path)
        self.add(f"![{caption}]({self.rel}/{name})", "", f"*{caption}*", "")

    def order(self, order_key: str, ours: dict[str, float], higher: bool,
              items: Optional[dict[str, list[Item]]] = None) -> None:
        """The verdict line comparing ``ours`` (label -> value) with the paper's order; ``items``:
        the per-image values of each label, for the paired tests (pairs without them: undecided)."""
        order: Order = ORDERS[order_key]
        comparable = pairs(order, ours)
        p = pair_p_values(items or {}, comparable)
        text = verdict(order, ours, higher, photos=self.dataset == "photos", p_values=p)
        self.add(text, "")
        word = text.split("**")[3] if text.count("**") >= 4 else "not comparable"
        counts = None
        if comparable:
            ok = {k: v for k, v in ours.items() if v is not None and not math.isnan(v)}
            words = [w for w, _ in decide(comparable, ok, higher, p).values()]
            counts = (words.count("agrees"), words.count("reversed"), words.count("undecided"))
        self.verdicts.append((self.context, order.source, word, counts))


_MARKERS = ("o", "s", "^", "v", "D", "P", "X", "*", "<", ">")
_LINES = ("-", "-.", ":")


def _series_plot(fig: Any, series: dict[str, tuple[list, list]], xlabel: str, ylabel: str, title: str,
                 hline: Optional[tuple[float, str]] = None, xticks: Optional[list[str]] = None) -> None:
    ax = fig.add_subplot(1, 1, 1)
    for i, (label, (x, y)) in enumerate(series.items()):
        style = "--" if label.startswith(("random", "uniform")) else _LINES[i // len(_MARKERS) % len(_LINES)]
        extra = {"color": "black"} if label.startswith(("random", "uniform")) else {}
        ax.plot(x, y, style, marker=_MARKERS[i % len(_MARKERS)] if len(x) <= 25 else None, markersize=4,
                markerfacecolor="none", label=label, alpha=0.85, **extra)
    if hline is not None:
        ax.axhline(hline[0], color="grey", linestyle=":", label=hline[1])
    if xticks is not None:
        ax.set_xticks(range(len(xticks)))
        ax.set_xticklabels(xticks, rotation=60, ha="right", fontsize=6)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


# ------------------------------------------------------------------------------------------------
# run lookup


def _runs_of(runs: list[RunData], model: str) -> dict[str, Optional[RunData]]:
    """The runs of ``model``: ``boxes`` (box-based), ``predicted``, ``labels`` and ``second``."""
    mine = [r for r in runs if r.model == model]
    pick = lambda cond: next((r for r in mine if cond(r)), None)  # noqa: E731
    return {"boxes": pick(lambda r: r.boxes),
            "predicted": pick(lambda r: not r.boxes and r.targets == "predicted"),
            "labels": pick(lambda r: not r.boxes and r.targets == "labels")
            or pick(lambda r: not r.boxes and r.targets == "predicted"),
            "second": pick(lambda r: not r.boxes and r.targets == "second")}


def _n(run: Optional[RunData], method: str, metric: str) -> str:
    c = run.count(method, metric) if run is not None else None
    return "" if c is None else f"{c[0]}/{c[1]}"


def _side(model: str) -> int:
    return P.input_side(model)


# ------------------------------------------------------------------------------------------------
# paper 000


def pooled_segmentation(run: Optional[RunData], method: str, key: str) -> tuple[float, float, int]:
    """Paper 000's data-set figures of ``method`` from the run's ``segmentation_counts`` records
    (metric variant ``key``): ``(pixel accuracy, mIoU, pairs)`` with correct pixels, pixels,
    intersections and unions summed over the pairs; NaN (and 0 pairs) without records."""
    if run is None:
        return math.nan, math.nan, 0
    rows = [r[5] for r in run.records(key, method) if isinstance(r[5], dict)]
    if not rows:
        return math.nan, math.nan, 0
    from ..metrics.segmentation import COUNT_FIELDS, pooled_segmentation as pool

    pix, miou, _ = pool([[row[f] for f in COUNT_FIELDS] for row in rows])
    return pix, miou, len(rows)


def segmentation_items(run: Optional[RunData], method: str, key: str) -> tuple[list[Item], list[Item]]:
    """Per-image items of the pooled pixel accuracy (correct pixels / pixels) and of the pooled mIoU
    (features background and foreground: intersections / unions) from ``segmentation_counts``."""
    if run is None:
        return [], []
    acc: list[Item] = []
    iou: list[Item] = []
    for r in run.records(key, method):
        c = r[5]
        if not isinstance(c, dict):
            continue
        acc.append((r[0], 0, float(c["correct"]), float(c["pixels"])))
        iou += [(r[0], "bg", float(c["intersection_bg"]), float(c["union_bg"])),
                (r[0], "fg", float(c["intersection_fg"]), float(c["union_fg"]))]
    return acc, iou


def _paper_000(doc: _Doc, model: str, runs: dict, tag: str) -> None:
    box, pred = runs["boxes"], runs["predicted"]
    oi_all, oi_pos = P.key("outside_inside_ratio"), P.key("outside_inside_ratio", {"sign": "positive"})
    thresholds = ({"threshold": "zero"}, {"threshold": "mean", "sign": "positive"})
    counts = [P.key("segmentation_counts", o) for o in thresholds]
    per_image = [P.key("image_iou", o) for o in thresholds]
    doc.add(f"#### Table 1 — outside-inside ratio, pixel accuracy and mIoU ({model})", "",
            "ALL: Eq. 11 on signed maps; POS: positive relevance only (lower is better). Pixel accuracy and "
            "mIoU (higher is better) of the map thresholded at zero (paper 000: maps with positive and "
            "negative relevance) and at the mean of R+ (positive maps), against the foreground mask of the "
            "predicted class, pooled over the data set as in the paper: pixel accuracy = correct pixels / "
            "pixels, mIoU = mean over background and foreground of (intersections summed over the images) / "
            "(unions summed over the images), from the per-image counts of `segmentation_counts`. "
            "\"per-image IoU\": the mean over images of each image's background-foreground mean IoU, "
            "for comparison only (not the paper's figure). n = pairs that counted / pairs.", "")
    cols = ("all", "pos", "acc0", "iou0", "accm", "ioum", "img0", "imgm")
    items: dict[str, dict[str, list[Item]]] = {c: {} for c in cols}
    for m in P.M000:
        items["all"][m], items["pos"][m] = scalar_items(box, m, oi_all), scalar_items(box, m, oi_pos)
        for (acc, iou), k in zip((("acc0", "iou0"), ("accm", "ioum")), counts):
            items[acc][m], items[iou][m] = segmentation_items(pred, m, k)
        for c, k in zip(("img0", "imgm"), per_image):
            items[c][m] = scalar_items(pred, m, k)
    ivs = {c: intervals(items[c]) for c in cols}
    rows, ours = [], {c: {} for c in cols}
    for m in P.M000:
        pooled = [pooled_segmentation(pred, m, k) for k in counts]
        vals = [box.mean(m, oi_all) if box else math.nan, box.mean(m, oi_pos) if box else math.nan,
                pooled[0][0] * 100, pooled[0][1] * 100, pooled[1][0] * 100, pooled[1][1] * 100] + \
            [pred.mean(m, k) * 100 if pred else math.nan for k in per_image]
        for c, v in zip(cols, vals):
            ours[c][m] = v
        n_seg = f"{pooled[0][2]}/{pred.count(m, counts[0])[1]}" if pred and pred.count(m, counts[0]) else ""
        rows.append([m] + [_ci(v, ivs[c].get(m), 3 if i < 2 else 1, 1 if i < 2 else 100)
                           for i, (c, v) in enumerate(zip(cols, vals))]
                    + [_n(box, m, oi_all), n_seg])
    doc.add(*_table(["method", "O/I ALL ↓", "O/I POS ↓", "pix. acc. (0) ↑", "mIoU (0) ↑", "pix. acc. (mean) ↑",
                     "mIoU (mean) ↑", "per-image IoU (0)", "per-image IoU (mean)", "n (O/I)", "n (seg.)"],
                    rows))
    doc.order("000-oi-all", ours["all"], higher=False, items=items["all"])
    doc.order("000-oi-pos", ours["pos"], higher=False, items=items["pos"])
    for key, (zero, mean) in (("000-pixacc", ("acc0", "accm")), ("000-miou", ("iou0", "ioum"))):
        best = {m: zero if not ours[mean][m] > ours[zero][m] else mean for m in P.M000}
        doc.order(key, {m: ours[best[m]][m] for m in P.M000}, higher=True,
                  items={m: items[best[m]][m] for m in P.M000})
    # Fig. 7: LeRF accuracy
    if pred is None:
        return
    lerf = P.key("aopc_lerf", P.lerf_000_options(_side(model), _lerf_step(pred, model)))
    series = {m: pred.curve(m, lerf, "accuracy") for m in P.M000}
    series = {m: s for m, s in series.items() if s is not None}
    if series:
        doc.add(f"#### Fig. 7 — accuracy under LeRF perturbation ({model})", "",
                "Pixels of the least relevant first set to zero (0 in the model's normalised input "
                "space), in steps of 100 pixels of a 224 x 224 image scaled to the input size; explained "
                "class = the predicted one, so the accuracy starts at 1.", "")
        doc.figure(f"{tag}_000_fig7_lerf.png", f"Paper 000, Fig. 7: LeRF accuracy, {model}",
                   lambda fig: _series_plot(fig, series, "pixels removed (least relevant first)",
                                            "top-1 accuracy", f"LeRF perturbation, {model}"))
        doc.order("000-lerf", {m: _mean(s[1]) for m, s in series.items()}, higher=True,
                  items={m: curve_items(pred, m, lerf, "accuracy") for m in series})


def _lerf_step(run: RunData, model: str) -> int:
    """The LeRF step the run used (the metric keys name it)."""
    for step in (100, 200, 400, 800, 1000):
        if any(k[1] == P.key("aopc_lerf", P.lerf_000_options(_side(model), step)) for k in run.cells):
            return step
    return 100


def _mean(values: Sequence[float]) -> float:
    v = [x for x in values if x is not None and not math.isnan(x)]
    return sum(v) / len(v) if v else math.nan


# ------------------------------------------------------------------------------------------------
# paper 001


def _paper_001(doc: _Doc, model: str, runs: dict, tag: str) -> None:
    pred = runs["predicted"]
    if pred is None:
        return
    side = _side(model)
    t1 = P.table_i_options(side)
    for kind, paper_counts, order_key in (("pos", (250, 500, 1000, 2000, 4000), "001-pos"),
                                          ("neg", (2000, 4000, 6000, 8000, 10000), "001-neg")):
        name = "aopc_morf" if kind == "pos" else "aopc_lerf"
        rem, shu = P.key(name, t1[f"{kind}_removal"]), P.key(name, t1[f"{kind}_shuffle"])
        counts = t1[f"{kind}_removal"]["counts"]
        head = ["method", "value", "0"] + [f"{c} ({P.scaled_count(c, side)} px)" for c in paper_counts] + \
            [f"All ({side * side} px)"]
        rows = []
        final: dict[str, float] = {}
        final_items: dict[str, list[Item]] = {}
        for m in P.M001:
            rec_a, rec_b = pred.records(rem, m), pred.records(shu, m)
            for stat, what in (("accuracy", "accuracy %"), ("scores", "prediction score")):
                a, b = pred.curve(m, rem, stat), pred.curve(m, shu, stat)
                if a is None:
                    continue
                scale = 100 if stat == "accuracy" else 1
                cells = []
                for i in range(len(counts) + 1):
                    va = a[1][i] * scale if i < len(a[1]) else math.nan
                    vb = b[1][i] * scale if b is not None and i < len(b[1]) else math.nan
                    d = 1 if stat == "accuracy" else 2
                    ia = intervals({m: curve_items(pred, m, rem, stat, i, rec_a)}).get(m)
                    ib = intervals({m: curve_items(pred, m, shu, stat, i, rec_b)}).get(m)
                    cells.append(f"{_ci(va, ia, d, scale)} ({_ci(vb, ib, d, scale)})" if i else _ci(va, ia, d, scale))
                rows.append([m if stat == "accuracy" else "", what] + cells)
                if stat == "accuracy":
                    final[m] = a[1][len(counts) - 1] if len(a[1]) >= len(counts) else math.nan
                    final_items[m] = curve_items(pred, m, rem, stat, len(counts) - 1, rec_a)
        title = "positive (MoRF)" if kind == "pos" else "negative (LeRF)"
        cnt = next((pred.count(m, rem) for m in P.M001 if pred.count(m, rem)), None)
        doc.add(f"#### Table I — {title} removal (shuffling) ({model})", "",
                f"Pixels with {'positive' if kind == 'pos' else 'negative'} relevance, "
                f"{'most relevant' if kind == 'pos' else 'most negative'} first, set to the image minimum; "
                "in parentheses: the same pixels shuffled among themselves; brackets: 95% intervals. "
                "Paper counts are for 224 x 224 "
                f"images and are scaled by the area ratio ({side}² / 224²); counts above a map's number of "
                f"{'positive' if kind == 'pos' else 'negative'} pixels stop there. Explained class = "
                f"the predicted one (accuracy 100% at 0). Prediction score = logit. "
                f"{cnt[1] if cnt else 0} images."
                + (" Maps without negative relevance (LRP-alpha1beta0, and LRP-preset-A's alpha1beta0 "
                   "convolutions in front of a max pool) have nothing to remove: their rows stay near the "
                   "clean values, which is why the paper lists only three methods here." if kind == "neg" else ""),
                "")
        doc.add(*_table(head, rows))
        # the paper's last numeric column (4,000 / 10,000 pixels)
        doc.order(order_key, final, higher=(kind == "neg"), items=final_items)
    ks = P.topk_ks(side)
    tk = P.key("topk_distance", {"ks": ks})
    series = {}
    for m in P.M001:
        c = pred.curve(m, tk, "mean")
        if c is not None:
            series[m] = (ks, c[1])
    if series:
        doc.add(f"#### Fig. 7 (b) — mean distance D_K of the top-K positive pixels to the top-1 ({model})", "",
                "Euclidean distance in pixels (Eq. 12, r_1 included); K scaled from 10 .. 5,000 pixels of "
                "224². A map with fewer than K positive pixels is left out at that K.", "")
        doc.figure(f"{tag}_001_fig7b_dk.png", f"Paper 001, Fig. 7 (b): D_K, {model}",
                   lambda fig: _series_plot(fig, series, "K (top-K positive pixels)", "D_K (pixels)",
                                            f"distance of top-K positive pixels to the top-1, {model}"))
        doc.order("001-dk", {m: _mean(s[1]) for m, s in series.items()}, higher=False,
                  items={m: curve_items(pred, m, tk, "mean") for m in series})


# ------------------------------------------------------------------------------------------------
# paper 002


def _pointing(run: RunData, method: str, pg: str, multi: bool, keep: Optional[set] = None) -> dict[str, Any]:
    """ALL / DIF macro accuracies for all labels (L) and predicted classes (P), from the records
    (of the (sample, class) pairs in ``keep`` when given); ``items``: their per-image hits (feature:
    the class), for the intervals and tests."""
    rec = [r for r in run.records(pg, method=method) if keep is None or (r[0], r[1]) in keep]
    if not rec:
        return {}
    scores = {(s, t): v for s, t, _, _, v, _ in run.records("target_score", method=NO_METHOD)}
    info = run.targets_info()
    hits = torch.tensor([math.nan if r[4] is None else r[4] for r in rec], dtype=torch.float64)
    cls = torch.tensor([r[1] for r in rec], dtype=torch.long)
    dif = torch.tensor([info.get((r[0], r[1]), {}).get("difficult", False) for r in rec])

    def predicted(s: str, t: int) -> bool:
        if multi:
            v = scores.get((s, t))
            return v is not None and v > 0
        return info.get((s, t), {}).get("predicted") == t

    pr = torch.tensor([predicted(r[0], r[1]) for r in rec])
    subsets = {"L_all": [True] * len(rec), "L_dif": dif.tolist(), "P_all": pr.tolist(), "P_dif": (pr & dif).tolist()}
    items = {k: [(r[0], r[1], float(r[4]), 1.0) for r, inc in zip(rec, keep_) if inc and _finite(r[4])]
             for k, keep_ in subsets.items()}
    return {"items": items, "L_all": per_class_mean(hits, cls).macro,
            "L_dif": per_class_mean(hits, cls, include=dif).macro,
            "P_all": per_class_mean(hits, cls, include=pr).macro,
            "P_dif": per_class_mean(hits, cls, include=pr & dif).macro,
            "n": int((~torch.isnan(hits)).sum()), "n_dif": int(dif.sum()), "n_p": int(pr.sum())}


def _paper_002(doc: _Doc, model: str, runs: dict, tag: str, dataset: str) -> None:
    box, pred = runs["boxes"], runs["predicted"]
    multi = dataset in MULTI_LABEL
    if box is not None:
        pg = P.key("pointing_game", P.pointing_options(_side(model)))
        tol = P.pointing_options(_side(model))["tolerance"]
        rows, res = [], {}
        for m in P.M002:
            r = _pointing(box, m, pg, multi)
            if not r:
                continue
            res[m] = r
        cols = ("L_all", "L_dif", "P_all", "P_dif")
        pg_items = {c: {m: r["items"][c] for m, r in res.items()} for c in cols}
        ivs = {c: intervals(pg_items[c]) for c in cols}
        pr_iv = intervals({m: scalar_items(box, m, "positive_ratio") for m in res})
        for m, r in res.items():
            rows.append([m] + [_ci(r[c], ivs[c].get(m)) for c in cols]
                        + [_ci(box.mean(m, "positive_ratio"), pr_iv.get(m)), f"{r['n']} / {r['n_dif']} / {r['n_p']}"])
        if rows:
            doc.add(f"#### Table 1 — pointing game and positive ratio ({model})", "",
                    f"Per-class accuracy #Hit / (#Hit + #Miss), macro mean over classes (TorchRay), hit = "
                    f"the maximum within {tol} px of the class's boxes (15 px of 224 scaled). "
                    + ("L: every ground-truth class; P: the ground-truth classes the model predicts ("
                       + ("logit > 0, multi-label model" if multi else "the top-1 class") + "). "
                       if box.targets == "labels" else
                       "Explained: the top-1 class against all outlined objects (the labels name several "
                       "classes per photo, most without an outline), so L and P coincide. ")
                    + "DIF: pairs "
                    "whose boxes cover < 1/4 of the image in images with >= 2 classes (EBP's definition). "
                    "PR: fraction of pixels with positive relevance (mean over pairs).", "")
            doc.add(*_table(["method", "L ALL ↑", "L DIF ↑", "P ALL ↑", "P DIF ↑", "PR",
                             "pairs (all / DIF / P)"], rows))
            for key, c in (("002-pg-L-all", "L_all"), ("002-pg-L-dif", "L_dif"), ("002-pg-P-all", "P_all")):
                doc.order(key, {m: r[c] for m, r in res.items()}, higher=True, items=pg_items[c])
        # Table 2 and Fig. 7 on the pairs every hedge variant has (the variants may see fewer images)
        keys = [P.key("hedge", o) for o in P.hedge_variants()]
        sets = [{(r[0], r[1]) for r in box.records(pg, method=k)} for k in keys]
        common = set.intersection(*sets) if all(sets) else set()
        rows, abl, abl_res = [], {}, {}
        for label, opts in P.HEDGE_ABLATION.items():
            r = _pointing(box, P.key("hedge", opts), pg, multi, common)
            if r:
                abl[label], abl_res[label] = r["L_all"], r
        abl_iv = {c: intervals({k: r["items"][c] for k, r in abl_res.items()}) for c in ("L_all", "L_dif")}
        for label, r in abl_res.items():
            rows.append([label, _ci(r["L_all"] * 100, abl_iv["L_all"].get(label), 1, 100) + " / "
                         + _ci(r["L_dif"] * 100, abl_iv["L_dif"].get(label), 1, 100)])
        if rows:
            doc.add(f"#### Table 2 — ablation of C / A / U / Psi in hedge ({model})", "",
                    "Pointing game L ALL / DIF (%), gamma = 2, on the "
                    f"{len({s for s, _ in common})} images every variant was evaluated on. The rows' component "
                    "sets are read from the paper's flattened table (C in 4 rows, A and U in 3, Psi in 2).", "")
            doc.add(*_table(["components", "pointing game ALL / DIF"], rows))
            doc.order("002-ablation", abl, higher=True,
                      items={k: r["items"]["L_all"] for k, r in abl_res.items()})
        # Fig. 7: gamma
        gam = {}
        for g in P.HEDGE_GAMMAS:
            r = _pointing(box, P.key("hedge", {} if g == 2.0 else {"gamma": g}), pg, multi, common)
            if r:
                gam[g] = r
        if gam:
            doc.add(f"#### Fig. 7 — pointing game against gamma ({model})", "")
            g_iv = {c: intervals({str(g): r["items"][c] for g, r in gam.items()}) for c in ("L_all", "L_dif")}
            doc.add(*_table(["gamma"] + [str(g) for g in gam],
                            [[f"{c[0]} {c[2:].upper()} (%)"] + [_ci(r[c] * 100, g_iv[c].get(str(g)), 1, 100)
                                                               for g, r in gam.items()] for c in ("L_all", "L_dif")]))
            doc.order("002-gamma", {str(g): r["L_all"] for g, r in gam.items()}, higher=True,
                      items={str(g): r["items"]["L_all"] for g, r in gam.items()})
    if pred is not None:
        bi = P.key("blurred_insertion")
        series = {m: pred.curve(m, bi, "accuracy") for m in P.M002}
        series = {m: s for m, s in series.items() if s is not None}
        if series:
            doc.add(f"#### Fig. 9 — MoRF insertion into a blurred image ({model})", "",
                    "Start: the image blurred (Gaussian 11 x 11, sigma 5, reflect padding); step i pastes "
                    "back the i% most relevant pixels; top-1 accuracy of the predicted class.", "")
            doc.figure(f"{tag}_002_fig9_insertion.png", f"Paper 002, Fig. 9: MoRF insertion, {model}",
                       lambda fig: _series_plot(fig, series, "fraction of pixels inserted (MoRF)",
                                                "top-1 accuracy", f"insertion into a blurred image, {model}"))
            doc.order("002-insertion", {m: _mean(s[1]) for m, s in series.items()}, higher=True,
                      items={m: curve_items(pred, m, bi, "accuracy") for m in series})
        mp, noi = P.key("stacked_map"), P.key("normalised_outside_inside_ratio")
        rows, m_ap, m_oi = [], {}, {}
        it_ap = {m: scalar_items(pred, m, mp) for m in P.M002 if pred.has(m, mp)}
        it_oi = {m: scalar_items(pred, m, noi) for m in it_ap}
        iv_ap, iv_oi = intervals(it_ap), intervals(it_oi)
        for m in it_ap:
            m_ap[m], m_oi[m] = pred.mean(m, mp), pred.mean(m, noi)
            rows.append([m, _ci(m_ap[m], iv_ap.get(m)), _ci(m_oi[m], iv_oi.get(m)), _n(pred, m, mp)])
        if rows:
            doc.add(f"#### Table 3 — mAP and normalised outside-inside ratio on masks ({model})", "",
                    "Stacked AP of [1 - R, R] against [background, foreground] (Chefer et al.'s mAP) and "
                    "Eq. 14 on min-max normalised maps, predicted class against the foreground mask.", "")
            doc.add(*_table(["method", "mAP ↑", "Out/In ↓", "n"], rows))
            doc.order("002-map", m_ap, higher=True, items=it_ap)
            doc.order("002-outin", m_oi, higher=False, items=it_oi)
        cr = P.key("cascading_randomisation")
        series, layers = {}, None
        for m in P.RANDOMISED:
            c = pred.curve(m, cr, "mean")
            if c is not None:
                series[m] = (list(range(len(c[1]))), c[1])
                if layers is None:
                    rec = pred.records(cr, method=m)
                    layers = rec[0][5].get("layers") if rec else None
        if series:
            doc.add(f"#### Fig. 6 — sanity check by cascading randomisation ({model})", "",
                    "Spearman rank correlation of |R| between the map of the trained model and of the model "
                    "whose layers are re-initialised from the output down to the layer on the x axis "
                    "(lower: the map depends on the weights).", "")
            doc.figure(f"{tag}_002_fig6_randomisation.png", f"Paper 002, Fig. 6: cascading randomisation, {model}",
                       lambda fig: _series_plot(fig, series, "randomised down to layer", "Spearman of |R|",
                                                f"cascading randomisation, {model}", xticks=layers))


# ------------------------------------------------------------------------------------------------
# paper 003


def _cmp_rows() -> list[tuple[str, str]]:
    rows = [(m, m) for m in ("lrp-z", "lrp-alpha1beta0", "lrp-alpha2beta1", "guided-backprop")]
    return rows + [(f"lrp-cmp ({label})", P.key("lrp-cmp", o)) for label, o in P.CMP_VARIANTS.items()]


def _paper_003(doc: _Doc, model: str, runs: dict, tag: str, dataset: str) -> None:
    box = runs["boxes"]
    if box is None:
        return
    mu, muw = P.key("mu"), P.key("mu_w")
    rows, order_vals = [], {}
    points: dict[str, tuple[list, list]] = {}
    info = box.targets_info()
    fraction = lambda r: info.get((r[0], r[1]), {}).get("box_fraction", math.nan)  # noqa: E731
    cols = ("muw", "mu25", "mu50", "mu")
    items: dict[str, dict[str, list[Item]]] = {c: {} for c in cols}
    vals_of: dict[str, tuple[list, str]] = {}
    for label, m in _cmp_rows():
        if not box.has(m, mu):
            continue
        vals = [box.mean(m, muw), box.mean(m, mu, "box<=0.25"), box.mean(m, mu, "box<=0.5"), box.mean(m, mu)]
        order_vals[label] = vals[0]
        vals_of[label] = (vals, _n(box, m, mu))
        rec = box.records(mu, method=m)
        items["muw"][label] = scalar_items(box, m, muw)
        for c, limit in (("mu25", 0.25), ("mu50", 0.5), ("mu", math.inf)):
            items[c][label] = [(r[0], 0, float(r[4]), 1.0) for r in rec if _finite(r[4]) and fraction(r) <= limit]
        points[label] = ([fraction(r) for r in rec], [math.nan if r[4] is None else r[4] for r in rec])
    if not vals_of:
        return
    # the uniform baseline: mu = box fraction, mu_w = 1 (paper 003, "Baseline")
    any_m = next(m for _, m in _cmp_rows() if box.has(m, mu))
    frac = torch.tensor(points[next(iter(points))][0], dtype=torch.float64)
    base = [1.0, aggregate(frac, include=frac <= 0.25).mean, aggregate(frac, include=frac <= 0.5).mean,
            aggregate(frac).mean]
    order_vals["uniform baseline"] = 1.0
    vals_of["uniform baseline"] = (base, _n(box, any_m, mu))
    base_rec = box.records(mu, method=any_m)
    items["muw"]["uniform baseline"] = [(r[0], 0, 1.0, 1.0) for r in box.records(muw, method=any_m)]
    for c, limit in (("mu25", 0.25), ("mu50", 0.5), ("mu", math.inf)):
        items[c]["uniform baseline"] = [(r[0], 0, float(fraction(r)), 1.0) for r in base_rec
                                        if _finite(fraction(r)) and fraction(r) <= limit]
    ivs = {c: intervals(items[c]) for c in cols}
    for label, (vals, n) in vals_of.items():
        rows.append((vals[0], [label] + [_ci(v, ivs[c].get(label)) for c, v in zip(cols, vals)] + [n]))
    rows.sort(key=lambda r: -r[0] if not math.isnan(r[0]) else math.inf)
    doc.add(f"#### Table I — mu_w, mu <= 0.25, mu <= 0.5, mu ({model})", "",
            "Inside-total ratio of positive relevance in the class's boxes (Eq. 5), size-weighted mu_w, "
            "and mu over pairs whose boxes cover <= 25% / <= 50% of the image; rows ordered by mu_w as in "
            "the paper. Uniform baseline: a constant map (mu = box fraction, mu_w = 1).", "")
    doc.add(*_table(["analyzer", "mu_w ↑", "mu <= 0.25 ↑", "mu <= 0.5 ↑", "mu ↑", "n"], [r[1] for r in rows]))
    doc.order("003-muw-pvoc" if dataset in MULTI_LABEL else "003-muw-imagenet", order_vals, higher=True,
              items=items["muw"])
    points["uniform baseline"] = (points[next(iter(points))][0], points[next(iter(points))][0])

    def draw_mu(fig: Any) -> None:
        ax = fig.add_subplot(1, 1, 1)
        top = 0.0
        for i, (label, (fx, v)) in enumerate(points.items()):
            b = binned_mean(torch.tensor(v, dtype=torch.float64), torch.tensor(fx, dtype=torch.float64), bins=10)
            ok = b.count > 0
            top = max(top, float(b.centers[ok].max()) if bool(ok.any()) else 0.0)
            extra = {"color": "black"} if "uniform" in label else {}
            ax.plot(b.centers[ok].tolist(), b.mean[ok].tolist(), "--" if "uniform" in label else "-",
                    marker=_MARKERS[i % len(_MARKERS)], markerfacecolor="none", markersize=4, label=label, **extra)
        for v in (0.25, 0.5):
            ax.axvline(v, color="grey", linewidth=0.8)
        ax.set_xlim(0, min(1.0, max(0.55, top + 0.1)))
        ax.set_xlabel("relative box size (box area / image area), 10 bins")
        ax.set_ylabel("mean mu (inside-total ratio)")
        ax.set_title(f"mu against box size, {model}", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, ncol=2)

    doc.add(f"#### Fig. 3 — mu against box size ({model})", "")
    doc.figure(f"{tag}_003_fig3_mu_box.png", f"Paper 003, Fig. 3: mu by box size, {model}", draw_mu)
    occ = box.records(P.key("object_context_occlusion"), method=NO_METHOD)
    if occ:
        fx = torch.tensor([info.get((r[0], r[1]), {}).get("box_fraction", math.nan) for r in occ],
                          dtype=torch.float64)
        obj = torch.tensor([r[5]["object"] for r in occ], dtype=torch.float64)
        ctx = torch.tensor([r[5]["context"] for r in occ], dtype=torch.float64)

        def draw_occ(fig: Any) -> None:
            ax = fig.add_subplot(1, 1, 1)
            for label, v in (("object occluded", obj), ("context occluded", ctx)):
                b = binned_mean(v, fx, bins=10)
                ok = b.count > 0
                ax.plot(b.centers[ok].tolist(), b.mean[ok].tolist(), marker="o", markersize=3, label=label)
            ax.axhline(0, color="grey", linewidth=0.8)
            ax.set_xlim(0, min(1.0, max(0.55, float(fx[~torch.isnan(fx)].max()) + 0.1)))
            ax.set_xlabel("relative box size (box area / image area), 10 bins")
            ax.set_ylabel("Δf = f(x') − f(x) of the true class's logit")
            ax.set_title(f"object versus context occlusion, {model}", fontsize=9)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)

        a_obj, a_ctx = aggregate(obj), aggregate(ctx)
        doc.add(f"#### Fig. 2 — object versus context occlusion ({model})", "",
                "The class's boxes (object) or everything else (context) replaced by the data-set mean "
                f"(0 in the normalised input). Mean Δf: object {_fmt(a_obj.mean, 2)} (n={a_obj.count}), "
                f"context {_fmt(a_ctx.mean, 2)} (n={a_ctx.count}). "
                + ("The model reacts more to the object than to its context, the assumption behind mu."
                   if a_obj.mean < a_ctx.mean else
                   "The model reacts more to the context than to the object, so mu measures less than "
                   "it assumes here."), "")
        doc.figure(f"{tag}_003_fig2_occlusion.png", f"Paper 003, Fig. 2: object vs context occlusion, {model}",
                   draw_occ)


# ------------------------------------------------------------------------------------------------
# paper 004


def _paper_004(doc: _Doc, model: str, runs: dict, tag: str) -> None:
    pm, pr = P.key("maximal_patch_masking"), P.key("maximal_patch_masking", {"location": "random"})
    for which, run, order_key in (("ground truth", runs["labels"], "004-patch-gt"),
                                  ("second most probable class", runs["second"], "004-patch-second")):
        if run is None:
            continue
        series = {m: run.curve(m, pm, "mean") for m in P.M004}
        series = {m: s for m, s in series.items() if s is not None}
        rnd = run.curve(P.M004[0], pr, "mean")
        if rnd is not None:
            series["random"] = rnd
        if not series:
            continue
        ps = next(iter(series.values()))[0]
        recs = {m: run.records(pr, P.M004[0]) if m == "random" else run.records(pm, m) for m in series}
        steps = [intervals({m: curve_items(run, m, "", "mean", i, recs[m]) for m in series})
                 for i in range(len(ps))]
        doc.add(f"#### Fig. 11 ({'a' if which == 'ground truth' else 'b'}) — maximal patch masking of the "
                f"{which} ({model})", "",
                "Change of the softmax output of the explained class when the p x p patch around the "
                "map's maximum is replaced by the data-set mean (0 in the normalised input); lower is "
                "better. random: the patch at a random position. Brackets: 95% intervals."
                + (" Explained: the top-1 class (the photos' labels name several classes)."
                   if which == "ground truth" and run.targets == "predicted" else ""), "")
        doc.add(*_table(["method"] + [f"p={p}" for p in ps],
                        [[m] + [_ci(v, steps[i].get(m) if i < len(steps) else None, 4) for i, v in enumerate(s[1])]
                         for m, s in series.items()]))
        doc.figure(f"{tag}_004_fig11_{'gt' if which == 'ground truth' else 'second'}.png",
                   f"Paper 004, Fig. 11: patch masking of the {which}, {model}",
                   lambda fig, s=series: _series_plot(fig, s, "patch size p", "change of y_t (softmax)",
                                                      f"maximal patch masking, {which}, {model}"))
        doc.order(order_key, {m: s[1][-1] for m, s in series.items()}, higher=False,
                  items={m: curve_items(run, m, "", "mean", len(s[1]) - 1, recs[m]) for m, s in series.items()})
    box = runs["boxes"]
    if box is None:
        return
    ep = P.key("energy_pointing_game")
    series = {m: box.curve(m, ep, "mean") for m in P.M004}
    series = {m: s for m, s in series.items() if s is not None}
    if not series:
        return
    info = box.targets_info()
    rec = box.records(ep, method=P.M004[0])
    frac = torch.tensor([info.get((r[0], r[1]), {}).get("box_fraction", math.nan) for r in rec], dtype=torch.float64)
    rnd = aggregate(frac).mean  # a random map selects pixels uniformly: expected accuracy = box fraction
    x = next(iter(series.values()))[0]
    series["random"] = (x, [rnd] * len(x))
    doc.add(f"#### Fig. 13 — energy-based pointing game ({model})", "",
            "Fraction of the positive pixels above the energy threshold (Eq. 11-12) that lie in the class's "
            "boxes; random: the expected value for a random map (the mean box fraction).", "")
    doc.figure(f"{tag}_004_fig13_energy.png", f"Paper 004, Fig. 13: energy pointing game, {model}",
               lambda fig: _series_plot(fig, series, "energy E", "pointing accuracy",
                                        f"energy-based pointing game, {model}"))
    recs = {m: box.records(ep, m) for m in series if m != "random"}
    rnd_items = [(r[0], 0, float(f), 1.0) for r, f in zip(rec, frac.tolist()) if _finite(f)]
    for key, pick in (("004-energy-high", lambda c: len(c) - 1), ("004-energy-low", lambda c: 0)):
        it = {m: curve_items(box, m, ep, "mean", pick(series[m][1]), r) for m, r in recs.items()}
        doc.order(key, {m: s[1][pick(s[1])] for m, s in series.items()}, higher=True,
                  items=dict(it, random=rnd_items))


# ------------------------------------------------------------------------------------------------
# the document


def _models(runs: list[RunData]) -> list[tuple[str, str]]:
    out: dict[tuple[str, str], None] = {}
    for r in runs:
        out[(r.model, r.dataset)] = None
    first = ("shapes_vgg", "shapes_resnet")  # the shipped models first, then the others as stored
    return sorted(out, key=lambda md: first.index(md[0]) if md[0] in first else len(first))


def _qualitative(doc: _Doc, paper: str, model: str, tag: str) -> None:
    from .figures import FIGURES

    for name, caption in FIGURES.get(paper, ()):
        path = doc.image_dir / f"{tag}_{name}"
        if path.is_file():
            doc.add(f"![{caption}]({doc.rel}/{path.name})", "", f"*{caption} ({model})*", "")


PAPERS = {
    "000": "Relative Attributing Propagation (RAP), AAAI 2020 (papers/000)",
    "001": "RAP, journal version (papers/001)",
    "002": "Gradient Hedge / attribution by hedging the evidence (papers/002)",
    "003": "Towards best practice in explaining neural network decisions with LRP (papers/003)",
    "004": "Softmax-gradient LRP, SGLRP (papers/004)",
}


def _intro(stores: Sequence[str | Path]) -> list[str]:
    side = P.input_side("shapes_vgg")
    meta = []
    for path in stores:
        with Store(path, readonly=True) as db:
            m = db.get_meta("reproduce")
            if m:
                meta.append(m)
    lines = [
        "Every number and figure below is computed by relprop from the evaluation store(s) "
        f"{', '.join('`' + Path(s).name + '`' for s in stores)}; nothing is typed in. Regenerate everything "
        "(evaluations, qualitative figures, this file) with",
        "",
        "```bash",
        "python benchmarks/reproduce.py --store results.sqlite --size small   # or --size full (GPU advised)",
        "relprop report results.sqlite --results docs/results.md               # this file alone, from the store",
        "```",
        "",
    ]
    for m in meta:
        n = len(m.get("calls", {})) or 1
        lines += [f"Last reproduction: size `{m.get('size')}`, models {', '.join(m.get('models', []))}; wall "
                  f"time {float(m.get('wall_s', 0)) / 60:.1f} min in all, over {n} call(s) of reproduce.py "
                  f"(the last {float(m.get('last_wall_s', 0)) / 60:.1f} min), on a 2-core CPU shared with "
                  "other jobs.", ""]
    lines += [
        f"Protocols (`relprop.evaluate.protocols`): the papers' pixel counts refer to {P.PAPER_SIDE} x "
        f"{P.PAPER_SIDE} images and are scaled to the input by the area ratio ({side}² / {P.PAPER_SIDE}² = "
        f"{side * side / P.PAPER_SIDE ** 2:.3f} for the shapes models; 250 pixels become "
        f"{P.scaled_count(250, side)}); the pointing game's 15-pixel tolerance by the side ratio "
        f"({P.pointing_options(side)['tolerance']} px at {side}²). Box-based metrics "
        "(outside-inside ratio, mu, pointing games) use the objects' boxes, segmentation metrics their exact "
        "masks. `shapes` is multi-label (1-3 objects, 10 classes): the explained classes are every ground-truth "
        "class (`--targets labels`), the predicted class for the perturbation and segmentation protocols, and "
        "the second most probable class for paper 004's Fig. 11 (b). On `photos` (several ImageNet "
        "labels per photo, one or two outlined objects) the predicted class is explained against the outlined "
        "objects. Each ordering verdict counts the paper's pairwise orders (best-first groups read from the "
        "paper's table, `relprop.evaluate.paper_orders`) that the values here keep significantly (agree), "
        "reverse significantly (reversed) or cannot separate (undecided): paired permutation tests of the two "
        "methods over the images, Holm-corrected over the table's pairs at 5%. Values in brackets: 95% "
        "percentile bootstrap intervals over the images, resampled jointly for all methods (images resampled "
        "whole, with all their explained classes).",
        "",
        "Not reproduced: methods without a relprop implementation (Pattern Attribution, AGF, Relevance-CAM) "
        "are left out of the tables and the comparisons; paper 001's 3-D CT model and paper 002's "
        "cross-model panel of Fig. 9 have no counterpart here. The qualitative figures (maps) are drawn by "
        "`benchmarks/reproduce.py` from the models, not from the store.",
        "",
    ]
    return lines


REAL_DATA = r"""## With ImageNet, VOC and COCO

The same protocols on the papers' data (`--size full`: every image; a GPU is advised). Torchvision
weights must be in the local torch cache; VOC and COCO need a multi-label model trained on them
(`--models package.module:factory`; relprop ships none). One store per data set, then one document:

```bash
# paper 000 (Table 1 boxes, Fig. 7), 001 (Table I, Fig. 7b), 002 (Fig. 9), 003 (ImageNet rows), 004
python benchmarks/reproduce.py --store imagenet.sqlite --size full --device cuda --batch-size 32 \
    --models vgg16,resnet50 --model-option vgg16.weights=IMAGENET1K_V1 --model-option resnet50.weights=IMAGENET1K_V1 \
    --dataset vgg16=imagenet --dataset resnet50=imagenet --root /data/imagenet --out imagenet/results.md
# paper 000 (pixel accuracy, mIoU) and 002 (Table 3): ImageNet segmentation (gtsegs_ijcv.mat)
python benchmarks/reproduce.py --store imagenet-seg.sqlite --size full --device cuda --models vgg16 \
    --model-option vgg16.weights=IMAGENET1K_V1 --dataset vgg16=imagenet-seg --root /data/gtsegs_ijcv.mat \
    --out imagenet-seg/results.md
# paper 002 (Table 1, 2, Fig. 7) and 003 (PVOC rows): VOC 2007 test / COCO 2014 val with your multi-label model
python benchmarks/reproduce.py --store voc07.sqlite --size full --device cuda --models mypkg.models:vgg16_voc \
    --dataset mypkg.models:vgg16_voc=voc2007 --root /data --out voc07/results.md
python benchmarks/reproduce.py --store coco14.sqlite --size full --device cuda --models mypkg.models:vgg16_coco \
    --dataset mypkg.models:vgg16_coco=coco2014 --root /data/coco --out coco14/results.md
relprop report imagenet.sqlite --results imagenet/results.md   # regenerate a document from its store
```

Jobs whose annotations a data set lacks (e.g. boxes in ImageNet segmentation) are skipped with a message.
"""


def write_results(stores: Sequence[str | Path], out: str | Path = "docs/results.md",
                  image_dir: Optional[str | Path] = None, header: Sequence[str] = ()) -> list[Path]:
    """Write the results document ``out`` (and its PNGs into ``image_dir``, default
    ``<out folder>/images/results``) from the runs of ``stores``; returns the files written."""
    out = Path(out)
    images = Path(image_dir) if image_dir is not None else out.parent / "images" / "results"
    images.mkdir(parents=True, exist_ok=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    rel = Path(images).resolve().relative_to(out.parent.resolve()).as_posix() \
        if Path(images).resolve().is_relative_to(out.parent.resolve()) else str(images)
    runs = load_runs(stores)
    if not runs:
        raise ValueError("the store(s) hold no evaluation run")
    doc = _Doc(images, rel)
    doc.add("# Results: the five papers' evaluations, reproduced with relprop", "")
    doc.add(*_intro(stores))
    doc.add(*header)
    models = _models(runs)
    counts = []
    for model, dataset in models:
        mine = [r for r in runs if r.model == model]
        counts.append(f"{model} on {dataset}: {max(r.n_samples for r in mine)} images")
    doc.add("Evaluated: " + "; ".join(counts) + ".", "")
    start = len(doc.lines)
    for paper, title in PAPERS.items():
        doc.add(f"## {paper}: {title}", "")
        for model, dataset in models:
            r = _runs_of(runs, model)
            tag = model.replace("/", "_")
            doc.add(f"### {model} on {dataset}", "")
            doc.context, doc.dataset = model, dataset
            n0 = len(doc.lines)
            if paper == "000":
                _paper_000(doc, model, r, tag)
            elif paper == "001":
                _paper_001(doc, model, r, tag)
            elif paper == "002":
                _paper_002(doc, model, r, tag, dataset)
            elif paper == "003":
                _paper_003(doc, model, r, tag, dataset)
            else:
                _paper_004(doc, model, r, tag)
            _qualitative(doc, paper, model, tag)
            if len(doc.lines) == n0:
                doc.add("(no records for this protocol in the store)", "")
    summary = ["## Summary: orderings against the papers", "",
               "Each row: a table or figure of a paper, and whether the methods come out in the paper's order "
               "(details and reasons next to each table below). In parentheses: of the paper's pairwise orders, "
               "how many agree / are reversed / are undecided here; a pair agrees or is reversed only when a "
               "paired permutation test over the images finds the two methods apart at 5% after Holm's "
               "correction over the table's pairs, so \"undecided\" means these images cannot tell (see "
               "docs/metrics.md, \"Intervals and tests\").", ""]
    models_seen = list(dict.fromkeys(v[0] for v in doc.verdicts))
    by = {(c, src): w + ("" if n is None else f" ({n[0]} / {n[1]} / {n[2]})") for c, src, w, n in doc.verdicts}
    rows = [[src] + [by.get((m, src), "") for m in models_seen]
            for src in dict.fromkeys(v[1] for v in doc.verdicts)]
    summary += _table(["paper, table / figure"] + [f"{m} (agree / reversed / undecided)" for m in models_seen],
                      rows)
    doc.lines[start:start] = summary
    doc.add(REAL_DATA)
    out.write_text("\n".join(doc.lines).rstrip() + "\n")
    return [out] + doc.files
