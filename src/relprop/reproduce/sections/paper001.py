"""Nam, Choi and Lee [Nam-RAP-Journal] (RAP, journal): Table I (MoRF / LeRF removal) and Fig. 7b."""

from __future__ import annotations

import math

from .. import protocols as P
from ..document import Doc, fmt_ci, md_table, series_plot
from ..rundata import Item, curve_items, intervals
from .common import nanmean

__all__ = ["section"]


def section(doc: Doc, model: str, runs: dict, tag: str, dataset: str = "") -> None:
    pred = runs["predicted"]
    if pred is None:
        return
    side = P.input_side(model)
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
        methods = P.table_i_pos_001(model) if kind == "pos" else P.M001
        for m in methods:
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
                    cells.append(f"{fmt_ci(va, ia, d, scale)} ({fmt_ci(vb, ib, d, scale)})" if i else fmt_ci(va, ia, d, scale))
                rows.append([m if stat == "accuracy" else "", what] + cells)
                if stat == "accuracy":
                    final[m] = a[1][len(counts) - 1] if len(a[1]) >= len(counts) else math.nan
                    final_items[m] = curve_items(pred, m, rem, stat, len(counts) - 1, rec_a)
        title = "positive (MoRF)" if kind == "pos" else "negative (LeRF)"
        cnt = next((pred.count(m, rem) for m in methods if pred.count(m, rem)), None)
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
        doc.add(*md_table(head, rows))
        # the paper's last numeric column (4,000 / 10,000 pixels)
        doc.order(order_key, final, higher=(kind == "neg"), items=final_items, maps_run=pred)
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
        doc.figure(f"{tag}_001_fig7b_dk.png", f"Nam, Choi and Lee [Nam-RAP-Journal], Fig. 7 (b): D_K, {model}",
                   lambda fig: series_plot(fig, series, "K (top-K positive pixels)", "D_K (pixels)",
                                            f"distance of top-K positive pixels to the top-1, {model}"))
        doc.order("001-dk", {m: nanmean(s[1]) for m, s in series.items()}, higher=False,
                  items={m: curve_items(pred, m, tk, "mean") for m in series}, maps_run=pred)
