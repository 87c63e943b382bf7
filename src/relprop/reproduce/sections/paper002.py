"""Nam et al. [Nam-Hedge] (Gradient Hedge): pointing games (Tables 1, 2, Fig. 13), Table 3, Figs. 7 and 9."""

from __future__ import annotations

import math
from typing import Any, Optional

import torch

from ...evaluate.metricset import NO_METHOD
from ...metrics.aggregate import per_class_mean
from .. import protocols as P
from ..document import Doc, fmt_ci, md_table, series_plot
from ..rundata import MULTI_LABEL, RunData, curve_items, finite, intervals, scalar_items
from .common import count_text, nanmean

__all__ = ["section"]


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
    items = {k: [(r[0], r[1], float(r[4]), 1.0) for r, inc in zip(rec, keep_) if inc and finite(r[4])]
             for k, keep_ in subsets.items()}
    return {"items": items, "L_all": per_class_mean(hits, cls).macro,
            "L_dif": per_class_mean(hits, cls, include=dif).macro,
            "P_all": per_class_mean(hits, cls, include=pr).macro,
            "P_dif": per_class_mean(hits, cls, include=pr & dif).macro,
            "n": int((~torch.isnan(hits)).sum()), "n_dif": int(dif.sum()), "n_p": int(pr.sum())}


def section(doc: Doc, model: str, runs: dict, tag: str, dataset: str) -> None:
    box, pred = runs["boxes"], runs["predicted"]
    multi = dataset in MULTI_LABEL
    if box is not None:
        pg = P.key("pointing_game", P.pointing_options(P.input_side(model)))
        tol = P.pointing_options(P.input_side(model))["tolerance"]
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
            rows.append([m] + [fmt_ci(r[c], ivs[c].get(m)) for c in cols]
                        + [fmt_ci(box.mean(m, "positive_ratio"), pr_iv.get(m)), f"{r['n']} / {r['n_dif']} / {r['n_p']}"])
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
            doc.add(*md_table(["method", "L ALL ↑", "L DIF ↑", "P ALL ↑", "P DIF ↑", "PR",
                             "pairs (all / DIF / P)"], rows))
            for key, c in (("002-pg-L-all", "L_all"), ("002-pg-L-dif", "L_dif"), ("002-pg-P-all", "P_all")):
                doc.order(key, {m: r[c] for m, r in res.items()}, higher=True, items=pg_items[c], maps_run=box)
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
            rows.append([label, fmt_ci(r["L_all"] * 100, abl_iv["L_all"].get(label), 1, 100) + " / "
                         + fmt_ci(r["L_dif"] * 100, abl_iv["L_dif"].get(label), 1, 100)])
        if rows:
            doc.add(f"#### Table 2 — ablation of C / A / U / Psi in hedge ({model})", "",
                    "Pointing game L ALL / DIF (%), gamma = 2, on the "
                    f"{len({s for s, _ in common})} images every variant was evaluated on. The rows' component "
                    "sets are read from the paper's flattened table (C in 4 rows, A and U in 3, Psi in 2).", "")
            doc.add(*md_table(["components", "pointing game ALL / DIF"], rows))
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
            doc.add(*md_table(["gamma"] + [str(g) for g in gam],
                            [[f"{c[0]} {c[2:].upper()} (%)"] + [fmt_ci(r[c] * 100, g_iv[c].get(str(g)), 1, 100)
                                                               for g, r in gam.items()] for c in ("L_all", "L_dif")]))
            doc.order("002-gamma", {str(g): r["L_all"] for g, r in gam.items()}, higher=True,
                      items={str(g): r["items"]["L_all"] for g, r in gam.items()})
    if pred is not None:
        bi = P.key("blurred_insertion")
        series = {m: pred.curve(m, bi, "accuracy") for m in P.M002_INSERTION}
        series = {m: s for m, s in series.items() if s is not None}
        if series:
            doc.add(f"#### Fig. 9 — MoRF insertion into a blurred image ({model})", "",
                    "Start: the image blurred (Gaussian 11 x 11, sigma 5, reflect padding); step i pastes "
                    "back the i% most relevant pixels; top-1 accuracy of the predicted class.", "")
            doc.figure(f"{tag}_002_fig9_insertion.png", f"Nam et al. [Nam-Hedge], Fig. 9: MoRF insertion, {model}",
                       lambda fig: series_plot(fig, series, "fraction of pixels inserted (MoRF)",
                                                "top-1 accuracy", f"insertion into a blurred image, {model}"))
            doc.order("002-insertion", {m: nanmean(s[1]) for m, s in series.items()}, higher=True,
                      items={m: curve_items(pred, m, bi, "accuracy") for m in series}, maps_run=pred)
        mp, noi = P.key("stacked_map"), P.key("normalised_outside_inside_ratio")
        rows, m_ap, m_oi = [], {}, {}
        it_ap = {m: scalar_items(pred, m, mp) for m in P.M002_TABLE3 if pred.has(m, mp)}
        it_oi = {m: scalar_items(pred, m, noi) for m in it_ap}
        iv_ap, iv_oi = intervals(it_ap), intervals(it_oi)
        for m in it_ap:
            m_ap[m], m_oi[m] = pred.mean(m, mp), pred.mean(m, noi)
            rows.append([m, fmt_ci(m_ap[m], iv_ap.get(m)), fmt_ci(m_oi[m], iv_oi.get(m)), count_text(pred, m, mp)])
        if rows:
            doc.add(f"#### Table 3 — mAP and normalised outside-inside ratio on masks ({model})", "",
                    "Stacked AP of [1 - R, R] against [background, foreground] (Chefer et al.'s [Chefer2021-Transformer] mAP) and "
                    "Eq. 14 on min-max normalised maps, predicted class against the foreground mask. Methods: the "
                    "paper's class-discriminative ones (c*LRP, c*EB, RSP, Relevance-CAM, AGF, hedge).", "")
            doc.add(*md_table(["method", "mAP ↑", "Out/In ↓", "n"], rows))
            doc.order("002-map", m_ap, higher=True, items=it_ap, maps_run=pred)
            doc.order("002-outin", m_oi, higher=False, items=it_oi, maps_run=pred)
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
            doc.figure(f"{tag}_002_fig6_randomisation.png", f"Nam et al. [Nam-Hedge], Fig. 6: cascading randomisation, {model}",
                       lambda fig: series_plot(fig, series, "randomised down to layer", "Spearman of |R|",
                                                f"cascading randomisation, {model}", xticks=layers))
