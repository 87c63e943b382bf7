"""Beyond the papers: transformers. ``shapes_vit`` and the shipped CNNs on ``shapes``, localisation
(pointing game, outside-inside ratio) and faithfulness (MoRF / LeRF region perturbation and the area
between the two curves), with the ordering Achtibat et al. 2024 [Achtibat2024-AttnLRP] report on a
ViT (AttnLRP ahead of attention rollout and of Chefer et al.'s method) checked on ``shapes_vit``."""

from __future__ import annotations

import math
from .. import protocols as P
from ..document import Doc, fmt_ci, md_table, series_plot
from ..rundata import Item, RunData, finite, intervals, scalar_items

__all__ = ["section", "area_between_items"]


def area_between_items(run: RunData, method: str, morf: str, lerf: str) -> list[Item]:
    """Per explained pair: AOPC(MoRF) - AOPC(LeRF) (the mean gap between the LeRF and the MoRF curve:
    higher is more faithful), the two records paired by (image, target); items of one feature, so
    that their statistic is the plain mean over the pairs."""
    lerf_of = {(r[0], r[1]): r[4] for r in run.records(lerf, method) if finite(r[4])}
    return [(r[0], 0, float(r[4]) - float(lerf_of[(r[0], r[1])]), 1.0)
            for r in run.records(morf, method) if finite(r[4]) and (r[0], r[1]) in lerf_of]


def _mean(items: list[Item]) -> float:
    return sum(i[2] for i in items) / len(items) if items else math.nan


def _localisation(doc: Doc, model: str, run: RunData) -> None:
    side = P.input_side(model)
    pg = P.key("pointing_game", P.pointing_options(side))
    oi_all, oi_pos = P.key("outside_inside_ratio"), P.key("outside_inside_ratio", {"sign": "positive"})
    methods = [m for m in P.TRANSFORMER_METHODS if run.has(m, pg)]
    if not methods:
        return
    items = {k: {m: scalar_items(run, m, k) for m in methods} for k in (pg, oi_all, oi_pos)}
    ivs = {k: intervals(v) for k, v in items.items()}
    rows = [[m] + [fmt_ci(run.mean(m, k), ivs[k].get(m)) for k in (pg, oi_all, oi_pos)] for m in methods]
    doc.add(f"#### Localisation ({model}, {run.n_samples} scenes, every ground-truth class)", "",
            "Pointing game (the map's maximum within "
            f"{P.pointing_options(side)['tolerance']} px of the class's boxes; higher is better) and "
            "outside-inside ratio of Nam et al. 2020 [Nam2020-RAP] (ALL: signed map, POS: positive relevance; "
            "lower is better). Brackets: 95% bootstrap intervals over the scenes.", "")
    doc.add(*md_table(["method", "pointing game ↑", "outside-inside ALL ↓", "outside-inside POS ↓"], rows))


def _faithfulness(doc: Doc, model: str, run: RunData, tag: str) -> None:
    side = P.input_side(model)
    options = P.faithfulness_options(side)
    morf, lerf = P.key("aopc_morf", options), P.key("aopc_lerf", options)
    methods = [m for m in P.TRANSFORMER_METHODS if run.has(m, morf)]
    if not methods:
        return
    items = {"morf": {m: scalar_items(run, m, morf) for m in methods},
             "lerf": {m: scalar_items(run, m, lerf) for m in methods},
             "gap": {m: area_between_items(run, m, morf, lerf) for m in methods}}
    ivs = {k: intervals(v) for k, v in items.items()}
    gap = {m: _mean(items["gap"][m]) for m in methods}
    rows = [[m, fmt_ci(run.mean(m, morf), ivs["morf"].get(m)), fmt_ci(run.mean(m, lerf), ivs["lerf"].get(m)),
             fmt_ci(gap[m], ivs["gap"].get(m))] for m in sorted(methods, key=lambda m: -gap[m]
                                                                   if not math.isnan(gap[m]) else math.inf)]
    regions = (side // options["patch_size"]) ** 2
    doc.add(f"#### Faithfulness ({model}, {run.n_samples} scenes, the predicted class)", "",
            f"The {regions} squares of {options['patch_size']} x {options['patch_size']} pixels (the ViT's "
            "patches) are set to zero (the data set's mean after normalisation) in the order of their summed "
            f"relevance, {options['counts'][1]} squares per step, most relevant first (MoRF) or least "
            "relevant first (LeRF); AOPC: the mean drop of the class's logit over the steps. MoRF - LeRF: "
            "the mean gap between the two curves, the faithfulness measure Achtibat et al. 2024 "
            "[Achtibat2024-AttnLRP] report (area between the perturbation curves; higher is better). "
            "Rows by MoRF - LeRF; brackets: 95% bootstrap intervals over the scenes.", "")
    doc.add(*md_table(["method", "AOPC MoRF ↑", "AOPC LeRF ↓", "MoRF - LeRF ↑"], rows))
    curves = {}
    for m in methods:
        a, b = run.curve(m, morf, "scores"), run.curve(m, lerf, "scores")
        if a is not None and b is not None:
            curves[f"{m} MoRF"], curves[f"{m} LeRF"] = a, b
    if curves and model in P.TRANSFORMER_MODELS:
        doc.figure(f"{tag}_transformers_perturbation.png", f"MoRF and LeRF perturbation curves, {model}",
                   lambda fig: series_plot(fig, curves, "squares removed", "logit of the class",
                                           f"region perturbation, {model}"))
    if model in P.TRANSFORMER_MODELS:
        doc.order("vit-faithfulness", gap, higher=True, items=items["gap"], maps_run=run)


def section(doc: Doc, runs: list[RunData]) -> None:
    """The transformer section from the runs of the transformer jobs (``protocol == "transformers"``)."""
    mine = [r for r in runs if r.protocol == "transformers"]
    if not mine:
        return
    doc.add("## Beyond the papers: transformers", "",
            "None of the five papers explains a transformer. Here `shapes_vit` (a 4-block ViT whose convolutional "
            "stem makes 8 x 8 tokens of 8 x 8 pixels, docs/shapes.md) and the shipped CNNs are explained by the transformer methods (attnlrp, cp-lrp, "
            "attention-rollout, transformer-attribution; the last two only on the ViT, they need attention) "
            "and the seeds' methods (rap, rap-journal, hedge, rsp, sglrp, clrp, gradient, input x gradient, gradcam), "
            "on the same scenes of "
            "`shapes` (`relprop.reproduce.protocols.TRANSFORMER_METHODS`). attnlrp and cp-lrp differ only inside "
            "attention, so on the CNNs their maps coincide (and equal input x gradient up to the stabiliser: "
            "LRP-0 on a ReLU network).", "")
    models = list(dict.fromkeys(r.model for r in sorted(mine, key=lambda r: r.model not in P.TRANSFORMER_MODELS)))
    for model in models:
        doc.add(f"### {model} on shapes", "")
        doc.context, doc.dataset = model, "shapes"
        box = next((r for r in mine if r.model == model and r.boxes), None)
        pred = next((r for r in mine if r.model == model and not r.boxes), None)
        if box is not None:
            _localisation(doc, model, box)
        if pred is not None:
            _faithfulness(doc, model, pred, model.replace("/", "_"))
