"""Nam et al. 2020 [Nam2020-RAP] (RAP, AAAI 2020): Table 1 (outside-inside ratio, pixel accuracy, mIoU) and Fig. 7 (LeRF)."""

from __future__ import annotations

import math
from typing import Optional

from .. import protocols as P
from ..document import Doc, fmt_ci, md_table, series_plot
from ..rundata import Item, RunData, curve_items, intervals, scalar_items
from .common import count_text, nanmean

__all__ = ["section"]


def pooled_segmentation(run: Optional[RunData], method: str, key: str) -> tuple[float, float, int]:
    """Nam et al.'s [Nam2020-RAP] data-set figures of ``method`` from the run's ``segmentation_counts`` records
    (metric variant ``key``): ``(pixel accuracy, mIoU, pairs)`` with correct pixels, pixels,
    intersections and unions summed over the pairs; NaN (and 0 pairs) without records."""
    if run is None:
        return math.nan, math.nan, 0
    rows = [r[5] for r in run.records(key, method) if isinstance(r[5], dict)]
    if not rows:
        return math.nan, math.nan, 0
    from ...metrics.segmentation import COUNT_FIELDS, pooled_segmentation as pool

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


def section(doc: Doc, model: str, runs: dict, tag: str, dataset: str = "") -> None:
    box, pred = runs["boxes"], runs["predicted"]
    oi_all, oi_pos = P.key("outside_inside_ratio"), P.key("outside_inside_ratio", {"sign": "positive"})
    thresholds = ({"threshold": "zero"}, {"threshold": "mean", "sign": "positive"})
    counts = [P.key("segmentation_counts", o) for o in thresholds]
    per_image = [P.key("image_iou", o) for o in thresholds]
    doc.add(f"#### Table 1 — outside-inside ratio, pixel accuracy and mIoU ({model})", "",
            "ALL: Eq. 11 on signed maps; POS: positive relevance only (lower is better). Pixel accuracy and "
            "mIoU (higher is better) of the map thresholded at zero (Nam et al. 2020 [Nam2020-RAP]: maps with positive and "
            "negative relevance) and at the mean of R+ (positive maps), against the foreground mask of the "
            "predicted class, pooled over the data set as in the paper: pixel accuracy = correct pixels / "
            "pixels, mIoU = mean over background and foreground of (intersections summed over the images) / "
            "(unions summed over the images), from the per-image counts of `segmentation_counts`. "
            "\"per-image IoU\": the mean over images of each image's background-foreground mean IoU, "
            "for comparison only (not the paper's figure). n = pairs that counted / pairs.", "")
    table = P.table_1_000(model)  # Pattern Attribution on a VGG only, as in the paper
    cols = ("all", "pos", "acc0", "iou0", "accm", "ioum", "img0", "imgm")
    items: dict[str, dict[str, list[Item]]] = {c: {} for c in cols}
    for m in table:
        items["all"][m], items["pos"][m] = scalar_items(box, m, oi_all), scalar_items(box, m, oi_pos)
        for (acc, iou), k in zip((("acc0", "iou0"), ("accm", "ioum")), counts):
            items[acc][m], items[iou][m] = segmentation_items(pred, m, k)
        for c, k in zip(("img0", "imgm"), per_image):
            items[c][m] = scalar_items(pred, m, k)
    ivs = {c: intervals(items[c]) for c in cols}
    rows, ours = [], {c: {} for c in cols}
    for m in table:
        pooled = [pooled_segmentation(pred, m, k) for k in counts]
        vals = [box.mean(m, oi_all) if box else math.nan, box.mean(m, oi_pos) if box else math.nan,
                pooled[0][0] * 100, pooled[0][1] * 100, pooled[1][0] * 100, pooled[1][1] * 100] + \
            [pred.mean(m, k) * 100 if pred else math.nan for k in per_image]
        for c, v in zip(cols, vals):
            ours[c][m] = v
        n_seg = f"{pooled[0][2]}/{pred.count(m, counts[0])[1]}" if pred and pred.count(m, counts[0]) else ""
        rows.append([m] + [fmt_ci(v, ivs[c].get(m), 3 if i < 2 else 1, 1 if i < 2 else 100)
                           for i, (c, v) in enumerate(zip(cols, vals))]
                    + [count_text(box, m, oi_all), n_seg])
    doc.add(*md_table(["method", "O/I ALL ↓", "O/I POS ↓", "pix. acc. (0) ↑", "mIoU (0) ↑", "pix. acc. (mean) ↑",
                     "mIoU (mean) ↑", "per-image IoU (0)", "per-image IoU (mean)", "n (O/I)", "n (seg.)"],
                    rows))
    doc.order("000-oi-all", ours["all"], higher=False, items=items["all"], maps_run=box)
    doc.order("000-oi-pos", ours["pos"], higher=False, items=items["pos"], maps_run=box)
    for key, (zero, mean) in (("000-pixacc", ("acc0", "accm")), ("000-miou", ("iou0", "ioum"))):
        best = {m: zero if not ours[mean][m] > ours[zero][m] else mean for m in table}
        doc.order(key, {m: ours[best[m]][m] for m in table}, higher=True,
                  items={m: items[best[m]][m] for m in table}, maps_run=pred)
    # Fig. 7: LeRF accuracy
    if pred is None:
        return
    lerf = P.key("aopc_lerf", P.lerf_000_options(P.input_side(model), _lerf_step(pred, model)))
    series = {m: pred.curve(m, lerf, "accuracy") for m in P.M000}
    series = {m: s for m, s in series.items() if s is not None}
    if series:
        doc.add(f"#### Fig. 7 — accuracy under LeRF perturbation ({model})", "",
                "Pixels of the least relevant first set to zero (0 in the model's normalised input "
                "space), in steps of 100 pixels of a 224 x 224 image scaled to the input size; explained "
                "class = the predicted one, so the accuracy starts at 1.", "")
        doc.figure(f"{tag}_000_fig7_lerf.png", f"Nam et al. 2020 [Nam2020-RAP], Fig. 7: LeRF accuracy, {model}",
                   lambda fig: series_plot(fig, series, "pixels removed (least relevant first)",
                                            "top-1 accuracy", f"LeRF perturbation, {model}"))
        doc.order("000-lerf", {m: nanmean(s[1]) for m, s in series.items()}, higher=True,
                  items={m: curve_items(pred, m, lerf, "accuracy") for m in series}, maps_run=pred)


def _lerf_step(run: RunData, model: str) -> int:
    """The LeRF step the run used (the metric keys name it)."""
    for step in (100, 200, 400, 800, 1000):
        if any(k[1] == P.key("aopc_lerf", P.lerf_000_options(P.input_side(model), step)) for k in run.cells):
            return step
    return 100
