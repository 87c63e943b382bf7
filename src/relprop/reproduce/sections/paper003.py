"""Kohlbrenner et al. 2020 [Kohlbrenner2020-LRP] (LRP best practice): the LRP-CMP rows (mu, mu_w) and the occlusion baseline."""

from __future__ import annotations

import math
from typing import Any

import torch

from ...evaluate.metricset import NO_METHOD
from ...metrics.aggregate import aggregate, binned_mean
from .. import protocols as P
from ..document import MARKERS, Doc, fmt, fmt_ci, md_table
from ..rundata import MULTI_LABEL, Item, finite, intervals, scalar_items
from .common import count_text

__all__ = ["section"]


def _cmp_rows(dataset: str = "") -> list[tuple[str, str]]:
    """``(label, method key)`` of Table I's rows for ``dataset``: Pattern Attribution is in the ImageNet
    rows only, not in the PVOC (multi-label) ones."""
    single = () if dataset in MULTI_LABEL else P.M003_IMAGENET
    rows = [(m, m) for m in ("lrp-z", "lrp-alpha1beta0", "lrp-alpha2beta1", "guided-backprop") + single]
    return rows + [(f"lrp-cmp ({label})", P.key("lrp-cmp", o)) for label, o in P.CMP_VARIANTS.items()]


def section(doc: Doc, model: str, runs: dict, tag: str, dataset: str) -> None:
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
    for label, m in _cmp_rows(dataset):
        if not box.has(m, mu):
            continue
        vals = [box.mean(m, muw), box.mean(m, mu, "box<=0.25"), box.mean(m, mu, "box<=0.5"), box.mean(m, mu)]
        order_vals[label] = vals[0]
        vals_of[label] = (vals, count_text(box, m, mu))
        rec = box.records(mu, method=m)
        items["muw"][label] = scalar_items(box, m, muw)
        for c, limit in (("mu25", 0.25), ("mu50", 0.5), ("mu", math.inf)):
            items[c][label] = [(r[0], 0, float(r[4]), 1.0) for r in rec if finite(r[4]) and fraction(r) <= limit]
        points[label] = ([fraction(r) for r in rec], [math.nan if r[4] is None else r[4] for r in rec])
    if not vals_of:
        return
    # the uniform baseline: mu = box fraction, mu_w = 1 (Kohlbrenner et al. 2020 [Kohlbrenner2020-LRP], "Baseline")
    any_m = next(m for _, m in _cmp_rows(dataset) if box.has(m, mu))
    frac = torch.tensor(points[next(iter(points))][0], dtype=torch.float64)
    base = [1.0, aggregate(frac, include=frac <= 0.25).mean, aggregate(frac, include=frac <= 0.5).mean,
            aggregate(frac).mean]
    order_vals["uniform baseline"] = 1.0
    vals_of["uniform baseline"] = (base, count_text(box, any_m, mu))
    base_rec = box.records(mu, method=any_m)
    items["muw"]["uniform baseline"] = [(r[0], 0, 1.0, 1.0) for r in box.records(muw, method=any_m)]
    for c, limit in (("mu25", 0.25), ("mu50", 0.5), ("mu", math.inf)):
        items[c]["uniform baseline"] = [(r[0], 0, float(fraction(r)), 1.0) for r in base_rec
                                        if finite(fraction(r)) and fraction(r) <= limit]
    ivs = {c: intervals(items[c]) for c in cols}
    for label, (vals, n) in vals_of.items():
        rows.append((vals[0], [label] + [fmt_ci(v, ivs[c].get(label)) for c, v in zip(cols, vals)] + [n]))
    rows.sort(key=lambda r: -r[0] if not math.isnan(r[0]) else math.inf)
    doc.add(f"#### Table I — mu_w, mu <= 0.25, mu <= 0.5, mu ({model})", "",
            "Inside-total ratio of positive relevance in the class's boxes (Eq. 5), size-weighted mu_w, "
            "and mu over pairs whose boxes cover <= 25% / <= 50% of the image; rows ordered by mu_w as in "
            "the paper. Uniform baseline: a constant map (mu = box fraction, mu_w = 1).", "")
    doc.add(*md_table(["analyzer", "mu_w ↑", "mu <= 0.25 ↑", "mu <= 0.5 ↑", "mu ↑", "n"], [r[1] for r in rows]))
    doc.order("003-muw-pvoc" if dataset in MULTI_LABEL else "003-muw-imagenet", order_vals, higher=True,
              items=items["muw"], maps_run=box,
              method_keys=dict(_cmp_rows(dataset)))
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
                    marker=MARKERS[i % len(MARKERS)], markerfacecolor="none", markersize=4, label=label, **extra)
        for v in (0.25, 0.5):
            ax.axvline(v, color="grey", linewidth=0.8)
        ax.set_xlim(0, min(1.0, max(0.55, top + 0.1)))
        ax.set_xlabel("relative box size (box area / image area), 10 bins")
        ax.set_ylabel("mean mu (inside-total ratio)")
        ax.set_title(f"mu against box size, {model}", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, ncol=2)

    doc.add(f"#### Fig. 3 — mu against box size ({model})", "")
    doc.figure(f"{tag}_003_fig3_mu_box.png", f"Kohlbrenner et al. 2020 [Kohlbrenner2020-LRP], Fig. 3: mu by box size, {model}", draw_mu)
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
                f"(0 in the normalised input). Mean Δf: object {fmt(a_obj.mean, 2)} (n={a_obj.count}), "
                f"context {fmt(a_ctx.mean, 2)} (n={a_ctx.count}). "
                + ("The model reacts more to the object than to its context, the assumption behind mu."
                   if a_obj.mean < a_ctx.mean else
                   "The model reacts more to the context than to the object, so mu measures less than "
                   "it assumes here."), "")
        doc.figure(f"{tag}_003_fig2_occlusion.png", f"Kohlbrenner et al. 2020 [Kohlbrenner2020-LRP], Fig. 2: object vs context occlusion, {model}",
                   draw_occ)
