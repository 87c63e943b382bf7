"""``docs/results.md``: the five papers' tables and figures, generated from evaluation stores.

:func:`write_results` reads one or several SQLite stores written by the jobs of
:mod:`relprop.reproduce.protocols` (:mod:`.rundata`: aggregates and per-image items), writes each
paper's section (:mod:`.sections`: tables and PNG figures in the papers' layout, each with a verdict on
whether the ordering of the methods agrees with the paper's, :mod:`.paper_orders`) and a summary of
the verdicts. Qualitative figures (maps) are written by :mod:`.figures` and linked when present.

Uncertainty: the values compared by a verdict are rebuilt from the per-image records as
:class:`relprop.metrics.aggregate.Sums` (``Item``: image, feature, sum, count), which gives each a
95% percentile bootstrap interval over the images (paired across methods, Efron & Tibshirani 1993 [Efron1993-Bootstrap])
and each of the paper's pairs a paired permutation test; a pair agrees or is reversed only when
significant after Holm's correction over the table's pairs, and is undecided otherwise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from ..evaluate.store import Store
from . import protocols as P
from .diagnosis import MARGINS
from .document import Doc, md_table
from .rundata import RunData, load_runs
from .sections import SECTIONS
from .sections.common import runs_of
from .sections.transformers import section as transformer_section
from .sections.volumes import section as volume_section

__all__ = ["PAPERS", "REAL_DATA", "write_results"]


def _models(runs: list[RunData]) -> list[tuple[str, str]]:
    out: dict[tuple[str, str], None] = {}
    for r in runs:
        out[(r.model, r.dataset)] = None
    first = ("shapes_vgg", "shapes_resnet")  # the shipped models first, then the others as stored
    return sorted(out, key=lambda md: first.index(md[0]) if md[0] in first else len(first))


def _qualitative(doc: Doc, paper: str, model: str, tag: str) -> None:
    from .figures import FIGURES

    for name, caption in FIGURES.get(paper, ()):
        path = doc.image_dir / f"{tag}_{name}"
        if path.is_file():
            doc.add(f"![{caption}]({doc.rel}/{path.name})", "", f"*{caption} ({model})*", "")


PAPERS = {
    "000": "Nam et al. 2020 [Nam2020-RAP]: Relative Attributing Propagation (RAP), AAAI 2020",
    "001": "Nam, Choi and Lee [Nam-RAP-Journal]: RAP, journal version",
    "002": "Nam et al. [Nam-Hedge]: Gradient Hedge / attribution by hedging the evidence",
    "003": "Kohlbrenner et al. 2020 [Kohlbrenner2020-LRP]: Towards best practice in explaining neural network decisions with LRP, IJCNN 2020",
    "004": "Iwana et al. 2019 [Iwana2019-SGLRP]: Softmax-gradient LRP, SGLRP, ICCVW 2019",
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
        "relprop reproduce --store results.sqlite --size small       # or --size paper (500 scenes per model), full (GPU advised)",
        "relprop report results.sqlite --results docs/results.md   # this file alone, from the store",
        "```",
        "",
        "(`python benchmarks/reproduce.py` takes the same options as `relprop reproduce`.)",
        "",
    ]
    for m in meta:
        n = len(m.get("calls", {})) or 1
        lines += [f"Last reproduction: size `{m.get('size')}`, models {', '.join(m.get('models', []))}; wall "
                  f"time {float(m.get('wall_s', 0)) / 60:.1f} min in all, over {n} call(s) of the reproduction "
                  f"(the last {float(m.get('last_wall_s', 0)) / 60:.1f} min), on a 2-core CPU shared with "
                  "other jobs.", ""]
    lines += [
        f"Protocols (`relprop.reproduce.protocols`): the papers' pixel counts refer to {P.PAPER_SIDE} x "
        f"{P.PAPER_SIDE} images and are scaled to the input by the area ratio ({side}² / {P.PAPER_SIDE}² = "
        f"{side * side / P.PAPER_SIDE ** 2:.3f} for the shapes models; 250 pixels become "
        f"{P.scaled_count(250, side)}); the pointing game's 15-pixel tolerance by the side ratio "
        f"({P.pointing_options(side)['tolerance']} px at {side}²). Box-based metrics "
        "(outside-inside ratio, mu, pointing games) use the objects' boxes, segmentation metrics their exact "
        "masks. `shapes` is multi-label (1-3 objects, 10 classes): the explained classes are every ground-truth "
        "class (`--targets labels`), the predicted class for the perturbation and segmentation protocols, and "
        "the second most probable class for Iwana et al.'s [Iwana2019-SGLRP] Fig. 11 (b). On `photos` (several ImageNet "
        "labels per photo, one or two outlined objects) the predicted class is explained against the outlined "
        "objects. Each ordering verdict counts the paper's pairwise orders (best-first groups read from the "
        "paper's table, `relprop.reproduce.paper_orders`) that the values here keep significantly (agree), "
        "reverse significantly (reversed) or cannot separate (undecided): paired permutation tests of the two "
        "methods over the images, Holm-corrected over the table's pairs at 5%. A significant reversal is not "
        "put down to noise: its \"Why\" first names the map statistics, measured in the same run, that separate "
        "the two methods (positive relevance inside the objects, `mu`; background left at zero, "
        "`silent_background`; negative share of |R|, `negative_share`; positive pixels, `positive_ratio`; a "
        f"difference counts from {', '.join(f'{v * 100:.0f}' for v in MARGINS.values())} points on: "
        "`relprop.reproduce.diagnosis`), or says that none "
        "does or that none was measured for that table, then the differences from the paper's setting. "
        "Values in brackets: 95% "
        "percentile bootstrap intervals over the images, resampled jointly for all methods (images resampled "
        "whole, with all their explained classes). Maps are computed in float32: how far its rounding moves "
        "the figures of the methods it affects most (`rap`'s and `rsp`'s signed split of residual sums) is "
        "measured by `benchmarks/precision.py` (the same protocols in float64) and reported in docs/methods.md, "
        "RAP.",
        "",
        "The papers' other baselines are in the tables where the papers report them: Pattern Attribution "
        "(`pattern-attribution`, with relprop's shipped patterns) in Table 1 of Nam et al. 2020 [Nam2020-RAP] (POS "
        "and the segmentation columns) and Table I of Nam, Choi and Lee [Nam-RAP-Journal] (positive removal), on the "
        "VGG models only, since both papers report it for VGG-16 only; AGF (`agf`) and Relevance-CAM "
        "(`relevance-cam`) in Tables 1 and 3 of Nam et al. [Nam-Hedge]. Not reproduced: Pattern Attribution in the "
        "ImageNet rows of Kohlbrenner et al. 2020 [Kohlbrenner2020-LRP] (relprop ships patterns for the shapes "
        "models only, whose table follows the PVOC rows, which lack it); these baselines in Fig. 7 of Nam et al. 2020 "
        "[Nam2020-RAP] (LeRF) and Fig. 9 of Nam et al. [Nam-Hedge] (insertion), whose legends are not in the papers' "
        "text: those figures keep the methods they had. Grad-CAM++, FullGrad and DeepLIFT are implemented but "
        "no paper tabulates them (Nam et al. [Nam-Hedge] leave FullGrad out as class-agnostic; Nam et al. 2020 "
        "[Nam2020-RAP] count DeepLIFT-Rescale as input x gradient). Nam, Choi and Lee's [Nam-RAP-Journal] 3-D CT "
        "model has a synthetic counterpart outside these tables (`nodules3d`: localisation in the nodule mask "
        "per method and Fig. 8, in \"Beyond the papers: 3-D volumes\" below); "
        "Nam et al.'s [Nam-Hedge] cross-model panel of Fig. 9 has none. The qualitative figures (maps) are "
        "drawn by `relprop reproduce` from the models, not from the store.",
        "",
    ]
    return lines


REAL_DATA = r"""## With ImageNet, VOC and COCO

