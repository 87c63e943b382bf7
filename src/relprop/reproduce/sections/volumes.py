"""Beyond the papers' tables: 3-D volumes. ``nodules3d_vgg`` on the positive ``nodules3d`` cubes,
localisation in the nodule's exact voxel mask per method: the relevance mass inside (mu, Kohlbrenner
et al. 2020 [Kohlbrenner2020-LRP]), the pointing game in 3-D and the outside-inside ratio of Nam et
al. 2020 [Nam2020-RAP], the synthetic counterpart of the CT application of Nam, Choi and Lee
[Nam-RAP-Journal] (which shows 3-D maps, Fig. 8, but no localisation numbers)."""

from __future__ import annotations

import math

from .. import protocols as P
from ..document import Doc, fmt_ci, md_table
from ..rundata import RunData, intervals, scalar_items

__all__ = ["section"]

#: (metric key, column head): the table's columns
COLUMNS = (
    (P.key("mu"), "energy in mask (mu) ↑"),
    (P.key("pointing_game", P.volume_pointing_options()), "pointing game ↑"),
    (P.key("outside_inside_ratio"), "outside-inside ALL ↓"),
    (P.key("outside_inside_ratio", {"sign": "positive"}), "outside-inside POS ↓"),
    (P.key("positive_ratio"), "positive ratio"),
)


def _table(doc: Doc, run: RunData) -> None:
    keys = [k for k, _ in COLUMNS]
    methods = [m for m in P.volume_methods() if run.has(m, keys[0])]
    if not methods:
        return
    items = {k: {m: scalar_items(run, m, k) for m in methods} for k in keys}
    ivs = {k: intervals(v) for k, v in items.items()}
    mu = {m: run.mean(m, keys[0]) for m in methods}
    order = sorted(methods, key=lambda m: -mu[m] if not math.isnan(mu[m]) else math.inf)
    rows = [[m] + [fmt_ci(run.mean(m, k), ivs[k].get(m)) for k in keys] for m in order]
    tol = P.volume_pointing_options()["tolerance"]
    info = run.targets_info()
    fractions = [t["box_fraction"] for t in info.values() if not math.isnan(t["box_fraction"])]
    predicted = sum(1 for (_, target), t in info.items() if t["predicted"] == target)
    doc.add(f"#### Localisation in the nodule mask ({run.model}, {run.n_samples} cubes with a nodule)", "",
            "Every method explains the class \"nodule\" of the 32³ cubes that hold one; the mask is the "
            f"nodule's exact voxel mask ({100 * sum(fractions) / max(1, len(fractions)):.1f}% of the cube on "
            f"average; the model predicts \"nodule\" on {predicted} of the {len(info)}). Energy in mask: the share of the "
            "positive relevance that lies inside (mu, Kohlbrenner et al. 2020 [Kohlbrenner2020-LRP], Eq. 5, "
            "over voxels; higher is better). Pointing game: the map's maximum within "
            f"{tol} voxels of the nodule (TorchRay's 15 px at 224² scaled to the side 32; a ball in 3-D; higher "
            "is better). Outside-inside ratio of Nam et al. 2020 [Nam2020-RAP] (Eq. 11, ALL: signed map, "
            "POS: positive relevance; lower is better). Positive ratio: the fraction of voxels with positive "
            "relevance (descriptive). Rows by the energy in mask; brackets: 95% bootstrap intervals over the "
            f"cubes. Store: `{run.store.name if run.store else '?'}`.", "")
    doc.add(*md_table(["method"] + [head for _, head in COLUMNS], rows))


def _figure(doc: Doc, model: str) -> None:
    """The link to Fig. 8 of ``model`` when the reproduction drew it (:func:`..figures.write_volume_figure`)."""
    from ..figures import VOLUME_FIGURE

    path = doc.image_dir / f"{model.replace('/', '_')}_{VOLUME_FIGURE[0]}"
    if path.is_file():
        doc.add(f"#### Fig. 8 — slices of RAP's relevance on test cubes ({model})", "",
                f"![{VOLUME_FIGURE[1]}]({doc.rel}/{path.name})", "", f"*{VOLUME_FIGURE[1]} ({model})*", "")


def section(doc: Doc, runs: list[RunData]) -> None:
    """The volume section from the runs of the volume job (``protocol == "volumes"``)."""
    mine = [r for r in runs if r.protocol == "volumes"]
    if not mine:
        return
    doc.add("## Beyond the papers: 3-D volumes", "",
            "Nam, Choi and Lee [Nam-RAP-Journal] explain a 3-D CNN on CT cubes (LUNA 2016) and show its maps "
            "(Fig. 8) without scoring them. Here `nodules3d_vgg` (a 3-D VGG with batch normalisation, "
            "docs/shapes.md) is explained on the synthetic `nodules3d` cubes, whose nodules come with exact "
            "voxel masks, by every method that runs on a 3-D CNN (all but the attention methods), and the maps "
            "are scored with the 3-D forms of the localisation metrics (the same formulas over voxels). Part of "
            "`relprop reproduce`; this model alone: `relprop reproduce --models nodules3d_vgg --size small "
            "--no-figures --store nodules3d.sqlite --out nodules3d/results.md`.", "")
    for run in mine:
        doc.add(f"### {run.model} on {run.dataset}", "")
        doc.context, doc.dataset = run.model, run.dataset
        _table(doc, run)
        _figure(doc, run.model)
