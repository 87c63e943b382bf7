"""Iwana et al. 2019 [Iwana2019-SGLRP] (SGLRP): Fig. 11 (maximal patch masking) and Fig. 13."""

from __future__ import annotations

import math

import torch

from ...metrics.aggregate import aggregate
from .. import protocols as P
from ..diagnosis import Profile
from ..document import Doc, fmt_ci, md_table, series_plot
from ..rundata import curve_items, finite, intervals

__all__ = ["section"]


def section(doc: Doc, model: str, runs: dict, tag: str, dataset: str = "") -> None:
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
        doc.add(*md_table(["method"] + [f"p={p}" for p in ps],
                        [[m] + [fmt_ci(v, steps[i].get(m) if i < len(steps) else None, 4) for i, v in enumerate(s[1])]
                         for m, s in series.items()]))
        doc.figure(f"{tag}_004_fig11_{'gt' if which == 'ground truth' else 'second'}.png",
                   f"Iwana et al. 2019 [Iwana2019-SGLRP], Fig. 11: patch masking of the {which}, {model}",
                   lambda fig, s=series: series_plot(fig, s, "patch size p", "change of y_t (softmax)",
                                                      f"maximal patch masking, {which}, {model}"))
        doc.order(order_key, {m: s[1][-1] for m, s in series.items()}, higher=False,
                  items={m: curve_items(run, m, "", "mean", len(s[1]) - 1, recs[m]) for m, s in series.items()},
                  maps_run=run)
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
    doc.figure(f"{tag}_004_fig13_energy.png", f"Iwana et al. 2019 [Iwana2019-SGLRP], Fig. 13: energy pointing game, {model}",
               lambda fig: series_plot(fig, series, "energy E", "pointing accuracy",
                                        f"energy-based pointing game, {model}"))
    recs = {m: box.records(ep, m) for m in series if m != "random"}
    rnd_items = [(r[0], 0, float(f), 1.0) for r, f in zip(rec, frac.tolist()) if finite(f)]
    # a random selection of pixels: its expected share inside the boxes is the box fraction, and no
    # pixel is exactly zero (its sign statistics are undefined)
    random_profile = Profile(inside=rnd, silent=0.0, negative=math.nan, positive=math.nan)
    for key, pick in (("004-energy-high", lambda c: len(c) - 1), ("004-energy-low", lambda c: 0)):
        it = {m: curve_items(box, m, ep, "mean", pick(series[m][1]), r) for m, r in recs.items()}
        doc.order(key, {m: s[1][pick(s[1])] for m, s in series.items()}, higher=True,
                  items=dict(it, random=rnd_items), maps_run=box, baselines={"random": random_profile})