The same protocols on the papers' data (`--size full`: every image; a GPU is advised). Torchvision
weights must be in the local torch cache; VOC and COCO need a multi-label model trained on them
(`--models package.module:factory`; relprop ships none). One store per data set, then one document:

```bash
# [Nam2020-RAP] (Table 1 boxes, Fig. 7), [Nam-RAP-Journal] (Table I, Fig. 7b), [Nam-Hedge] (Fig. 9),
# [Kohlbrenner2020-LRP] (ImageNet rows), [Iwana2019-SGLRP]
relprop reproduce --store imagenet.sqlite --size full --device cuda --batch-size 32 \
    --models vgg16,resnet50 --model-option vgg16.weights=IMAGENET1K_V1 --model-option resnet50.weights=IMAGENET1K_V1 \
    --dataset vgg16=imagenet --dataset resnet50=imagenet --root /data/imagenet --out imagenet/results.md
# [Nam2020-RAP] (pixel accuracy, mIoU) and [Nam-Hedge] (Table 3): ImageNet segmentation (gtsegs_ijcv.mat)
relprop reproduce --store imagenet-seg.sqlite --size full --device cuda --models vgg16 \
    --model-option vgg16.weights=IMAGENET1K_V1 --dataset vgg16=imagenet-seg --root /data/gtsegs_ijcv.mat \
    --out imagenet-seg/results.md
# [Nam-Hedge] (Table 1, 2, Fig. 7) and [Kohlbrenner2020-LRP] (PVOC rows): VOC 2007 test / COCO 2014 val with your multi-label model
relprop reproduce --store voc07.sqlite --size full --device cuda --models mypkg.models:vgg16_voc \
    --dataset mypkg.models:vgg16_voc=voc2007 --root /data --out voc07/results.md
relprop reproduce --store coco14.sqlite --size full --device cuda --models mypkg.models:vgg16_coco \
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
    doc = Doc(images, rel)
    doc.add("# Results: the five papers' evaluations, reproduced with relprop", "")
    doc.add(*_intro(stores))
    doc.add(*header)
    everything, runs = runs, [r for r in runs if r.protocol == "papers"]
    models = _models(runs)
    counts = []
    for model, dataset in models:
        mine = [r for r in runs if r.model == model]
        counts.append(f"{model} on {dataset}: {max(r.n_samples for r in mine)} images")
    doc.add("Evaluated: " + "; ".join(counts) + ".", "")
    start = len(doc.lines)
    for paper, title in PAPERS.items():
        doc.add(f"## {title}", "")
        for model, dataset in models:
            r = runs_of(runs, model)
            tag = model.replace("/", "_")
            doc.add(f"### {model} on {dataset}", "")
            doc.context, doc.dataset = model, dataset
            n0 = len(doc.lines)
            SECTIONS[paper](doc, model, r, tag, dataset)
            _qualitative(doc, paper, model, tag)
            if len(doc.lines) == n0:
                doc.add("(no records for this protocol in the store)", "")
    transformer_section(doc, everything)
    volume_section(doc, everything)
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
    summary += md_table(["paper, table / figure"] + [f"{m} (agree / reversed / undecided)" for m in models_seen],
                        rows)
    doc.lines[start:start] = summary
    doc.add(REAL_DATA)
    out.write_text("\n".join(doc.lines).rstrip() + "\n")
    return [out] + doc.files
